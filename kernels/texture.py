"""Texture sampling with nvdiffrast's semantics: nearest, bilinear and mip-mapped
(linear-mipmap-nearest, trilinear) filtering, wrap / clamp / zero boundaries, and
a hand-written backward pass (`jax.custom_vjp`).

Conventions (those of nvdiffrast's `texture`):
- Texel centres: u in [0, 1] runs across the texture's COLUMNS, v in [0, 1] across
  its ROWS, with v = 0 at row 0 (the first row of the array). Texel (row r,
  column c) of a level of size (h, w) has its centre at u = (c + 0.5) / w,
  v = (r + 0.5) / h. nvdiffrast does not flip v, and neither do we.
- OBJ / FLAME UVs put v = 0 at the BOTTOM of the image. To sample an image stored
  top row first (a PNG read into an array) with such UVs, pass v_tex = 1 - v (or
  flip the image rows, tex[::-1]); the two are the same lookup.
- Mip level k has size (max(Ht >> k, 1), max(Wt >> k, 1)) and is the 2x2 box
  average of level k - 1 (a 2x1 average once one side is 1). As in nvdiffrast, an
  odd extent greater than 1 cannot be halved: that is an error unless
  `max_mip_level` stops the pyramid before it.
- Level of detail: with the footprint Jacobian J = [[du/dX, du/dY], [dv/dX, dv/dY]]
  scaled to base-level texels, the level is log2 of the length of the footprint's
  major axis (0.5 log2 of J J^T's larger eigenvalue), plus `mip_level_bias`,
  clamped to [0, max level]. linear-mipmap-nearest uses floor(level), as
  nvdiffrast does; trilinear blends floor(level) and floor(level) + 1.

Gradients (as nvdiffrast): to `tex` (through the mip pyramid back to the base
level), to `uv` (from the derivatives of the bilinear weights; none in nearest
mode), and in trilinear mode to `uv_da` and `mip_level_bias` through the blend
weight between the two levels (nvdiffrast's closed form; zero where the footprint
is exactly isotropic, where log2 of the major axis has a kink). The discrete level
choice carries no gradient.

Not implemented (nvdiffrast has them): cube maps, a prebuilt `mip` argument.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FILTER_MODES = ("auto", "nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear")
BOUNDARY_MODES = ("wrap", "clamp", "zero")
_INV_2LN2 = 0.72134752  # 0.5 / ln(2): d(0.5 log2 x)/dx = _INV_2LN2 / x.


class _Config(NamedTuple):
    """Static description of one texture op (hashable: a custom_vjp nondiff arg)."""
    filter_mode: str            # resolved: never "auto"
    boundary_mode: str
    sizes: tuple                # ((h0, w0), (h1, w1), ...): level 0 is the texture
    batch_tex: int              # texture minibatch: 1 (broadcast) or the uv minibatch


def texture(tex, uv, uv_da=None, *, mip_level_bias=None, filter_mode="auto",
            boundary_mode="wrap", max_mip_level=None):
    """Sample a 2-D texture at per-pixel texture coordinates (nvdiffrast's `texture`).

    Args:
      tex: (B, Ht, Wt, C) or (Ht, Wt, C) float32 texture; a minibatch of 1 (or none)
        is shared by every image.
      uv: (B, H, W, 2) float32 texture coordinates (u across columns, v across
        rows, v = 0 at row 0; see the module docstring for OBJ/FLAME UVs).
      uv_da: optional (B, H, W, 4) float32 image-space derivatives
        (du/dX, du/dY, dv/dX, dv/dY) (interpolate's output for the uv attribute);
        they select the mip level.
      mip_level_bias: optional (B, H, W) float32 added to the mip level (alone, it
        is the mip level).
      filter_mode: "nearest", "linear" (bilinear), "linear-mipmap-nearest",
        "linear-mipmap-linear" (trilinear), or "auto": trilinear when uv_da or
        mip_level_bias is given, else bilinear.
      boundary_mode: "wrap" (the fractional part of uv), "clamp" (to the centres of
        the border texels) or "zero" (the texture extended with zeros).
      max_mip_level: optional int >= 0, the deepest mip level built and used.
    Returns:
      (B, H, W, C) float32 samples.
    """
    tex, uv = jnp.asarray(tex), jnp.asarray(uv)
    tex4 = tex[None] if tex.ndim == 3 else tex
    _check_float32("tex", tex4, 4, "(B, Ht, Wt, C) or (Ht, Wt, C)")
    _check_float32("uv", uv, 4, "(B, H, W, 2)")
    if uv.shape[-1] != 2:
        raise ValueError(f"uv: expected shape (B, H, W, 2), got {uv.shape}")
    if min(tex4.shape) < 1 or min(uv.shape) < 1:
        raise ValueError(f"tex/uv: empty arrays (tex {tex.shape}, uv {uv.shape})")
    if tex4.shape[0] not in (1, uv.shape[0]):
        raise ValueError(f"tex: minibatch {tex4.shape[0]} is neither 1 nor uv's {uv.shape[0]}")
    if uv_da is not None:
        uv_da = jnp.asarray(uv_da)
        _check_float32("uv_da", uv_da, 4, "(B, H, W, 4)")
        if uv_da.shape != uv.shape[:3] + (4,):
            raise ValueError(f"uv_da: expected shape {uv.shape[:3] + (4,)}, got {uv_da.shape}")
    if mip_level_bias is not None:
        mip_level_bias = jnp.asarray(mip_level_bias)
        _check_float32("mip_level_bias", mip_level_bias, 3, "(B, H, W)")
        if mip_level_bias.shape != uv.shape[:3]:
            raise ValueError(f"mip_level_bias: expected shape {uv.shape[:3]}, "
                             f"got {mip_level_bias.shape}")
    if filter_mode not in FILTER_MODES:
        raise ValueError(f"filter_mode: expected one of {FILTER_MODES}, got {filter_mode!r}")
    if boundary_mode not in BOUNDARY_MODES:
        raise ValueError(f"boundary_mode: expected one of {BOUNDARY_MODES}, got {boundary_mode!r}")
    if max_mip_level is not None and (not isinstance(max_mip_level, (int, np.integer))
                                      or max_mip_level < 0):
        raise ValueError(f"max_mip_level: expected None or an int >= 0, got {max_mip_level!r}")

    has_mip_input = uv_da is not None or mip_level_bias is not None
    if filter_mode == "auto":
        filter_mode = "linear-mipmap-linear" if has_mip_input else "linear"
    if "mipmap" in filter_mode and not has_mip_input:
        raise ValueError(f"uv_da: filter_mode {filter_mode!r} needs uv_da and/or mip_level_bias")
    if "mipmap" in filter_mode and max_mip_level == 0:
        filter_mode = "linear"
    if "mipmap" not in filter_mode:
        uv_da = mip_level_bias = None

    height, width = tex4.shape[1:3]
    sizes = (mip_sizes(height, width, max_mip_level) if "mipmap" in filter_mode
             else ((height, width),))
    cfg = _Config(filter_mode, boundary_mode, sizes, tex4.shape[0])
    return _texture_jit(cfg, tex4, uv, uv_da, mip_level_bias)


def mip_sizes(height, width, max_mip_level=None):
    """The (h, w) of every mip level, level 0 first, as nvdiffrast builds them.

    Raises ValueError when an odd extent greater than 1 would have to be halved.
    """
    sizes = [(int(height), int(width))]
    h, w = sizes[0]
    while (h > 1 or w > 1) and (max_mip_level is None or len(sizes) - 1 < max_mip_level):
        if (h > 1 and h % 2) or (w > 1 and w % 2):
            raise ValueError(f"tex: cannot build mip level {len(sizes)} from a {h}x{w} level "
                             f"(odd extent); use power-of-two sizes or max_mip_level <= "
                             f"{len(sizes) - 1}")
        h, w = max(h // 2, 1), max(w // 2, 1)
        sizes.append((h, w))
    return tuple(sizes)


def _check_float32(name, x, ndim, shape):
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected shape {shape}, got {x.shape}")
    if x.dtype != jnp.float32:
        raise ValueError(f"{name}: expected float32, got {x.dtype}")


# ---------------------------------------------------------------------------
# The mip pyramid, flattened: level k of texture b starts at row
# b * total + offsets[k] of a (TB * total, C) array.

def _offsets(sizes):
    offs = np.cumsum([0] + [h * w for h, w in sizes])
    return tuple(int(o) for o in offs[:-1]), int(offs[-1])


def _build_pyramid(tex4, sizes):
    """(TB, Ht, Wt, C) -> (TB * total, C): every level, flattened and concatenated."""
    tb, _, _, c = tex4.shape
    levels, cur = [tex4], tex4
    for _ in sizes[1:]:
        ph, pw = cur.shape[1:3]
        if ph > 1 and pw > 1:   # nvdiffrast's order of the four texels
            cur = 0.25 * (cur[:, 0::2, 0::2] + cur[:, 0::2, 1::2]
                          + cur[:, 1::2, 0::2] + cur[:, 1::2, 1::2])
        elif ph > 1:
            cur = 0.5 * (cur[:, 0::2] + cur[:, 1::2])
        else:
            cur = 0.5 * (cur[:, :, 0::2] + cur[:, :, 1::2])
        levels.append(cur)
    return jnp.concatenate([lv.reshape(tb, -1, c) for lv in levels], axis=1).reshape(-1, c)


def _pull_pyramid(g_flat, sizes, tb):
    """Transpose of `_build_pyramid`: level gradients pulled down to the base level."""
    c = g_flat.shape[-1]
    offs, total = _offsets(sizes)
    g = g_flat.reshape(tb, total, c)
    levels = [g[:, o:o + h * w].reshape(tb, h, w, c) for o, (h, w) in zip(offs, sizes)]
    acc = levels[-1]
    for k in range(len(sizes) - 1, 0, -1):
        ph, pw = sizes[k - 1]
        if ph > 1:
            acc = jnp.repeat(acc, 2, axis=1) * 0.5
        if pw > 1:
            acc = jnp.repeat(acc, 2, axis=2) * 0.5
        acc = levels[k - 1] + acc
    return acc


# ---------------------------------------------------------------------------
# Per-pixel lookup: which texels, with which weights.

class _Lookup(NamedTuple):
    """Per-tap and per-level fields kept as tuples of (B, H, W) arrays: stacking them on a
    last axis makes XLA's CPU code interleave and run several times slower."""
    idx: tuple          # K x (B, H, W) int32 rows of the flat pyramid (K = 1, 4 or 8)
    weight: tuple       # K x (B, H, W) float32 filter weight of each row
    fx: tuple           # L x (B, H, W) fractional texel position along u, per level used
    fy: tuple           # L x (B, H, W) ... along v
    scale_u: tuple      # L x (B, H, W) level width (d texel / d u)
    scale_v: tuple      # L x (B, H, W) level height
    frac: jax.Array     # (B, H, W) trilinear blend weight of the second level (else 0)


def _footprint(uv_da, sizes):
    """Terms of nvdiffrast's level-of-detail formula from (du/dX, du/dY, dv/dX, dv/dY)."""
    th, tw = sizes[0]
    dsdx, dsdy = uv_da[..., 0] * tw, uv_da[..., 1] * tw
    dtdx, dtdy = uv_da[..., 2] * th, uv_da[..., 3] * th
    a = dsdx * dsdx + dtdx * dtdx
    b = dsdy * dsdy + dtdy * dtdy
    c = dsdx * dsdy + dtdx * dtdy
    l2b = 0.5 * (a + b)
    l2n = 0.25 * (a - b) * (a - b) + c * c
    return (dsdx, dsdy, dtdx, dtdy), (a, b, c), l2b, l2n, jnp.sqrt(l2n)


def _mip_level(uv_da, bias, sizes):
    """Continuous mip level, clamped to [0, max level] (NaN and -inf -> 0)."""
    level = jnp.zeros(bias.shape if uv_da is None else uv_da.shape[:3], jnp.float32)
    if uv_da is not None:
        _, _, l2b, _, l2a = _footprint(uv_da, sizes)
        level = 0.5 * jnp.log2(l2b + l2a)
    if bias is not None:
        level = level + bias
    level = jnp.where(level > 0.0, level, 0.0)
    return jnp.minimum(level, float(len(sizes) - 1))


def _level_taps(u, v, level, cfg, batch_idx):
    """Bilinear taps of one mip level per pixel: 4 flat rows, weights, fractions."""
    mode = cfg.boundary_mode
    offs, total = _offsets(cfg.sizes)
    if isinstance(level, int):
        h, w = cfg.sizes[level]
        w, h, off = jnp.int32(w), jnp.int32(h), jnp.int32(offs[level])
    else:
        w = jnp.asarray([s[1] for s in cfg.sizes], jnp.int32)[level]
        h = jnp.asarray([s[0] for s in cfg.sizes], jnp.int32)[level]
        off = jnp.asarray(offs, jnp.int32)[level]
    wf, hf = w.astype(jnp.float32), h.astype(jnp.float32)
    if mode == "wrap":
        u, v = u - jnp.floor(u), v - jnp.floor(v)
    x, y = u * wf - 0.5, v * hf - 0.5
    step_x = step_y = 1
    if mode == "clamp":
        x, y = jnp.clip(x, 0.0, wf - 1.0), jnp.clip(y, 0.0, hf - 1.0)
        step_x = jnp.where((x == 0.0) | (x == wf - 1.0), 0, 1)
        step_y = jnp.where((y == 0.0) | (y == hf - 1.0), 0, 1)
    x0f, y0f = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0f, y - y0f
    ix0, iy0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)
    ix1, iy1 = ix0 + step_x, iy0 + step_y
    if mode == "wrap":
        ix0, iy0 = jnp.where(ix0 < 0, ix0 + w, ix0), jnp.where(iy0 < 0, iy0 + h, iy0)
        ix1, iy1 = jnp.where(ix1 >= w, ix1 - w, ix1), jnp.where(iy1 >= h, iy1 - h, iy1)
    base = batch_idx * total + off
    ixs, iys = (ix0, ix1, ix0, ix1), (iy0, iy0, iy1, iy1)
    idx = tuple(base + iy * w + ix for ix, iy in zip(ixs, iys))
    if mode == "zero":  # rows outside the level read as zero (gather fill / scatter drop)
        idx = tuple(jnp.where((ix >= 0) & (ix < w) & (iy >= 0) & (iy < h), i,
                              cfg.batch_tex * total) for i, ix, iy in zip(idx, ixs, iys))
    weight = ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)
    ones = jnp.ones_like(u)
    return idx, weight, fx, fy, wf * ones, hf * ones


def _lookup(cfg, uv, uv_da, bias):
    batch = uv.shape[0]
    batch_idx = (jnp.arange(batch, dtype=jnp.int32)[:, None, None]
                 if cfg.batch_tex > 1 else jnp.int32(0))
    u, v = uv[..., 0], uv[..., 1]
    zeros = jnp.zeros(uv.shape[:3], jnp.float32)
    if cfg.filter_mode == "nearest":
        h, w = cfg.sizes[0]
        if cfg.boundary_mode == "wrap":
            u, v = u - jnp.floor(u), v - jnp.floor(v)
        ix, iy = jnp.floor(u * w).astype(jnp.int32), jnp.floor(v * h).astype(jnp.int32)
        inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        idx = batch_idx * h * w + jnp.clip(iy, 0, h - 1) * w + jnp.clip(ix, 0, w - 1)
        if cfg.boundary_mode == "zero":
            idx = jnp.where(inside, idx, cfg.batch_tex * h * w)
        return _Lookup((idx,), (jnp.ones_like(u),), (), (), (), (), zeros)
    if cfg.filter_mode == "linear":
        taps = [_level_taps(u, v, 0, cfg, batch_idx)]
        frac = zeros
    else:
        level = _mip_level(uv_da, bias, cfg.sizes)
        level0f = jnp.floor(jax.lax.stop_gradient(level))
        level0 = level0f.astype(jnp.int32)
        if cfg.filter_mode == "linear-mipmap-nearest":
            taps = [_level_taps(u, v, level0, cfg, batch_idx)]
            frac = zeros
        else:
            level1 = jnp.minimum(level0 + 1, len(cfg.sizes) - 1)
            taps = [_level_taps(u, v, lv, cfg, batch_idx) for lv in (level0, level1)]
            frac = level - level0f
    level_w = [1.0 - frac, frac][:len(taps)]
    idx = sum((t[0] for t in taps), ())
    weight = sum((tuple(wk * lw for wk in t[1]) for t, lw in zip(taps, level_w)), ())
    return _Lookup(idx, weight, *(tuple(t[k] for t in taps) for k in range(2, 6)), frac)


def _gather(flat, idx, mode):
    """Rows `idx` (any shape) of the flat pyramid; out-of-range rows read as zero."""
    return jnp.take(flat, idx, axis=0, mode="fill" if mode == "zero" else "clip",
                    fill_value=0.0)


def _texture_forward(cfg, tex4, uv, uv_da, bias):
    """The plain forward pass (differentiable by autodiff too: the tests' reference)."""
    flat = (_build_pyramid(tex4, cfg.sizes) if len(cfg.sizes) > 1
            else tex4.reshape(-1, tex4.shape[-1]))
    lk = _lookup(cfg, uv, uv_da, bias)
    # one gather per tap: much faster on CPU than one (..., K, C) gather and a reduction
    out = 0.0
    for idx, weight in zip(lk.idx, lk.weight):
        out = out + weight[..., None] * _gather(flat, idx, cfg.boundary_mode)
    return out, flat


# ---------------------------------------------------------------------------
# The op with its hand-written backward.

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _texture_op(cfg, tex4, uv, uv_da, bias):
    return _texture_forward(cfg, tex4, uv, uv_da, bias)[0]


def _texture_op_fwd(cfg, tex4, uv, uv_da, bias):
    out, flat = _texture_forward(cfg, tex4, uv, uv_da, bias)
    return out, (flat, uv, uv_da, bias)


def _texture_op_bwd(cfg, res, dy):
    flat, uv, uv_da, bias = res
    tb, (ht, wt), c = cfg.batch_tex, cfg.sizes[0], flat.shape[-1]
    lk = _lookup(cfg, uv, uv_da, bias)
    # Texture: scatter-add of the weighted output gradients into the texels read.
    contrib = jnp.stack([w[..., None] * dy for w in lk.weight])   # (K, B, H, W, C)
    g_flat = jnp.zeros_like(flat).at[jnp.stack(lk.idx).reshape(-1)].add(
        contrib.reshape(-1, c), mode="drop")
    g_tex = (_pull_pyramid(g_flat, cfg.sizes, tb) if len(cfg.sizes) > 1
             else g_flat.reshape(tb, ht, wt, c))
    if cfg.filter_mode == "nearest":
        return g_tex, jnp.zeros_like(uv), _none_like(uv_da), _none_like(bias)

    # uv: derivatives of the bilinear weights, level by level.
    level_w = [1.0 - lk.frac, lk.frac]
    gu = gv = 0.0
    bil = []
    for lv in range(len(lk.fx)):
        a00, a10, a01, a11 = (_gather(flat, lk.idx[4 * lv + k], cfg.boundary_mode)
                              for k in range(4))
        fx, fy = lk.fx[lv][..., None], lk.fy[lv][..., None]
        dyl = dy * level_w[lv][..., None]
        ad = a11 + a00 - a10 - a01
        gu = gu + _channel_sum(dyl * ((a10 - a00) + fy * ad)) * lk.scale_u[lv]
        gv = gv + _channel_sum(dyl * ((a01 - a00) + fx * ad)) * lk.scale_v[lv]
        bil.append(a00 + fx * (a10 - a00) + fy * (a01 - a00) + fx * fy * ad)
    g_uv = jnp.stack([gu, gv], axis=-1)
    if cfg.filter_mode != "linear-mipmap-linear":
        return g_tex, g_uv, _none_like(uv_da), _none_like(bias)

    # uv_da, mip_level_bias: through the blend weight of the two levels.
    df = jnp.where(lk.frac > 0, _channel_sum(dy * (bil[1] - bil[0])), 0.0)
    g_bias = None if bias is None else df
    g_da = None if uv_da is None else _level_grad_wrt_da(uv_da, cfg.sizes) * df[..., None]
    return g_tex, g_uv, g_da, g_bias


def _channel_sum(x):
    """Sum over the (short) channel axis; unrolled, it is faster than a reduction on CPU."""
    return sum(x[..., k] for k in range(x.shape[-1])) if x.shape[-1] <= 8 else x.sum(-1)


def _none_like(x):
    return None if x is None else jnp.zeros_like(x)


def _level_grad_wrt_da(uv_da, sizes):
    """d(mip level)/d(uv_da) in nvdiffrast's closed form; 0 where not finite."""
    th, tw = sizes[0]
    (dsdx, dsdy, dtdx, dtdy), (a, b, c), l2b, l2n, l2a = _footprint(uv_da, sizes)
    dw = _INV_2LN2 / (l2n + l2a * l2b)
    ab, cw, l2aw = dw * 0.5 * (a - b), dw * c, dw * l2a
    g = (tw * (dsdx * (l2aw + ab) + dsdy * cw), tw * (dsdy * (l2aw - ab) + dsdx * cw),
         th * (dtdx * (l2aw + ab) + dtdy * cw), th * (dtdy * (l2aw - ab) + dtdx * cw))
    finite = functools.reduce(jnp.logical_and, [jnp.isfinite(gk) for gk in g])
    return jnp.stack([jnp.where(finite, gk, 0.0) for gk in g], axis=-1)


_texture_op.defvjp(_texture_op_fwd, _texture_op_bwd)
# Compiled as a whole even when called eagerly (op-by-op dispatch is slow); inlined
# into an enclosing jit.
_texture_jit = jax.jit(_texture_op, static_argnums=(0,))
