"""Analytic antialiasing of silhouette edges with nvdiffrast's semantics (Laine et
al. 2020, "Modular Primitives for High-Performance Differentiable Rendering",
Sec. 3.4): the source of visibility gradients with respect to vertex positions.

What it does, per image:
1. Every horizontally and every vertically adjacent pixel pair whose triangle ids
   differ is a candidate (pairs do not wrap around the image border).
2. The pair's triangle is the one of the nearer pixel (smaller z/w; a covered pixel
   beats an empty one). Its vertices are projected to pixel space and the segment
   from the centre of the pixel it covers towards the other pixel's centre is
   followed to where it leaves the triangle.
3. That exit edge is antialiased only if it is a silhouette edge: the mesh has no
   other triangle across it, or the triangle across it folds back (its third vertex
   lies on the same side of the edge as ours in screen space, i.e. the two face
   opposite ways relative to the camera). It must also cross the pixel pair's axis
   more steeply than 45 degrees (flatter edges belong to the other pair direction),
   within [-1/16, 1 + 1/16] of the segment.
4. With the crossing at distance d (clamped to [0, 1]) from the covered pixel's
   centre: if d < 0.5 the covered pixel is blended towards the other pixel's colour
   by 0.5 - d (the triangle stops short of the pixels' common border); if d > 0.5
   the other pixel is blended towards the covered one's colour by d - 0.5. That is
   the covered fraction of the line through both centres, which for a straight
   edge is the covered area of the pixel.
Contributions of all pairs add up. The output is linear in `color` and moves with
the crossing point, so its gradient flows to the two vertices of each antialiased
edge (x, y, w of clip space; z gets none), exactly as nvdiffrast computes it
(including its 1e-3 pixel epsilon in the edge slope and no gradient where d was
clamped).

Cost: two dense sweeps over all horizontal and vertical pixel pairs, proportional to
the pixels and independent of the triangle count (nvdiffrast first compacts the
pairs with differing ids into a work queue; under jit, shapes are static).

Topology (step 3) is built from `tri` alone: triangles that share an edge must
share the vertex indices (a mesh split at UV seams shows its seams as silhouettes,
as in nvdiffrast). An edge of more than two triangles pairs the first two met in
sorted order; the others see it as open.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 0.0625  # nvdiffrast: no more than 1/16 pixel inaccuracy expected.


def antialias(color, rast, pos, tri, *, topology_hash=None, pos_gradient_boost=1.0):
    """Antialias silhouette edges of a rendered image (nvdiffrast's `antialias`).

    Args:
      color: (B, H, W, C) float32 image to antialias, any channel layout.
      rast: (B, H, W, 4) float32 rasterizer output (u, v, z/w, triangle_id + 1),
        zeros where empty; only z/w and the triangle id are read. No gradient.
      pos: (B, V, 4) float32 clip-space vertex positions used to rasterize (or
        (V, 4), shared by every image).
      tri: (T, 3) int32 vertex indices of the triangles used to rasterize.
      topology_hash: optional (T, 3) int32 from `antialias_construct_topology_hash`
        (tri's edge topology); built from `tri` on every call if omitted.
      pos_gradient_boost: python float multiplying the gradient to `pos`.
    Returns:
      (B, H, W, C) float32 antialiased image.
    """
    color, rast, pos, tri = (jnp.asarray(x) for x in (color, rast, pos, tri))
    if color.ndim != 4 or color.dtype != jnp.float32 or min(color.shape) < 1:
        raise ValueError(f"color: expected (B, H, W, C) float32, got {color.shape} {color.dtype}")
    if rast.shape != color.shape[:3] + (4,) or rast.dtype != jnp.float32:
        raise ValueError(f"rast: expected {color.shape[:3] + (4,)} float32 (color's B, H, W), "
                         f"got {rast.shape} {rast.dtype}")
    if (pos.ndim not in (2, 3) or pos.shape[-1] != 4 or pos.dtype != jnp.float32
            or (pos.ndim == 3 and pos.shape[0] != color.shape[0])):
        raise ValueError(f"pos: expected ({color.shape[0]}, V, 4) or (V, 4) float32, "
                         f"got {pos.shape} {pos.dtype}")
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.shape[0] < 1 or tri.dtype != jnp.int32:
        raise ValueError(f"tri: expected (T, 3) int32, got {tri.shape} {tri.dtype}")
    if topology_hash is None:
        topology_hash = antialias_construct_topology_hash(tri)
    topology_hash = jnp.asarray(topology_hash)
    if topology_hash.shape != tri.shape or topology_hash.dtype != jnp.int32:
        raise ValueError(f"topology_hash: expected {tri.shape} int32 (from "
                         f"antialias_construct_topology_hash(tri)), got "
                         f"{topology_hash.shape} {topology_hash.dtype}")
    if not isinstance(pos_gradient_boost, (int, float)):
        raise ValueError(f"pos_gradient_boost: expected a python float, "
                         f"got {type(pos_gradient_boost).__name__}")
    pos3 = pos if pos.ndim == 3 else pos[None]
    return _antialias_jit(float(pos_gradient_boost), color, rast, pos3, tri, topology_hash)


def antialias_construct_topology_hash(tri):
    """Edge topology of a triangle list: for every triangle t and edge k (the edge
    opposite vertex k, from vertex k+1 to k+2), the third vertex of the other
    triangle across that edge, or -1 where there is none.

    Args:
      tri: (T, 3) int vertex indices. Computed with numpy when concrete (once,
        outside jit, for a mesh whose topology is fixed), else with jnp.
    Returns:
      (T, 3) int32.
    """
    try:
        tri_np = np.asarray(tri)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return _opposite_vertices(jnp.asarray(tri, jnp.int32), jnp)
    return jnp.asarray(_opposite_vertices(tri_np.astype(np.int32), np))


def _opposite_vertices(tri, xp):
    """Pair up the edges of `tri` by sorting them (works with numpy and jnp)."""
    n = tri.shape[0] * 3
    a, b = tri[:, np.array([1, 2, 0])], tri[:, np.array([2, 0, 1])]
    lo, hi, opp = xp.minimum(a, b).reshape(-1), xp.maximum(a, b).reshape(-1), tri.reshape(-1)
    degenerate = ((tri[:, 0] == tri[:, 1]) | (tri[:, 1] == tri[:, 2]) | (tri[:, 2] == tri[:, 0]))
    degenerate = xp.repeat(degenerate, 3)
    unique = -1 - xp.arange(n, dtype=lo.dtype)       # never equal to a real edge
    lo, hi = xp.where(degenerate, unique, lo), xp.where(degenerate, unique, hi)
    order = xp.lexsort((hi, lo))
    lo_s, hi_s, opp_s = lo[order], hi[order], opp[order]
    same = (lo_s[1:] == lo_s[:-1]) & (hi_s[1:] == hi_s[:-1])         # k and k + 1 match
    false = xp.zeros((1,), bool)
    same_next = xp.concatenate([same, false])
    same_prev = xp.concatenate([false, same])
    same_prev2 = xp.concatenate([false, false, same[:-1] & same[1:]])  # n >= 3
    first = same_next & ~same_prev                                    # first of its group
    second = same_prev & ~same_prev2                                  # second of its group
    opp_next = xp.concatenate([opp_s[1:], opp_s[:1]])
    opp_prev = xp.concatenate([opp_s[-1:], opp_s[:-1]])
    partner = xp.where(first, opp_next, xp.where(second, opp_prev, -1))
    return partner[xp.argsort(order)].reshape(-1, 3).astype(xp.int32)


# ---------------------------------------------------------------------------
# Analysis: which pairs blend, by how much, along which edge.

def _triangle_table(pos3, tri, opp, height, width):
    """(PB, T, 9): pixel-space x0, x1, x2, y0, y1, y2 and 3 silhouette flags."""
    inv_w = 1.0 / pos3[..., 3]
    px = (pos3[..., 0] * inv_w + 1.0) * (0.5 * width)                 # (PB, V)
    py = (pos3[..., 1] * inv_w + 1.0) * (0.5 * height)
    xs, ys = px[:, tri], py[:, tri]                                   # (PB, T, 3)
    o = jnp.where(opp < 0, tri, opp)
    oxs, oys = px[:, o], py[:, o]
    x0, x1, x2 = xs[..., 0], xs[..., 1], xs[..., 2]
    y0, y1, y2 = ys[..., 0], ys[..., 1], ys[..., 2]
    bb = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    wings = [(xb - oxs[..., k]) * (yc - oys[..., k]) - (xc - oxs[..., k]) * (yb - oys[..., k])
             for k, (xb, yb, xc, yc) in enumerate([(x1, y1, x2, y2), (x2, y2, x0, y0),
                                                    (x0, y0, x1, y1)])]
    sil = [(jnp.signbit(wg) == jnp.signbit(bb)).astype(jnp.float32) for wg in wings]
    return jnp.concatenate([xs, ys, jnp.stack(sil, axis=-1)], axis=-1)


def _pairs(rast, vertical):
    """Triangle ids (-1 empty) and z/w of the two pixels of every pair."""
    tid = jnp.round(rast[..., 3]).astype(jnp.int32) - 1
    z = rast[..., 2]
    if vertical:
        return tid[:, :-1], tid[:, 1:], z[:, :-1], z[:, 1:]
    return tid[:, :, :-1], tid[:, :, 1:], z[:, :, :-1], z[:, :, 1:]


def _origin(shape, use0, vertical):
    """Pixel-space centre of the pixel whose triangle the pair uses: (x, y)."""
    rows = jnp.arange(shape[1], dtype=jnp.float32)[None, :, None] + 0.5
    cols = jnp.arange(shape[2], dtype=jnp.float32)[None, None, :] + 0.5
    step = jnp.where(use0, 0.0, 1.0)
    return (cols, rows + step) if vertical else (cols + step, rows)


def _analyze(rast, table, vertical):
    """Per pair: alpha (signed blend weight), triangle, exit edge, which pixel."""
    t0, t1, z0, z1 = _pairs(rast, vertical)
    use0 = (t0 >= 0) & ((t1 < 0) | (z0 < z1))
    tsel = jnp.where(use0, t0, t1)
    ds = jnp.where(use0, 1.0, -1.0)
    n_tri = table.shape[1]
    batch_idx = jnp.arange(rast.shape[0])[:, None, None] if table.shape[0] > 1 else 0
    row = jnp.take(table.reshape(-1, 9), batch_idx * n_tri + jnp.maximum(tsel, 0), axis=0)
    ox, oy = _origin(tsel.shape, use0, vertical)
    xs, ys = row[..., 0:3] - ox[..., None], row[..., 3:6] - oy[..., None]
    along, perp = (ys, xs) if vertical else (xs, ys)        # x: along the pair; y: across
    x = [along[..., k] for k in range(3)]
    y = [perp[..., k] for k in range(3)]
    q, dxs, dys = [], [], []
    for k in range(3):                                    # edge k: vertex k+1 -> k+2
        i1, i2 = (k + 1) % 3, (k + 2) % 3
        dx, dy = x[i2] - x[i1], y[i2] - y[i1]
        crosses = (jnp.signbit(y[i1]) != jnp.signbit(y[i2])) & (dy != 0)
        d = ds * (x[i1] * dy - y[i1] * dx)
        q.append(jnp.where(crosses, d / jnp.where(crosses, dy, 1.0), -jnp.inf))
        dxs.append(dx)
        dys.append(dy)
    q, dxs, dys = (jnp.stack(v, axis=-1) for v in (q, dxs, dys))
    di = jnp.argmax(q, axis=-1)          # the exit edge: the farthest crossing along the pair
    ok = ((row[..., 6:9] > 0.5) & (jnp.abs(dys) >= jnp.abs(dxs)) & (q > -_EPS) & (q < 1.0 + _EPS)
          & (jnp.arange(3) == di[..., None]) & (t0 != t1)[..., None])
    # A sum over the 3 candidate edges (one is live): a reduction, which XLA materialises
    # instead of recomputing it inside every consumer.
    alpha = jnp.sum(jnp.where(ok, ds[..., None] * (0.5 - jnp.clip(q, 0.0, 1.0)), 0.0), axis=-1)
    return alpha, tsel, di.astype(jnp.int32), use0


def _split(img, vertical):
    """The first and the second pixel of every pair."""
    if vertical:
        return img[:, :-1], img[:, 1:]
    return img[:, :, :-1], img[:, :, 1:]


def _place(first, second, vertical):
    """Add per-pair values at the first and at the second pixel, full image size."""
    z = ((0, 0), (0, 1), (0, 0), (0, 0)) if vertical else ((0, 0), (0, 0), (0, 1), (0, 0))
    s = ((0, 0), (1, 0), (0, 0), (0, 0)) if vertical else ((0, 0), (0, 0), (1, 0), (0, 0))
    return jnp.pad(first, z) + jnp.pad(second, s)


def _antialias_forward(color, rast, pos3, tri, opp):
    table = _triangle_table(pos3, tri, opp, rast.shape[1], rast.shape[2])
    out, res = color, []
    for vertical in (False, True):
        alpha, tsel, di, use0 = _analyze(rast, table, vertical)
        c0, c1 = _split(color, vertical)
        delta = alpha[..., None] * (c1 - c0)
        out = out + _place(jnp.where(alpha[..., None] > 0, delta, 0.0),
                           jnp.where(alpha[..., None] < 0, delta, 0.0), vertical)
        res.append((alpha, tsel, di, use0))
    return out, res


# ---------------------------------------------------------------------------
# The op with its hand-written backward.

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _antialias_op(boost, color, rast, pos3, tri, opp):
    return _antialias_forward(color, rast, pos3, tri, opp)[0]


def _antialias_op_fwd(boost, color, rast, pos3, tri, opp):
    out, res = _antialias_forward(color, rast, pos3, tri, opp)
    return out, (color, pos3, tri, res)


def _edge_grad(pos3, tri, batch_idx, tsel, di, use0, dd, vertical, height, width):
    """nvdiffrast's gradient of the crossing point, to the edge's two vertices."""
    verts = tri[jnp.maximum(tsel, 0)]                                 # (B, h, w, 3)
    vi1 = jnp.take_along_axis(verts, ((di + 1) % 3)[..., None], axis=-1)[..., 0]
    vi2 = jnp.take_along_axis(verts, ((di + 2) % 3)[..., None], axis=-1)[..., 0]
    p1, p2 = pos3[batch_idx, vi1], pos3[batch_idx, vi2]               # (B, h, w, 4)
    ox, oy = _origin(tsel.shape, use0, vertical)
    ha, hp = (0.5 * height, 0.5 * width) if vertical else (0.5 * width, 0.5 * height)
    fa, fp = (oy, ox) if vertical else (ox, oy)
    ia, ip = (1, 0) if vertical else (0, 1)                           # along / across axis
    w1, w2 = 1.0 / p1[..., 3], 1.0 / p2[..., 3]
    x1, y1 = p1[..., ia] * w1 * ha + ha - fa, p1[..., ip] * w1 * hp + hp - fp
    x2, y2 = p2[..., ia] * w2 * ha + ha - fa, p2[..., ip] * w2 * hp + hp - fp
    dx, dy = x2 - x1, y2 - y1
    db = x1 * dy - y1 * dx
    iy = 1.0 / (dy + jnp.copysign(1e-3, dy))
    dby = db * iy
    iw1, iw2 = -w1 * iy * dd, w2 * iy * dd
    g1a, g2a = iw1 * ha * y2, iw2 * ha * y1
    g1p, g2p = iw1 * hp * (dby - x2), iw2 * hp * (dby - x1)
    g1w = -(p1[..., ia] * g1a + p1[..., ip] * g1p) * w1
    g2w = -(p2[..., ia] * g2a + p2[..., ip] * g2p) * w2
    zero = jnp.zeros_like(g1a)
    if vertical:
        g1 = jnp.stack([g1p, g1a, zero, g1w], axis=-1)
        g2 = jnp.stack([g2p, g2a, zero, g2w], axis=-1)
    else:
        g1 = jnp.stack([g1a, g1p, zero, g1w], axis=-1)
        g2 = jnp.stack([g2a, g2p, zero, g2w], axis=-1)
    return (vi1, vi2), (g1, g2)


def _antialias_op_bwd(boost, res, dy):
    color, pos3, tri, pair_res = res
    batch, height, width, _ = color.shape
    pb, n_vert = pos3.shape[:2]
    batch_idx = jnp.arange(batch)[:, None, None] if pb > 1 else jnp.zeros((1, 1, 1), jnp.int32)
    g_color, rows, vals = dy, [], []
    for vertical, (alpha, tsel, di, use0) in zip((False, True), pair_res):
        dy0, dy1 = _split(dy, vertical)
        c0, c1 = _split(color, vertical)
        g_out = jnp.where(alpha[..., None] > 0, dy0, dy1)      # gradient of the pixel changed
        v = alpha[..., None] * g_out
        g_color = g_color + _place(-v, v, vertical)
        dd = jnp.sum(g_out * (c1 - c0), axis=-1)
        live = (alpha != 0) & (jnp.abs(alpha) < 0.5) & (dd != 0)
        (vi1, vi2), (g1, g2) = _edge_grad(pos3, tri, batch_idx, tsel, di, use0,
                                          jnp.where(live, dd, 0.0), vertical, height, width)
        for vi, g in ((vi1, g1), (vi2, g2)):
            rows.append(jnp.where(live, batch_idx * n_vert + vi, pb * n_vert).reshape(-1))
            vals.append(jnp.where(live[..., None], g, 0.0).reshape(-1, 4))
    g_pos = jnp.zeros((pb * n_vert, 4), jnp.float32).at[jnp.concatenate(rows)].add(
        jnp.concatenate(vals), mode="drop")
    g_pos = g_pos.reshape(pb, n_vert, 4) * boost
    return g_color, None, g_pos, None, None


_antialias_op.defvjp(_antialias_op_fwd, _antialias_op_bwd)
# Compiled as a whole even when called eagerly; inlined into an enclosing jit.
_antialias_jit = jax.jit(_antialias_op, static_argnums=(0,))
