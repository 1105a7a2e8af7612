"""Shading models: spherical harmonics (Sec. 3.2) and Phong (Sec. 4).

Spherical harmonics follow the paper's Eq. of Sec. 3.2, S = sum_b L_b H_b(N),
with the 9 real SH basis functions up to band 2 and the Lambertian
convolution constants folded in, exactly as DECA (the paper's source) does, so
that SH coefficients move between the two codebases unchanged:
  H = c * [1, x, y, z, x y, x z, y z, x^2 - y^2, 3 z^2 - 1],
  c = [1/sqrt(4 pi), (2 pi/3) sqrt(3/(4 pi)) (x3), (pi/4) 3 sqrt(5/(12 pi)) (x3),
       (pi/4) (3/2) sqrt(5/(12 pi)), (pi/4) (1/2) sqrt(5/(4 pi))].

The paper names a Phong model for fine-tuning without giving its terms; we use
the classic Phong model with distant lights: ambient + diffuse (Lambert) +
specular (the reflected light direction against the view direction, raised to
a shininess exponent), per light an RGB intensity.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

SH_CONSTANTS = (
    1.0 / math.sqrt(4 * math.pi),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * (3 / 2) * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * (1 / 2) * math.sqrt(5 / (4 * math.pi)),
)


def sh_basis(normals):
    """The 9 SH basis functions H_b(N), constants included.

    Args:
      normals: (..., 3) float32 unit normals.
    Returns:
      (..., 9) float32.
    """
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    raw = jnp.stack([jnp.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y,
                     3.0 * z * z - 1.0], axis=-1)
    return raw * jnp.asarray(SH_CONSTANTS, normals.dtype)


def sh_shading(normals, sh_coeffs):
    """Shading S = sum_b L_b H_b(N) (paper Sec. 3.2).

    Args:
      normals: (B, ..., 3) float32 unit normals.
      sh_coeffs: (B, 9, 3) float32 RGB coefficients L_b.
    Returns:
      (B, ..., 3) float32 shading (the texture is albedo * shading).
    """
    basis = sh_basis(normals)
    batch = normals.shape[0]
    flat = basis.reshape(batch, -1, 9)
    return jnp.einsum("bnk,bkc->bnc", flat, sh_coeffs).reshape(normals.shape[:-1] + (3,))


def phong_shading(normals, view_dirs, light_dirs, light_colors, ambient, specular=0.1,
                  shininess=20.0):
    """Diffuse and specular light of the Phong model with distant lights.

    Args:
      normals: (B, ..., 3) float32 unit normals.
      view_dirs: (B, ..., 3) float32 unit vectors from the surface to the eye.
      light_dirs: (B, L, 3) float32 unit vectors from the surface to each light.
      light_colors: (B, L, 3) float32 RGB intensities.
      ambient: (B, 3) float32 RGB ambient light.
      specular: scalar or (B,) float32 specular reflectance k_s.
      shininess: Phong exponent.
    Returns:
      diffuse (B, ..., 3) and specular (B, ..., 3) float32; the image is
      albedo * diffuse + specular.
    """
    batch = normals.shape[0]
    n = normals.reshape(batch, -1, 3)
    v = view_dirs.reshape(batch, -1, 3)
    n_dot_l = jnp.einsum("bpc,blc->bpl", n, light_dirs)  # (B, P, L)
    lit = jnp.maximum(n_dot_l, 0.0)
    diffuse = ambient[:, None] + jnp.einsum("bpl,blc->bpc", lit, light_colors)
    # Reflection of each light about the normal: r = 2 (n.l) n - l.
    reflect = 2.0 * n_dot_l[..., None] * n[:, :, None] - light_dirs[:, None]
    r_dot_v = jnp.maximum(jnp.einsum("bplc,bpc->bpl", reflect, v), 0.0)
    ks = jnp.reshape(jnp.asarray(specular, normals.dtype), (-1, 1, 1))
    spec = ks * jnp.einsum("bpl,blc->bpc", (r_dot_v ** shininess) * (n_dot_l > 0), light_colors)
    shape = normals.shape[:-1] + (3,)
    return diffuse.reshape(shape), spec.reshape(shape)
