"""UV-space geometry of a FLAME-format model: texels baked to the template
surface, per-vertex values as UV maps, detail normals, the landmarks in UV.

The synthetic teacher world paints its albedo and wrinkle maps in UV space
but designs them on the face: every texel is baked once to the point of the template mesh it shows
(its triangle and barycentric coordinates, hence its 3D position). Skin tone,
lips, brows, eyes and wrinkles are then functions of that 3D position and of
the template's landmarks, so the same code paints the procedural default and
the real FLAME layout, and the maps are seamless across UV islands.

The same bake turns any per-vertex quantity of a posed mesh into a UV map by a
gather, which gives the detail normal map of a displaced mesh (DECA's
"detail normals", the paper's Sec. 4.2): the renderer shades wrinkles finer than
the mesh's vertices can carry.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct

from face3d_jax.flame.model import FlameModel

EYE_JOINTS = (3, 4)  # FLAME's left and right eye joints


@struct.dataclass
class UVBake:
    """The template surface seen by each texel of an S x S UV map (row 0 at v = 1).

    tri: (S, S) int32 triangle index into `model.faces` (0 where uncovered).
    bary: (S, S, 3) float32 barycentric weights of the triangle's corners.
    covered: (S, S) float32, 1 where a UV triangle covers the texel centre.
    position: (S, S, 3) float32 template position (metres, FLAME frame).
    eye: (S, S) float32 skinning weight of the eye joints (1 on the eyeballs).
    texel_m: static float, the median distance on the surface between
      neighbouring texels (metres): the finest detail the map can hold.
    """

    tri: Any
    bary: Any
    covered: Any
    position: Any
    eye: Any
    texel_m: float = struct.field(pytree_node=False, default=0.0)

    @property
    def size(self) -> int:
        return int(self.tri.shape[0])


@struct.dataclass
class FaceRegions:
    """Template landmarks that place the painted features.

    landmarks: (51, 3) float32 template positions of iBUG landmarks 17..67
      (index i is iBUG point i + 17).
    eye_centers: (2, 3) float32 left and right eye joints of the template.
    eye_radius: () float32 eyeball radius (metres).
    root: (3,) float32 the template's root joint (the head turns about it).
    """

    landmarks: Any
    eye_centers: Any
    eye_radius: Any
    root: Any


def rasterize_uv_layout(uv_coords, uv_faces, size: int):
    """Point-samples the UV layout at the texel centres (host side, numpy).

    A one-off precomputation: a vectorised bounding-box rasteriser, so that a
    teacher is made in well under a second instead of compiling the device
    rasterizer for each map size. Texel (r, c) has its centre at
    u = (c + 0.5) / S, v = 1 - (r + 0.5) / S (the convention of
    `face3d_jax.flame.sample_uv_map` and of the renderer's UV maps).

    Args:
      uv_coords: (T, 2) float UVs in [0, 1], v up.
      uv_faces: (F, 3) int triangles into uv_coords.
      size: S.
    Returns:
      tri (S, S) int64 triangle per texel, -1 where uncovered, and
      bary (S, S, 3) float64 barycentric weights of its corners.
    """
    uv = np.asarray(uv_coords, np.float64)
    faces = np.asarray(uv_faces, np.int64)
    pix = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], axis=-1)
    corners = pix[faces]  # (F, 3, 2) in (column, row) texel units
    lo = np.clip(np.ceil(corners.min(axis=1)), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(corners.max(axis=1)), -1, size - 1).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 0)  # (F, 2) columns, rows
    count = extent[:, 0] * extent[:, 1]
    owner = np.repeat(np.arange(len(faces)), count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    col = lo[owner, 0] + local % np.maximum(extent[owner, 0], 1)
    row = lo[owner, 1] + local // np.maximum(extent[owner, 0], 1)
    a, b, c = corners[owner, 0], corners[owner, 1], corners[owner, 2]
    p = np.stack([col, row], axis=-1).astype(np.float64)
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    l0 = 1.0 - l1 - l2
    eps = -1e-9
    inside = ok & (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
    tri = np.full((size, size), -1, np.int64)
    bary = np.zeros((size, size, 3))
    bary[..., 0] = 1.0
    tri[row[inside], col[inside]] = owner[inside]
    bary[row[inside], col[inside]] = np.stack([l0, l1, l2], axis=-1)[inside]
    return tri, bary


def bake_uv(model: FlameModel, size: int) -> UVBake:
    """Bakes the template surface into an S x S UV map; see `UVBake`."""
    tri, bary = rasterize_uv_layout(model.uv_coords, model.uv_faces, size)
    covered = tri >= 0
    tri = np.maximum(tri, 0)
    faces = np.asarray(model.faces, np.int64)
    corner_v = faces[tri]  # (S, S, 3)
    template = np.asarray(model.v_template, np.float64)
    position = np.einsum("hwk,hwkc->hwc", bary, template[corner_v])
    weights = np.asarray(model.weights, np.float64)
    eye_weight = weights[:, list(EYE_JOINTS)].sum(axis=1)
    eye = np.einsum("hwk,hwk->hw", bary, eye_weight[corner_v]) * covered
    step = np.linalg.norm(position[:, 1:] - position[:, :-1], axis=-1)
    both = covered[:, 1:] & covered[:, :-1]
    texel_m = float(np.median(step[both])) if both.any() else 1.0 / size
    return UVBake(tri=tri.astype(np.int32), bary=bary.astype(np.float32),
                  covered=covered.astype(np.float32), position=position.astype(np.float32),
                  eye=eye.astype(np.float32), texel_m=texel_m)


def face_regions(model: FlameModel) -> FaceRegions:
    """Template landmarks, eye centres and eyeball radius of `model`."""
    template = np.asarray(model.v_template, np.float64)
    faces = np.asarray(model.faces, np.int64)
    corners = template[faces[np.asarray(model.static_lmk_faces_idx, np.int64)]]  # (51, 3, 3)
    landmarks = np.einsum("lk,lkc->lc", np.asarray(model.static_lmk_bary_coords), corners)
    joints = np.asarray(model.J_regressor, np.float64) @ template
    centers = joints[list(EYE_JOINTS)]
    weights = np.asarray(model.weights)
    radii = []
    for k, joint in enumerate(EYE_JOINTS):
        on_eye = weights[:, joint] > 0.5
        if on_eye.any():
            radii.append(np.linalg.norm(template[on_eye] - centers[k], axis=1).mean())
    radius = float(np.mean(radii)) if radii else 0.0125  # FLAME's eyeballs are ~12 mm
    return FaceRegions(landmarks=landmarks.astype(np.float32),
                       eye_centers=centers.astype(np.float32),
                       eye_radius=np.float32(radius), root=joints[0].astype(np.float32))


def landmark_uvs(model: FlameModel) -> np.ndarray:
    """Where the static landmarks (iBUG 17..67) lie in the UV layout.

    Returns:
      (51, 2) float32 (u, v), v up: the static embedding's barycentric
      weights applied to the UV corners of each landmark's triangle.
    """
    if model.uv_coords is None or model.uv_faces is None:
        raise ValueError("landmark_uvs: the model has no UV layout")
    uv_faces = np.asarray(model.uv_faces, np.int64)[np.asarray(model.static_lmk_faces_idx,
                                                                 np.int64)]
    corners = np.asarray(model.uv_coords, np.float64)[uv_faces]  # (51, 3, 2)
    bary = np.asarray(model.static_lmk_bary_coords, np.float64)
    return np.einsum("lk,lkc->lc", bary, corners).astype(np.float32)


def _normalize(x, eps=1e-12):
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def to_uv(bake: UVBake, faces, values):
    """Per-vertex values of a batch of meshes as UV maps.

    Args:
      bake: an S x S `UVBake`.
      faces: (F, 3) int32 the model's triangles.
      values: (B, V, C) float32 per-vertex values (positions, normals...).
    Returns:
      (B, S, S, C) float32, barycentric interpolation at each texel.
    """
    corner_v = jnp.asarray(faces)[bake.tri]  # (S, S, 3)
    gathered = values[:, corner_v]  # (B, S, S, 3, C)
    return jnp.einsum("hwk,bhwkc->bhwc", bake.bary, gathered)


def detail_normal_map(bake: UVBake, faces, vertices, normals, displacement):
    """Normals of the surface M_c + D n, as a UV map (DECA's detail normals).

    The displaced surface p + D n has, to first order in D, the normal
    n - grad_s D, where grad_s D is the surface gradient of the displacement:
    with the tangents T_u = dp/du and T_v = dp/dv (finite differences of the
    posed position map) and the metric G = [T_i . T_j], grad_s D = [T_u T_v]
    G^-1 [dD/du, dD/dv]. Texels whose neighbours lie on another UV island (or
    none) keep the coarse normal.

    Args:
      bake: an S x S `UVBake` (S = the displacement map's size).
      faces: (F, 3) int32.
      vertices: (B, V, 3) float32 posed coarse mesh M_c.
      normals: (B, V, 3) float32 its unit vertex normals.
      displacement: (B, S, S, 1) float32 UV displacement (metres).
    Returns:
      (B, S, S, 3) float32 unit normals in FLAME's frame (row 0 at v = 1).
    """
    if displacement.shape[1:3] != bake.tri.shape:
        raise ValueError(f"detail_normal_map: displacement map {displacement.shape[1:3]} does "
                         f"not match the UV bake {bake.tri.shape}")
    pos = to_uv(bake, faces, vertices)
    coarse = _normalize(to_uv(bake, faces, normals))
    disp = displacement[..., 0]
    covered = bake.covered > 0
    # A neighbour more than 4 texels away on the surface sits across a seam.
    limit = 4.0 * bake.texel_m

    def central(field, axis):
        fwd = jnp.roll(field, -1, axis=axis)
        bwd = jnp.roll(field, 1, axis=axis)
        return fwd, bwd

    def valid_pair(axis):
        ok = covered & jnp.roll(covered, -1, axis=axis - 1) & jnp.roll(covered, 1, axis=axis - 1)
        return ok

    grads, tangents, oks = [], [], []
    for axis in (2, 1):  # u runs along columns, v (up) against rows
        sign = 1.0 if axis == 2 else -1.0
        p_f, p_b = central(pos, axis)
        d_f, d_b = central(disp, axis)
        t = sign * 0.5 * (p_f - p_b)
        g = sign * 0.5 * (d_f - d_b)
        near = (jnp.linalg.norm(p_f - pos, axis=-1) < limit) \
            & (jnp.linalg.norm(p_b - pos, axis=-1) < limit)
        tangents.append(t)
        grads.append(g)
        oks.append(valid_pair(axis)[None] & near)
    tu, tv = tangents
    guu = jnp.sum(tu * tu, -1)
    guv = jnp.sum(tu * tv, -1)
    gvv = jnp.sum(tv * tv, -1)
    det = guu * gvv - guv * guv
    ok = oks[0] & oks[1] & (det > 1e-20)
    det = jnp.where(ok, det, 1.0)
    a = (gvv * grads[0] - guv * grads[1]) / det
    b = (guu * grads[1] - guv * grads[0]) / det
    surface_grad = a[..., None] * tu + b[..., None] * tv
    surface_grad = jnp.where(ok[..., None], surface_grad, 0.0)
    # Remove any normal component the finite differences picked up.
    surface_grad = surface_grad - jnp.sum(surface_grad * coarse, -1, keepdims=True) * coarse
    return _normalize(coarse - surface_grad)
