"""Held-out teacher samples with their truth: what the trainer's evaluation
and the probes of eval/ score a model on.

    held = make_held_out(teacher, jax.random.key(7), count=64, crop_size=224)
    codes = decode(nets.encoder(held.crop))        # the trainer's side
    mm = metrics.mesh_error_mm(metrics.neutral_vertices(model, codes["shape"]),
                               held.neutral, scale=True)

`make_held_out` draws fresh z, renders them with the teacher and crops them
exactly as `face3d data generate` does (data/dataset.py): the image is
quantised to uint8, DECA's crop (`faces.crop_matrix`) of the teacher's true
landmarks is warped out of it (`faces.warp_crop`) and rounded to uint8; here
both are then scaled to float32 in [0, 1], the input the trainer feeds
E_shape. `identity_views` draws identities seen several ways (shape and
albedo shared, the rest free), as the dataset's edits do.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from face3d_jax.faces.crop import crop_matrix, transform_points, warp_crop
from face3d_jax.metrics import neutral_vertices
from face3d_jax.teacher import world as tt
from face3d_jax.teacher.params import Teacher


@struct.dataclass
class HeldOut:
    """Held-out teacher samples and their truth (numpy arrays, a pytree).

    w: (N, n_latent, style_dim) float32 latent codes.
    crop: (N, c, c, 3) float32 in [0, 1]: the dataset's crop (uint8 / 255).
    landmarks: (N, 68, 2) float32 true landmarks in crop pixels, x right,
      y down, pixel (i, j) centred at (j + 0.5, i + 0.5) (the renderer's
      convention and the trainer's landmark target's).
    shape: (N, S) float32 true FLAME shape coefficients.
    neutral: (N, V, 3) float32 `neutral_vertices` of the true shape (metres).
    albedo: (N, Ta, Ta, 3) float32 true UV albedo in [0, 1] (row 0 at v = 1).
    image: (N, R, R, 3) float32 in [0, 1]: the rendered image as the dataset
      stores it (uint8 / 255).
    crop_matrix: (N, 3, 3) float32 image pixels -> crop pixels, both with
      integer pixel centres (`faces.crop_matrix`, DECA's convention).
    """

    w: Any
    crop: Any
    landmarks: Any
    shape: Any
    neutral: Any
    albedo: Any
    image: Any
    crop_matrix: Any

    @property
    def count(self) -> int:
        return int(self.w.shape[0])


@jax.jit
def _render(teacher, w):
    """uint8 images and landmarks with dlib's integer pixel centres, as
    `dataset_sources.TeacherSource.render` makes them, plus the truth."""
    scene = tt.scene(teacher, w)
    sample = tt.render_scene(teacher, scene)
    image = jnp.round(sample.image * 255.0).astype(jnp.uint8)
    return image, sample.landmarks2d - 0.5, scene.shape, scene.albedo


def _crop(images, matrices, size: int):
    """`dataset._albedo_fn`'s crop: warp_crop of the uint8 images, rounded."""
    crop = jax.vmap(lambda im, m: warp_crop(im, m, size))(images, matrices)
    return jnp.clip(jnp.round(crop), 0, 255).astype(jnp.uint8)


_crop_jit = jax.jit(_crop, static_argnames="size")
_neutral_jit = jax.jit(neutral_vertices)


def crop_landmarks(landmarks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Image landmarks with integer pixel centres (the dataset's
    `landmarks_used`) -> crop pixels with centres at j + 0.5 (the renderer's).

    Args:
      landmarks: (68, 2) float image pixels; matrix: (3, 3) `faces.crop_matrix`.
    Returns:
      (68, 2) float32.
    """
    return (transform_points(np.asarray(landmarks, np.float64),
                             np.asarray(matrix, np.float64)) + 0.5).astype(np.float32)


def make_held_out(teacher: Teacher, key, count: int, crop_size: int,
                  truncation: float = 1.0, batch: int = 8) -> HeldOut:
    """Fresh teacher samples, cropped as the training set is.

    z ~ N(0, I) is drawn as `teacher.sample(teacher, key, count)` draws it,
    w = mapping(z, truncation), and `held_out_from_w` renders and crops them.

    Args:
      teacher: the world (its config sets the image and albedo sizes).
      key: a PRNG key; count: N >= 1; crop_size: c (224 for E_shape).
      truncation: psi of `teacher.mapping`; batch: images per compiled call.
    Returns:
      A `HeldOut` of N samples.
    """
    if count < 1:
        raise ValueError(f"make_held_out: count must be at least 1, got {count}")
    z = jax.random.normal(key, (count, teacher.config.style_dim), jnp.float32)
    w = np.asarray(tt.mapping(teacher, z, truncation), np.float32)
    return held_out_from_w(teacher, w, crop_size, batch)


def identity_views(teacher: Teacher, key, groups: int, views: int,
                   truncation: float = 1.0) -> np.ndarray:
    """w of G identities seen K ways: within a group every w shares the first
    one's identity subspace (so its shape and albedo), while expression, pose,
    light, camera and background come from independent z.

    Args:
      teacher: the world; key: a PRNG key; groups: G >= 1; views: K >= 1.
      truncation: psi of `teacher.mapping`.
    Returns:
      (G * K, n_latent, style_dim) float32, group-major (views of a group adjacent).
    """
    if groups < 1 or views < 1:
        raise ValueError(f"identity_views: groups and views must be at least 1, got {groups} "
                         f"and {views}")
    z = jax.random.normal(key, (groups * views, teacher.config.style_dim), jnp.float32)
    w = np.array(tt.mapping(teacher, z, truncation), np.float32)
    w = w.reshape(groups, views, *w.shape[1:])
    idx = np.asarray(teacher.dims["identity"])
    w[:, :, :, idx] = w[:, :1, :, idx]
    return w.reshape(groups * views, *w.shape[2:])


def held_out_from_w(teacher: Teacher, w, crop_size: int, batch: int = 8) -> HeldOut:
    """Teacher samples of given w, rendered and cropped as the training set is.

    The images are rendered `batch` at a time (the last batch padded, so one
    compiled shape serves all) and cropped as `face3d data generate` crops
    them (module docstring) from the teacher's true landmarks.

    Args:
      teacher: the world; w: (N, n_latent, style_dim) float32, N >= 1.
      crop_size: c (224 for E_shape); batch: images per compiled call.
    Returns:
      A `HeldOut` of N samples.
    """
    w = np.asarray(w, np.float32)
    count = w.shape[0] if w.ndim == 3 else 0
    if count < 1 or batch < 1:
        raise ValueError(f"held_out_from_w: w has shape {w.shape} and batch is {batch}; "
                         "expected (N >= 1, n_latent, style_dim) and batch >= 1")
    if crop_size < 2:
        raise ValueError(f"held_out_from_w: crop_size must be at least 2, got {crop_size}")
    parts = {name: [] for name in ("crop", "landmarks", "shape", "neutral", "albedo", "image",
                                   "crop_matrix")}
    for start in range(0, count, batch):
        real = min(batch, count - start)
        idx = np.minimum(np.arange(start, start + batch), count - 1)
        image, lmk, shape, albedo = jax.device_get(_render(teacher, jnp.asarray(w[idx])))
        m64 = np.stack([crop_matrix(lmk[i], crop_size) for i in range(batch)])
        m32 = m64.astype(np.float32)  # what the dataset warps with
        crop = np.asarray(_crop_jit(image, m32, crop_size))
        parts["crop"].append(crop[:real].astype(np.float32) / 255.0)
        parts["landmarks"].append(np.stack([crop_landmarks(lmk[i], m64[i])
                                            for i in range(real)]))
        parts["shape"].append(shape[:real].astype(np.float32))
        parts["neutral"].append(np.asarray(_neutral_jit(teacher.model, shape))[:real])
        parts["albedo"].append(albedo[:real].astype(np.float32))
        parts["image"].append(image[:real].astype(np.float32) / 255.0)
        parts["crop_matrix"].append(m32[:real])
    return HeldOut(w=w, **{name: np.concatenate(v) for name, v in parts.items()})
