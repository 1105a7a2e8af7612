"""The training dataset (Sec. 5.1) as a tensorflow-datasets ArrayRecord dataset.

`dataset.generate` renders and processes the images shard by shard into
compressed npz files (resumable); `Face3dDataset` then turns those shards into
a TFDS dataset in ArrayRecord format, readable without TensorFlow through
`tfds.builder_from_directory(dir).as_data_source()` (see loader.py).

One example per image (features; shapes for generation resolution R and
albedo size Ta):
  w             (18, 512) float32  the edited latent (every row; the teacher
                                   and InterFaceGAN edits use w+ rows alike)
  image         (R, R, 3) uint8    the generated image (raw array: TFDS's
                                   Image feature needs TensorFlow to encode)
  crop          (224, 224, 3) uint8 DECA's crop (scale 1.25) of `landmarks_used`
  landmarks     (68, 2) float32    dlib's 68 landmarks in image pixels (pixel
                                   centres at integers); NaN where dlib found no face
  landmarks_truth (68, 2) float32  the teacher's projected landmarks, same
                                   convention; NaN for StyleGAN2
  landmarks_used  (68, 2) float32  the set the crop and the fit used
  albedo        (Ta, Ta, 3) uint8  pseudo-ground-truth UV albedo (Sec. 3), clip(A, 0, 1) * 255
  identity      int64              identity id (0..N-1)
  edit          int32              0: the original, 1..: InterFaceGAN edits
  labels        dict of float32    yaw, pitch, roll, jaw_open, smile,
                                   brow_raise (teacher truth; from the
                                   landmarks for StyleGAN2, NaN where unknown)
Examples are stored in key order (identity-major, `disable_shuffling`), so the
images of one identity are contiguous; the per-identity offsets and counts are
kept in the dataset's metadata (spec["groups"]) for the identity-grouped loader.
The floats are float32 (w at float16 would halve w's bytes, but the images
dominate the size and the loader then needs no cast).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

LABEL_NAMES = ("yaw", "pitch", "roll", "jaw_open", "smile", "brow_raise")
NAME = "face3d_dataset"
DATASET_VERSION = "1.0.0"


def features(resolution: int, albedo_size: int, crop_size: int = 224,
             n_latent: int = 18, style_dim: int = 512) -> tfds.features.FeaturesDict:
    """The feature spec (see the module docstring)."""
    T = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "w": T(shape=(n_latent, style_dim), dtype=np.float32),
        "image": T(shape=(resolution, resolution, 3), dtype=np.uint8),
        "crop": T(shape=(crop_size, crop_size, 3), dtype=np.uint8),
        "landmarks": T(shape=(68, 2), dtype=np.float32),
        "landmarks_truth": T(shape=(68, 2), dtype=np.float32),
        "landmarks_used": T(shape=(68, 2), dtype=np.float32),
        "albedo": T(shape=(albedo_size, albedo_size, 3), dtype=np.uint8),
        "identity": T(shape=(), dtype=np.int64),
        "edit": T(shape=(), dtype=np.int32),
        "labels": tfds.features.FeaturesDict(
            {name: T(shape=(), dtype=np.float32) for name in LABEL_NAMES}),
    })


class Face3dDataset(tfds.core.GeneratorBasedBuilder):
    """Sec. 5.1's images with edits, crops, landmarks and pseudo-GT albedo.

    Built from the shard files of `dataset.generate` (`shard_files`, in
    order); `spec` holds resolution, albedo_size, crop_size, n_latent,
    style_dim and the generation settings (kept as metadata).
    """

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES: ClassVar[dict] = {
        DATASET_VERSION: "Sec. 5.1 training set (teacher world or StyleGAN2)."}

    def __init__(self, *, shard_files=(), spec: dict | None = None, **kwargs):
        self._shard_files = [Path(p) for p in shard_files]
        self._spec = dict(spec or {})
        super().__init__(**kwargs)

    @classmethod
    def _get_dataset_name(cls) -> str:  # a stable name, not the class name's snake case
        return NAME

    def _info(self) -> tfds.core.DatasetInfo:
        s = self._spec
        return self.dataset_info_from_configs(
            description=__doc__.split("\n")[0],
            features=features(s.get("resolution", 256), s.get("albedo_size", 256),
                              s.get("crop_size", 224), s.get("n_latent", 18),
                              s.get("style_dim", 512)),
            # spec["groups"]: [identity, first record, count] per identity.
            metadata=tfds.core.MetadataDict(spec=json.loads(json.dumps(s))),
            disable_shuffling=True,  # identity-major order; the loader shuffles groups
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is local: nothing is downloaded
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for path in self._shard_files:
            with np.load(path, allow_pickle=False) as shard:
                data = {k: shard[k] for k in shard.files}
            ids = data["identity"]
            for i in range(len(ids)):
                example = {k: data[k][i] for k in ("w", "image", "crop", "landmarks",
                                                   "landmarks_truth", "landmarks_used",
                                                   "albedo", "identity", "edit")}
                example["labels"] = {n: data[f"label_{n}"][i] for n in LABEL_NAMES}
                # Keys sort as (identity, edit): the stored order.
                yield f"{int(ids[i]):09d}_{int(data['edit'][i]):04d}", example


def build(out_dir, shard_files, spec: dict) -> Path:
    """Writes the ArrayRecord dataset under `out_dir`; returns its folder
    (out_dir/face3d_dataset/1.0.0), the argument of `load_builder`."""
    builder = Face3dDataset(shard_files=shard_files, spec=spec, data_dir=str(out_dir),
                            file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, verify_ssl=False))
    return Path(builder.data_dir)


def load_builder(dataset_dir):
    """The built dataset (a TFDS read-only builder) from its version folder
    (or the output folder of `face3d data generate`)."""
    path = Path(dataset_dir)
    if (path / NAME / DATASET_VERSION).is_dir():
        path = path / NAME / DATASET_VERSION
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{path}: no dataset_info.json (not a finished "
                                "`face3d data generate` output; rerun it to finish)")
    return tfds.builder_from_directory(str(path))
