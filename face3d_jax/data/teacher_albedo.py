"""The teacher's procedural UV albedo and wrinkle displacement maps.

Both maps are functions of each texel's template position (see teacher_uv.py)
and of a vector of identity attributes read from w; the wrinkles' depth also
follows the expression (forehead lines deepen as the brows rise, crow's feet and
nasolabial folds as the face smiles), as DECA's expression-conditioned details
do. Everything is jnp and batched, so the maps are drawn on the accelerator at
any size (the paper's albedo is 1024^2, its displacement 256^2).

Skin: a tone between a light and a dark skin colour (a one-parameter skin-tone
axis with a warm/cool undertone), cheek and nose redness, darker under the
eyes, low-frequency blotches, freckles and pores; lips and brows placed by the
template's landmarks; hair above a hairline; eyeballs with sclera, iris and
pupil. Noise is "solid" (a sum of random plane waves in 3D, a Gaussian random
field in the limit of many waves), so it does not depend on the UV layout, and
each band's frequency is capped by the map's texel size so that nothing aliases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from face3d_jax.data.teacher_uv import FaceRegions, UVBake

# Identity attribute slots (standardised readouts of w, about N(0, 1)).
TONE, UNDERTONE, CHEEK_RED, NOSE_RED, LIP_RED, LIP_DARK, HAIR_LIGHT, HAIR_RED, \
    BROW_THICK, BROW_DENSE, IRIS_HUE, IRIS_LIGHT, FRECKLES, PORES, BLOTCHES, UNDER_EYE, \
    HAIRLINE, AGE, FOREHEAD_PERIOD, FOREHEAD_BEND = range(20)
NUM_ATTRIBUTES = 24  # 20 used, 4 spare so the layout can grow without re-seeding
# Noise bands: blotches, freckles, pores/fine bumps, hair streaks.
NOISE_BANDS = 4
WAVES_PER_BAND = 32
# Band frequencies in cycles per metre (before the Nyquist cap of the map).
BAND_FREQUENCIES = (25.0, 220.0, 700.0, 400.0)

LIGHT_SKIN = (0.86, 0.68, 0.58)
DARK_SKIN = (0.30, 0.19, 0.13)
SCLERA = (0.86, 0.83, 0.79)


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

    # Lips: an ellipse through the outer lip landmarks (48..59), on the front.
    mouth = jnp.mean(regions.landmarks[48 - 17:60 - 17], axis=0)
    half_w = 0.5 * jnp.abs(_lmk(regions, 54)[0] - _lmk(regions, 48)[0])
    half_h = 0.5 * jnp.abs(_lmk(regions, 51)[1] - _lmk(regions, 57)[1])
    ellipse = ((x - mouth[0]) / half_w) ** 2 + ((y - mouth[1]) / (half_h + 1e-4)) ** 2
    lips = (_smoothstep(1.25, 0.8, ellipse)
            * _smoothstep(mouth[2] - 0.02, mouth[2] - 0.008, z))[None]
    lip_tint = _col((1.0, 0.62, 0.64)) * (1.0 - 0.25 * sig(a[:, LIP_DARK])[..., None]) \
        * (1.0 + 0.12 * jnp.tanh(a[:, LIP_RED])[..., None] * _col((0.4, -0.6, -0.3)))
    color = _lerp(color, color * lip_tint, lips[..., None])

    # Hair colour (brows and scalp): dark brown to blond, more or less red.
    light = sig(1.2 * a[:, HAIR_LIGHT] - 1.0)[..., None]
    hair = _lerp(_col((0.06, 0.045, 0.035)), _col((0.55, 0.42, 0.26)), light)
    hair = hair * (1.0 + 0.25 * sig(a[:, HAIR_RED] - 1.0)[..., None] * _col((0.6, -0.1, -0.5)))
    streaks = noise(3)
    hair_px = hair * (1.0 + 0.12 * streaks[..., None])
    # Brows: bands along the brow landmarks (17..21 and 22..26).
    thick = 0.0028 + 0.0012 * jnp.tanh(a[:, BROW_THICK])
    xy = p[..., :2]
    dist = jnp.full(p.shape[:2], jnp.inf)
    for first in (17, 22):
        for k in range(4):
            dist = jnp.minimum(dist, _segment_distance(xy, _lmk(regions, first + k)[:2],
                                                        _lmk(regions, first + k + 1)[:2]))
    brows = _smoothstep(thick, 0.5 * thick, dist[None]) * front \
        * (0.75 + 0.2 * sig(a[:, BROW_DENSE]) + 0.1 * streaks)
    color = _lerp(color, hair_px, jnp.clip(brows, 0.0, 1.0)[..., None])
    # Scalp hair above a hairline that drops from the forehead to the sides.
    hairline = _lerp(0.02, 0.072 + 0.008 * jnp.tanh(a[:, HAIRLINE]),
                     _smoothstep(-0.06, 0.05, z)[None])
    scalp = _smoothstep(hairline - 0.002, hairline + 0.012, y[None] + 0.002 * streaks)
    color = _lerp(color, hair_px, scalp[..., None])

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
