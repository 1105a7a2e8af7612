"""Triangle rasterization in JAX with nvdiffrast's conventions (the `jax` backend).

Coverage is found by binning triangles by the size of their screen bounding
box: window sizes S = 4, 8, 16, ... up to the image; each triangle goes to the
smallest level whose S x S window holds its box, and is evaluated on that
window's pixels only, so the work grows with each triangle's screen size, not
with pixels x triangles. Each level is processed in fixed-size chunks by a
`lax.while_loop` until its triangles are exhausted: shapes stay static under
jit and no triangle is ever dropped. Triangles that reach behind the camera
(some w <= 0) have no finite box and go to the last level (the whole image).

Per fragment, 2D-homogeneous edge functions (Olano and Greer 1997) avoid any
clipping: with A the 3x3 matrix whose columns are the vertices' (x, y, w),
k = A^-1 (px, py, 1); the pixel is inside iff every k_i >= 0 and sum(k) > 0;
the perspective-correct barycentrics are b = k / sum(k) and z/w = sum_i k_i z_i.
Fragments with z/w outside [-1, 1] are discarded, which is what clipping
against the near and far planes does. Visibility is resolved with a depth
buffer (scatter-min), then a second pass keeps, per pixel, the triangle whose
depth equals it (the larger id on exact ties).

The winning triangle id is not differentiable; (u, v, z/w) are then recomputed
from that triangle's vertices at the pixel centre with plain jnp, so their
gradients with respect to `pos` are exactly those of the barycentric formula,
as in nvdiffrast.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_MIN_WINDOW = 4
# Fragments evaluated per chunk and level (chunk size = budget / S^2 triangles).
_CHUNK_FRAGMENTS = 1 << 17


def _pixel_ndc(index, size):
    """NDC of pixel centres: (2 i + 1) / size - 1 (nvdiffrast)."""
    return (2.0 * index.astype(jnp.float32) + 1.0) / size - 1.0


def _inverse3(a):
    """Inverse and determinant of (..., 3, 3) matrices by the adjugate: a
    closed form that vectorises (batched LU is slow for millions of 3x3s);
    singular matrices give det = 0 and an unscaled adjugate."""
    c0 = jnp.cross(a[..., 1, :], a[..., 2, :])
    c1 = jnp.cross(a[..., 2, :], a[..., 0, :])
    c2 = jnp.cross(a[..., 0, :], a[..., 1, :])
    det = jnp.sum(a[..., 0, :] * c0, axis=-1)
    adj = jnp.stack([c0, c1, c2], axis=-1)  # columns: adj = cof^T
    safe = jnp.where(det == 0, 1.0, det)
    return adj / safe[..., None, None], det


def _edge_matrices(pos, tri):
    """Per triangle A^-1 (B, T, 3, 3), z (B, T, 3) and a validity mask (B, T)."""
    v = pos[:, tri]  # (B, T, 3, 4)
    a = jnp.stack([v[..., 0], v[..., 1], v[..., 3]], axis=-2)  # rows x, y, w; columns vertices
    ainv, det = _inverse3(a)
    return ainv, v[..., 2], jnp.abs(det) > 1e-20


def _bounding_boxes(pos, tri, height, width):
    """Pixel bounding boxes (B, T, 4) = (x0, y0, x1, y1) inclusive, clamped;
    the whole image for triangles with a vertex at w <= 0; empty (x0 > x1) for
    triangles wholly outside."""
    v = pos[:, tri]
    w = v[..., 3]
    behind = jnp.any(w <= 0, axis=-1)
    safe_w = jnp.where(w > 0, w, 1.0)
    px = (v[..., 0] / safe_w + 1.0) * 0.5 * width - 0.5  # continuous column of centres
    py = (v[..., 1] / safe_w + 1.0) * 0.5 * height - 0.5
    x0 = jnp.ceil(jnp.min(px, -1))
    x1 = jnp.floor(jnp.max(px, -1))
    y0 = jnp.ceil(jnp.min(py, -1))
    y1 = jnp.floor(jnp.max(py, -1))
    x0 = jnp.where(behind, 0, jnp.clip(x0, 0, width))
    y0 = jnp.where(behind, 0, jnp.clip(y0, 0, height))
    x1 = jnp.where(behind, width - 1, jnp.clip(x1, -1, width - 1))
    y1 = jnp.where(behind, height - 1, jnp.clip(y1, -1, height - 1))
    return jnp.stack([x0, y0, x1, y1], axis=-1).astype(jnp.int32)


def _levels(height, width):
    top = max(_MIN_WINDOW, 1 << math.ceil(math.log2(max(height, width))))
    sizes, s = [], _MIN_WINDOW
    while s < top:
        sizes.append(s)
        s *= 2
    return sizes + [top]


def _fragments(ainv, z, ok, box, members, size, height, width):
    """Depth and flat pixel index of the S x S window of each member triangle.

    Returns depth (C, S*S) with +inf where not covered, and pixel (C, S*S).
    """
    off = jnp.arange(size)
    gx = box[members, 0][:, None, None] + off[None, None, :]  # (C, 1, S)
    gy = box[members, 1][:, None, None] + off[None, :, None]  # (C, S, 1)
    in_box = (gx <= box[members, 2][:, None, None]) & (gy <= box[members, 3][:, None, None])
    p = jnp.stack(jnp.broadcast_arrays(_pixel_ndc(gx, width), _pixel_ndc(gy, height),
                                       jnp.ones(gx.shape, jnp.float32)), axis=-1)  # (C,S,S,3)
    k = jnp.einsum("cij,cyxj->cyxi", ainv[members], p)
    inside = jnp.all(k >= 0, axis=-1) & (jnp.sum(k, axis=-1) > 0)
    depth = jnp.einsum("cyxi,ci->cyx", k, z[members])
    covered = in_box & inside & ok[members][:, None, None] & (depth >= -1) & (depth <= 1)
    pixel = jnp.clip(gy, 0, height - 1) * width + jnp.clip(gx, 0, width - 1)
    return (jnp.where(covered, depth, jnp.inf).reshape(len(members), -1),
            jnp.broadcast_to(pixel, covered.shape).reshape(len(members), -1))


def _resolve_one(pos, tri, height, width):
    """Triangle id + 1 per pixel (H*W,) int32 for one mesh (pos (V, 4))."""
    num_tri = tri.shape[0]
    ainv, z, ok = (x[0] for x in _edge_matrices(pos[None], tri))
    box = _bounding_boxes(pos[None], tri, height, width)[0]
    extent = jnp.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) + 1
    # Wholly behind the eye (every w <= 0): never visible, so skip it rather
    # than test it against the whole image.
    behind = jnp.all(pos[tri][..., 3] <= 0, axis=-1)
    empty = (box[:, 2] < box[:, 0]) | (box[:, 3] < box[:, 1]) | ~ok | behind
    sizes = _levels(height, width)
    level = jnp.searchsorted(jnp.asarray(sizes), extent, side="left")
    level = jnp.where(empty, len(sizes), level)  # empty triangles: no level
    order = jnp.argsort(level, stable=True).astype(jnp.int32)
    counts = jnp.bincount(level, length=len(sizes) + 1)
    starts = jnp.concatenate([jnp.zeros(1, counts.dtype), jnp.cumsum(counts)])

    def sweep(update, init):
        """Runs `update(state, depth, pixel, ids)` over every chunk of every level."""
        state = init
        for lvl, size in enumerate(sizes):
            chunk = max(1, min(num_tri, _CHUNK_FRAGMENTS // (size * size)))
            padded = jnp.concatenate([order, jnp.zeros(chunk, jnp.int32)])

            def body(carry, lvl=lvl, size=size, chunk=chunk, padded=padded):
                i, st = carry
                first = starts[lvl] + i * chunk
                members = jax.lax.dynamic_slice(padded, (first,), (chunk,))
                valid = first + jnp.arange(chunk) < starts[lvl + 1]
                depth, pixel = _fragments(ainv, z, ok, box, members, size, height, width)
                depth = jnp.where(valid[:, None], depth, jnp.inf)
                ids = jnp.broadcast_to(members[:, None], depth.shape)
                return i + 1, update(st, depth, pixel, ids)

            def cond(carry, lvl=lvl, chunk=chunk):
                return carry[0] * chunk < counts[lvl]

            _, state = jax.lax.while_loop(cond, body, (jnp.zeros((), counts.dtype), state))
        return state

    zbuf = sweep(lambda zb, d, p, _: zb.at[p.reshape(-1)].min(d.reshape(-1)),
                 jnp.full(height * width, jnp.inf, jnp.float32))

    def pick(best, d, p, ids):
        hit = jnp.isfinite(d) & (d == zbuf[p])
        return best.at[p.reshape(-1)].max(jnp.where(hit, ids + 1, 0).reshape(-1))

    return sweep(pick, jnp.zeros(height * width, jnp.int32))


def rasterize_ids(pos, tri, resolution):
    """Visible triangle id + 1 per pixel, (B, H, W) int32, 0 where empty.

    Not differentiable (a stop_gradient is applied to pos).
    """
    height, width = resolution
    pos = jax.lax.stop_gradient(pos)
    ids = jax.vmap(lambda p: _resolve_one(p, tri, height, width))(pos)
    return ids.reshape(pos.shape[0], height, width)


def barycentrics(pos, tri, ids, resolution):
    """(u, v, z/w) and their pixel derivatives at each pixel's winning triangle.

    Differentiable with respect to pos. Returns rast (B, H, W, 4) and rast_db
    (B, H, W, 4) = (du/dX, du/dY, dv/dX, dv/dY) per pixel.
    """
    height, width = resolution
    covered = ids > 0
    t = jnp.maximum(ids - 1, 0)
    v = jax.vmap(lambda p, tt: p[tri[tt]])(pos, t)  # (B, H, W, 3, 4)
    a = jnp.stack([v[..., 0], v[..., 1], v[..., 3]], axis=-2)
    a = jnp.where(covered[..., None, None], a, jnp.eye(3, dtype=pos.dtype))
    ainv, _ = _inverse3(a)
    ys = _pixel_ndc(jnp.arange(height), height)[:, None]
    xs = _pixel_ndc(jnp.arange(width), width)[None, :]
    p = jnp.stack(jnp.broadcast_arrays(xs, ys, jnp.ones((1, 1))), axis=-1)  # (H, W, 3)
    k = jnp.einsum("bhwij,hwj->bhwi", ainv, p)
    total = jnp.sum(k, axis=-1, keepdims=True)
    safe_total = jnp.where(covered[..., None], total, 1.0)
    b = k / safe_total
    zw = jnp.sum(k * v[..., 2], axis=-1)
    rast = jnp.concatenate([b[..., :2], zw[..., None], ids[..., None].astype(pos.dtype)], -1)
    rast = jnp.where(covered[..., None], rast, 0.0)
    # d k / d(pixel) = A^-1 columns scaled by NDC per pixel; then the quotient rule.
    dk_dx = ainv[..., :, 0] * (2.0 / width)
    dk_dy = ainv[..., :, 1] * (2.0 / height)

    def d_b(dk):
        return (dk - b * jnp.sum(dk, axis=-1, keepdims=True)) / safe_total

    dbx, dby = d_b(dk_dx), d_b(dk_dy)
    rast_db = jnp.stack([dbx[..., 0], dby[..., 0], dbx[..., 1], dby[..., 1]], axis=-1)
    return rast, jnp.where(covered[..., None], rast_db, 0.0)
