"""DECA's square face crop: the 224^2 input of E_shape (paper Sec. 5.2).

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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CROP_SIZE = 224
CROP_SCALE = 1.25  # DECA's TestData default
KPT_BOX_ENLARGE = 1.1  # DECA's bbox2point for landmark boxes ("kpt68")


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
