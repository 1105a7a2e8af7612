"""Faces in photographs: dlib's detector and 68 landmarks, and dlib's own 150^2 chip.

Data preparation for the shape model and for the identity network
(`face3d_jax.nets.dlib_resnet`):

- `FaceTools.load()`: dlib's HOG frontal-face detector and its 68-point (iBUG 300-W
  scheme) shape predictor from the face-recognition-models package. `detect`
  returns every face, largest first, with image-pixel landmarks.
- `face_chip`: dlib's aligned 150x150 chip (`dlib.get_face_chip`, padding 0.25),
  cut by dlib itself; `faces.align` cuts the same chip in JAX, differentiably.
Images are (H, W, 3) uint8 RGB as dlib wants them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from face3d_jax.convert.dlib_dnn import face_recognition_models_file

LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"
NUM_LANDMARKS = 68


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
