"""Identity (300) and expression (100) blendshape bases of the procedural model.

Each basis starts with named, designed deformations (head size, face length,
nose, chin...; smile, pucker, brow raise...) followed by random smooth fields
(sums of Gaussian bumps on the head, symmetric or antisymmetric left-right, their
radius shrinking with the component's index). Like FLAME's PCA bases they are
then orthonormalised in order (QR) and scaled so that one unit of a coefficient
moves the face by a plausible amount that decays with the index. Eyeballs move
rigidly with the socket (they take the field's value at their centre).
"""

from __future__ import annotations

import numpy as np

from face3d_jax.flame.procedural.head import (CHIN_Y, EYE_X, EYE_Y, MOUTH_HALF_WIDTH, MOUTH_Y,
                                              NOSE_TIP_Y, HeadMesh, smoothstep)
from face3d_jax.flame.procedural.rig import below_lips

NUM_SHAPE = 300
NUM_EXPRESSION = 100
# Largest displacement (metres) of one unit of component k (`amplitudes`):
# (a, b, b_designed): a * (k + 1) ** -b_designed over the designed components,
# continued by a power law of exponent b over the random ones. The designed
# identity components (proportions, nose, chin, eyes...) decay slowly, so
# identity shows in what face recognition keys on; the random fields stay
# small, as bumps many centimetres wide read as lumps, not as faces.
SHAPE_AMPLITUDE = (0.012, 0.8, 0.6)
EXPRESSION_AMPLITUDE = (0.008, 0.6, 0.6)


def amplitudes(count: int, designed: int, amplitude) -> np.ndarray:
    """(count,) float64 largest displacement of each component (metres)."""
    a, b, b_designed = amplitude
    k = np.arange(count) + 1.0
    at_designed = a * designed ** -b_designed
    return np.where(k <= designed, a * k ** -b_designed, at_designed * (k / designed) ** -b)


def _bump(p, cx, cy, sx, sy):
    return np.exp(-0.5 * (((p[:, 0] - cx) / sx) ** 2 + ((p[:, 1] - cy) / sy) ** 2))


def _front(p):
    return smoothstep(-0.01, 0.04, p[:, 2])


def _vec(x=0.0, y=0.0, z=0.0, n=None):
    return np.stack(np.broadcast_arrays(x, y, z), axis=-1) if n is None else n


def _side(x):
    """A smooth sign of x: fields that push the two sides apart (eye spacing,
    a smile's corners) must not tear the surface at the midline, where a
    sign(x) would fold it (a visible crease down the nose bridge)."""
    return np.tanh(x / 0.005)


def _named_shape_fields(p, normals):
    """Designed identity deformations (N, 3), in order of importance."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    sx = _side(x)
    front = _front(p)
    lower = smoothstep(EYE_Y, -0.06, y) * (y > -0.15)
    nose = _bump(p, 0.0, NOSE_TIP_Y + 0.01, 0.012, 0.02) * front
    chin = _bump(p, 0.0, CHIN_Y, 0.02, 0.015) * front
    cheek = (_bump(p, 0.048, 0.005, 0.018, 0.015) + _bump(p, -0.048, 0.005, 0.018, 0.015)) * front
    brow = np.exp(-0.5 * ((y - 0.046) / 0.008) ** 2) * smoothstep(0.06, 0.02, np.abs(x)) * front
    lips = _bump(p, 0.0, MOUTH_Y, 0.022, 0.01) * front
    eyes = (_bump(p, EYE_X, EYE_Y, 0.02, 0.014) + _bump(p, -EYE_X, EYE_Y, 0.02, 0.014)) * front
    crown = smoothstep(0.05, 0.11, y)
    neck = smoothstep(-0.09, -0.13, y)
    centre = np.array([0.0, -0.01, -0.005])
    return [
        p - centre,                                           # overall head size
        _vec(x, 0 * x, 0 * x),                                # head width
        _vec(0 * x, (y - EYE_Y) * lower, 0 * x),              # face length
        _vec(0 * x, 0 * x, np.minimum(z, 0.0)),               # skull depth
        _vec(x * lower * (1 - neck), 0 * x, 0 * x),           # jaw width
        nose[:, None] * _vec(0 * x, -0.3 + 0 * x, 1 + 0 * x),  # nose projection
        _vec(x * nose, 0 * x, 0 * x),                          # nose width
        chin[:, None] * _vec(0 * x, -0.5 + 0 * x, 1 + 0 * x),  # chin protrusion
        cheek[:, None] * normals,                              # cheekbones
        _vec(sx * eyes, 0 * x, 0 * x),                         # eye spacing
        brow[:, None] * normals,                               # brow ridge
        lips[:, None] * normals,                               # lip fullness
        _vec(0 * x, crown * (y - 0.05), 0 * x),                # crown height
        neck[:, None] * _vec(x, 0 * x, z),                     # neck thickness
        _vec(0 * x, 0 * x, z * smoothstep(0.03, 0.08, y) * front),  # forehead slope
    ]


def _named_expression_fields(p, normals, lower_lip):
    """Designed expression deformations (N, 3): the face's main actions."""
    x, y = p[:, 0], p[:, 1]
    sx = _side(x)
    front = _front(p)
    zero = 0 * x
    below_mouth = below_lips(p, lower_lip)
    corners = (_bump(p, MOUTH_HALF_WIDTH, MOUTH_Y, 0.012, 0.012)
               + _bump(p, -MOUTH_HALF_WIDTH, MOUTH_Y, 0.012, 0.012)) * front
    left_corner = _bump(p, MOUTH_HALF_WIDTH, MOUTH_Y, 0.012, 0.012) * front
    right_corner = _bump(p, -MOUTH_HALF_WIDTH, MOUTH_Y, 0.012, 0.012) * front
    lips = _bump(p, 0.0, MOUTH_Y, 0.024, 0.011) * front
    upper_lip = lips * (1 - below_mouth)
    lower_lip_f = lips * below_mouth
    lower_face = below_mouth * _bump(p, 0.0, MOUTH_Y - 0.02, 0.035, 0.03) * front
    brows = np.exp(-0.5 * ((y - 0.045) / 0.012) ** 2) * smoothstep(0.065, 0.02, np.abs(x)) * front
    inner_brows = (_bump(p, 0.014, 0.044, 0.01, 0.01) + _bump(p, -0.014, 0.044, 0.01, 0.01)) * front
    lid_l = _bump(p, EYE_X, EYE_Y + 0.008, 0.014, 0.006) * front
    lid_r = _bump(p, -EYE_X, EYE_Y + 0.008, 0.014, 0.006) * front
    cheeks = (_bump(p, 0.045, -0.03, 0.016, 0.018) + _bump(p, -0.045, -0.03, 0.016, 0.018)) * front
    nose_sides = (_bump(p, 0.012, NOSE_TIP_Y + 0.008, 0.007, 0.008)
                  + _bump(p, -0.012, NOSE_TIP_Y + 0.008, 0.007, 0.008)) * front
    return [
        _vec(zero, -lower_face, -0.3 * lower_face),                 # mouth open
        corners[:, None] * _vec(0.5 * sx, 1 + zero, -0.4 + zero),    # smile
        lips[:, None] * _vec(-0.6 * x / MOUTH_HALF_WIDTH, zero, 1 + zero),  # pucker
        _vec(sx * corners, zero, zero),                               # mouth stretch
        _vec(zero, brows, zero),                                      # brow raise
        inner_brows[:, None] * _vec(-0.6 * sx, -1 + zero, zero),      # brow furrow
        _vec(zero, -lid_l, zero),                                     # left eye close
        _vec(zero, -lid_r, zero),                                     # right eye close
        cheeks[:, None] * normals,                                    # cheek puff
        _vec(zero, -0.5 * upper_lip + 0.5 * lower_lip_f, -0.5 * lips),  # lip press
        _vec(zero, upper_lip, zero),                                  # upper lip raise
        _vec(zero, -lower_lip_f, zero),                               # lower lip depress
        _vec(zero, nose_sides, zero),                                 # nose wrinkle
        _vec(lips, zero, zero),                                       # mouth sideways
        # One-sided actions as asymmetries: left minus right (the symmetric
        # sums are the smile and brow raise above; both would be dependent).
        left_corner[:, None] * _vec(0.5 + zero, 1 + zero, -0.4 + zero)
        - right_corner[:, None] * _vec(-0.5 + zero, 1 + zero, -0.4 + zero),  # lopsided smile
        _vec(zero, brows * sx, zero),                                 # one brow raised
    ]


def _random_fields(rng, p, normals, count, radius, region, max_bumps=4):
    """`count` smooth fields (N, 3), each a few Gaussian bumps centred on
    region vertices plus their mirror images (alternately symmetric and
    antisymmetric), pushing mostly along the normal."""
    candidates = np.flatnonzero(region)
    fields = []
    for k in range(count):
        r = radius(k)
        field = np.zeros_like(p)
        sign = 1.0 if k % 2 == 0 else -1.0
        for _ in range(rng.integers(1, max_bumps + 1)):
            c = p[rng.choice(candidates)]
            tangent = rng.normal(size=3) * 0.4
            amp = rng.normal()
            for mirror in (False, True):
                cm = c * np.array([-1.0, 1.0, 1.0]) if mirror else c
                g = np.exp(-0.5 * np.sum((p - cm) ** 2, axis=1) / r ** 2)
                t = tangent * np.array([-1.0, 1.0, 1.0]) if mirror else tangent
                s = sign if mirror else 1.0
                field += s * amp * g[:, None] * (normals + t)
        fields.append(field)
    return fields


def _orthonormal_scaled(fields, amplitude, designed, eyes_follow):
    """Orthonormalises fields in order and scales component k to a largest
    displacement of `amplitudes(K, designed, amplitude)[k]`. (V, 3, K)."""
    mat = np.stack([eyes_follow(f).reshape(-1) for f in fields], axis=1)
    q, r = np.linalg.qr(mat)
    # A field (nearly) spanned by earlier ones would leave an arbitrary column.
    independent = np.abs(np.diag(r)) / np.linalg.norm(mat, axis=0)
    if independent.min() < 1e-3:
        raise RuntimeError(f"basis field {int(independent.argmin())} is (nearly) a combination "
                           f"of earlier ones ({independent.min():.1e})")
    q = q * np.sign(np.diag(r))[None, :]  # keep each designed direction's sign
    dirs = q.reshape(-1, 3, len(fields))
    peak = np.max(np.linalg.norm(dirs, axis=1), axis=0)
    target = amplitudes(len(fields), designed, amplitude)
    return dirs * (target / peak)[None, None, :]


def make_bases(head: HeadMesh, normals: np.ndarray, rng: np.random.Generator):
    """Returns shapedirs (V, 3, 300) and exprdirs (V, 3, 100), float64."""
    p = head.vertices
    skin = head.part <= 1

    def eyes_follow(field):
        field = field.copy()
        for side, centre in ((2, head.eye_centers[0]), (3, head.eye_centers[1])):
            nearest = np.argmin(np.where(skin, np.linalg.norm(p - centre, axis=1), np.inf))
            field[head.part == side] = field[nearest]
        return field

    skin_region = skin & (p[:, 1] > -0.15)
    shape_named = _named_shape_fields(p, normals)
    shape_random = _random_fields(
        rng, p, normals, NUM_SHAPE - len(shape_named),
        lambda k: 0.06 * (1.0 + k / 12.0) ** -0.3, skin_region)
    shapedirs = _orthonormal_scaled(shape_named + shape_random, SHAPE_AMPLITUDE, len(shape_named),
                                     eyes_follow)

    face_region = skin & (p[:, 2] > 0.02) & (p[:, 1] > -0.10) & (p[:, 1] < 0.065)
    expr_named = _named_expression_fields(p, normals, head.part == 1)
    expr_random = _random_fields(
        rng, p, normals, NUM_EXPRESSION - len(expr_named),
        lambda k: 0.025 * (1.0 + k / 20.0) ** -0.4, face_region, max_bumps=2)
    # Expression keeps the skull still: fade every field out away from the face.
    face_mask = (_front(p) * smoothstep(-0.13, -0.10, p[:, 1]) * smoothstep(0.08, 0.06, p[:, 1]))
    expr_fields = [f * face_mask[:, None] for f in expr_named + expr_random]
    # Eyeballs keep still under expression (FLAME's barely move them).
    exprdirs = _orthonormal_scaled(expr_fields, EXPRESSION_AMPLITUDE, len(expr_named),
                                   lambda f: f * skin[:, None])
    return shapedirs, exprdirs
