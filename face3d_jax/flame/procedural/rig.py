"""The procedural model's skeleton: joint regressor, skinning weights and pose
correctives, arranged as FLAME's (5 joints: global, neck, jaw, left eye, right eye).
"""

from __future__ import annotations

import numpy as np

from face3d_jax.flame.procedural.head import MOUTH_HALF_WIDTH, MOUTH_Y, NECK_Y, HeadMesh, smoothstep

# Where the mandible hinges (temporomandibular joints), left and right.
JAW_HINGE = np.array([[0.058, -0.004, 0.004], [-0.058, -0.004, 0.004]])
NECK_JOINT_Y = -0.112


def _ring_mean_row(head: HeadMesh, ring: int) -> np.ndarray:
    members = (head.ring == ring) & (head.part == 0)
    row = np.zeros(len(head.vertices))
    row[members] = 1.0 / members.sum()
    return row


def joint_regressor(head: HeadMesh) -> np.ndarray:
    """(5, V) float64: each joint a convex combination of template vertices, so
    that joints follow the identity shape as FLAME's regressor does.

    global: the centre of the neck's bottom ring; neck: the centre of the ring
    at the top of the neck; jaw: the midpoint of skin patches at both hinges;
    eyes: the eyeball centres (means of their vertices)."""
    v = head.vertices
    rows = np.zeros((5, len(v)))
    rows[0] = _ring_mean_row(head, 0)
    skin_rings = head.ring[head.part == 0]
    ring_y = np.array([v[(head.ring == r) & (head.part == 0), 1].mean()
                       for r in range(skin_rings.max())])
    rows[1] = _ring_mean_row(head, int(np.argmin(np.abs(ring_y - NECK_JOINT_Y))))
    for hinge in JAW_HINGE:
        d = np.linalg.norm(v - hinge, axis=1)
        patch = (head.part == 0) & (d < np.sort(d[head.part == 0])[12] + 1e-12)
        rows[2, patch] += 0.5 / patch.sum()
    for j, side in ((3, 2), (4, 3)):
        eye = head.part == side
        rows[j, eye] = 1.0 / eye.sum()
    return rows


def below_lips(points: np.ndarray, lower_lip: np.ndarray) -> np.ndarray:
    """(N,) in [0, 1]: 1 on the lower lip and below the lips' parting line.

    Sharp across the slit (the lips are separate there) and smooth beyond the
    mouth corners, where the boundary rises along the cheek towards the jaw
    hinge and softens: the skin there is continuous."""
    x, y = points[:, 0], points[:, 1]
    ax = np.abs(x)
    slope = (JAW_HINGE[0, 1] - MOUTH_Y) / (JAW_HINGE[0, 0] - MOUTH_HALF_WIDTH)
    line = MOUTH_Y + np.clip(ax - MOUTH_HALF_WIDTH, 0.0, None) * slope
    softness = 0.002 + 0.5 * np.clip(ax - MOUTH_HALF_WIDTH + 0.004, 0.0, None)
    below = smoothstep(line + 0.25 * softness, line - softness, y)
    inside_mouth = ax < MOUTH_HALF_WIDTH - 0.002
    below = np.where(inside_mouth, (y < MOUTH_Y - 1e-6).astype(float), below)
    return np.where(lower_lip, 1.0, below)


def jaw_influence(points: np.ndarray, lower_lip: np.ndarray) -> np.ndarray:
    """(N,) in [0, 1]: how much a skin point follows the jaw: what lies below
    the lips (`below_lips`), fading out under the chin into the throat and
    towards the back of the head."""
    y, z = points[:, 1], points[:, 2]
    throat = smoothstep(-0.128, -0.100, y)
    front = smoothstep(-0.035, 0.015, z)
    return below_lips(points, lower_lip) * throat * front


def skinning_weights(head: HeadMesh) -> np.ndarray:
    """(V, 5) float64 rows summing to one: the neck base follows the root, the
    skull the neck, the mandible region the jaw, each eyeball its eye joint."""
    v = head.vertices
    w = np.zeros((len(v), 5))
    skin = head.part <= 1
    root = smoothstep(NECK_Y + 0.045, NECK_Y + 0.005, v[:, 1])
    jaw = jaw_influence(v, head.part == 1)
    w[:, 0] = np.where(skin, root, 0.0)
    w[:, 2] = np.where(skin, (1 - root) * jaw, 0.0)
    w[:, 1] = np.where(skin, (1 - root) * (1 - jaw), 0.0)
    w[head.part == 2, 3] = 1.0
    w[head.part == 3, 4] = 1.0
    return w


def pose_correctives(head: HeadMesh, normals: np.ndarray) -> np.ndarray:
    """(V, 3, 36) float64 pose-corrective blendshapes in FLAME's layout.

    Column 9*(j-1) + 3*r + c multiplies (R_j - I)[r, c]. Two effects are
    modelled, both smooth and local: opening the jaw (a rotation about x,
    sin(a) = ((R-I)[2,1] - (R-I)[1,2]) / 2) hollows the cheeks and thins the
    lips; nodding the neck bulges the throat forwards when the head bends down
    and, through (cos(a) - 1) terms, folds the neck's skin. The eyes have none.
    """
    v = head.vertices
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    skin = (head.part <= 1).astype(float)[:, None]
    dirs = np.zeros((len(v), 3, 36))

    cheeks = np.exp(-0.5 * (((np.abs(x) - 0.045) / 0.014) ** 2 + ((y + 0.035) / 0.018) ** 2)) \
        * smoothstep(0.0, 0.04, z)
    lips = np.exp(-0.5 * ((x / 0.02) ** 2 + ((y - MOUTH_Y) / 0.008) ** 2)) * (z > 0)
    jaw_field = skin * (-0.006 * cheeks[:, None] * normals - 0.003 * lips[:, None] * normals)
    # jaw is joint 2: columns 9..17; (R-I)[1,2] -> 9+5, (R-I)[2,1] -> 9+7.
    dirs[:, :, 14] = -0.5 * jaw_field
    dirs[:, :, 16] = 0.5 * jaw_field

    neck_band = np.exp(-0.5 * ((y + 0.125) / 0.02) ** 2)
    throat = neck_band * smoothstep(-0.02, 0.04, z)
    nape = neck_band * smoothstep(0.02, -0.04, z)
    bend = skin * (0.008 * throat - 0.004 * nape)[:, None] * normals
    # neck is joint 1: columns 0..8; (R-I)[1,2] -> 5, (R-I)[2,1] -> 7.
    dirs[:, :, 5] = -0.5 * bend
    dirs[:, :, 7] = 0.5 * bend
    fold = skin * (0.010 * neck_band)[:, None] * normals
    # (cos(a) - 1) <= 0 on the diagonal for any rotation: a fold that grows
    # with the square of the angle.
    dirs[:, :, 4] = -0.5 * fold
    dirs[:, :, 8] = -0.5 * fold
    return dirs
