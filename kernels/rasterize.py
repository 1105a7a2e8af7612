"""`rasterize`: nvdiffrast's first primitive, with nvdiffrast's conventions.

- pos: (B, V, 4) float32 clip-space (x, y, z, w); tri: (T, 3) int32.
- rast: (B, H, W, 4) float32 = (u, v, z/w, triangle_id + 1), zeros where no
  triangle covers the pixel centre. (u, v) are the perspective-correct
  barycentrics of the triangle's vertices 0 and 1: the point is
  u v0 + v v1 + (1 - u - v) v2. z/w is the interpolated clip-space depth.
- Pixel (row i, column j) has its centre at NDC ((2j + 1)/W - 1, (2i + 1)/H - 1):
  row 0 is NDC y = -1. That is OpenGL's and nvdiffrast's convention, where row 0
  is the BOTTOM of the picture; the image is upside down compared with the
  usual top-row-first layout, and we do not flip it (flip with rast[:, ::-1] to
  view, or have the camera map the picture's top to NDC y = -1, as
  face3d_jax.render.cameras does).
- rast_db: (B, H, W, 4) float32 = (du/dX, du/dY, dv/dX, dv/dY) in pixel units
  (X along columns, Y along rows), zeros where empty.
- Coverage is point-sampled at pixel centres; both windings are drawn (no
  culling); the smallest z/w wins (OpenGL's LESS; exact ties: the larger id);
  pixels whose z/w lies outside [-1, 1] are discarded (what clipping against
  the near and far planes does); triangles behind the eye or crossing w = 0
  are rasterized through homogeneous edge functions without clipping.
  Zero-area triangles cover nothing. A pixel centre exactly on an edge shared
  by two triangles is covered by exactly one (a top-left rule, coverage.py).
- Differentiability: coverage and triangle ids are not differentiable; u, v,
  z/w and rast_db are, with respect to pos. They are recomputed at each pixel
  centre from the winning triangle's corners with plain jnp, so autodiff gives
  the gradients of the barycentric formula, as nvdiffrast's hand-written
  backward does for u, v and rast_db. nvdiffrast passes no gradient through
  the z/w channel; we do (apply stop_gradient to rast[..., 2] to match).

Backends: "jax" (coverage.py + the per-pixel pass below; CPU, GPU, TPU, under
jit, vmap and grad; on the CPU a batch is rasterized one image after another,
which keeps each image's buffers in cache); "pallas" (raster_pallas.py's tiled visibility kernel + the
same per-pixel pass; checked against "jax" in Pallas's interpreter on CPU, not
yet run on an accelerator). "nvdiffrast" is a reserved name.
"""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp

from face3d_kernels import checks, coverage, raster_pallas

BACKENDS = ("jax", "pallas", "nvdiffrast")


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"rasterize: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "nvdiffrast":
        try:
            has_gpu = bool(jax.devices("gpu"))
        except RuntimeError:
            has_gpu = False
        if not has_gpu or importlib.util.find_spec("nvdiffrast") is None:
            raise RuntimeError("rasterize: backend 'nvdiffrast' needs a CUDA GPU and the "
                               "nvdiffrast package (BUILD.md, 'Accelerators'); use backend='jax'")
    if backend == "nvdiffrast":
        raise NotImplementedError("rasterize: backend 'nvdiffrast' is not built yet; use "
                                  "backend='jax' or 'pallas' (BUILD.md, 'Accelerators')")


def rasterize(pos, tri, resolution, *, grad_db: bool = True, backend: str = "jax",
              capacity: int | None = None):
    """Rasterizes triangles (nvdiffrast's `rasterize`; conventions above).

    Args:
      pos: (B, V, 4) float32 clip-space vertex positions (x, y, z, w); other
        floating dtypes are converted to float32.
      tri: (T, 3) int32 vertex indices (any integer dtype), shared by the batch.
      resolution: (H, W) ints >= 1, static.
      grad_db: also return the image-space derivatives of (u, v).
      backend: "jax" (default), or "pallas" (a tiled kernel for accelerators,
        raster_pallas.py; on CPU it runs in Pallas's interpreter, slowly: for
        tests). "nvdiffrast" is not built yet.
      capacity: static work items per chunk of the visibility pass: window
        pixels (the dense windows that tile triangles' screen boxes,
        coverage.py) for "jax", default `coverage.default_capacity` (2^18 on
        CPU, up to 2^22 elsewhere);
        (triangle, tile) pairs for "pallas", default
        `raster_pallas.default_capacity`. A scene with more takes several
        chunks; none is dropped.
    Returns:
      rast: (B, H, W, 4) float32 (u, v, z/w, triangle_id + 1), zeros where empty.
      rast_db: (B, H, W, 4) float32 (du/dX, du/dY, dv/dX, dv/dY) in pixel units,
        zeros where empty; None if grad_db is False.
    """
    _check_backend(backend)
    height, width = checks.resolution(resolution, "rasterize")
    pos = checks.float_array(pos, "pos", "rasterize")
    if pos.ndim != 3 or pos.shape[-1] != 4:
        raise ValueError(f"rasterize: pos must be (B, V, 4) clip-space positions, got {pos.shape}")
    tri = checks.triangles(tri, pos.shape[1], "rasterize")
    if capacity is not None and int(capacity) < 1:
        raise ValueError(f"rasterize: capacity must be >= 1, got {capacity}")
    on_cpu = jax.default_backend() == "cpu"
    if capacity is None and backend == "jax":
        capacity = coverage.default_capacity(1 if on_cpu else pos.shape[0], height, width,
                                             jax.default_backend())
    elif capacity is None:
        capacity = raster_pallas.default_capacity(pos.shape[0] * tri.shape[0])
    rast, rast_db = _rasterize(pos, tri, (height, width), int(capacity), bool(grad_db), backend,
                               on_cpu)
    return rast, rast_db


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _rasterize(pos, tri, resolution, capacity, grad_db, backend, on_cpu):
    if tri.shape[0] == 0:
        empty = jnp.zeros((pos.shape[0],) + resolution + (4,), jnp.float32)
        return empty, (empty if grad_db else None)
    if on_cpu and pos.shape[0] > 1:
        # One image after another: each image's buffers and per-pixel
        # intermediates stay in cache, so the time per image does not grow
        # with the batch (all images at once: 1.2 - 2.2x slower per image at
        # batch 8 than at batch 1). Both backends take this path, so that
        # their per-pixel passes compile alike (the tests compare them bit
        # for bit).
        def one(p):
            return _rasterize_images(p[None], tri, resolution, capacity, grad_db, backend,
                                     on_cpu)

        rast, rast_db = jax.lax.map(one, pos)
        return rast[:, 0], (None if rast_db is None else rast_db[:, 0])
    return _rasterize_images(pos, tri, resolution, capacity, grad_db, backend, on_cpu)


def _rasterize_images(pos, tri, resolution, capacity, grad_db, backend, on_cpu):
    if backend == "pallas":
        ids = raster_pallas.visible_triangles(pos, tri, resolution, capacity=capacity,
                                              interpret=on_cpu)
    else:
        ids = coverage.visible_triangles(pos, tri, resolution, capacity)
    return pixel_barycentrics(pos, tri, ids, resolution, grad_db)


def pixel_barycentrics(pos, tri, ids, resolution, grad_db=True):
    """(u, v, z/w) and their pixel derivatives at each pixel's triangle.

    Args:
      pos: (B, V, 4) float32 clip-space positions (differentiable).
      tri: (T, 3) int32, T >= 1.
      ids: (B, H, W) int32 triangle id + 1, 0 where empty.
      resolution: (H, W).
      grad_db: compute rast_db.
    Returns:
      rast (B, H, W, 4) and rast_db (B, H, W, 4) or None, as `rasterize`.
    """
    height, width = resolution
    batch, num_tri = pos.shape[0], tri.shape[0]
    covered = ids > 0
    flat = jnp.maximum(ids - 1, 0) + (jnp.arange(batch, dtype=jnp.int32) * num_tri)[:, None, None]
    # One 1-D gather per corner coordinate (the fastest layout for XLA on CPU).
    c = [col.reshape(-1)[flat] for col in coverage.triangle_corners(pos, tri)]  # (B, H, W) each
    x = ((2.0 * jnp.arange(width, dtype=jnp.float32) + 1.0) / width - 1.0)[None, None, :]
    y = ((2.0 * jnp.arange(height, dtype=jnp.float32) + 1.0) / height - 1.0)[None, :, None]
    e, grad = coverage.edge_functions([(c[4 * i], c[4 * i + 1], c[4 * i + 3]) for i in range(3)],
                                      x, y)
    total = jnp.where(covered, e[0] + e[1] + e[2], 1.0)
    bary = [ei / total for ei in e]
    # Materialised once: fused into each output channel, XLA would redo the gathers.
    bary, total = jax.lax.optimization_barrier((bary, total))
    z = bary[0] * c[2] + bary[1] * c[6] + bary[2] * c[10]
    w = bary[0] * c[3] + bary[1] * c[7] + bary[2] * c[11]
    zw = z / jnp.where(covered, w, 1.0)

    def masked(channels):
        return jnp.where(covered[..., None], jnp.stack(channels, axis=-1), 0.0)

    rast = masked([bary[0], bary[1], zw, ids.astype(jnp.float32)])
    if not grad_db:
        return rast, None
    # Pixel derivatives: d E_i / dX = dE_i/dx * 2 / W (NDC per pixel), then the
    # quotient rule for b_i = E_i / sum(E).
    sum_x = grad[0][0] + grad[1][0] + grad[2][0]
    sum_y = grad[0][1] + grad[1][1] + grad[2][1]
    db = []
    for i in range(2):
        db.append((grad[i][0] - bary[i] * sum_x) * (2.0 / width) / total)
        db.append((grad[i][1] - bary[i] * sum_y) * (2.0 / height) / total)
    return rast, masked(db)
