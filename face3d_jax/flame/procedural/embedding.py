"""The 68-point iBUG landmark embedding of the procedural model.

Static points (iBUG 17..67) are placed on the template's frontal projection
at the anatomical spots of the iBUG scheme and embedded in the frontmost skin
triangle under them. The contour (iBUG 0..16) is recomputed for each yaw bin
of FLAME's table: the template is turned by that yaw, and each contour point
is the outermost skin vertex of the cheek-jaw region along a fixed direction
from the lower face's centre in the image, i.e. the silhouette a detector sees.
"""

from __future__ import annotations

import numpy as np

from face3d_jax.flame.procedural.head import (CHIN_Y, EYE_Y, MOUTH_Y, NOSE_TIP_Y, HeadMesh,
                                              frontmost_triangle)

# Image-left is the subject's right (-x). (x, y) in metres on the frontal view.
_M = MOUTH_Y
STATIC_LANDMARKS_XY = np.array([
    # 17-21 brow on the image left, outer to inner; 22-26 mirrored, inner to outer
    [-0.055, 0.040], [-0.045, 0.046], [-0.034, 0.048], [-0.023, 0.047], [-0.012, 0.044],
    [0.012, 0.044], [0.023, 0.047], [0.034, 0.048], [0.045, 0.046], [0.055, 0.040],
    # 27-30 nose bridge to tip; 31-35 base of the nose, left to right
    [0.0, 0.030], [0.0, 0.018], [0.0, 0.006], [0.0, NOSE_TIP_Y + 0.001],
    [-0.012, -0.014], [-0.006, -0.016], [0.0, -0.017], [0.006, -0.016], [0.012, -0.014],
    # 36-41 image-left eye: outer corner, upper lid x2, inner corner, lower lid x2
    [-0.045, 0.027], [-0.037, 0.032], [-0.027, 0.032], [-0.019, 0.027], [-0.027, 0.023],
    [-0.037, 0.023],
    # 42-47 image-right eye: inner corner, upper lid x2, outer corner, lower lid x2
    [0.019, 0.027], [0.027, 0.032], [0.037, 0.032], [0.045, 0.027], [0.037, 0.023],
    [0.027, 0.023],
    # 48-59 outer lips: left corner, upper lip to the right corner, lower lip back
    [-0.024, _M], [-0.016, _M + 0.008], [-0.007, _M + 0.011], [0.0, _M + 0.010],
    [0.007, _M + 0.011], [0.016, _M + 0.008], [0.024, _M], [0.016, _M - 0.009],
    [0.007, _M - 0.012], [0.0, _M - 0.013], [-0.007, _M - 0.012], [-0.016, _M - 0.009],
    # 60-67 inner lips: left corner, upper inner lip, right corner, lower inner lip
    [-0.020, _M], [-0.008, _M + 0.0015], [0.0, _M + 0.0015], [0.008, _M + 0.0015],
    [0.020, _M], [0.008, _M - 0.0015], [0.0, _M - 0.0015], [-0.008, _M - 0.0015],
])
# Contour directions (degrees, image plane, y up) from the lower face's centre:
# iBUG 0 high on the image-left cheek, 8 under the chin, 16 on the right.
CONTOUR_ANGLES = np.concatenate([np.linspace(160.0, 270.0, 9), np.linspace(270.0, 380.0, 9)[1:]])
CONTOUR_CENTRE_Y = -0.02


def static_embedding(head: HeadMesh):
    """(51,) int64 triangle indices and (51, 3) float64 barycentric coordinates."""
    skin_faces = np.flatnonzero(head.head_faces)
    idx, bary = [], []
    for xy in STATIC_LANDMARKS_XY:
        k, b, _ = frontmost_triangle(head.vertices, head.faces[skin_faces], xy)
        idx.append(skin_faces[k])
        bary.append(b)
    return np.array(idx), np.array(bary)


def _yaw_matrix(angle_rad):
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def dynamic_embedding(head: HeadMesh):
    """(79, 17) int64 triangles and (79, 17, 3) float64 barycentric coordinates.

    Row i holds the contour for FLAME's yaw angle a (rows 0..39: a = 0..39,
    rows 40..78: a = -1..-39 degrees), where a is the negated Euler y angle of
    the head; the template is therefore turned by -a degrees about y.
    """
    v = head.vertices
    skin = head.part <= 1
    # Cheek, jaw and chin; not the nose, whose tip would win at strong yaw.
    region = skin & (v[:, 2] > 0.0) & (v[:, 1] > CHIN_Y - 0.03) & (v[:, 1] < EYE_Y + 0.005)
    region &= ~((np.abs(v[:, 0]) < 0.022) & (v[:, 1] > NOSE_TIP_Y - 0.016))
    candidates = np.flatnonzero(region)
    # One triangle per vertex to embed it (barycentric one-hot on that vertex).
    owner = np.full(len(v), -1)
    corner = np.zeros(len(v), np.int64)
    skin_faces = np.flatnonzero(head.head_faces)
    for f in skin_faces[::-1]:
        for k in range(3):
            owner[head.faces[f, k]] = f
            corner[head.faces[f, k]] = k
    angles = np.concatenate([np.arange(0, 40), -np.arange(1, 40)])
    directions = np.deg2rad(CONTOUR_ANGLES)
    faces_idx = np.zeros((len(angles), len(directions)), np.int64)
    bary = np.zeros((len(angles), len(directions), 3))
    for row, a in enumerate(angles):
        turned = v[candidates] @ _yaw_matrix(np.deg2rad(-a)).T
        rel = turned[:, :2] - np.array([0.0, CONTOUR_CENTRE_Y])
        ang = np.arctan2(rel[:, 1], rel[:, 0])
        for j, phi in enumerate(directions):
            diff = np.abs((ang - phi + np.pi) % (2 * np.pi) - np.pi)
            along = rel @ np.array([np.cos(phi), np.sin(phi)])
            across = np.abs(rel @ np.array([-np.sin(phi), np.cos(phi)]))
            # Outermost near the ray; the penalty off the ray breaks the ties
            # of flat stretches (the chin) symmetrically.
            score = np.where(diff < np.deg2rad(7.0), along - 0.5 * across, -np.inf)
            vid = candidates[int(np.argmax(score))]
            faces_idx[row, j] = owner[vid]
            bary[row, j, corner[vid]] = 1.0
    return faces_idx, bary
