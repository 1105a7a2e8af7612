"""What `face3d landmarks` and `face3d embed` do, as library functions.

Both take a list of image files and go on past images without a face (a one-line
message each, on stderr); they raise ValueError only when no image had a face or
the output cannot be written, so the CLI exits non-zero only then.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from face3d_jax.faces.crop import crop_matrix
from face3d_jax.faces.detect import Face, FaceTools, face_chip

_LANDMARK_FORMAT = "face3d-jax-landmarks/1"


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, EXIF orientation applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def draw_landmarks(image: np.ndarray, faces: Sequence[Face], path: str | Path) -> None:
    """Write `image` ((H, W, 3) uint8) with each face's box and 68 points as PNG."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    r = max(1.0, min(image.shape[:2]) / 300)
    for face in faces:
        draw.rectangle([float(v) for v in face.box], outline=(0, 255, 0))
        for x, y in face.landmarks:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 0, 0))
    im.save(path)


def _each_image(paths: Sequence[str | Path], tools: FaceTools,
                on_faces: Callable[[int, Path, np.ndarray, list[Face]], None]) -> int:
    """Run detection on every image; report failures per image; count successes."""
    found = 0
    for i, path in enumerate(paths):
        path = Path(path)
        try:
            image = read_rgb(path)
        except (FileNotFoundError, ValueError) as exc:
            print(f"face3d: skipped: {exc}", file=sys.stderr)
            on_faces(i, path, None, [])
            continue
        faces = tools.detect(image)
        if not faces:
            print(f"face3d: {path}: no face found", file=sys.stderr)
        found += bool(faces)
        on_faces(i, path, image, faces)
    return found


def _draw_path(draw: Path, index: int, image_path: Path, count: int) -> Path:
    if count == 1:
        return draw
    return draw.with_name(f"{draw.stem}_{index:03d}_{image_path.stem}{draw.suffix or '.png'}")


def write_landmarks(paths: Sequence[str | Path], out: str | Path,
                    draw: str | Path | None = None, tools: FaceTools | None = None) -> dict:
    """Detect faces and their 68 landmarks in each image; save them as JSON.

    The JSON: {"format", "images": [{"image", "height", "width", "faces": [{"box":
    [l, t, r, b], "score", "landmarks": 68 x [x, y] image pixels, "crop_224":
    3x3 image->crop matrix (DECA's crop, `faces.crop_matrix`)}], "error"}]};
    faces are ordered largest first. With `draw`, an annotated PNG per image
    (several images: `<draw stem>_<index>_<image stem>.png`).
    Returns the JSON dict. Raises ValueError when no image has a face.
    """
    tools = tools or FaceTools.load()
    records: list[dict] = []
    draw = Path(draw) if draw else None

    def record(i, path, image, faces):
        rec = {"image": str(path), "faces": [], "error": None}
        if image is None:
            rec["error"] = "unreadable"
        else:
            rec["height"], rec["width"] = int(image.shape[0]), int(image.shape[1])
            rec["faces"] = [{"box": f.box.tolist(), "score": f.score,
                             "landmarks": f.landmarks.tolist(),
                             "crop_224": crop_matrix(f.landmarks).tolist()} for f in faces]
            if not faces:
                rec["error"] = "no face found"
            if draw is not None:
                target = _draw_path(draw, i, path, len(paths))
                draw_landmarks(image, faces, target)
                print(f"wrote {target}")
        records.append(rec)

    found = _each_image(paths, tools, record)
    result = {"format": _LANDMARK_FORMAT, "images": records}
    Path(out).write_text(json.dumps(result))
    print(f"wrote {out} ({found} of {len(paths)} images with a face)")
    if not found:
        raise ValueError(f"no face found in any of the {len(paths)} images")
    return result


def write_embeddings(paths: Sequence[str | Path], out: str | Path,
                     model_path: str | Path | None = None,
                     tools: FaceTools | None = None, batch_size: int = 16) -> np.ndarray:
    """The 128-d identity descriptor of the largest face of each image, by our Flax
    port of dlib's face-recognition ResNet, saved as .npy.

    Returns and saves (N, 128) float32 in the order of `paths`; rows of images
    without a face are NaN. Chips are dlib's (150x150, padding 0.25), run
    `batch_size` at a time.
    Raises ValueError when no image has a face.
    """
    import jax.numpy as jnp
    from flax import nnx

    from face3d_jax.nets.dlib_resnet import DESCRIPTOR_DIM, load_dlib_resnet

    tools = tools or FaceTools.load()
    chips: dict[int, np.ndarray] = {}

    def keep(i, path, image, faces):
        if faces:
            chips[i] = face_chip(image, faces[0])

    found = _each_image(paths, tools, keep)
    result = np.full((len(paths), DESCRIPTOR_DIM), np.nan, np.float32)
    if chips:
        model = load_dlib_resnet(model_path)
        run = nnx.jit(lambda m, x: m(x))
        order = sorted(chips)
        stack = np.stack([chips[i] for i in order])
        # Fixed-size batches (the last one zero-padded): one compilation, bounded memory.
        for start in range(0, len(order), batch_size):
            part = stack[start:start + batch_size]
            padded = np.zeros((batch_size,) + part.shape[1:], np.float32)
            padded[:len(part)] = part
            desc = np.asarray(run(model, jnp.asarray(padded)))
            result[order[start:start + batch_size]] = desc[:len(part)]
    np.save(out, result)
    print(f"wrote {out} ({found} of {len(paths)} images with a face)")
    if not found:
        raise ValueError(f"no face found in any of the {len(paths)} images")
    return result
