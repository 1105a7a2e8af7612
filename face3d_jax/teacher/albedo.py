"""The teacher's procedural UV albedo and wrinkle displacement maps.

Both maps are functions of each texel's template position (see flame/uv.py)
and of a vector of identity attributes read from w; the wrinkles' depth also
follows the expression (forehead lines deepen as the brows rise, crow's feet and
nasolabial folds as the face smiles), as DECA's expression-conditioned details
do. Everything is jnp and batched, so the maps are drawn on the accelerator at
any size (the paper's albedo is 1024^2, its displacement 256^2).

Skin: a tone between a light and a dark skin colour (a one-parameter skin-tone
axis with a warm/cool undertone), cheek and nose redness, darker under the
eyes, low-frequency blotches, freckles and pores, a beard shadow on some;
lips (between the landmarks' lip contours, with the line where they part),
nostrils and brows (thick at the head, tapering) placed by the template's
landmarks; hair above a hairline; eyeballs with sclera, iris and pupil, and
lids painted on them with the lash line (the meshes are too coarse to model
lids: a few vertices span an eye). These are what face networks key on:
with them, dlib's detector finds most renders and its network tells most
identities apart (`face3d_eval.identity_separability`). Noise is "solid" (a sum of random plane waves in 3D, a Gaussian random
field in the limit of many waves), so it does not depend on the UV layout, and
each band's frequency is capped by the map's texel size so that nothing aliases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from face3d_jax.flame.uv import FaceRegions, UVBake

# Identity attribute slots (standardised readouts of w, about N(0, 1)).
TONE, UNDERTONE, CHEEK_RED, NOSE_RED, LIP_RED, LIP_DARK, HAIR_LIGHT, HAIR_RED, \
    BROW_THICK, BROW_DENSE, IRIS_HUE, IRIS_LIGHT, FRECKLES, PORES, BLOTCHES, UNDER_EYE, \
    HAIRLINE, AGE, FOREHEAD_PERIOD, FOREHEAD_BEND, BEARD, BROW_ARCH, LASHES, LIP_FULL, \
    EYE_OPEN = range(25)
NUM_ATTRIBUTES = 28  # 25 used, 3 spare so the layout can grow without re-seeding
# Noise bands: blotches, freckles, pores/fine bumps, hair streaks.
NOISE_BANDS = 4
WAVES_PER_BAND = 32
# Band frequencies in cycles per metre (before the Nyquist cap of the map).
BAND_FREQUENCIES = (25.0, 220.0, 700.0, 400.0)

LIGHT_SKIN = (0.86, 0.68, 0.58)
DARK_SKIN = (0.30, 0.19, 0.13)
SCLERA = (0.80, 0.76, 0.72)
LASH = (0.045, 0.035, 0.03)


def noise_waves(rng: np.random.Generator, num_bands: int = NOISE_BANDS,
                waves: int = WAVES_PER_BAND):
    """(num_bands, waves, 3) float32 random plane-wave directions with
    magnitudes in [0.5, 1.5] (scaled by each band's frequency at use; the
    spread keeps the sum from looking like the rings of a single frequency)."""
    direction = rng.standard_normal((num_bands, waves, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    return (direction * rng.uniform(0.5, 1.5, (num_bands, waves, 1))).astype(np.float32)


def solid_noise(points, waves, frequency, phases):
    """A zero-mean, unit-variance random field sum_k cos(2 pi f_k . p + phi_k).

    cos(a + phi) = cos a cos phi - sin a sin phi: the waves at the texels are
    shared by the batch, so the per-sample cost is one small matrix product.

    Args:
      points: (S, S, 3) float32 positions (metres).
      waves: (K, 3) float32 unit-ish directions; frequency: scalar cycles/m.
      phases: (B, K) float32.
    Returns:
      (B, S, S) float32.
    """
    arg = 2.0 * jnp.pi * frequency * jnp.einsum("hwc,kc->hwk", points, waves)
    scale = jnp.sqrt(2.0 / waves.shape[0])
    return scale * (jnp.einsum("hwk,bk->bhw", jnp.cos(arg), jnp.cos(phases))
                    - jnp.einsum("hwk,bk->bhw", jnp.sin(arg), jnp.sin(phases)))


def band_frequency(band: int, texel_m: float) -> tuple[float, float]:
    """The band's frequency and gain on a map of texel size `texel_m`.

    A band finer than the map resolves (0.35 cycles per texel, below Nyquist)
    is drawn at that limit with its amplitude scaled by limit / frequency: a
    low-resolution map holds the blurred remains of the pores, not pores the
    size of its texels.
    """
    limit = 0.35 / max(texel_m, 1e-6)
    wanted = BAND_FREQUENCIES[band]
    return min(wanted, limit), min(1.0, limit / wanted)


def _smoothstep(edge0, edge1, x):
    t = jnp.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(points, center, sigma):
    d2 = jnp.sum((points - center) ** 2, axis=-1)
    return jnp.exp(-0.5 * d2 / sigma ** 2)


def _segment_distance(xy, a, b):
    """Distance in the frontal plane from points (..., 2) to the segment a-b."""
    ab = b - a
    t = jnp.clip(jnp.sum((xy - a) * ab, -1) / jnp.maximum(jnp.sum(ab * ab), 1e-12), 0.0, 1.0)
    return jnp.linalg.norm(xy - (a + t[..., None] * ab), axis=-1)


def _segment_distance_and_t(xy, a, b):
    """`_segment_distance` and the position t in [0, 1] of the closest point."""
    ab = b - a
    t = jnp.clip(jnp.sum((xy - a) * ab, -1) / jnp.maximum(jnp.sum(ab * ab), 1e-12), 0.0, 1.0)
    return jnp.linalg.norm(xy - (a + t[..., None] * ab), axis=-1), t


def _gauss2d(x, y, cx, cy, sx, sy):
    return jnp.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


# The outer lip contour: upper (iBUG 48..54) and lower (54..59, 48), left to right.
LIP_UPPER = (48, 49, 50, 51, 52, 53, 54)
LIP_LOWER = (48, 59, 58, 57, 56, 55, 54)


def _between_contours(regions, x, y, upper, lower, grow, soft):
    """(B, S, S) in [0, 1]: 1 between two landmark polylines that
    run left to right (piecewise linear in x), grown by `grow` (B, 1, 1) metres up
    and down, with edges `soft` metres wide; 0 beyond their x range."""
    ux = jnp.stack([_lmk(regions, i)[0] for i in upper])
    uy = jnp.stack([_lmk(regions, i)[1] for i in upper])
    lx = jnp.stack([_lmk(regions, i)[0] for i in lower])
    ly = jnp.stack([_lmk(regions, i)[1] for i in lower])
    top = jnp.interp(x, ux, uy)[None] + grow
    bottom = jnp.interp(x, lx, ly)[None] - grow
    inside_x = _smoothstep(ux[-1] + soft, ux[-1] - soft, jnp.abs(x))[None]
    return _smoothstep(top + soft, top - soft, y[None]) \
        * _smoothstep(bottom - soft, bottom + soft, y[None]) * inside_x


def _lerp(a, b, t):
    return a + (b - a) * t


def _col(rgb):
    return jnp.asarray(rgb, jnp.float32)


def _lmk(regions: FaceRegions, ibug: int):
    return regions.landmarks[ibug - 17]


def albedo_map(bake: UVBake, regions: FaceRegions, waves, attributes, phases):
    """The UV albedo of each identity.

    Args:
      bake: an S x S `UVBake` (S = albedo size).
      regions: the template's `FaceRegions`.
      waves: (NOISE_BANDS, K, 3) float32 from `noise_waves`.
      attributes: (B, NUM_ATTRIBUTES) float32 standardised identity attributes.
      phases: (B, NOISE_BANDS, K) float32 noise phases (radians).
    Returns:
      (B, S, S, 3) float32 albedo in [0.01, 1], row 0 at v = 1.
    """
    p = bake.position
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    a = attributes[:, :, None, None]  # (B, NA, 1, 1) broadcast over texels
    sig = jax.nn.sigmoid
    front = _smoothstep(0.0, 0.04, z)[None]

    def noise(band):
        frequency, gain = band_frequency(band, bake.texel_m)
        return gain * solid_noise(p, waves[band], frequency, phases[:, band])

    tone = sig(1.3 * a[:, TONE])[..., None]
    skin = _lerp(_col(LIGHT_SKIN), _col(DARK_SKIN), tone)
    skin = skin * (1.0 + 0.06 * jnp.tanh(a[:, UNDERTONE])[..., None] * _col((1.0, 0.1, -1.0)))
    skin = jnp.broadcast_to(skin, (attributes.shape[0],) + p.shape[:2] + (3,))

    # Redness on the cheeks (between the outer eye and mouth corners) and nose.
    cheeks = sum(_gauss(p, 0.5 * (_lmk(regions, e) + _lmk(regions, m))
                        + jnp.array([s * 0.01, 0.0, 0.0]), 0.016)
                 for e, m, s in ((36, 48, -1.0), (45, 54, 1.0)))
    nose = _gauss(p, _lmk(regions, 30), 0.010)
    red = 0.10 * sig(a[:, CHEEK_RED] - 0.5) * cheeks + 0.08 * sig(a[:, NOSE_RED] - 0.5) * nose
    color = skin * (1.0 + red[..., None] * _col((0.5, -0.45, -0.4)))
    under = sum(_gauss(p, _lmk(regions, c) + jnp.array([0.0, -0.011, 0.0]), 0.007)
                for c in (37, 40, 43, 46))
    color = color * (1.0 - (0.12 * sig(a[:, UNDER_EYE]) * under)[..., None]
                     * _col((1.0, 1.05, 1.0)))
    color = color * (1.0 + (0.05 * sig(a[:, BLOTCHES]) * noise(0))[..., None]
                     * _col((1.0, 0.85, 0.8)))
    # Freckles: the upper tail of a band-limited field, on the upper face.
    freckle_zone = front * _smoothstep(-0.04, 0.0, y) * _smoothstep(0.075, 0.04, y)
    density = sig(1.5 * a[:, FRECKLES] - 1.5)
    spots = jnp.clip(noise(1) - (2.3 - 1.2 * density), 0.0, 0.8) / 0.8
    color = color * (1.0 - (0.45 * density * spots * freckle_zone)[..., None]
                     * _col((0.8, 1.0, 1.2)))
    pores = noise(2)
    pore_depth = 0.05 * sig(a[:, PORES])
    color = color * (1.0 + (0.3 * pore_depth * pores
                            - pore_depth * jnp.clip(pores - 1.2, 0.0, 1.0))[..., None])

    # Lips: between the outer lip contours (iBUG 48..54 above, 54..59, 48
    # below), fuller or thinner, with a darker line where they part.
    lips = _between_contours(regions, x, y, LIP_UPPER, LIP_LOWER,
                             0.0015 * jnp.tanh(a[:, LIP_FULL]), 0.0012)
    mouth_z = _lmk(regions, 51)[2]
    lips = lips * _smoothstep(mouth_z - 0.03, mouth_z - 0.012, z)[None]
    lip_tint = _col((0.92, 0.55, 0.56)) * (1.0 - 0.25 * sig(a[:, LIP_DARK])[..., None]) \
        * (1.0 + 0.12 * jnp.tanh(a[:, LIP_RED])[..., None] * _col((0.4, -0.6, -0.3)))
    color = _lerp(color, color * lip_tint, lips[..., None])
    corners = (_lmk(regions, 48), _lmk(regions, 54))
    parting = _smoothstep(0.0012, 0.0003, jnp.abs(y - corners[0][1]))[None] \
        * _smoothstep(jnp.abs(corners[0][0]) + 0.002, jnp.abs(corners[0][0]) - 0.002,
                      jnp.abs(x))[None] * front
    color = color * (1.0 - 0.55 * parting)[..., None]
    # Nostrils: dark openings on the underside of the nose, beside its base.
    tip = _lmk(regions, 30)
    base = _lmk(regions, 33)
    nostrils = sum(_gauss2d(x, y, s * 0.0062, base[1] + 0.004, 0.0030, 0.0018)
                   for s in (-1.0, 1.0))
    under = _smoothstep(tip[2] - 0.002, tip[2] - 0.006, z) * _smoothstep(
        base[2] - 0.012, base[2] - 0.004, z)
    color = color * (1.0 - 0.8 * jnp.clip(nostrils * under, 0.0, 1.0))[None, ..., None]
    # Beard shadow on the chin, jaw and upper lip (a minority of identities):
    # below a line from under the nose down the cheeks to the mouth's level,
    # and above the throat.
    chin = _lmk(regions, 57)
    cut = base[1] - 0.005 - 0.45 * jnp.maximum(jnp.abs(x) - 0.016, 0.0)
    beard_zone = _smoothstep(cut, cut - 0.006, y) * _smoothstep(chin[1] - 0.045, chin[1] - 0.03, y) \
        * _smoothstep(0.068, 0.058, jnp.abs(x)) * _smoothstep(0.0, 0.03, z) \
        * (1.0 - lips)
    beard = 0.4 * sig(2.0 * a[:, BEARD] - 2.0) * (0.85 + 0.15 * noise(1)) * beard_zone
    color = color * (1.0 - beard[..., None] * _col((1.0, 0.96, 0.88)))

    # Hair colour (brows and scalp): dark brown to blond, more or less red.
    light = sig(1.2 * a[:, HAIR_LIGHT] - 1.0)[..., None]
    hair = _lerp(_col((0.06, 0.045, 0.035)), _col((0.55, 0.42, 0.26)), light)
    hair = hair * (1.0 + 0.25 * sig(a[:, HAIR_RED] - 1.0)[..., None] * _col((0.6, -0.1, -0.5)))
    streaks = noise(3)
    hair_px = hair * (1.0 + 0.12 * streaks[..., None])
    # Brows: below the brow landmarks (17..21 and 22..26, which trace the
    # brows' upper edge), thick at the head and tapering to the tail.
    xy = p[..., :2]
    brows = jnp.zeros_like(color[..., 0])
    thick = 0.009 + 0.003 * jnp.tanh(a[:, BROW_THICK])  # height at the head
    # BROW_ARCH moves the brows up or down relative to the landmarks' line.
    xy_b = xy[None] - jnp.stack([jnp.zeros_like(a[:, BROW_ARCH]),
                                 0.0015 * jnp.tanh(a[:, BROW_ARCH])], axis=-1)  # (B, 1, 1, 2)
    for inner, step in ((21, -1), (22, 1)):
        dist = jnp.full(xy_b.shape[:-1], jnp.inf)
        along = jnp.zeros(xy_b.shape[:-1])
        for k in range(4):
            a0 = _lmk(regions, inner + step * k)[:2] + jnp.array([0.0, -0.0025])
            a1 = _lmk(regions, inner + step * (k + 1))[:2] + jnp.array([0.0, -0.0025])
            d, t = _segment_distance_and_t(xy_b, a0, a1)
            closer = d < dist
            dist = jnp.where(closer, d, dist)
            along = jnp.where(closer, (k + t) / 4.0, along)
        half = 0.5 * thick * (1.0 - 0.6 * along)
        brows = jnp.maximum(brows, _smoothstep(half, 0.55 * half, dist))
    brows = brows * front * (0.65 + 0.3 * sig(a[:, BROW_DENSE]) + 0.1 * streaks)
    color = _lerp(color, hair_px * 0.8, jnp.clip(brows, 0.0, 1.0)[..., None])
    # Scalp hair above a hairline that drops from the forehead to the sides.
    hairline = _lerp(0.02, 0.072 + 0.008 * jnp.tanh(a[:, HAIRLINE]),
                     _smoothstep(-0.06, 0.05, z)[None])
    scalp = _smoothstep(hairline - 0.002, hairline + 0.012, y[None] + 0.002 * streaks)
    color = _lerp(color, hair_px, scalp[..., None])

    # Around the eyes: the lash line along the rim where the lids meet the
    # eyeball (heavier on the upper lid) and a slightly darker upper lid.
    rim = jnp.zeros(p.shape[:2])
    lid = jnp.zeros(p.shape[:2])
    for centre in regions.eye_centers:
        d_eye = jnp.linalg.norm(p - centre, axis=-1)
        above = _smoothstep(centre[1] - 0.003, centre[1] + 0.002, y)
        width = 0.0009 + 0.0011 * above
        rim = jnp.maximum(rim, _smoothstep(regions.eye_radius + width + 0.0006,
                                           regions.eye_radius + 0.0003, d_eye)
                          * (0.55 + 0.45 * above))
        lid = jnp.maximum(lid, above * _smoothstep(regions.eye_radius + 0.009,
                                                   regions.eye_radius + 0.003, d_eye))
    skin_only = (bake.eye < 0.5).astype(jnp.float32)
    lashes = (0.75 + 0.25 * sig(a[:, LASHES])) * rim[None] * skin_only[None]
    color = color * (1.0 - 0.12 * lid * skin_only)[None, ..., None]
    color = _lerp(color, _col(LASH), jnp.clip(lashes, 0.0, 1.0)[..., None])

    # Eyeballs: sclera, iris and pupil by the angle from each eye's forward axis.
    rel = p[None] - regions.eye_centers[:, None, None]  # (2, S, S, 3)
    dist_eye = jnp.linalg.norm(rel, axis=-1)
    nearest = jnp.argmin(dist_eye, axis=0)
    cos_angle = jnp.take_along_axis(rel[..., 2] / jnp.maximum(dist_eye, 1e-9), nearest[None], 0)[0]
    iris = _smoothstep(jnp.cos(0.52), jnp.cos(0.44), cos_angle)[None, ..., None]
    pupil = _smoothstep(jnp.cos(0.22), jnp.cos(0.17), cos_angle)[None, ..., None]
    iris_color = _lerp(_col((0.28, 0.16, 0.07)), _col((0.30, 0.45, 0.58)),
                       sig(1.5 * a[:, IRIS_HUE] - 0.8)[..., None])
    iris_color = iris_color * (0.7 + 0.5 * sig(a[:, IRIS_LIGHT])[..., None])
    eye_px = _lerp(_lerp(_col(SCLERA), iris_color, iris), _col((0.02, 0.02, 0.02)), pupil)
    # The lids: only an almond-shaped opening of the eyeball shows; around
    # it the eyeball is painted as the lids that would cover it (the skin,
    # a little darker), with the lash line along the opening. The mesh is too
    # coarse for lids (a few vertices across an eye), so they are painted.
    rel_n = jnp.take_along_axis(rel, nearest[None, ..., None], 0)[0] / regions.eye_radius
    ex, ey = rel_n[..., 0], rel_n[..., 1]
    u = jnp.clip(ex / 0.72, -1.0, 1.0)
    opening_h = (1.0 + 0.18 * jnp.tanh(a[:, EYE_OPEN]))  # (B, 1, 1)
    upper = (0.30 * (1.0 - u * u) ** 0.7 + 0.03)[None] * opening_h
    lower = (-0.22 * (1.0 - u * u) ** 0.9 + 0.02)[None] * opening_h
    soft = 0.035
    inside = _smoothstep(upper + soft, upper - soft, ey[None]) \
        * _smoothstep(lower - soft, lower + soft, ey[None]) \
        * _smoothstep(0.74, 0.68, jnp.abs(ex))[None] * (rel_n[..., 2] > 0)[None]
    lid = skin * 0.88
    eye_px = _lerp(lid, eye_px, inside[..., None])
    lash_w = 0.09 * (0.8 + 0.4 * sig(a[:, LASHES]))
    lash_line = jnp.maximum(_smoothstep(lash_w, 0.0, jnp.abs(ey[None] - upper - 0.02)),
                            0.5 * _smoothstep(0.6 * lash_w, 0.0, jnp.abs(ey[None] - lower + 0.02))) \
        * _smoothstep(0.8, 0.6, jnp.abs(ex))[None]
    eye_px = _lerp(eye_px, _col(LASH), jnp.clip(lash_line, 0.0, 1.0)[..., None])
    color = _lerp(color, eye_px, (bake.eye > 0.5)[None, ..., None].astype(jnp.float32))
    # Texels outside every UV island show the plain skin (mip-maps blend them in).
    color = jnp.where(bake.covered[None, ..., None] > 0, color, skin)
    return jnp.clip(color, 0.01, 1.0).astype(jnp.float32)


def wrinkle_map(bake: UVBake, regions: FaceRegions, waves, attributes, phases, brow_raise,
                smile, max_displacement: float):
    """The UV displacement of each face: forehead lines, crow's feet,
    nasolabial folds and fine skin relief (metres, outward positive).

    Args:
      bake: an S x S `UVBake` (S = displacement size).
      regions: the template's `FaceRegions`.
      waves, attributes, phases: as for `albedo_map`.
      brow_raise: (B,) float32 brow lift of the expression (mm).
      smile: (B,) float32 mouth-corner lift of the expression (mm).
      max_displacement: bound of the map (metres; the paper's 0.01, DECA 0.004).
    Returns:
      (B, S, S, 1) float32 in (-max_displacement, max_displacement), zero on
      the eyeballs and outside the UV islands.
    """
    p = bake.position
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    a = attributes[:, :, None, None]
    sig = jax.nn.sigmoid
    age = sig(1.3 * a[:, AGE])
    raise_gain = jnp.tanh(jnp.maximum(brow_raise, 0.0) / 2.0)[:, None, None]
    smile_gain = jnp.tanh(jnp.maximum(smile, 0.0) / 2.0)[:, None, None]
    front = _smoothstep(0.02, 0.05, z)[None]

    # Forehead lines: narrow valleys parallel to the brows, bent by x^2.
    brow_top = jnp.max(regions.landmarks[:10, 1])
    period = 0.0075 + 0.0015 * jnp.tanh(a[:, FOREHEAD_PERIOD])
    bend = 6.0 * jnp.tanh(a[:, FOREHEAD_BEND])
    phase = (y[None] - brow_top - bend * x[None] ** 2) / period
    forehead = _smoothstep(brow_top + 0.004, brow_top + 0.010, y) \
        * _smoothstep(brow_top + 0.045, brow_top + 0.03, y) * _smoothstep(0.05, 0.03, jnp.abs(x))
    lines = -jnp.maximum(jnp.cos(2.0 * jnp.pi * phase), 0.0) ** 6
    disp = 0.0012 * age * (0.35 + 0.65 * raise_gain) * lines * forehead[None] * front

    # Crow's feet: rays from each eye's outer corner, outward of it.
    for ibug, side in ((36, -1.0), (45, 1.0)):
        c = _lmk(regions, ibug)
        dx, dy = side * (x - c[0]), y - c[1]
        r = jnp.sqrt(dx * dx + dy * dy)
        rays = -jnp.maximum(jnp.cos(9.0 * jnp.arctan2(dy, dx + 1e-6)), 0.0) ** 6
        zone = jnp.exp(-0.5 * ((r - 0.012) / 0.006) ** 2) * _smoothstep(0.0, 0.006, dx)
        disp = disp + 0.0008 * age * (0.3 + 0.7 * smile_gain) * (rays * zone)[None]

    # Nasolabial folds: from beside the nose wing to beyond the mouth corner.
    fold = jnp.zeros_like(x)
    for wing, corner, side in ((31, 48, -1.0), (35, 54, 1.0)):
        start = _lmk(regions, wing)[:2] + jnp.array([side * 0.008, 0.002])
        end = _lmk(regions, corner)[:2] + jnp.array([side * 0.008, -0.012])
        d = _segment_distance(p[..., :2], start, end)
        fold = fold + jnp.exp(-0.5 * (d / 0.0028) ** 2)
    disp = disp - 0.0016 * (0.25 + 0.75 * age) * (0.4 + 0.6 * smile_gain) * fold[None] * front

    frequency, gain = band_frequency(2, bake.texel_m)
    relief = gain * solid_noise(p, waves[2], frequency, phases[:, 2])
    disp = disp + 0.00008 * relief
    skin = bake.covered * (1.0 - jnp.clip(bake.eye, 0.0, 1.0))
    disp = max_displacement * jnp.tanh(disp / max_displacement) * skin[None]
    return disp[..., None].astype(jnp.float32)


def painted_albedo(model, key, batch: int, size: int = 512):
    """Albedo maps of random identities for any FLAME-format model: the
    teacher's painter (`albedo_map`) on random identity attributes and noise.

    Args:
      model: a `FlameModel` with a UV layout; key: a PRNG key; batch: B;
      size: the maps' side.
    Returns:
      (B, size, size, 3) float32 in [0.01, 1], row 0 at v = 1.
    """
    from face3d_jax.flame.uv import bake_uv, face_regions

    k_attr, k_phase, k_waves = jax.random.split(key, 3)
    attributes = jax.random.normal(k_attr, (batch, NUM_ATTRIBUTES), jnp.float32)
    phases = jax.random.uniform(k_phase, (batch, NOISE_BANDS, WAVES_PER_BAND), jnp.float32,
                                0.0, 2.0 * jnp.pi)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_waves)).ravel().tolist())
    return albedo_map(bake_uv(model, size), face_regions(model), noise_waves(rng), attributes,
                      phases)
