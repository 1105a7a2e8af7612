"""Visibility for the `pallas` rasterizer backend: a tiled kernel that keeps
each tile's depth and id buffers on chip and walks only the triangles binned
to it.

Same contract as `coverage.visible_triangles` (nearest covering triangle id + 1
per pixel centre; the same edge functions, top-left rule, depth range and
tie rule), so `rasterize` computes the barycentrics of either backend with the
same per-pixel pass.

1. Binning, in plain JAX: each live triangle's screen box (`coverage.
   triangle_setup`) covers a rectangle of tiles; triangle k owns that many
   consecutive (triangle, tile) pair numbers (an exclusive prefix sum). Pair
   numbers are processed in chunks of `capacity` (static): within a chunk each
   pair finds its triangle (`coverage.owners`) and tile, and the chunk is sorted
   by tile, so each tile's triangles form one segment of the sorted list.
2. The kernel: one program per tile (the grid is images x tile rows x tile
   columns). It loads the tile's depth and id buffers, loops over its segment,
   and for each triangle evaluates the homogeneous edge functions over the
   tile's pixel centres and keeps the nearer hit (exact depth ties: the larger
   id, as `coverage` does). The buffers are input/output aliases, so a scene
   with more pairs than one chunk holds takes several kernel launches in a
   `lax.while_loop` and none is dropped.

The per-triangle data travel as one (B*T, 16) float32 table, read one scalar at
a time at the triangle's row: a tile touches only its own triangles.

Platforms: a kernel for accelerators. On CPU, Pallas has no compiler, and
`interpret=True` runs the same kernel body through XLA (slowly): that is how the
tests check it against the `jax` backend. Lowering on GPU (Triton / Mosaic GPU)
and TPU (Mosaic) has not been run yet.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from face3d_kernels import coverage

DEFAULT_TILE = (16, 16)
_TABLE_COLUMNS = 16  # 12 corner floats, padded to a power of two


def default_capacity(num_triangles_in_batch: int) -> int:
    """Pairs per chunk: a power of two >= 4 pairs per triangle (a triangle of a
    face mesh at 224^2 - 1024^2 touches 1 - 4 tiles of 16^2), at least 2^12."""
    return 1 << max(12, (4 * num_triangles_in_batch - 1).bit_length())


def visible_triangles(pos, tri, resolution, *, tile=DEFAULT_TILE, capacity=None,
                      interpret=False):
    """Triangle id + 1 of the nearest covering triangle per pixel centre.

    Args:
      pos: (B, V, 4) float32 clip-space positions (a stop_gradient is applied).
      tri: (T, 3) int32, T >= 1.
      resolution: (H, W) static ints.
      tile: (th, tw) static tile size in pixels.
      capacity: static pairs per chunk, default `default_capacity(B * T)`.
      interpret: run the kernel in Pallas's interpreter (CPU).
    Returns:
      (B, H, W) int32, 0 where no triangle covers the pixel centre.
    """
    batch, num_tri = pos.shape[0], tri.shape[0]
    if capacity is None:
        capacity = default_capacity(batch * num_tri)
    return _visible(jax.lax.stop_gradient(pos), tri, tuple(resolution), tuple(tile),
                    int(capacity), bool(interpret))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _visible(pos, tri, resolution, tile, capacity, interpret):
    height, width = resolution
    th, tw = tile
    batch, num_tri = pos.shape[0], tri.shape[0]
    rows, cols = pl.cdiv(height, th), pl.cdiv(width, tw)
    num_tiles = batch * rows * cols

    floats, (x0, y0, x1, y1), live = coverage.triangle_setup(pos, tri, height, width)
    table = jnp.stack(floats + [jnp.zeros_like(floats[0])] * (_TABLE_COLUMNS - 12), axis=-1)
    table = table.reshape(batch * num_tri, _TABLE_COLUMNS)
    tx0, tx1 = (x0 // tw).reshape(-1), (x1 // tw).reshape(-1)
    ty0, ty1 = (y0 // th).reshape(-1), (y1 // th).reshape(-1)
    tiles_w = jnp.maximum(tx1 - tx0 + 1, 1)
    count = jnp.where(live.reshape(-1), tiles_w * (ty1 - ty0 + 1), 0)
    first = jnp.cumsum(count) - count
    total = jnp.sum(count)
    chunks = (total + capacity - 1) // capacity

    kernel = functools.partial(_tile_kernel, num_tri=num_tri, rows=rows, cols=cols,
                               height=height, width=width, tile=tile)
    block = pl.BlockSpec((1, th, tw), lambda i: (i // (rows * cols), (i // cols) % rows,
                                                  i % cols))
    whole = lambda shape: pl.BlockSpec(shape, lambda i: (0,) * len(shape))  # noqa: E731
    shape = (batch, rows * th, cols * tw)
    call = pl.pallas_call(
        kernel, grid=(num_tiles,),
        in_specs=[whole((num_tiles + 1,)), whole((capacity,)), whole(table.shape), block, block],
        out_specs=[block, block],
        out_shape=[jax.ShapeDtypeStruct(shape, jnp.float32),
                   jax.ShapeDtypeStruct(shape, jnp.int32)],
        input_output_aliases={3: 0, 4: 1}, interpret=interpret)

    def body(state):
        index, zbuf, ids = state
        owner = coverage.owners(first, index * capacity, capacity)
        pair = index * capacity + jnp.arange(capacity, dtype=jnp.int32)
        local = pair - first[owner]
        row = jax.lax.div(local, tiles_w[owner])
        tile_x = tx0[owner] + local - row * tiles_w[owner]
        tile_y = ty0[owner] + row
        image = owner // num_tri
        key = jnp.where(pair < total, (image * rows + tile_y) * cols + tile_x, num_tiles)
        key, owner = jax.lax.sort((key, owner), num_keys=1)
        segments = jnp.searchsorted(key, jnp.arange(num_tiles + 1, dtype=key.dtype),
                                    side="left").astype(jnp.int32)
        zbuf, ids = call(segments, owner, table, zbuf, ids)
        return index + 1, zbuf, ids

    state = (jnp.zeros((), total.dtype), jnp.full(shape, jnp.inf, jnp.float32),
             jnp.zeros(shape, jnp.int32))
    _, _, ids = jax.lax.while_loop(lambda s: s[0] < chunks, body, state)
    return ids[:, :height, :width]


def _tile_kernel(seg_ref, tri_ref, table_ref, z_in, id_in, z_out, id_out, *, num_tri, rows,
                 cols, height, width, tile):
    """One tile: z_in/id_in (1, th, tw) blocks in, the updated blocks out."""
    th, tw = tile
    i = pl.program_id(0)
    py = ((i // cols) % rows) * th + jax.lax.broadcasted_iota(jnp.int32, (th, tw), 0)
    px = (i % cols) * tw + jax.lax.broadcasted_iota(jnp.int32, (th, tw), 1)
    x = (2.0 * px.astype(jnp.float32) + 1.0) / width - 1.0
    y = (2.0 * py.astype(jnp.float32) + 1.0) / height - 1.0
    on_image = (px < width) & (py < height)

    def step(k, carry):
        zbuf, ids = carry
        t = tri_ref[k]
        c = [table_ref[t, j] for j in range(12)]
        e, grad = coverage.edge_functions(
            [(c[4 * n], c[4 * n + 1], c[4 * n + 3]) for n in range(3)], x, y)
        inside = on_image
        for en, (ga, gb) in zip(e, grad):
            top_left = (ga > 0) | ((ga == 0) & (gb > 0))
            inside &= (en > 0) | ((en == 0) & top_left)
        depth = ((e[0] * c[2] + e[1] * c[6] + e[2] * c[10])
                 / (e[0] * c[3] + e[1] * c[7] + e[2] * c[11]))
        hit = inside & (e[0] + e[1] + e[2] > 0) & (depth >= -1.0) & (depth <= 1.0)
        tid = t % num_tri + 1
        better = hit & ((depth < zbuf) | ((depth == zbuf) & (tid > ids)))
        return jnp.where(better, depth, zbuf), jnp.where(better, tid, ids)

    zbuf, ids = jax.lax.fori_loop(seg_ref[i], seg_ref[i + 1], step, (z_in[0], id_in[0]))
    z_out[0] = zbuf
    id_out[0] = ids
