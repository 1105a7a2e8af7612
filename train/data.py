"""Training batches: the Sec. 5.1 dataset, identity-grouped, as the step wants them.

    folder = ensure_dataset(config, workdir)            # generates it when missing
    batches = Batches(folder, config, seed)             # an endless, resumable iterator
    host = next(batches); position = batches.position()  # JSON-able, for checkpoints
    mean = mean_albedo(folder)                          # the training set's mean A_GT

`face3d data generate` writes the dataset (a TFDS ArrayRecord folder); the
grain loader of face3d_jax.data.loader reads G identities x K images per batch
(Eq. 4 needs them) and shards the identities by JAX process. Each host batch
becomes, for the step:
  crop       (B, c, c, 3) float32 in [0, 1]   I_StlGAN's crop, E_shape's input
  landmarks  (B, 68, 2) float32               the 68 landmarks in crop pixels
                                              (the renderer's convention: pixel
                                              centres at j + 0.5)
  albedo     (B, Ta, Ta, 3) float32 in [0, 1] A_GT
  w          (B, L, 512) float32
The position in the stream (grain's iterator state) is saved with every
checkpoint, so a resumed run reads exactly the batches it would have read.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from face3d_jax.data import dataset as ds
from face3d_jax.data import tfds_builder
from face3d_jax.data.loader import make_loader
from face3d_jax.faces.crop import crop_matrix, transform_points


def generate_config(config) -> ds.GenerateConfig:
    """The dataset settings of a training config (`config.data.generate`)."""
    fields = {k: v for k, v in config.data.generate.items()}
    if config.model.get("flame"):
        fields["model"] = config.model.flame
    return ds.GenerateConfig(**fields)


def ensure_dataset(config, workdir, *, progress: bool = True, source=None) -> Path:
    """The dataset folder of a config: `config.data.dataset_dir`, or
    <workdir>/data generated (resumably) from `config.data.generate`."""
    if config.data.dataset_dir:
        folder = Path(config.data.dataset_dir)
        if not folder.exists():
            raise FileNotFoundError(f"data.dataset_dir {folder} does not exist (make it with "
                                    "`face3d data generate`, or leave it empty)")
        return folder
    folder = Path(workdir) / "data"
    ds.generate(generate_config(config), folder, progress=progress, source=source)
    return folder


def mean_albedo(folder, limit: int = 2048) -> np.ndarray:
    """The mean pseudo-ground-truth albedo A_GT of a dataset's training split:
    the one map a G_Ab that ignored w would learn under a squared error (the
    baseline of `evaluation.HeldOutEval`). Averaged over every record, or over
    `limit` records evenly spaced through the split when it holds more (the
    paper's 110,000 maps at 1024^2 are not worth reading for a baseline).

    Args:
      folder: a dataset folder (`ensure_dataset`); limit: at most this many records.
    Returns:
      (Ta, Ta, 3) float32 in [0, 1], row 0 at v = 1.
    """
    records = tfds_builder.load_builder(folder).as_data_source()["train"]
    picks = np.unique(np.linspace(0, len(records) - 1, min(len(records), limit)).round())
    total = sum(np.asarray(records[int(i)]["albedo"], np.float64) for i in picks)
    return (total / (255.0 * len(picks))).astype(np.float32)


def prepare(record: dict, crop_size: int) -> dict:
    """A host batch of dataset records -> the step's arrays (module docstring)."""
    used = np.asarray(record["landmarks_used"], np.float64)
    lmk = np.stack([transform_points(p, crop_matrix(p, crop_size)) for p in used]) + 0.5
    return dict(crop=np.asarray(record["crop"], np.float32) / 255.0,
                landmarks=lmk.astype(np.float32),
                albedo=np.asarray(record["albedo"], np.float32) / 255.0,
                w=np.asarray(record["w"], np.float32))


class Batches:
    """Endless identity-grouped host batches with a resumable position.

    Args:
      folder: a dataset folder (`ensure_dataset`).
      config: the training config (data.identities_per_batch, images_per_identity,
        generate.crop_size).
      seed: the shuffling seed.
    """

    def __init__(self, folder, config, seed: int):
        self.crop_size = int(config.data.generate.crop_size)
        loader = make_loader(folder, identities_per_batch=int(config.data.identities_per_batch),
                             images_per_identity=int(config.data.images_per_identity),
                             seed=seed, num_epochs=None)
        self._it = iter(loader)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return prepare(next(self._it), self.crop_size)

    def position(self) -> str:
        """The stream position as a JSON string (grain's iterator state)."""
        state = self._it.get_state()
        return state.decode() if isinstance(state, bytes) else json.dumps(state)

    def seek(self, position: str) -> None:
        """Continues from a `position()`."""
        self._it.set_state(position.encode())


def to_global(batch: dict, sharding) -> dict:
    """Host arrays (this process's share) -> global jax.Arrays with `sharding`."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
