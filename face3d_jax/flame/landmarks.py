"""68 iBUG landmarks from FLAME's barycentric embeddings.

Landmarks 17..67 (brows, nose, eyes, mouth) are fixed points on the mesh (the
static embedding, 51 points). The jaw contour 0..16 is what a 2D detector sees
as the face's outline, which slides over the cheek as the head turns; FLAME and
DECA therefore keep a table of contours for yaw angles of -39..39 degrees and
pick the row of the head's current yaw.

The yaw is read from the rotation of the neck's kinematic chain (neck, then
global), as DECA does (`NECK_IDX = 1`). smplx's FLAME uses the global rotation
alone (`NECK_IDX = 0`); the two agree whenever the neck pose is zero.
"""

from __future__ import annotations

import jax.numpy as jnp

from face3d_jax.flame.geometry import barycentric_points
from face3d_jax.flame.model import NUM_YAW_BINS

MAX_YAW_DEG = 39


def yaw_bin(head_rotation):
    """Row of the dynamic contour table for a head rotation.

    FLAME's convention: the angle is -asin(-R[2, 0]) in degrees (the negated
    Euler y angle), rounded half to even and clamped to [-39, 39]; rows 0..39
    hold angles 0..39 and rows 40..78 hold angles -1..-39.

    Args:
      head_rotation: (B, 3, 3) float32 rotation of the head (global @ neck).
    Returns:
      (B,) int32 row indices in [0, 78].
    """
    r = head_rotation
    sy = jnp.sqrt(r[:, 0, 0] ** 2 + r[:, 1, 0] ** 2)
    euler_y = jnp.arctan2(-r[:, 2, 0], sy)
    angle = jnp.round(jnp.clip(-euler_y * 180.0 / jnp.pi, -MAX_YAW_DEG - 1, MAX_YAW_DEG))
    angle = angle.astype(jnp.int32)
    negative_row = jnp.where(angle < -MAX_YAW_DEG, NUM_YAW_BINS - 1, MAX_YAW_DEG - angle)
    return jnp.where(angle < 0, negative_row, angle)


def landmarks68(vertices, faces, head_rotation, static_faces, static_bary,
                dynamic_faces, dynamic_bary):
    """The 68 iBUG landmarks, contour first (iBUG order 0..67).

    Args:
      vertices: (B, V, 3) float32 posed vertices.
      faces: (F, 3) int32.
      head_rotation: (B, 3, 3) float32, global @ neck rotation.
      static_faces: (51,) int32; static_bary: (51, 3) float32.
      dynamic_faces: (79, 17) int32; dynamic_bary: (79, 17, 3) float32.
    Returns:
      (B, 68, 3) float32.
    """
    rows = yaw_bin(head_rotation)
    static_faces, static_bary = jnp.asarray(static_faces), jnp.asarray(static_bary)
    dynamic_faces, dynamic_bary = jnp.asarray(dynamic_faces), jnp.asarray(dynamic_bary)
    batch = vertices.shape[0]
    face_idx = jnp.concatenate(
        [dynamic_faces[rows], jnp.broadcast_to(static_faces, (batch,) + static_faces.shape)], axis=1)
    bary = jnp.concatenate(
        [dynamic_bary[rows], jnp.broadcast_to(static_bary, (batch,) + static_bary.shape)], axis=1)
    return barycentric_points(vertices, faces, face_idx, bary)
