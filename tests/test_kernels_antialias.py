"""face3d_kernels.antialias: nvdiffrast's analytic silhouette antialiasing.

The scenes are rasterized by `_rasterize`, an exact, slow numpy rasterizer written
here so that these tests stand apart from kernels/rasterize.py. Finite differences
re-rasterize the moved scene: the antialiased image is continuous in the vertex
positions (the aliased one is not), so its finite difference matches the analytic
visibility gradient. Its slope has kinks where a pixel pair's crossing passes the
pair's midpoint (the blend moves from one pixel to the other) and jumps where a
sliver of a triangle tip flips coverage; random weights that vary smoothly across
the image (and fat triangle tips) keep those from dominating a difference quotient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from face3d_kernels.antialias import (_antialias_forward, antialias,
                                      antialias_construct_topology_hash)

H = W = 24
PALETTE = np.array([[0.1, 0.2, 0.3], [1.0, 0.5, 0.2], [0.2, 0.9, 0.4], [0.6, 0.1, 0.8],
                    [0.9, 0.9, 0.1]], np.float32)


def _rasterize(pos, tri, height=H, width=W):
    """Exact reference rasterizer: (B, H, W, 4) = (u, v, z/w, triangle_id + 1).

    Pixel (i, j) is sampled at NDC ((2j+1)/W - 1, (2i+1)/H - 1); the perspective-correct
    barycentrics b solve sum_k b_k (x_k - X w_k, y_k - Y w_k) = 0 with sum_k b_k = 1.
    """
    pos = np.asarray(pos, np.float64)
    out = np.zeros(pos.shape[:1] + (height, width, 4), np.float32)
    xs, ys = np.meshgrid((2 * np.arange(width) + 1) / width - 1,
                         (2 * np.arange(height) + 1) / height - 1)
    for b in range(pos.shape[0]):
        best = np.full((height, width), np.inf)
        for t, verts in enumerate(np.asarray(tri)):
            p = pos[b, verts]
            m = np.empty((height, width, 3, 3))
            m[..., 0, :] = p[:, 0] - xs[..., None] * p[:, 3]
            m[..., 1, :] = p[:, 1] - ys[..., None] * p[:, 3]
            m[..., 2, :] = 1.0
            rhs = np.broadcast_to([0.0, 0.0, 1.0], (height, width, 3))[..., None]
            bary = np.linalg.solve(m, rhs)[..., 0]
            zw = (bary @ p[:, 2]) / (bary @ p[:, 3])
            hit = (np.all(bary >= 0, -1) & np.all(p[:, 3] > 0) & (np.abs(zw) <= 1)
                   & (zw < best))
            best = np.where(hit, zw, best)
            out[b][hit] = np.stack([bary[..., 0], bary[..., 1], zw,
                                    np.full_like(zw, t + 1)], -1)[hit]
    return out


def _render(pos, tri):
    """Rasterize and colour each triangle flat (background PALETTE[0])."""
    rast = _rasterize(pos, tri)
    return rast, PALETTE[np.round(rast[..., 3]).astype(int)]


def _smooth_weights(rng, batch=1):
    yy, xx = np.meshgrid(np.arange(H) / H, np.arange(W) / W, indexing="ij")
    k = rng.normal(size=(batch, 1, 1, 3, 2)) * 3
    phase = rng.uniform(0, 2 * np.pi, size=(batch, 1, 1, 3))
    return (1 + 0.5 * np.sin(k[..., 0] * xx[..., None] + k[..., 1] * yy[..., None] + phase)
            ).astype(np.float32)


ONE = (np.array([[[-0.7, -0.6, 0.1, 1.0], [0.63, -0.3, 0.1, 1.2], [-0.2, 0.71, 0.1, 0.9]]],
                np.float32), np.array([[0, 1, 2]], np.int32))
# a triangle (id 2, nearer) partly occluding another (id 1)
TWO = (np.array([[[-0.8, -0.7, 0.1, 1.0], [0.9, -0.5, 0.1, 1.2], [-0.1, 0.85, 0.1, 0.9],
                  [0.0, -1.3, -0.2, 1.0], [1.3, 0.6, -0.2, 1.1], [-0.2, 0.3, -0.2, 1.0]]],
                np.float32), np.array([[0, 1, 2], [3, 4, 5]], np.int32))


def test_pixels_away_from_silhouettes_are_unchanged():
    pos, tri = TWO
    rast, color = _render(pos, tri)
    out = np.asarray(antialias(color, rast, pos, tri))
    tid = rast[0, ..., 3]
    padded = np.pad(tid, 1, mode="edge")
    same = ((padded[1:-1, :-2] == tid) & (padded[1:-1, 2:] == tid)
            & (padded[:-2, 1:-1] == tid) & (padded[2:, 1:-1] == tid))
    assert same.sum() > 300
    np.testing.assert_array_equal(out[0][same], color[0][same])
    assert np.abs(out - color).max() > 0.1                  # and the edges did change


@pytest.mark.parametrize("vertical", [False, True])
def test_coverage_of_a_half_plane_edge_is_the_covered_fraction_of_the_pair(vertical):
    # a huge triangle with one steep edge crossing the image; w != 1 (perspective)
    w = 1.5
    ndc = np.array([[0.1, -3.0], [0.35, 3.0], [-8.0, 0.0]])
    if vertical:
        ndc = ndc[:, ::-1]
    pos = np.concatenate([ndc * w, np.full((3, 1), 0.2 * w), np.full((3, 1), w)], -1)
    pos = pos[None].astype(np.float32)
    tri = np.array([[0, 1, 2]], np.int32)
    rast = _rasterize(pos, tri)
    color = (rast[..., 3:] > 0).astype(np.float32)
    out = np.asarray(antialias(color, rast, pos, tri))[0, ..., 0]
    if vertical:
        out = out.T
    # along each pixel row, the edge crosses the row's centre line at x_e (pixels)
    centre = (np.arange(H) + 0.5) / H * 2 - 1
    (x0, y0), (x1, y1) = ndc[0, ::-1] if vertical else ndc[0], ndc[1, ::-1] if vertical else ndc[1]
    x_e = ((x0 + (centre - y0) * (x1 - x0) / (y1 - y0)) + 1) * W / 2
    want = np.clip(x_e[:, None] - np.arange(W)[None, :], 0.0, 1.0)
    np.testing.assert_allclose(out, want, atol=1e-4)


def _check_pos_gradient(pos, tri, seed, h=1e-3, directions=4):
    rng = np.random.default_rng(seed)
    weights = _smooth_weights(rng, pos.shape[0])
    rast, color = _render(pos, tri)
    loss = jax.jit(lambda p, r, c: jnp.sum(antialias(c, r, p, tri) * weights))
    grad = np.asarray(jax.grad(loss)(jnp.asarray(pos), rast, color))
    assert np.all(grad[..., 2] == 0)                           # no gradient to z
    fds, analytic = [], []
    for _ in range(directions):
        d = rng.normal(size=pos.shape)
        d[..., 2], d[..., 3] = 0.0, 0.1 * d[..., 3]
        vals = []
        for sign in (1, -1):
            moved = (pos + sign * h * d).astype(np.float32)
            vals.append(float(loss(moved, *_render(moved, tri))))
        fds.append((vals[0] - vals[1]) / (2 * h))
        analytic.append(float(np.sum(grad * d)))
    fds, analytic = np.array(fds), np.array(analytic)
    assert np.linalg.norm(fds - analytic) <= 1e-2 * np.linalg.norm(analytic), (fds, analytic)


@pytest.mark.parametrize("seed", [0, 1])
def test_pos_gradient_matches_finite_differences_triangle_over_background(seed):
    _check_pos_gradient(*ONE, seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_pos_gradient_matches_finite_differences_partial_occlusion(seed):
    _check_pos_gradient(*TWO, seed)


def test_backward_matches_autodiff_of_the_forward():
    """Away from degenerate cases the hand-written backward is the exact derivative
    (up to nvdiffrast's 1e-3 pixel slope epsilon)."""
    pos, tri = TWO
    rast, color = _render(pos, tri)
    color = color + np.random.default_rng(3).normal(size=color.shape).astype(np.float32) * 0.1
    topo = antialias_construct_topology_hash(tri)
    ours = lambda c, p: antialias(c, rast, p, tri, topology_hash=topo)  # noqa: E731
    plain = jax.jit(lambda c, p: _antialias_forward(c, rast, p, tri, topo)[0])
    out, vjp_ours = jax.vjp(ours, jnp.asarray(color), jnp.asarray(pos))
    ref, vjp_plain = jax.vjp(plain, jnp.asarray(color), jnp.asarray(pos))
    np.testing.assert_allclose(out, ref, atol=1e-6)
    ct = jnp.asarray(np.random.default_rng(4).normal(size=out.shape), jnp.float32)
    (gc, gp), (rc, rp) = vjp_ours(ct), vjp_plain(ct)
    np.testing.assert_allclose(gc, rc, atol=1e-5)
    np.testing.assert_allclose(gp, rp, rtol=2e-3, atol=2e-3 * float(jnp.abs(rp).max()))


def test_no_gradient_from_an_edge_shared_by_two_front_facing_triangles():
    # a quad split along its diagonal (vertices 1-2), both halves facing the camera
    quad = np.array([[-0.6, -0.5], [0.55, -0.65], [-0.5, 0.6], [0.65, 0.5]])
    pos = np.concatenate([quad, np.full((4, 1), 0.3), np.ones((4, 1))], -1)[None]
    pos = pos.astype(np.float32)
    tri = np.array([[0, 1, 2], [2, 1, 3]], np.int32)
    rast, color = _render(pos, tri)
    out = np.asarray(antialias(color, rast, pos, tri))
    tid = rast[0, ..., 3]
    inner = np.zeros((H, W), bool)
    inner[6:18, 6:18] = True                          # inside the quad's outline
    assert (tid[inner] == 1).any() and (tid[inner] == 2).any()
    np.testing.assert_array_equal(out[0][inner], color[0][inner])
    weights = np.where(inner[None, ..., None], 1.0, 0.0).astype(np.float32)
    grad = jax.grad(lambda p: jnp.sum(antialias(color, rast, p, tri) * weights))(
        jnp.asarray(pos))
    assert float(jnp.abs(grad).max()) == 0.0
    outer = jax.grad(lambda p: jnp.sum(antialias(color, rast, p, tri)))(jnp.asarray(pos))
    assert float(jnp.abs(outer).max()) > 0.0
    # fold the second half back over the first: the shared edge becomes a silhouette
    # (against the background now uncovered beyond it) and is antialiased
    folded = pos.copy()
    folded[0, 3, :3] = [-0.45, -0.4, 0.1]
    rast_f, color_f = _render(folded, tri)
    out_f = np.asarray(antialias(color_f, rast_f, folded, tri))
    p1, p2 = (quad[[1, 2]] + 1) * W / 2
    rows, cols = np.mgrid[0:H, 0:W] + 0.5
    rel = np.stack([cols - p1[0], rows - p1[1]], -1)
    along = rel @ (p2 - p1) / np.sum((p2 - p1) ** 2)
    dist = np.abs(rel[..., 0] * (p2 - p1)[1] - rel[..., 1] * (p2 - p1)[0]) / np.linalg.norm(p2 - p1)
    near = (dist < 1.0) & (along > 0.3) & (along < 0.7)
    assert near.sum() >= 6
    np.testing.assert_array_equal(out[0][near], color[0][near])
    assert np.abs(out_f - color_f)[0][near].max() > 0.05


def test_topology_hash():
    tri = np.array([[0, 1, 2], [2, 1, 3], [3, 1, 4], [0, 0, 5]], np.int32)
    topo = np.asarray(antialias_construct_topology_hash(tri))
    # edge k of a triangle is the edge opposite its vertex k
    np.testing.assert_array_equal(topo[0], [3, -1, -1])
    np.testing.assert_array_equal(topo[1], [4, -1, 0])
    np.testing.assert_array_equal(topo[2], [-1, -1, 2])
    np.testing.assert_array_equal(topo[3], [-1, -1, -1])   # degenerate: never paired
    traced = jax.jit(antialias_construct_topology_hash)(jnp.asarray(tri))
    np.testing.assert_array_equal(traced, topo)
    # three triangles on one edge: the first two met pair up, the third sees it open
    fan = np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]], np.int32)
    fan_topo = np.asarray(antialias_construct_topology_hash(fan))
    assert sorted(fan_topo[:, 2].tolist()) == [-1, 2, 3]


def test_batches_shared_pos_jit_vmap_and_boost():
    pos, tri = TWO
    moved = pos.copy()
    moved[0, :, 0] += 0.07
    both = np.concatenate([pos, moved])
    rast, color = _render(both, tri)
    out = antialias(color, rast, both, tri)
    shared_rast, shared_color = _render(np.concatenate([pos, pos]), tri)
    np.testing.assert_allclose(antialias(shared_color, shared_rast, pos[0], tri),
                               antialias(shared_color, shared_rast, np.concatenate([pos, pos]),
                                         tri), atol=1e-6)
    jitted = jax.jit(antialias)(color, rast, both, tri)   # traced tri: jnp topology
    np.testing.assert_allclose(jitted, out, atol=1e-6)
    mapped = jax.vmap(lambda c, r, p: antialias(c[None], r[None], p[None], tri)[0])(
        color, rast, both)                                # image by image
    np.testing.assert_allclose(mapped, out, atol=1e-6)

    def grads(p, boost):
        loss = lambda c, r, p: jnp.sum(  # noqa: E731
            antialias(c, r, p, tri, pos_gradient_boost=boost) ** 2)
        return jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(shared_color),
                                                 jnp.asarray(shared_rast), jnp.asarray(p))
    g_color, g_rast, g_pos = grads(np.concatenate([pos, pos]), 1.0)
    assert float(jnp.abs(g_rast).max()) == 0.0            # rast carries no gradient
    g_color3, _, g_pos3 = grads(np.concatenate([pos, pos]), 3.0)
    np.testing.assert_allclose(g_color3, g_color, atol=1e-6)
    np.testing.assert_allclose(g_pos3, 3.0 * g_pos, rtol=1e-5, atol=1e-5)
    g_shared = grads(pos[0], 1.0)[2]                      # (V, 4) pos: summed over images
    assert g_shared.shape == pos[0].shape
    np.testing.assert_allclose(g_shared, g_pos.sum(0), rtol=1e-5, atol=1e-4)


def test_inputs_are_validated():
    pos, tri = ONE
    rast, color = _render(pos, tri)
    good = dict(color=color, rast=rast, pos=pos, tri=tri)
    cases = [
        (dict(color=color[0]), "color:"),
        (dict(color=color.astype(np.int32)), "color:"),
        (dict(rast=rast[..., :3]), "rast:"),
        (dict(rast=rast[:, :-1]), "rast:"),
        (dict(pos=pos[..., :3]), "pos:"),
        (dict(pos=np.concatenate([pos, pos])), "pos:"),
        (dict(tri=tri.astype(np.int64)[:, :2]), "tri:"),
        (dict(tri=tri.astype(np.float32)), "tri:"),
        (dict(topology_hash=np.zeros((2, 3), np.int32)), "topology_hash:"),
        (dict(pos_gradient_boost=jnp.float32(2.0)), "pos_gradient_boost:"),
    ]
    for kwargs, message in cases:
        args = dict(good)
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            antialias(args.pop("color"), args.pop("rast"), args.pop("pos"), args.pop("tri"),
                      **args)
