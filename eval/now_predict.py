"""A trained run's predictions for the NoW benchmark, in NoW's format.

`face3d predict now --workdir RUN --images NOW_ROOT/NoW_Dataset/final_release_version/iphone_pictures
--list NOW_ROOT/imagepathsvalidation.txt --out DIR` writes, per image
`<subject>/<challenge>/<IMG>.jpg`:

  DIR/<subject>/<challenge>/<IMG>.obj   the neutral FLAME mesh of E_shape's
                                        shape code (metres)
  DIR/<subject>/<challenge>/<IMG>.npy   NoW's 7 points on it, (7, 3) float32

as DECA's NoW evaluation does: E_shape reads DECA's crop of the image (dlib's
68 landmarks here; DECA's script crops around NoW's detected-face boxes), the
expression and pose are zeroed (NoW scores identity), and the 7 points come
from FLAME's static landmark embedding (iBUG 36, 39, 42, 45, 33, 48, 54).
The coarse mesh is written: the detailed one needs w, which a photograph does
not have without GAN inversion (`face3d reconstruct`). The non-metrical
protocol aligns with a scale, so the unit does not matter there; for the
metrical one, score with `--metrical --unit m`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Predictions:
    """What `predict` wrote: the folder, the images predicted and those
    skipped (unreadable or no face found), each with its reason."""

    out: Path
    written: list[str]
    skipped: list[tuple[str, str]]


def list_images(images, imgs_list=None) -> list[str]:
    """Image paths relative to `images`: the lines of NoW's list (its lines
    are `<subject>/<challenge>/<IMG>.jpg`), or every image file below."""
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder")
    if imgs_list is not None:
        path = Path(imgs_list)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image list")
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"{root}: no .jpg or .png images below it")
    return found


def predict(workdir, images, out, *, imgs_list=None, step: int | None = None,
            progress: bool = True) -> Predictions:
    """Writes NoW predictions of a run (`face3d train`'s folder, its last
    checkpoint or `step`) for images below `images` (see the module's
    docstring): `predict_with`."""
    from face3d_train.trained import load_run

    rels = list_images(images, imgs_list)
    return predict_with(load_run(workdir, step), images, rels, out, progress=progress)


def predict_with(run, images, rels, out, *, progress: bool = True) -> Predictions:
    """NoW predictions of a loaded run (`face3d_train.trained.TrainedModel`)
    for the images `images/<rel>` (rels: paths relative to `images`), written
    below `out` at the same relative paths. An image that cannot be read or
    shows no face dlib finds is logged in one line and skipped (NoW then
    counts it missing). Returns a `Predictions`."""
    import trimesh
    from tqdm import tqdm

    from face3d_jax import metrics
    from face3d_train.reconstruct import read_image

    out = Path(out)
    faces = np.asarray(run.model.faces)
    written, skipped = [], []
    for rel in tqdm(rels, desc="NoW predictions", unit="image", disable=not progress):
        try:
            image = read_image(Path(images) / rel)
        except (OSError, ValueError) as exc:
            log.warning("%s: skipped", exc)
            skipped.append((rel, str(exc)))
            continue
        lmk = run.detect([image])
        if not np.all(np.isfinite(lmk)):
            log.warning("%s: dlib finds no face; skipped", rel)
            skipped.append((rel, "no face found"))
            continue
        codes = run.codes(run.crops(image[None], lmk))
        neutral = metrics.neutral_vertices(run.model, codes["shape"])
        points = np.asarray(metrics.now_landmarks(run.model, neutral))[0]
        target = out / Path(rel).with_suffix(".obj")
        target.parent.mkdir(parents=True, exist_ok=True)
        trimesh.Trimesh(np.asarray(neutral)[0], faces, process=False).export(target)
        np.save(target.with_suffix(".npy"), points.astype(np.float32))
        written.append(rel)
    return Predictions(out, written, skipped)
