"""What the teacher world draws and knows: the scene, the rendered sample, and
the readouts of light and background.

The scene holds the parameters the trained networks must recover (FLAME shape,
expression and pose, the UV albedo and displacement, SH light, camera); the
sample holds the image, as G_StlGAN's would be, and the truth of that image
(detailed mesh, landmarks, coverage, albedo and shading per pixel) for
evaluation: shape error in millimetres, albedo PSNR.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Low-frequency waves of the background, in cycles per image side.
_BACKGROUND_WAVES = np.array([[1.3, 0.4], [-0.7, 1.1], [2.1, -1.6], [0.3, 2.4],
                              [-1.8, -0.9], [2.6, 0.7], [-0.4, -2.9], [1.1, 1.9]], np.float32)


@struct.dataclass
class TeacherScene:
    """One batch of scenes, all float32.

    shape: (B, S) FLAME identity coefficients; expression: (B, E).
    global_pose, neck_pose, jaw_pose: (B, 3) axis-angle; eye_pose: (B, 6).
    albedo: (B, Ta, Ta, 3) UV albedo in [0, 1] (row 0 at v = 1).
    displacement: (B, Td, Td, 1) UV displacement in metres.
    light: (B, 9, 3) SH coefficients (DECA's convention, see render/shading.py).
    camera: (B, 3) weak perspective (s, tx, ty).
    background: (B, H, W, 3) in [0, 1]; its size is the image size.
    """

    shape: Any
    expression: Any
    global_pose: Any
    neck_pose: Any
    jaw_pose: Any
    eye_pose: Any
    albedo: Any
    displacement: Any
    light: Any
    camera: Any
    background: Any

    def flame_params(self) -> dict:
        """The keyword arguments of `flame_forward`."""
        return dict(shape=self.shape, expression=self.expression, global_pose=self.global_pose,
                    neck_pose=self.neck_pose, jaw_pose=self.jaw_pose, eye_pose=self.eye_pose)


@struct.dataclass
class TeacherSample:
    """A rendered batch and its truth, all float32, images top row first.

    image: (B, H, W, 3) in [0, 1]: the picture.
    mask: (B, H, W, 1) antialiased coverage of the head.
    vertices: (B, V, 3) detailed mesh M' (metres); coarse_vertices: (B, V, 3) M_c.
    landmarks3d: (B, 68, 3) iBUG landmarks on M_c; landmarks2d: (B, 68, 2) their
      pixel coordinates (x right, y down; pixel (i, j) centred at (j+.5, i+.5)).
    albedo: (B, H, W, 3) albedo per pixel (0 off the head).
    shading: (B, H, W, 3) SH shading per pixel (image = albedo * shading there).
    normals: (B, H, W, 3) unit detail normals (FLAME frame).
    """

    image: Any
    mask: Any
    vertices: Any
    coarse_vertices: Any
    landmarks3d: Any
    landmarks2d: Any
    albedo: Any
    shading: Any
    normals: Any


def sh_light(y):
    """Plausible SH light from 12 standardised readouts.

    An ambient term around the one of `render.views.default_sh_light` (2.6,
    i.e. 0.73 on every normal), a key light from the front hemisphere (azimuth
    within about +-50 degrees, from level to well above), weak second-band
    terms, and a slight colour tint of mean 1. The ambient term outweighs the
    others, so shading stays positive over the visible face.

    Args:
      y: (B, 12) float32.
    Returns:
      (B, 9, 3) float32 SH coefficients.
    """
    ambient = 2.6 * (1.0 + 0.12 * jnp.tanh(y[:, 0]))
    tint = 1.0 + 0.06 * jnp.tanh(y[:, 1:4])
    tint = tint / jnp.mean(tint, axis=1, keepdims=True)
    azimuth = 0.9 * jnp.tanh(y[:, 4])
    elevation = 0.3 + 0.35 * jnp.tanh(y[:, 5])
    direction = jnp.stack([jnp.sin(azimuth) * jnp.cos(elevation), jnp.sin(elevation),
                           jnp.cos(azimuth) * jnp.cos(elevation)], -1)
    key = 0.5 + 0.2 * jnp.tanh(y[:, 6])
    band2 = 0.05 * jnp.tanh(y[:, 7:12])
    coeffs = jnp.concatenate([ambient[:, None], key[:, None] * direction, band2], axis=1)
    return (coeffs[:, :, None] * tint[:, None, :]).astype(jnp.float32)


def background_image(y, resolution: int):
    """A muted two-colour gradient with low-frequency mottling.

    Args:
      y: (B, 15) float32 standardised readouts (2 colours, an angle, 8 phases).
      resolution: H = W.
    Returns:
      (B, H, W, 3) float32 in [0, 1].
    """
    sig = jax.nn.sigmoid
    first = 0.12 + 0.7 * sig(y[:, 0:3])
    second = 0.12 + 0.7 * sig(y[:, 3:6])
    angle = jnp.pi * jnp.tanh(y[:, 6])
    coords = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution * 2.0 - 1.0
    gy, gx = jnp.meshgrid(coords, coords, indexing="ij")
    t = 0.5 + 0.35 * (gx[None] * jnp.cos(angle)[:, None, None]
                      + gy[None] * jnp.sin(angle)[:, None, None])
    waves = jnp.asarray(_BACKGROUND_WAVES)
    arg = jnp.pi * (gx[..., None] * waves[:, 0] + gy[..., None] * waves[:, 1])  # (H, W, 8)
    mottle = 0.03 * jnp.sum(jnp.sin(arg[None] + 2.0 * jnp.pi * y[:, None, None, 7:15]), -1)
    image = first[:, None, None] + (second - first)[:, None, None] * t[..., None]
    return jnp.clip(image * (1.0 + mottle[..., None]), 0.0, 1.0).astype(jnp.float32)
