"""The procedural head mesh: geometry, topology and UV layout.

A head-and-neck surface is swept as horizontal rings (constant height y) from
the base of the neck to a pole on the crown; each ring is a closed curve around
the vertical axis, denser at the front, where the face is. Facial features
(brow ridge, eye sockets, nose, cheekbones, lips, chin, ears) are smooth bumps
added along the horizontal outward direction. A slit between the lips (its
lower edge a duplicated row of vertices) lets the jaw open the mouth, and two
eyeballs sit in the sockets, as in FLAME's topology.

Frame and units follow FLAME: metres, y up, the face looking along +z, +x on
the subject's left (image right for a camera in front of the face).

UV layout: the head is unwrapped cylindrically, u from the back seam round to
the back again with the face in the middle (u = 0.5 on the midline, so the map
u -> 1 - u mirrors the face left-right, which flip blending relies on), v from
the neck (0.08) to the crown (1); the two eyeballs are discs in the strip below
(left eye at u < 0.08, right eye mirrored at u > 0.92).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.interpolate import PchipInterpolator

# Landmark heights of the face (metres), shared with the bases and embedding.
EYE_Y = 0.028
EYE_X = 0.032
NOSE_TIP_Y = -0.006
MOUTH_Y = -0.045
MOUTH_HALF_WIDTH = 0.024
CHIN_Y = -0.085
EYEBALL_RADIUS = 0.0125
UV_HEAD_V0 = 0.08  # head UVs use v in [UV_HEAD_V0, 1]; eyeballs the strip below

# Silhouette of the bare skull-face-neck per height: y, half-width W, front z,
# back z, side z (where the ring crosses x = +-W) and the front's pointedness p
# (z_front term scaled by cos(theta)**p: p > 1 narrows the chin and jaw).
_PROFILE = np.array([
    # y       W      z_front  z_back  z_side  p
    [-0.170, 0.056, 0.040, -0.056, -0.010, 1.0],
    [-0.130, 0.050, 0.036, -0.050, -0.010, 1.0],
    [-0.112, 0.051, 0.046, -0.053, -0.008, 1.3],
    [-0.098, 0.055, 0.070, -0.058, -0.005, 2.2],
    [-0.085, 0.059, 0.086, -0.066, 0.000, 2.1],
    [-0.060, 0.065, 0.092, -0.080, 0.002, 1.8],
    [-0.030, 0.069, 0.094, -0.096, 0.001, 1.6],
    [0.000, 0.071, 0.094, -0.106, -0.002, 1.4],
    [0.030, 0.072, 0.092, -0.110, -0.004, 1.3],
    [0.060, 0.072, 0.086, -0.106, -0.006, 1.2],
    [0.090, 0.062, 0.068, -0.090, -0.008, 1.1],
    [0.110, 0.043, 0.045, -0.064, -0.009, 1.0],
    [0.122, 0.018, 0.016, -0.030, -0.010, 1.0],
])
TOP_Y = 0.1255
NECK_Y = float(_PROFILE[0, 0])


@dataclasses.dataclass(frozen=True)
class HeadMesh:
    """The template mesh and what the bases and embeddings need to know of it.

    vertices (V, 3) float64; faces (F, 3) int64; uv_coords (T, 2) float64;
    uv_faces (F, 3) int64; part (V,) int8 with 0 skin, 1 lower-lip copy of the
    mouth slit, 2 left eyeball, 3 right eyeball; head_faces (F,) bool (skin
    triangles); ring (V,) int64 ring index of skin vertices (-1 elsewhere);
    eye_centers (2, 3) float64 (left, right); mouth_ring int; neck_ring_count int.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv_coords: np.ndarray
    uv_faces: np.ndarray
    part: np.ndarray
    head_faces: np.ndarray
    ring: np.ndarray
    eye_centers: np.ndarray
    mouth_ring: int


def smoothstep(edge0, edge1, x):
    """Hermite step of x (array) from 0 at edge0 to 1 at edge1 (either order), float64."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss2(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _ring_heights(num_rings: int, mouth_y: float) -> np.ndarray:
    """Ring heights spaced by arc length of the silhouette, denser on the face,
    with one ring exactly at the mouth line (the slit lies on it)."""
    ys = np.linspace(NECK_Y, TOP_Y, 4000)
    prof = _profile(ys)
    # Arc length along the mean of the side and front silhouettes.
    dy = np.gradient(ys)
    dw = np.gradient(prof["W"])
    dz = np.gradient(prof["z_front"])
    seg = np.sqrt(dy ** 2 + 0.5 * dw ** 2 + 0.5 * dz ** 2)
    density = 1.0 + 1.6 * smoothstep(-0.125, -0.10, ys) * (1 - smoothstep(0.05, 0.075, ys))
    s = np.concatenate([[0.0], np.cumsum(0.5 * (seg[1:] * density[1:] + seg[:-1] * density[:-1]))])
    s /= s[-1]
    # The last ring stops short of the pole: the crown is closed by a fan.
    targets = np.linspace(0.0, 1.0, num_rings + 1)[:-1]
    heights = np.interp(targets, s, ys)
    k = int(np.argmin(np.abs(heights - mouth_y)))
    heights[k] = mouth_y
    return heights


def _profile(y):
    out = {}
    for i, name in enumerate(("W", "z_front", "z_back", "z_side", "p")):
        out[name] = PchipInterpolator(_PROFILE[:, 0], _PROFILE[:, i + 1], extrapolate=True)(y)
    # Close the crown: every width and depth shrinks to the pole.
    cap = np.sqrt(np.clip((TOP_Y - y) / (TOP_Y - 0.122), 0.0, 1.0))
    cap = np.where(y > 0.122, cap, 1.0)
    for name in ("W",):
        out[name] = out[name] * cap
    for name in ("z_front", "z_back"):
        out[name] = out["z_side"] + (out[name] - out["z_side"]) * cap
    return out


def _azimuths(num_cols: int) -> np.ndarray:
    """Column angles theta in [-pi, pi), 0 facing +z; about 3x denser at the
    front than at the back. Column 0 lies on the back seam (theta = -pi) and
    column num_cols / 2 on the face's midline, so columns c and num_cols - c
    mirror each other."""
    if num_cols % 2:
        raise ValueError(f"num_cols must be even for a mirror-symmetric head, got {num_cols}")
    u = np.arange(num_cols) / num_cols * 2.0 - 1.0  # [-1, 1)
    beta = 0.5
    return np.pi * (u - beta * np.sin(np.pi * u) / np.pi)


def _base_surface(y, theta):
    """Ring points before facial features: (..., 3) from heights and angles."""
    prof = _profile(y)
    c = np.cos(theta)
    cf = np.clip(c, 0.0, None)
    # Pointedness that keeps the slope at the sides (c = 0) unchanged.
    front = cf * np.exp(-(prof["p"] - 1.0) * (1.0 - cf))
    back = np.clip(-c, 0.0, None)
    x = prof["W"] * np.sin(theta)
    z = prof["z_side"] + (prof["z_front"] - prof["z_side"]) * front \
        - (prof["z_side"] - prof["z_back"]) * back
    return np.stack([x, np.broadcast_to(y, x.shape), z], axis=-1)


def _feature_offsets(p):
    """Outward offsets (metres) of the facial features at base points p (..., 3)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    front = smoothstep(0.0, 0.05, z)  # face features live on the front
    ax = np.abs(x)
    off = np.zeros_like(x)
    off += 0.004 * np.exp(-0.5 * ((y - 0.048) / 0.007) ** 2) * smoothstep(0.055, 0.02, ax)  # brow ridge
    off -= 0.010 * _gauss2(ax, y, EYE_X, EYE_Y, 0.014, 0.009)  # eye sockets
    # Nose: a ridge growing from the bridge to the tip, then the alae.
    t = smoothstep(0.036, NOSE_TIP_Y, y)
    below = smoothstep(NOSE_TIP_Y - 0.014, NOSE_TIP_Y - 0.003, y)
    width = 0.0065 + 0.005 * t
    off += (0.003 + 0.010 * t ** 1.5) * np.exp(-0.5 * (x / width) ** 2) \
        * smoothstep(0.042, 0.032, y) * below
    off += 0.006 * _gauss2(x, y, 0.0, NOSE_TIP_Y, 0.008, 0.007)
    off += 0.005 * _gauss2(ax, y, 0.014, NOSE_TIP_Y - 0.005, 0.006, 0.005)  # alae
    off += 0.005 * _gauss2(ax, y, 0.048, 0.006, 0.016, 0.012)  # cheekbones
    off -= 0.003 * _gauss2(ax, y, 0.046, -0.040, 0.012, 0.016)  # cheek hollows
    off += 0.005 * _gauss2(x, y, 0.0, MOUTH_Y + 0.008, 0.021, 0.0055)  # upper lip
    off += 0.005 * _gauss2(x, y, 0.0, MOUTH_Y - 0.008, 0.019, 0.0060)  # lower lip
    off -= 0.002 * _gauss2(x, y, 0.0, MOUTH_Y, 0.022, 0.0015)  # the lips' parting line
    off += 0.006 * _gauss2(x, y, 0.0, CHIN_Y + 0.006, 0.014, 0.010)  # chin
    off = off * front
    # Ears on the sides, behind the jaw hinge.
    # Ears on the sides, behind the jaw hinge: flat-topped (a super-Gaussian),
    # so that they stand out of the frontal silhouette as ears do.
    side = smoothstep(0.045, 0.065, ax)
    r2 = ((z + 0.015) / 0.012) ** 2 + ((y - 0.010) / 0.028) ** 2
    off += 0.016 * side * np.exp(-0.5 * r2 ** 2)
    return off


def _outward(p, y):
    """Horizontal outward directions from the ring's axis (unit, (..., 3))."""
    prof = _profile(y)
    d = np.stack([p[..., 0], np.zeros_like(p[..., 0]), p[..., 2] - prof["z_side"]], axis=-1)
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)


def _sphere(center, radius, rings, cols):
    """A UV sphere with its poles on the z axis (front pole = pupil).

    Returns vertices (2 + rings*cols, 3), faces, per-corner polar coordinates
    (F, 3, 2) as (polar angle / pi, azimuth / 2pi) for the disc UV map.
    """
    polar = np.pi * (np.arange(1, rings + 1) / (rings + 1))
    az = 2 * np.pi * np.arange(cols) / cols
    pp, aa = np.meshgrid(polar, az, indexing="ij")
    body = np.stack([np.sin(pp) * np.cos(aa), np.sin(pp) * np.sin(aa), np.cos(pp)], axis=-1)
    verts = np.concatenate([[[0, 0, 1.0]], body.reshape(-1, 3), [[0, 0, -1.0]]]) * radius + center
    idx = 1 + np.arange(rings * cols).reshape(rings, cols)
    back = 1 + rings * cols
    faces, coords = [], []
    for c in range(cols):
        c1 = (c + 1) % cols
        a0, a1 = az[c] / (2 * np.pi), (az[c] + 2 * np.pi / cols) / (2 * np.pi)
        # Front fan; winding chosen so normals point outwards (checked later).
        faces.append([0, idx[0, c], idx[0, c1]])
        coords.append([[0.0, 0.5 * (a0 + a1)], [polar[0] / np.pi, a0], [polar[0] / np.pi, a1]])
        for r in range(rings - 1):
            p0, p1 = polar[r] / np.pi, polar[r + 1] / np.pi
            faces.append([idx[r, c], idx[r + 1, c], idx[r + 1, c1]])
            coords.append([[p0, a0], [p1, a0], [p1, a1]])
            faces.append([idx[r, c], idx[r + 1, c1], idx[r, c1]])
            coords.append([[p0, a0], [p1, a1], [p0, a1]])
        faces.append([back, idx[-1, c1], idx[-1, c]])
        coords.append([[1.0, 0.5 * (a0 + a1)], [polar[-1] / np.pi, a1], [polar[-1] / np.pi, a0]])
    return verts, np.array(faces), np.array(coords)


def _orient_outwards(vertices, faces, center_of):
    """Flips triangles whose normal points towards `center_of(centroid)`."""
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centroid = tri.mean(axis=1)
    inward = np.sum(normal * (centroid - center_of(centroid)), axis=-1) < 0
    faces = faces.copy()
    faces[inward] = faces[inward][:, ::-1]
    return faces, inward


def build_head(num_rings: int = 56, num_cols: int = 88, eye_rings: int = 9,
               eye_cols: int = 16) -> HeadMesh:
    """Builds the template head (deterministic; no randomness).

    The defaults give 5,238 vertices and 10,344 triangles (eyeballs included),
    FLAME's order of size (5,023 and 9,976).
    """
    heights = _ring_heights(num_rings, MOUTH_Y)
    mouth_ring = int(np.argmin(np.abs(heights - MOUTH_Y)))
    theta = _azimuths(num_cols)
    yy, tt = np.meshgrid(heights, theta, indexing="ij")  # (R, C)
    base = _base_surface(yy, tt)
    skin = base + _feature_offsets(base)[..., None] * _outward(base, yy)
    skin_v = np.concatenate([skin.reshape(-1, 3), [[0.0, TOP_Y, float(_profile(np.array(TOP_Y))["z_side"])]]])
    grid = np.arange(num_rings * num_cols).reshape(num_rings, num_cols)
    pole = num_rings * num_cols

    # UVs: column c at u_c, an extra seam column at u = 1 (wrap), ring r at v_r.
    u_cols = np.arange(num_cols + 1) / num_cols  # uniform in the dense parameter; u = 0.5 midline
    v_rows = UV_HEAD_V0 + (1 - UV_HEAD_V0) * (np.arange(num_rings) / num_rings)
    uv_grid = np.stack(np.meshgrid(u_cols, v_rows, indexing="xy"), axis=-1)  # (R, C+1, 2)
    uv_index = np.arange(num_rings * (num_cols + 1)).reshape(num_rings, num_cols + 1)
    uv_coords = [uv_grid.reshape(-1, 2)]
    n_uv = num_rings * (num_cols + 1)

    # Mouth slit: interior columns of the mouth ring whose |x| < half width.
    mouth_cols = [c for c in range(num_cols)
                  if abs(skin[mouth_ring, c, 0]) < MOUTH_HALF_WIDTH and skin[mouth_ring, c, 2] > 0]
    mouth_cols = mouth_cols[1:-1]  # the corners stay shared by both lips
    lower_copy = {}
    extra_v = []
    for c in mouth_cols:
        lower_copy[c] = pole + 1 + len(extra_v)
        extra_v.append(skin[mouth_ring, c])

    # Two triangles per quad between ring r and ring r + 1.
    faces, uv_faces = [], []
    for r in range(num_rings - 1):
        for c in range(num_cols):
            c1 = (c + 1) % num_cols
            a, b, d, e = grid[r, c], grid[r, c1], grid[r + 1, c1], grid[r + 1, c]
            ua, ub, ud, ue = uv_index[r, c], uv_index[r, c + 1], uv_index[r + 1, c + 1], uv_index[r + 1, c]
            faces += [[a, b, d], [a, d, e]]
            uv_faces += [[ua, ub, ud], [ua, ud, ue]]
    faces = np.array(faces)
    uv_faces = np.array(uv_faces)
    # The band between ring mouth_ring-1 and mouth_ring is the lower lip's:
    # swap its mouth-ring corners to the copies.
    band = slice(2 * num_cols * (mouth_ring - 1), 2 * num_cols * mouth_ring)
    sub = faces[band]
    for c, copy in lower_copy.items():
        sub[sub == grid[mouth_ring, c]] = copy
    faces[band] = sub

    # Crown fan with one pole UV per wedge.
    fan, fan_uv = [], []
    for c in range(num_cols):
        c1 = (c + 1) % num_cols
        fan.append([grid[-1, c], grid[-1, c1], pole])
        uv_coords.append([[(c + 0.5) / num_cols, 1.0]])
        fan_uv.append([uv_index[-1, c], uv_index[-1, c + 1], n_uv])
        n_uv += 1
    faces = np.concatenate([faces, np.array(fan)])
    uv_faces = np.concatenate([uv_faces, np.array(fan_uv)])
    skin_vertices = np.concatenate([skin_v, np.array(extra_v).reshape(-1, 3)])

    def head_axis(points):
        return np.stack([np.zeros(len(points)), points[:, 1],
                         _profile(points[:, 1])["z_side"]], axis=-1)

    faces, flipped = _orient_outwards(skin_vertices, faces, head_axis)
    uv_faces[flipped] = uv_faces[flipped][:, ::-1]  # keep corners paired

    # Eyeballs in the sockets, protruding 4 mm beyond the socket's floor.
    eye_centers = []
    all_v, all_f, all_uvf = [skin_vertices], [faces], [uv_faces]
    uv_all = np.concatenate(uv_coords)
    part = [np.zeros(len(skin_v), np.int8), np.ones(len(extra_v), np.int8)]
    for side, sign in ((2, 1.0), (3, -1.0)):
        ex = sign * EYE_X
        _, _, surf = frontmost_triangle(skin_vertices, faces, (ex, EYE_Y))
        center = np.array([ex, EYE_Y, surf - EYEBALL_RADIUS + 0.004])
        eye_centers.append(center)
        ev, ef, ecoord = _sphere(center, EYEBALL_RADIUS, eye_rings, eye_cols)
        ef, flipped = _orient_outwards(ev, ef, lambda pts, c=center: np.broadcast_to(c, pts.shape))
        ecoord[flipped] = ecoord[flipped][:, ::-1]
        # Disc map: radius = polar/pi * 0.04, centred in the strip below the head;
        # mirrored for the right eye so that u -> 1-u swaps the two eyes.
        cu = 0.04 if sign > 0 else 0.96
        rad = ecoord[..., 0] * 0.038
        ang = 2 * np.pi * ecoord[..., 1]
        disc = np.stack([cu + sign * rad * np.cos(ang), 0.04 + rad * np.sin(ang)], axis=-1)
        base_uv = len(uv_all)
        uv_all = np.concatenate([uv_all, disc.reshape(-1, 2)])
        all_uvf.append(base_uv + np.arange(ef.size).reshape(-1, 3))
        offset = sum(len(v) for v in all_v)
        all_v.append(ev)
        all_f.append(ef + offset)
        part.append(np.full(len(ev), side, np.int8))

    vertices = np.concatenate(all_v)
    faces = np.concatenate(all_f)
    ring = np.full(len(vertices), -1, np.int64)
    ring[: num_rings * num_cols] = np.repeat(np.arange(num_rings), num_cols)
    ring[pole] = num_rings
    ring[pole + 1: pole + 1 + len(extra_v)] = mouth_ring
    head_faces = np.zeros(len(faces), bool)
    head_faces[: len(all_f[0])] = True
    return HeadMesh(vertices=vertices, faces=faces.astype(np.int64),
                    uv_coords=uv_all, uv_faces=np.concatenate(all_uvf).astype(np.int64),
                    part=np.concatenate(part), head_faces=head_faces, ring=ring,
                    eye_centers=np.array(eye_centers), mouth_ring=mouth_ring)


def frontmost_triangle(vertices, faces, xy):
    """The frontmost triangle under the point xy of the frontal view (a ray
    along -z): its index, barycentric coordinates (3,) and the hit's z.

    Raises RuntimeError if no triangle lies under xy.
    """
    tri = vertices[faces]
    a, b, c = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
    v0, v1, v2 = b - a, c - a, np.asarray(xy) - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    safe = np.where(np.abs(den) < 1e-15, 1.0, den)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / safe
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / safe
    l0 = 1.0 - l1 - l2
    inside = (np.abs(den) > 1e-15) & (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
    z = l0 * tri[:, 0, 2] + l1 * tri[:, 1, 2] + l2 * tri[:, 2, 2]
    best = int(np.argmax(np.where(inside, z, -np.inf)))
    if not inside[best]:
        raise RuntimeError(f"no triangle under the frontal position {xy}")
    bary = np.clip(np.array([l0[best], l1[best], l2[best]]), 0.0, 1.0)
    return best, bary / bary.sum(), float(z[best])
