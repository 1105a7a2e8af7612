"""Faces in photographs: dlib's detector and 68 landmarks, dlib's 150 chip, the 224 crop.

Data preparation for the shape model (paper Sec. 5.2: E_shape takes 224x224 face
crops) and for the identity network (`face3d_jax.nets.dlib_resnet`):

- `FaceTools.load()`: dlib's HOG frontal-face detector and its 68-point (iBUG 300-W
  scheme) shape predictor from the face-recognition-models package. `detect`
  returns every face, largest first, with image-pixel landmarks.
- `crop_matrix`: DECA's square crop (decalib/datasets/datasets.py, TestData): from
  the landmarks' bounding box, side = int(1.1 * (w + h) / 2 * 1.25) around the
  box centre (DECA's "kpt68" rule and its scale 1.25), mapped so that the crop's
  corner pixels land on pixels 0 and size-1, as DECA's
  `estimate_transform('similarity', src, [[0,0],[0,223],[223,0]])` does. It is a
  3x3 similarity matrix from image pixels to crop pixels (x right, y down,
  integer pixel centres); `transform_points` with its inverse maps crop-space
  landmarks back to the photograph.
- `warp_crop`: the crop itself, bilinear, zeros outside the image (DECA uses
  skimage.transform.warp with order 1, constant 0); written in JAX so it is
  differentiable and jit-able.
- `face_chip`: dlib's aligned 150x150 chip (`dlib.get_face_chip`, padding 0.25),
  the input of dlib's face-recognition network.
Images are (H, W, 3) uint8 RGB as dlib wants them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from face3d_jax.convert.dlib_dnn import face_recognition_models_file

LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"
NUM_LANDMARKS = 68
CROP_SIZE = 224
CROP_SCALE = 1.25  # DECA's TestData default
KPT_BOX_ENLARGE = 1.1  # DECA's bbox2point for landmark boxes ("kpt68")


@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face.

    box: (4,) float32 (left, top, right, bottom) of dlib's detection, inclusive pixels.
    score: dlib's detector score (higher is more face-like; 0 is its default threshold).
    landmarks: (68, 2) float32 (x, y) image pixels, iBUG 68 order.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return float((right - left + 1) * (bottom - top + 1))


def _dlib():
    try:
        import dlib
    except ImportError:
        raise FileNotFoundError("dlib is not installed (pip install dlib-bin, or dlib)") from None
    return dlib


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 contiguous RGB from (H, W), (H, W, 3) or (H, W, 4) uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image has dtype {image.dtype}, expected uint8 (0..255)")
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image has shape {image.shape}, expected (H, W, 3)")
    return np.ascontiguousarray(image[..., :3])


class FaceTools:
    """dlib's face detector and 68-landmark predictor, loaded once and reused."""

    def __init__(self, detector, predictor):
        self.detector, self.predictor = detector, predictor

    @classmethod
    def load(cls, landmarks_path: str | Path | None = None) -> "FaceTools":
        """Load from `landmarks_path` (shape_predictor_68_face_landmarks.dat) or, by
        default, from the installed face-recognition-models package."""
        dlib = _dlib()
        path = Path(landmarks_path) if landmarks_path else face_recognition_models_file(
            LANDMARKS_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (dlib's 68-landmark predictor)")
        try:
            predictor = dlib.shape_predictor(str(path))
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a dlib shape predictor ({exc})") from None
        return cls(dlib.get_frontal_face_detector(), predictor)

    def detect(self, image: np.ndarray, upsample: int = 1) -> list[Face]:
        """All faces in `image` ((H, W, 3) uint8 RGB), largest box first (ties: score).

        upsample: how many times dlib doubles the image first (1 finds faces down
        to about 40 pixels, dlib's usual setting).
        """
        image = as_rgb_uint8(image)
        rects, scores, _ = self.detector.run(image, upsample, 0.0)
        faces = []
        for rect, score in zip(rects, scores):
            shape = self.predictor(image, rect)
            pts = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
            faces.append(Face(box, float(score), pts))
        return sorted(faces, key=lambda f: (f.area, f.score), reverse=True)


def face_chip(image: np.ndarray, face: Face, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """dlib's aligned face chip, (size, size, 3) uint8 RGB, as dlib's
    face_recognition_model_v1.compute_face_descriptor(image, shape) cuts it."""
    dlib = _dlib()
    left, top, right, bottom = (int(v) for v in face.box)
    # dlib's landmarks are integer points, so rebuilding its shape is exact.
    parts = [dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks]
    shape = dlib.full_object_detection(dlib.rectangle(left, top, right, bottom), parts)
    return np.asarray(dlib.get_face_chip(as_rgb_uint8(image), shape, size=size,
                                         padding=padding))


def crop_matrix(landmarks: np.ndarray, size: int = CROP_SIZE,
                scale: float = CROP_SCALE) -> np.ndarray:
    """DECA's square face crop as a map from image pixels to crop pixels.

    Args:
      landmarks: (68, 2) (or (N, 2)) float, (x, y) image pixels.
      size: crop side in pixels (224 for E_shape).
      scale: DECA's enlargement of the landmark box (1.25).
    Returns:
      (3, 3) float64 M with [x', y', 1] = M @ [x, y, 1]: a uniform scale
      (size - 1) / side and a translation; side = int(1.1 * (w + h) / 2 * scale).
    """
    pts = np.asarray(landmarks, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
        raise ValueError(f"landmarks have shape {pts.shape}, expected (N, 2)")
    left, top = pts.min(axis=0)
    right, bottom = pts.max(axis=0)
    old_size = (right - left + bottom - top) / 2 * KPT_BOX_ENLARGE
    cx, cy = right - (right - left) / 2.0, bottom - (bottom - top) / 2.0
    side = int(old_size * scale)  # DECA truncates to whole pixels
    if side <= 0:
        raise ValueError(f"landmarks span {right - left:.1f}x{bottom - top:.1f} pixels; "
                         "too small to crop")
    s = (size - 1) / side
    return np.array([[s, 0.0, -s * (cx - side / 2)],
                     [0.0, s, -s * (cy - side / 2)],
                     [0.0, 0.0, 1.0]])


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 2) points through a (3, 3) affine matrix; same dtype float as given.
    Use np.linalg.inv(matrix) to map crop pixels back to image pixels."""
    pts = np.asarray(points)
    out = pts @ np.asarray(matrix)[:2, :2].T + np.asarray(matrix)[:2, 2]
    return out.astype(pts.dtype if np.issubdtype(pts.dtype, np.floating) else np.float64)


def warp_crop(image: jax.Array, matrix: jax.Array, size: int = CROP_SIZE) -> jax.Array:
    """The crop `matrix` (image pixels -> crop pixels) describes, bilinearly sampled.

    Args:
      image: (H, W, C) float (any range; uint8 is converted to float32).
      matrix: (3, 3) float, e.g. `crop_matrix(...)`.
      size: output side.
    Returns:
      (size, size, C) float32; pixels whose source falls outside the image are 0
      (bilinear blending with 0 within one pixel of the border).
    """
    image = jnp.asarray(image)
    if image.dtype == jnp.uint8:
        image = image.astype(jnp.float32)
    inv = jnp.linalg.inv(jnp.asarray(matrix, jnp.float32))
    ys, xs = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32),
                          jnp.arange(size, dtype=jnp.float32), indexing="ij")
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]

    def sample(channel):
        return jax.scipy.ndimage.map_coordinates(channel, [src_y, src_x], order=1,
                                                 mode="constant", cval=0.0)

    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image.astype(jnp.float32))
