"""Face chips aligned as face networks expect them, differentiable in JAX.

A face-recognition network sees faces aligned one way: dlib's ResNet the
150^2 chip `dlib.get_face_chip` cuts (padding 0.25) from the 68 landmarks,
ArcFace (insightface) the 112^2 crop its `norm_crop` warps from 5 points onto
a fixed template. Fed anything else (a loose crop, the face turned or off
centre) they lose most of their ability to tell people apart. These
functions compute both alignments from landmarks in JAX, batched, so the
same chip can be cut from a photograph, a dataset image and a render inside
a loss:

    m = dlib_chip_matrix(landmarks68, size=150)     # (B, 3, 3) image -> chip pixels
    chips = warp_images(images, m, 150)              # (B, 150, 150, 3)

Pixel convention: integer pixel centres (pixel (i, j) at x = j, y = i), as
dlib, OpenCV and `faces.warp_crop` use; the renderer's landmarks, centred
at j + 0.5, are shifted by -0.5 first (`RENDER_TO_INDEX`).

dlib's chip (dlib/image_transforms/interpolation.h): `get_face_chip_details`
fits a similarity from dlib's mean face (points 17..67, without the brows
and the lower lip, placed at (padding + mean) / (2 padding + 1) * size) to
the landmarks; `chip_details` keeps its rotation and scale s and a rectangle
of side size * s centred on the image of the chip's centre (size / 2, size /
2) (`centered_drect`, which spans side - 1); `extract_image_chip` maps chip
pixels 0 and size - 1 to that rectangle's corners and samples bilinearly.
`dlib_chip_matrix` builds that same map. dlib first shrinks the image
through a pyramid when the chip is more than 2x smaller than its rectangle;
here the image is sampled directly, so far-downsampled chips alias where
dlib's would not (not the case for the chips of this project's renders and
crops, which are upsampled).

ArcFace: the similarity (Umeyama, least squares, as scikit-image's
`SimilarityTransform.estimate` that insightface calls) from the 5 points
(eye centres, nose tip, mouth corners; from the 68 landmarks by
`five_points`) to insightface's template at 112^2, scaled for other sizes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# dlib's mean face of the 68-point scheme, points 17..67, in [0, 1]
# (get_face_chip_details).
_DLIB_MEAN_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689)
_DLIB_MEAN_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182)
# The points dlib fits: 27..54 and 60..64 (brows and lower lip left out).
DLIB_CHIP_POINTS = tuple(i for i in range(17, 68)
                         if not (i <= 26 or 55 <= i <= 59 or 65 <= i <= 67))
DLIB_CHIP_SIZE = 150
DLIB_CHIP_PADDING = 0.25

# insightface's arcface_dst for 112^2: image-left eye, image-right eye, nose
# tip, image-left and image-right mouth corners.
ARCFACE_TEMPLATE = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
                    (41.5493, 92.3655), (70.7299, 92.2041))
ARCFACE_SIZE = 112

RENDER_TO_INDEX = -0.5  # renderer pixel coordinates (centres at j + 0.5) -> index coordinates
ALIGNMENTS = ("dlib", "arcface")


def five_points(landmarks: jax.Array) -> jax.Array:
    """ArcFace's 5 points from iBUG-68 landmarks.

    Args:
      landmarks: (..., 68, 2) float (x, y).
    Returns:
      (..., 5, 2) float32: the centres of the image-left (36..41) and
      image-right (42..47) eyes, the nose tip (30), the mouth corners (48, 54).
    """
    lmk = jnp.asarray(landmarks, jnp.float32)
    return jnp.stack([jnp.mean(lmk[..., 36:42, :], axis=-2), jnp.mean(lmk[..., 42:48, :], axis=-2),
                      lmk[..., 30, :], lmk[..., 48, :], lmk[..., 54, :]], axis=-2)


def similarity_transform(src: jax.Array, dst: jax.Array) -> jax.Array:
    """The least-squares similarity taking src onto dst (Umeyama 1991).

    Args:
      src: (B, N, 2) float points; dst: (B, N, 2) float, N >= 2.
    Returns:
      (B, 3, 3) float32 M with [dst; 1] ~ M [src; 1]: a rotation (det +1),
      one uniform scale and a translation.
    """
    src = jnp.asarray(src, jnp.float32)
    dst = jnp.asarray(dst, jnp.float32)
    mu_s, mu_d = jnp.mean(src, axis=1, keepdims=True), jnp.mean(dst, axis=1, keepdims=True)
    xs, xd = src - mu_s, dst - mu_d
    cov = jnp.einsum("bni,bnj->bij", xd, xs) / src.shape[1]
    u, sv, vt = jnp.linalg.svd(cov)
    d = jnp.sign(jnp.linalg.det(u) * jnp.linalg.det(vt))
    d = jnp.where(d == 0, 1.0, d)
    flip = jnp.stack([jnp.ones_like(d), d], axis=-1)
    rot = jnp.einsum("bij,bj,bjk->bik", u, flip, vt)
    var = jnp.sum(jnp.mean(xs * xs, axis=1), axis=-1)
    scale = jnp.sum(sv * flip, axis=-1) / jnp.maximum(var, 1e-12)
    lin = scale[:, None, None] * rot
    trans = mu_d[:, 0] - jnp.einsum("bij,bj->bi", lin, mu_s[:, 0])
    top = jnp.concatenate([lin, trans[..., None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0], jnp.float32), (src.shape[0], 1, 3))
    return jnp.concatenate([top, bottom], axis=1)


def dlib_mean_face(size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING) -> np.ndarray:
    """Where dlib's chip puts the points of its mean face, iBUG 17..67:
    (51, 2) float64 chip pixels (x, y)."""
    mean = np.stack([np.asarray(_DLIB_MEAN_X), np.asarray(_DLIB_MEAN_Y)], axis=-1)
    return (padding + mean) / (2.0 * padding + 1.0) * size


def dlib_chip_matrix(landmarks: jax.Array, size: int = DLIB_CHIP_SIZE,
                     padding: float = DLIB_CHIP_PADDING) -> jax.Array:
    """The map from image pixels to the pixels of dlib's face chip.

    Args:
      landmarks: (B, 68, 2) float (x, y) image pixels, integer centres
        (dlib's `full_object_detection` parts).
      size: the chip's side (dlib's network: 150).
      padding: dlib's padding (0.25 for face recognition).
    Returns:
      (B, 3, 3) float32 M, [x_chip, y_chip, 1] = M [x, y, 1].
    """
    idx = np.asarray(DLIB_CHIP_POINTS) - 17
    chip_points = jnp.asarray(dlib_mean_face(size, padding)[idx], jnp.float32)
    lmk = jnp.asarray(landmarks, jnp.float32)[:, np.asarray(DLIB_CHIP_POINTS)]
    tform = similarity_transform(jnp.broadcast_to(chip_points, lmk.shape), lmk)  # chip -> image
    lin = tform[:, :2, :2]
    scale = jnp.linalg.norm(lin[:, :, 0], axis=-1)  # (B,)
    rot = lin / scale[:, None, None]
    centre = jnp.einsum("bij,j->bi", tform[:, :2], jnp.array([size / 2.0, size / 2.0, 1.0]))
    # The rectangle spans size * scale - 1 image pixels between chip pixels 0 and size - 1.
    step = (size * scale - 1.0) / (size - 1.0)
    half = (size - 1.0) / 2.0
    # chip -> image: q = centre + step R (p - half); its inverse below.
    inv_lin = jnp.swapaxes(rot, 1, 2) / step[:, None, None]
    offset = half - jnp.einsum("bij,bj->bi", inv_lin, centre)
    top = jnp.concatenate([inv_lin, offset[..., None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0], jnp.float32), (lmk.shape[0], 1, 3))
    return jnp.concatenate([top, bottom], axis=1)


def arcface_matrix(landmarks: jax.Array, size: int = ARCFACE_SIZE) -> jax.Array:
    """The map from image pixels to insightface's aligned crop (`norm_crop`).

    Args:
      landmarks: (B, 68, 2) iBUG landmarks or (B, 5, 2) ArcFace's 5 points,
        float (x, y) image pixels, integer centres.
      size: the crop's side; the template is scaled by size / 112.
    Returns:
      (B, 3, 3) float32 M, [x_crop, y_crop, 1] = M [x, y, 1].
    """
    lmk = jnp.asarray(landmarks, jnp.float32)
    pts = five_points(lmk) if lmk.shape[-2] == 68 else lmk
    if pts.shape[-2:] != (5, 2):
        raise ValueError(f"arcface_matrix: landmarks have shape {lmk.shape}, expected "
                         "(B, 68, 2) or (B, 5, 2)")
    template = jnp.asarray(ARCFACE_TEMPLATE, jnp.float32) * (size / ARCFACE_SIZE)
    return similarity_transform(pts, jnp.broadcast_to(template, pts.shape))


def alignment_matrix(kind: str, landmarks: jax.Array, size: int) -> jax.Array:
    """`dlib_chip_matrix` (kind "dlib") or `arcface_matrix` ("arcface"),
    (B, 3, 3) float32, from (B, 68, 2) landmarks in index coordinates."""
    if kind == "dlib":
        return dlib_chip_matrix(landmarks, size)
    if kind == "arcface":
        return arcface_matrix(landmarks, size)
    raise ValueError(f"unknown face alignment {kind!r}: expected one of {ALIGNMENTS}")


def warp_images(images: jax.Array, matrices: jax.Array, size: int) -> jax.Array:
    """Bilinear samples of images at the inverse of matrices (image -> output
    pixels), zero outside the image: a batch of `faces.warp_crop`.

    Args:
      images: (B, H, W, C) float (uint8 is converted to float32).
      matrices: (B, 3, 3) float image pixels -> output pixels.
      size: the output side.
    Returns:
      (B, size, size, C) float32, differentiable in images and matrices.
    """
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32)
    inv = jnp.linalg.inv(jnp.asarray(matrices, jnp.float32))
    coords = jnp.arange(size, dtype=jnp.float32)
    ys, xs = jnp.meshgrid(coords, coords, indexing="ij")
    grid = jnp.stack([xs, ys, jnp.ones_like(xs)], axis=-1)  # (S, S, 3)

    def one(image, m):
        src = jnp.einsum("ij,hwj->hwi", m, grid)

        def channel(c):
            return jax.scipy.ndimage.map_coordinates(c, [src[..., 1], src[..., 0]], order=1,
                                                     mode="constant", cval=0.0)

        return jax.vmap(channel, in_axes=-1, out_axes=-1)(image.astype(jnp.float32))

    return jax.vmap(one)(images, inv)


def align_faces(images: jax.Array, landmarks: jax.Array, kind: str, size: int) -> jax.Array:
    """Aligned chips of faces: `warp_images` at `alignment_matrix`.

    Args:
      images: (B, H, W, C) float; landmarks: (B, 68, 2) float image pixels,
        integer centres; kind: "dlib" or "arcface"; size: the chip's side.
    Returns:
      (B, size, size, C) float32.
    """
    return warp_images(images, alignment_matrix(kind, landmarks, size), size)
