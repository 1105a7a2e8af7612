"""Mesh geometry on batches: vertex normals, barycentric points, UV displacement.

The displacement follows Sec. 4.2 of the paper (and DECA): a UV map of scalar
offsets, sampled at each vertex's UV coordinate, moves the vertex along its
normal: M' = M_c + D(uv) * n.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def face_normals(vertices, faces):
    """Unnormalised triangle normals (length = 2 x area).

    Args:
      vertices: (B, V, 3) float32.
      faces: (F, 3) int32, counter-clockwise seen from outside.
    Returns:
      (B, F, 3) float32.
    """
    tri = vertices[:, jnp.asarray(faces)]  # (B,F,3,3)
    return jnp.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])


def vertex_normals(vertices, faces, eps=1e-12):
    """Area-weighted unit vertex normals (as DECA's `vertex_normals`).

    Args:
      vertices: (B, V, 3) float32.
      faces: (F, 3) int32.
    Returns:
      (B, V, 3) float32 unit normals pointing outwards for a counter-clockwise
      mesh; (0, 0, 0) for vertices used by no triangle.
    """
    fn = face_normals(vertices, faces)  # (B,F,3)
    num_v = vertices.shape[1]
    idx = jnp.asarray(faces).reshape(-1)
    contrib = jnp.repeat(fn, 3, axis=1)  # the same normal at each corner
    summed = jax.vmap(lambda c: jax.ops.segment_sum(c, idx, num_segments=num_v))(contrib)
    norm_sq = jnp.sum(summed * summed, axis=-1, keepdims=True)
    return summed * jax.lax.rsqrt(jnp.maximum(norm_sq, eps))


def barycentric_points(vertices, faces, face_idx, bary):
    """Points given by triangles and barycentric coordinates.

    Args:
      vertices: (B, V, 3) float32.
      faces: (F, 3) int32.
      face_idx: (B, L) or (L,) int32 triangle per point.
      bary: (B, L, 3) or (L, 3) float32 barycentric coordinates.
    Returns:
      (B, L, 3) float32.
    """
    batch = vertices.shape[0]
    faces = jnp.asarray(faces)
    face_idx = jnp.broadcast_to(face_idx, (batch,) + face_idx.shape[-1:])
    bary = jnp.broadcast_to(bary, (batch,) + bary.shape[-2:])
    corners = faces[face_idx]  # (B,L,3)
    tri = jax.vmap(lambda v, c: v[c])(vertices, corners)  # (B,L,3,3)
    return jnp.einsum("blk,blkc->blc", bary, tri)


def sample_uv_map(uv_map, uv):
    """Bilinear sampling of a UV map at continuous UV coordinates.

    Convention (FLAME/OBJ UVs, image rows top-down): u in [0, 1] runs left to
    right across the columns, v in [0, 1] runs bottom to top, so texel (row r,
    column c) has its centre at u = (c + 0.5) / W, v = 1 - (r + 0.5) / H.
    Coordinates are clamped to the texel centres at the border.

    Args:
      uv_map: (B, H, W, C) float32.
      uv: (B, N, 2) or (N, 2) float32.
    Returns:
      (B, N, C) float32.
    """
    batch, height, width, _ = uv_map.shape
    uv = jnp.broadcast_to(uv, (batch,) + uv.shape[-2:])
    x = jnp.clip(uv[..., 0] * width - 0.5, 0.0, width - 1.0)
    y = jnp.clip((1.0 - uv[..., 1]) * height - 0.5, 0.0, height - 1.0)
    x0 = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, width - 2) if width > 1 else jnp.zeros_like(x, jnp.int32)
    y0 = jnp.clip(jnp.floor(y).astype(jnp.int32), 0, height - 2) if height > 1 else jnp.zeros_like(y, jnp.int32)
    x1 = jnp.minimum(x0 + 1, width - 1)
    y1 = jnp.minimum(y0 + 1, height - 1)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]

    def gather(img, yy, xx):
        return img[yy, xx]

    g = jax.vmap(gather)
    top = g(uv_map, y0, x0) * (1 - fx) + g(uv_map, y0, x1) * fx
    bottom = g(uv_map, y1, x0) * (1 - fx) + g(uv_map, y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def displace(vertices, faces, vertex_uv, displacement_map, mask=None):
    """The detailed mesh M' of Sec. 4.2: vertices moved along their normals.

    Args:
      vertices: (B, V, 3) float32 coarse mesh M_c.
      faces: (F, 3) int32.
      vertex_uv: (V, 2) float32 UV coordinate of each vertex.
      displacement_map: (B, H, W, 1) float32 UV displacement in metres (the
        paper keeps it in [-0.01, 0.01]; no clipping is done here).
      mask: optional (V,) float32 in [0, 1] scaling the displacement per vertex
        (e.g. zero on the eyeballs, as DECA's face-eye mask does).
    Returns:
      (B, V, 3) float32 detailed mesh M'.
    """
    normals = vertex_normals(vertices, faces)
    offset = sample_uv_map(displacement_map, vertex_uv)  # (B,V,1)
    if mask is not None:
        offset = offset * mask[None, :, None]
    return vertices + offset * normals
