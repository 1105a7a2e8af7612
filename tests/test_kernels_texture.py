"""face3d_kernels.texture: nvdiffrast's texture sampling and its hand-written backward.

Checked against closed forms (bilinear is exact on a linear texture; a minified
checkerboard is grey), against a numpy mip pyramid, against jax autodiff of the
plain forward pass, and against finite differences.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from face3d_kernels.texture import _Config, _texture_forward, mip_sizes, texture

FILTERS = ("nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear")
BOUNDARIES = ("wrap", "clamp", "zero")


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _np_pyramid(tex):
    """Reference mip pyramid of an (H, W, C) texture: 2x2 (or 2x1) box filter."""
    levels = [np.asarray(tex, np.float64)]
    for h, w in mip_sizes(*tex.shape[:2])[1:]:
        cur = levels[-1]
        if cur.shape[0] > 1:
            cur = 0.5 * (cur[0::2] + cur[1::2])
        if cur.shape[1] > 1:
            cur = 0.5 * (cur[:, 0::2] + cur[:, 1::2])
        assert cur.shape[:2] == (h, w)
        levels.append(cur)
    return levels


def _np_bilinear_clamp(tex, u, v):
    """Reference bilinear lookup with clamp-to-edge, texel centres at (i + 0.5) / n."""
    h, w = tex.shape[:2]
    x = np.clip(u * w - 0.5, 0, w - 1)
    y = np.clip(v * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    return ((1 - fx) * (1 - fy) * tex[y0, x0] + fx * (1 - fy) * tex[y0, x1]
            + (1 - fx) * fy * tex[y1, x0] + fx * fy * tex[y1, x1])


def _footprint(level, theta, aniso, size):
    """uv_da whose footprint's major axis is 2**level texels of a size x size texture."""
    c, s = np.cos(theta), np.sin(theta)
    major = 2.0 ** level / size
    # columns: d(u, v)/dX and d(u, v)/dY; major axis along (c, s), minor along (-s, c)
    dudx, dvdx = major * c, major * s
    dudy, dvdy = -major * aniso * s, major * aniso * c
    return np.stack([dudx, dudy, dvdx, dvdy], axis=-1)


def test_bilinear_is_exact_on_a_linear_texture():
    rng = np.random.default_rng(0)
    ht, wt = 8, 16
    rows, cols = np.meshgrid(np.arange(ht), np.arange(wt), indexing="ij")
    tex = np.stack([0.3 * cols - 0.2 * rows + 1.0, 0.05 * rows], axis=-1)
    uv = rng.uniform(0.5 / wt, 1 - 0.5 / wt, size=(2, 5, 7, 2))
    uv[..., 1] = rng.uniform(0.5 / ht, 1 - 0.5 / ht, size=(2, 5, 7))
    x, y = uv[..., 0] * wt - 0.5, uv[..., 1] * ht - 0.5
    want = np.stack([0.3 * x - 0.2 * y + 1.0, 0.05 * y], axis=-1)
    for mode in BOUNDARIES:
        got = texture(_f32(tex), _f32(uv), filter_mode="linear", boundary_mode=mode)
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=mode)


def test_nearest_picks_the_texel_under_uv_and_v_runs_down_the_rows():
    rng = np.random.default_rng(1)
    ht, wt = 6, 10
    tex = np.arange(ht * wt, dtype=np.float32).reshape(ht, wt, 1)
    uv = rng.uniform(0, 1, size=(1, 9, 9, 2)).astype(np.float32)
    got = np.asarray(texture(tex, uv, filter_mode="nearest"))[..., 0]
    want = tex[np.floor(uv[..., 1] * ht).astype(int), np.floor(uv[..., 0] * wt).astype(int), 0]
    np.testing.assert_array_equal(got, want)
    corners = _f32([[[[0.5 / wt, 0.5 / ht], [0.5 / wt, 1 - 0.5 / ht], [1 - 0.5 / wt, 0.5 / ht]]]])
    got = np.asarray(texture(tex, corners, filter_mode="linear"))[0, 0, :, 0]
    np.testing.assert_allclose(got, [tex[0, 0, 0], tex[ht - 1, 0, 0], tex[0, wt - 1, 0]],
                               atol=1e-5)


def test_wrap_clamp_and_zero_at_the_border():
    rng = np.random.default_rng(2)
    ht, wt = 4, 8
    tex = rng.uniform(0.5, 1.5, size=(ht, wt, 3)).astype(np.float32)
    row = 2
    v = (row + 0.5) / ht
    uv = _f32([[[[0.0, v], [1.0, v], [0.25 / wt, v]]]])   # texel edge at u = 0 (and 1)
    wrap = np.asarray(texture(tex, uv, boundary_mode="wrap"))[0, 0]
    clamp = np.asarray(texture(tex, uv, boundary_mode="clamp"))[0, 0]
    zero = np.asarray(texture(tex, uv, boundary_mode="zero"))[0, 0]
    edge = 0.5 * (tex[row, 0] + tex[row, wt - 1])
    np.testing.assert_allclose(wrap[0], edge, rtol=1e-6)
    np.testing.assert_allclose(wrap[1], edge, rtol=1e-6)
    np.testing.assert_allclose(wrap[2], 0.75 * tex[row, 0] + 0.25 * tex[row, wt - 1], rtol=1e-6)
    np.testing.assert_allclose(clamp[0], tex[row, 0], rtol=1e-6)
    np.testing.assert_allclose(clamp[1], tex[row, wt - 1], rtol=1e-6)
    np.testing.assert_allclose(clamp[2], tex[row, 0], rtol=1e-6)
    np.testing.assert_allclose(zero[0], 0.5 * tex[row, 0], rtol=1e-6)
    np.testing.assert_allclose(zero[1], 0.5 * tex[row, wt - 1], rtol=1e-6)
    np.testing.assert_allclose(zero[2], 0.75 * tex[row, 0], rtol=1e-6)
    # wrap repeats the texture: u and u + 1 (and v - 2) read the same
    uv2 = rng.uniform(0, 1, size=(1, 4, 4, 2)).astype(np.float32)
    shifted = uv2 + np.float32([1.0, -2.0])
    np.testing.assert_allclose(texture(tex, uv2), texture(tex, shifted), atol=1e-5)


def test_minified_checkerboard_averages_to_grey_with_trilinear():
    size = 64
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    tex = ((rows + cols) % 2).astype(np.float32)[..., None]
    grid = (8 * np.arange(8) + 3.5) / size                # texel centres
    uv = np.stack(np.meshgrid(grid, grid), axis=-1)[None].astype(np.float32)
    for level in (2.0, 2.5, 3.0, 5.3):                    # 4 to 40 texels per pixel
        uv_da = np.broadcast_to(_footprint(level, 0.3, 0.5, size), (1, 8, 8, 4))
        got = np.asarray(texture(tex, uv, _f32(uv_da)))
        np.testing.assert_allclose(got, 0.5, atol=1e-6, err_msg=f"level {level}")
    plain = np.asarray(texture(tex, uv))                    # no mips: aliased, not grey
    assert np.abs(plain - 0.5).max() > 0.3


def test_zero_uv_da_selects_level_zero():
    rng = np.random.default_rng(3)
    tex = _f32(rng.random((2, 16, 16, 3)))
    uv = _f32(rng.random((2, 5, 5, 2)))
    bilinear = texture(tex, uv)
    for mode in ("linear-mipmap-linear", "linear-mipmap-nearest"):
        got = texture(tex, uv, jnp.zeros((2, 5, 5, 4), jnp.float32), filter_mode=mode)
        np.testing.assert_array_equal(got, bilinear)


def test_mip_level_from_the_footprint_and_the_blend_of_two_levels():
    rng = np.random.default_rng(4)
    size = 32
    tex = rng.random((size, size, 2)).astype(np.float32)
    pyr = _np_pyramid(tex)
    uv = rng.uniform(0.1, 0.9, size=(1, 4, 6, 2)).astype(np.float32)
    u, v = uv[0, ..., 0], uv[0, ..., 1]
    for level, theta, aniso in ((1.0, 0.0, 1.0), (2.0, 0.7, 0.25), (1.5, 1.1, 0.6),
                                (3.25, 2.0, 0.1), (9.0, 0.4, 0.5)):
        uv_da = _f32(np.broadcast_to(_footprint(level, theta, aniso, size), (1, 4, 6, 4)))
        lv = min(level, len(pyr) - 1)                      # clamped at the 1x1 level
        lo, f = int(np.floor(lv)), lv - np.floor(lv)
        hi = min(lo + 1, len(pyr) - 1)
        want = ((1 - f) * _np_bilinear_clamp(pyr[lo], u, v)
                + f * _np_bilinear_clamp(pyr[hi], u, v))
        got = texture(tex, uv, uv_da, boundary_mode="clamp")[0]
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"level {level}")
        nearest = texture(tex, uv, uv_da, filter_mode="linear-mipmap-nearest",
                          boundary_mode="clamp")[0]
        np.testing.assert_allclose(nearest, _np_bilinear_clamp(pyr[lo], u, v), atol=2e-5)


def test_non_square_pyramid_bias_and_max_mip_level():
    rng = np.random.default_rng(5)
    tex = rng.random((8, 32, 1)).astype(np.float32)
    assert mip_sizes(8, 32) == ((8, 32), (4, 16), (2, 8), (1, 4), (1, 2), (1, 1))
    pyr = _np_pyramid(tex)
    uv = rng.uniform(0, 1, size=(1, 3, 3, 2)).astype(np.float32)
    for level in range(6):
        bias = jnp.full((1, 3, 3), float(level), jnp.float32)
        got = texture(tex, uv, mip_level_bias=bias, boundary_mode="clamp")[0]
        want = _np_bilinear_clamp(pyr[level], uv[0, ..., 0], uv[0, ..., 1])
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"level {level}")
    capped = texture(tex, uv, mip_level_bias=jnp.full((1, 3, 3), 4.0, jnp.float32),
                     boundary_mode="clamp", max_mip_level=2)[0]
    np.testing.assert_allclose(capped, _np_bilinear_clamp(pyr[2], uv[0, ..., 0], uv[0, ..., 1]),
                               atol=2e-5)
    odd = rng.random((12, 20, 1)).astype(np.float32)   # 12x20 -> 6x10 -> 3x5 -> odd: stop
    assert texture(odd, uv, mip_level_bias=jnp.full((1, 3, 3), 1.5, jnp.float32),
                   max_mip_level=2).shape == (1, 3, 3, 1)
    with pytest.raises(ValueError, match="tex: cannot build mip level 3"):
        texture(odd, uv, mip_level_bias=jnp.zeros((1, 3, 3), jnp.float32))


def _random_inputs(seed, batch_tex=2, size=16):
    rng = np.random.default_rng(seed)
    tex = rng.random((batch_tex, size, size, 3)).astype(np.float32)
    # uv away from texel centres of every level and levels away from integers, so that
    # the piecewise-smooth lookup is smooth around the sample (finite differences)
    ix = rng.integers(-2, size + 2, size=(2, 4, 5, 2))
    uv = (ix + 0.5 + rng.uniform(0.15, 0.35, size=ix.shape)) / size
    level = rng.integers(0, 3, size=(2, 4, 5)) + rng.uniform(0.15, 0.85, size=(2, 4, 5))
    uv_da = _footprint(level, rng.uniform(0, np.pi, (2, 4, 5)), rng.uniform(0.2, 0.9, (2, 4, 5)),
                       size)
    bias = rng.uniform(-0.1, 0.1, size=(2, 4, 5))
    return _f32(tex), _f32(uv), _f32(uv_da), _f32(bias)


@pytest.mark.parametrize("filter_mode,boundary_mode", list(itertools.product(FILTERS, BOUNDARIES)))
def test_backward_matches_autodiff_of_the_forward(filter_mode, boundary_mode):
    tex, uv, uv_da, bias = _random_inputs(6)
    mip = "mipmap" in filter_mode
    cfg = _Config(filter_mode, boundary_mode, mip_sizes(16, 16) if mip else ((16, 16),), 2)

    def ours(t, u, d, b):
        return texture(t, u, d, mip_level_bias=b, filter_mode=filter_mode,
                       boundary_mode=boundary_mode)

    @jax.jit
    def plain(t, u, d, b):
        return _texture_forward(cfg, t, u, d if mip else None, b if mip else None)[0]

    out, vjp_ours = jax.vjp(ours, tex, uv, uv_da, bias)
    ref, vjp_plain = jax.vjp(plain, tex, uv, uv_da, bias)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    ct = _f32(np.random.default_rng(7).normal(size=out.shape))
    for name, g, r in zip(("tex", "uv", "uv_da", "bias"), vjp_ours(ct), vjp_plain(ct)):
        scale = float(jnp.abs(r).max()) + 1e-6
        np.testing.assert_allclose(g, r, atol=2e-5 * scale, err_msg=name)


@pytest.mark.parametrize("filter_mode", ["linear", "linear-mipmap-linear"])
def test_gradients_match_finite_differences(filter_mode):
    tex, uv, uv_da, bias = _random_inputs(8)
    weights = _f32(np.random.default_rng(9).normal(size=(2, 4, 5, 3)))

    def loss(t, u, d, b):
        return jnp.sum(weights * texture(t, u, d, mip_level_bias=b, filter_mode=filter_mode,
                                         boundary_mode="wrap"))

    args = [tex, uv, uv_da, bias]
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*args)
    rng = np.random.default_rng(10)
    steps = (1e-2, 1e-4, 1e-4 * float(jnp.abs(uv_da).mean()), 1e-3)
    for k, (name, h) in enumerate(zip(("tex", "uv", "uv_da", "bias"), steps)):
        if filter_mode == "linear" and k >= 2:
            assert float(jnp.abs(grads[k]).max()) == 0.0, name
            continue
        direction = _f32(rng.normal(size=args[k].shape))
        hi = [a + h * direction if i == k else a for i, a in enumerate(args)]
        lo = [a - h * direction if i == k else a for i, a in enumerate(args)]
        fd = (float(loss(*hi)) - float(loss(*lo))) / (2 * h)
        analytic = float(jnp.sum(grads[k] * direction))
        assert abs(fd - analytic) <= 1e-2 * abs(analytic) + 1e-3, (name, fd, analytic)


def test_shared_unbatched_and_batched_textures_agree():
    rng = np.random.default_rng(11)
    tex3 = _f32(rng.random((16, 16, 3)))
    uv = _f32(rng.random((3, 4, 4, 2)))
    uv_da = _f32(rng.normal(size=(3, 4, 4, 4)) * 0.1)
    tiled = jnp.broadcast_to(tex3, (3, 16, 16, 3))
    outs = [texture(t, uv, uv_da) for t in (tex3, tex3[None], tiled)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-6)
    g3 = jax.grad(lambda t: jnp.sum(texture(t, uv, uv_da) ** 2))(tex3)
    gt = jax.grad(lambda t: jnp.sum(texture(t, uv, uv_da) ** 2))(tiled)
    assert g3.shape == (16, 16, 3)
    np.testing.assert_allclose(g3, gt.sum(0), atol=1e-5)
    with pytest.raises(ValueError, match="tex: minibatch 2"):
        texture(tiled[:2], uv)


def test_jit_and_vmap():
    tex, uv, uv_da, _ = _random_inputs(12)
    eager = texture(tex, uv, uv_da, boundary_mode="clamp")
    jitted = jax.jit(lambda t, u, d: texture(t, u, d, boundary_mode="clamp"))(tex, uv, uv_da)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)
    stacked = jax.vmap(lambda u, d: texture(tex, u, d, boundary_mode="clamp"))(
        jnp.stack([uv, uv[::-1]]), jnp.stack([uv_da, uv_da[::-1]]))
    np.testing.assert_allclose(stacked[0], eager, atol=1e-6)
    np.testing.assert_allclose(stacked[1], texture(tex, uv[::-1], uv_da[::-1],
                                                   boundary_mode="clamp"), atol=1e-6)
    g = jax.jit(jax.grad(lambda u: jnp.sum(texture(tex, u, uv_da))))(uv)
    assert g.shape == uv.shape and bool(jnp.all(jnp.isfinite(g)))


def test_inputs_are_validated():
    tex = jnp.zeros((8, 8, 3), jnp.float32)
    uv = jnp.zeros((1, 2, 2, 2), jnp.float32)
    cases = [
        (dict(tex=tex.astype(jnp.int32)), "tex:"),
        (dict(tex=tex[0]), "tex:"),
        (dict(uv=jnp.zeros((1, 2, 2, 3), jnp.float32)), "uv:"),
        (dict(uv=uv[0]), "uv:"),
        (dict(uv_da=jnp.zeros((1, 2, 2, 2), jnp.float32)), "uv_da:"),
        (dict(mip_level_bias=jnp.zeros((1, 2), jnp.float32)), "mip_level_bias:"),
        (dict(filter_mode="cubic"), "filter_mode:"),
        (dict(boundary_mode="mirror"), "boundary_mode:"),
        (dict(filter_mode="linear-mipmap-linear"), "uv_da:"),
        (dict(max_mip_level=-1, uv_da=jnp.zeros((1, 2, 2, 4), jnp.float32)), "max_mip_level:"),
    ]
    for kwargs, message in cases:
        args = dict(tex=tex, uv=uv)
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            texture(args.pop("tex"), args.pop("uv"), **args)
