"""`rasterize` and `interpolate`: nvdiffrast's first two primitives.

Conventions (nvdiffrast's):
- pos: (B, V, 4) float32 clip-space (x, y, z, w); tri: (T, 3) int32.
- rast: (B, H, W, 4) float32 = (u, v, z/w, triangle_id + 1), zeros where no
  triangle covers the pixel centre. (u, v) are perspective-correct barycentrics
  of the triangle's vertices 0 and 1: the point is u v0 + v v1 + (1-u-v) v2.
- Pixel (row i, column j) has its centre at NDC ((2j + 1)/W - 1, (2i + 1)/H - 1):
  row 0 is NDC y = -1. nvdiffrast (OpenGL) calls that the bottom row; the face
  renderer's cameras map the picture's top to NDC y = -1 so no flip is needed.
- rast_db: (B, H, W, 4) = (du/dX, du/dY, dv/dX, dv/dY) per pixel (X along
  columns, Y along rows), zeros where empty.
- Coverage is point-sampled, both windings are drawn, the smaller z/w wins,
  z/w outside [-1, 1] is clipped away; coverage is not differentiable, (u, v,
  z/w) are, with respect to pos.

Backends: "jax" (raster_jax.py; CPU, GPU, TPU). "pallas" and "nvdiffrast" are
named by the design but not built yet: choosing them raises a clear error.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from face3d_kernels import raster_jax

BACKENDS = ("jax", "pallas", "nvdiffrast")


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"rasterize: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend != "jax":
        raise NotImplementedError(
            f"rasterize: backend {backend!r} is not built yet; use backend='jax' "
            "(see BUILD.md, 'Accelerators')")


def _check_pos_tri(pos, tri, fn):
    if pos.ndim != 3 or pos.shape[-1] != 4:
        raise ValueError(f"{fn}: pos must be (B, V, 4) clip-space positions, got {pos.shape}")
    if tri.ndim != 2 or tri.shape[-1] != 3:
        raise ValueError(f"{fn}: tri must be (T, 3) vertex indices, got {tri.shape}")
    if not jnp.issubdtype(tri.dtype, jnp.integer):
        raise ValueError(f"{fn}: tri must be integer, got {tri.dtype}")
    if isinstance(tri, np.ndarray) and tri.size and (tri.min() < 0 or tri.max() >= pos.shape[1]):
        raise ValueError(f"{fn}: tri indices span [{tri.min()}, {tri.max()}], "
                         f"but pos has {pos.shape[1]} vertices")


def rasterize(pos, tri, resolution, *, grad_db: bool = True, backend: str = "jax"):
    """Rasterizes triangles (nvdiffrast's `rasterize`).

    Args:
      pos: (B, V, 4) float32 clip-space vertex positions.
      tri: (T, 3) int32 triangles.
      resolution: (H, W) static ints >= 1.
      grad_db: also return the image-space derivatives of (u, v).
      backend: "jax" (default).
    Returns:
      rast (B, H, W, 4) float32 = (u, v, z/w, triangle_id + 1), and rast_db
      (B, H, W, 4) float32 = (du/dX, du/dY, dv/dX, dv/dY) or None.
    """
    _check_backend(backend)
    height, width = (int(r) for r in resolution)
    if height < 1 or width < 1:
        raise ValueError(f"rasterize: resolution must be positive, got {resolution}")
    _check_pos_tri(pos, tri, "rasterize")
    pos = jnp.asarray(pos, jnp.float32)
    tri = jnp.asarray(tri, jnp.int32)
    rast, rast_db = _rasterize_jax(pos, tri, (height, width))
    return rast, (rast_db if grad_db else None)


@functools.partial(jax.jit, static_argnums=2)
def _rasterize_jax(pos, tri, resolution):
    # Jitted here so that eager callers compile the binning loops once per
    # shape instead of on every call.
    ids = raster_jax.rasterize_ids(pos, tri, resolution)
    return raster_jax.barycentrics(pos, tri, ids, resolution)


def interpolate(attr, rast, tri, rast_db=None, diff_attrs=None):
    """Interpolates vertex attributes over the image (nvdiffrast's `interpolate`).

    Args:
      attr: (B, V, C) or (V, C) float32 attributes.
      rast: (B, H, W, 4) from `rasterize`.
      tri: (T, 3) int32, the same triangles (or an index buffer with the same
        triangle count into `attr`, e.g. FLAME's UV faces).
      rast_db: (B, H, W, 4) from `rasterize`, needed for derivatives.
      diff_attrs: None, "all", or a sequence of attribute indices whose image
        derivatives are wanted.
    Returns:
      out (B, H, W, C) float32: u a0 + v a1 + (1-u-v) a2 where covered, else 0;
      out_da (B, H, W, 2 * len(diff_attrs)) float32 = (dA/dX, dA/dY) per
      selected attribute, or None.
    """
    attr = jnp.asarray(attr, jnp.float32)
    if rast.ndim != 4 or rast.shape[-1] != 4:
        raise ValueError(f"interpolate: rast must be (B, H, W, 4), got {rast.shape}")
    if attr.ndim == 2:
        attr = jnp.broadcast_to(attr, (rast.shape[0],) + attr.shape)
    if attr.ndim != 3 or attr.shape[0] != rast.shape[0]:
        raise ValueError(f"interpolate: attr must be (B, V, C) or (V, C) with B = "
                         f"{rast.shape[0]}, got {attr.shape}")
    tri = jnp.asarray(tri, jnp.int32)
    if tri.ndim != 2 or tri.shape[-1] != 3:
        raise ValueError(f"interpolate: tri must be (T, 3), got {tri.shape}")
    covered = rast[..., 3:4] > 0
    t = jnp.maximum(rast[..., 3].astype(jnp.int32) - 1, 0)
    corners = tri[t]  # (B, H, W, 3)
    a = jax_gather(attr, corners)  # (B, H, W, 3, C)
    u, v = rast[..., 0:1], rast[..., 1:2]
    out = u * a[..., 0, :] + v * a[..., 1, :] + (1.0 - u - v) * a[..., 2, :]
    out = jnp.where(covered, out, 0.0)
    if diff_attrs is None or rast_db is None:
        return out, None
    idx = list(range(attr.shape[-1])) if diff_attrs == "all" else [int(i) for i in diff_attrs]
    sel = a[..., jnp.asarray(idx)]
    d0, d1 = sel[..., 0, :] - sel[..., 2, :], sel[..., 1, :] - sel[..., 2, :]
    da_dx = rast_db[..., 0:1] * d0 + rast_db[..., 2:3] * d1
    da_dy = rast_db[..., 1:2] * d0 + rast_db[..., 3:4] * d1
    out_da = jnp.stack([da_dx, da_dy], axis=-1).reshape(da_dx.shape[:-1] + (2 * len(idx),))
    return out, jnp.where(covered, out_da, 0.0)


def jax_gather(attr, corners):
    """attr (B, V, C) at corners (B, H, W, 3) -> (B, H, W, 3, C)."""
    batch = attr.shape[0]
    flat = corners.reshape(batch, -1)
    got = jnp.take_along_axis(attr, flat[..., None], axis=1)
    return got.reshape(corners.shape + (attr.shape[-1],))
