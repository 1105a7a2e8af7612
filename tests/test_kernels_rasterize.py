"""rasterize and interpolate: against the brute-force reference (kernels/reference.py),
edge cases one by one, gradients against finite differences, jit/vmap, validation.

Small scenes are padded to one shape (V_PAD vertices, T_PAD triangles, RES) so
that most tests share a compiled program: XLA's CPU compile is the slow part.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import face3d_kernels as K
from face3d_kernels.reference import rasterize_reference

V_PAD, T_PAD, RES = 32, 24, (16, 24)


def padded(pos, tri):
    """(V, 4) positions and (T, 3) triangles padded with unused vertices and
    zero-area triangles (which cover nothing) to (V_PAD, 4) and (T_PAD, 3)."""
    pos = np.concatenate([pos, np.tile([[0.0, 0.0, 0.0, 1.0]], (V_PAD - len(pos), 1))])
    tri = np.concatenate([tri, np.zeros((T_PAD - len(tri), 3), int)]).astype(np.int32)
    return pos, tri


def random_scene(seed, num_v=V_PAD, num_t=T_PAD, spread=1.3):
    """Overlapping triangles at random depths, some reaching outside the image."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, (num_v, 1))
    ndc = np.concatenate([rng.uniform(-spread, spread, (num_v, 2)),
                          rng.uniform(-0.9, 0.9, (num_v, 1))], axis=1)
    return np.concatenate([ndc * w, w], axis=1), rng.integers(0, num_v, (num_t, 3)).astype(np.int32)


def adjacent(tri, a, b):
    """Triangle ids + 1 a and b share an edge."""
    return len(set(tri[a - 1]) & set(tri[b - 1])) >= 2


def check(pos, tri, resolution=RES, min_same=0.99, **kwargs):
    """Rasterizes a batch and compares it with the reference; returns both."""
    # The reference sees the float32-rounded positions: only the arithmetic differs.
    pos = np.asarray(pos, np.float32).astype(np.float64).reshape((-1,) + np.shape(pos)[-2:])
    rast, db = K.rasterize(jnp.asarray(pos, jnp.float32), tri, resolution, **kwargs)
    rast, db = np.asarray(rast), np.asarray(db)
    ref, ref_db = rasterize_reference(pos, tri, resolution)
    ids, ref_ids = rast[..., 3].astype(int), ref[..., 3].astype(int)
    same = ids == ref_ids
    assert same.mean() >= min_same, same.mean()
    # Differences only where a pixel centre lies on an edge (float32 against
    # float64 decides it either way): between triangles sharing that edge, or
    # at a silhouette where the covering triangle's barycentric is ~0.
    on_edge = np.minimum(rast[..., :2].min(-1), 1 - rast[..., :2].sum(-1))
    ref_on_edge = np.minimum(ref[..., :2].min(-1), 1 - ref[..., :2].sum(-1))
    for a, b, e, re in zip(ids[~same], ref_ids[~same], on_edge[~same], ref_on_edge[~same]):
        if a and b:
            assert adjacent(tri, a, b), (a, b)
        else:
            assert abs(e if a else re) < 1e-5, (a, b, e, re)
    both = same & (ref_ids > 0)
    # The barycentrics solve a 3x3 system of the triangle's clip-space (x, y, w)
    # rows, so float32's rounding error is a few ulps times its condition number
    # (large for slivers and for triangles seen edge-on).
    rows = pos[..., [0, 1, 3]][np.nonzero(both)[0][:, None], tri[ref_ids[both] - 1]]
    tol = 1e-6 + 16 * np.finfo(np.float32).eps * np.linalg.cond(rows)
    err = np.abs(rast[both][:, :3] - ref[both][:, :3]).max(axis=-1)
    assert np.all(err <= tol), (err.max(), tol[np.argmax(err - tol)])
    # rast_db: relative to each pixel's largest derivative (cancellation inside a row).
    scale = np.abs(ref_db[both]).max(axis=-1, keepdims=True)
    assert np.all(np.abs(db[both] - ref_db[both]) <= 1e-4 * scale + 1e-6), \
        np.abs(db[both] - ref_db[both]).max()
    assert np.all(rast[ids == 0] == 0) and np.all(db[ids == 0] == 0)
    return rast, ref


# --- against the reference -------------------------------------------------------

@pytest.mark.parametrize("resolution", [RES, (40, 32)])
def test_random_meshes_match_reference(resolution):
    scenes = [random_scene(seed) for seed in range(3)]
    tri = scenes[0][1]
    rast, _ = check(np.stack([pos for pos, _ in scenes]), tri, resolution)
    assert (rast[..., 3] > 0).mean() > 0.3


def perspective(verts, yaw, distance, focal=4.0, near=0.5, far=5.0):
    """OpenGL-style clip space of (V, 3) points seen from `distance` along +z."""
    c, s = np.cos(yaw), np.sin(yaw)
    p = verts @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T
    depth = distance - p[:, 2]
    z = (depth * (far + near) - 2 * far * near) / (far - near)
    return np.stack([focal * p[:, 0], -focal * p[:, 1], z, depth], axis=1)


def test_default_face_matches_reference(default_flame):
    verts = np.asarray(default_flame.v_template, np.float64)
    verts = (verts - verts.mean(0)) / np.ptp(verts[:, 1])
    tri = np.asarray(default_flame.faces)
    # The whole head turned 30 degrees, and a close-up where the nose and eyes
    # fold over themselves in depth.
    pos = np.stack([perspective(verts, 0.5, 3.0), perspective(verts, -0.3, 1.6, focal=5.0)])
    rast, ref = check(pos, tri, (40, 32), min_same=0.995)
    assert 0.1 < (ref[0, ..., 3] > 0).mean() < 0.9 and (ref[1, ..., 3] > 0).mean() > 0.6


# --- edge cases ------------------------------------------------------------------

def test_triangles_behind_the_camera_are_invisible():
    pos, tri = random_scene(7)
    # The last four triangles get every corner behind the eye (w < 0): their
    # projection x/w, y/w lands on the image but nothing of them is visible.
    tri[-4:] = [[28, 29, 30], [29, 30, 31], [28, 30, 31], [28, 29, 31]]
    pos[28:] = [[-0.5, -0.5, 0.2, -1.0], [0.5, -0.5, 0.2, -1.0],
                [0.0, 0.8, 0.2, -1.0], [0.3, 0.3, 0.1, -0.5]]
    rast, _ = check(pos, tri)
    assert not np.isin(rast[..., 3], np.arange(T_PAD - 3, T_PAD + 1)).any()


def camera_clip(points, focal=1.5, near=2.0, far=10.0):
    """OpenGL-style clip space of camera-space (x, y, depth) points."""
    x, y, depth = np.asarray(points, np.float64).T
    z = (depth * (far + near) - 2 * far * near) / (far - near)
    return np.stack([focal * x, focal * y, z, depth], axis=1)


def test_triangle_crossing_the_near_plane_and_w_zero():
    # A floor triangle (y = -1) from depth 6 to a corner behind the eye (depth
    # -1, so w < 0). With the near plane at depth 2, the visible part is the
    # band between depths 2 and 6: NDC y in [-0.75, -0.25], rows 2..5 of 16.
    pos, tri = padded(camera_clip([[-2, -1, 6], [2, -1, 6], [0, -1, -1]]), np.array([[0, 1, 2]]))
    rast, _ = check(pos, tri)
    rows = np.flatnonzero((rast[0, ..., 3] > 0).any(axis=1))
    np.testing.assert_array_equal(rows, [2, 3, 4, 5])
    assert np.abs(rast[0, ..., 2]).max() <= 1.0


def test_random_clip_space_soup_matches_reference():
    # Vertices anywhere in homogeneous space: behind the eye, crossing w = 0,
    # beyond the near and far planes.
    scenes = []
    for seed in range(3):
        pos, tri = random_scene(seed + 20, spread=1.5)
        rng = np.random.default_rng(seed)
        pos[:, 3] = rng.uniform(-1.0, 1.5, V_PAD)
        pos[:, 2] = rng.uniform(-1.5, 1.5, V_PAD) * np.abs(pos[:, 3])
        scenes.append(pos)
    rast, _ = check(np.stack(scenes), tri)
    assert (rast[..., 3] > 0).mean() > 0.2


def test_triangles_partly_and_wholly_outside_the_image():
    pos, tri = padded(np.array([[0.5, 0.2, 0.0, 1.0], [3.0, 0.0, 0.0, 1.0], [0.5, 3.0, 0.0, 1.0],
                                [5.0, 5.0, 0.1, 1.0], [6.0, 5.0, 0.1, 1.0], [5.0, 6.0, 0.1, 1.0],
                                [-0.5, 0.0, 2.0, 1.0], [0.0, -0.5, 2.0, 1.0], [0.5, 0.5, 2.0, 1.0]]),
                      np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]]))
    rast, _ = check(pos, tri)
    ids = rast[0, ..., 3]
    assert (ids == 1).any() and not (ids == 2).any() and not (ids == 3).any()  # 3: beyond far


def test_zero_area_triangles_cover_nothing():
    pos, tri = padded(np.array([[-1, -1, 0, 1], [0, 0, 0, 1], [1, 1, 0, 1],  # collinear
                                [-0.5, 0.5, 0, 1], [0.8, -0.2, 0, 1.0]]),  # + repeated corners
                      np.array([[0, 1, 2], [3, 4, 3], [4, 4, 4], [2, 1, 0]]))
    rast, _ = check(pos, tri)
    assert np.all(rast == 0)


def test_triangle_larger_than_the_image():
    pos, tri = padded(np.array([[-30, -30, 0.5, 1], [30, -30, 0.5, 1], [0, 40, 0.5, 1],
                                [-0.5, -0.5, 0.2, 2], [0.5, -0.5, 0.2, 2], [0, 0.6, 0.2, 2]],
                               np.float64), np.array([[0, 1, 2], [3, 4, 5]]))
    rast, _ = check(pos, tri)
    ids = rast[0, ..., 3]
    assert np.all(ids > 0) and (ids == 1).sum() > (ids == 2).sum() > 5


def test_empty_scene():
    pos, tri = random_scene(3)
    pos[:, 0] += 10 * pos[:, 3]  # everything far to the right of the image
    rast, _ = check(pos, tri)
    assert np.all(rast == 0)


def test_batch_of_different_positions():
    a, tri = random_scene(11)
    b, _ = random_scene(12)
    rast, _ = check(np.stack([a, b, a]), tri)
    np.testing.assert_array_equal(rast[0], rast[2])
    assert not np.array_equal(rast[0, ..., 3], rast[1, ..., 3])


def test_overflowing_capacity_drops_no_triangle():
    # Large overlapping triangles hold ~20 fragments per pixel; a capacity of
    # 100 fragments needs ~80 chunks, and the answer must not change.
    pos, tri = random_scene(5, spread=2.5)
    rast_small, _ = check(pos, tri, capacity=100)
    rast_default, _ = K.rasterize(jnp.asarray(pos[None], jnp.float32), tri, RES)
    np.testing.assert_array_equal(rast_small, np.asarray(rast_default))


def test_shared_edges_through_pixel_centres_are_covered_once():
    # Quads whose diagonals and sides run through pixel centres (8 x 8 image:
    # centres at odd multiples of 1/8), split both ways and in both windings,
    # plus a fan around a vertex that sits on a pixel centre.
    c = [-0.625, 0.125, 0.625]
    corners = np.array([[x, y, 0.0, 1.0] for y in c for x in c])  # 3 x 3 grid, 9 vertices
    tri = np.array([[0, 1, 4], [0, 4, 3], [1, 5, 4], [2, 5, 1], [4, 7, 6], [3, 4, 6],
                    [4, 5, 8], [4, 8, 7]], np.int32)
    pos = np.repeat(corners[None], len(tri), axis=0)
    masks = []
    for t in range(len(tri)):  # each triangle alone, as a batch of one-triangle scenes
        alone = tri.copy()
        alone[np.arange(len(tri)) != t] = 0
        rast, _ = K.rasterize(jnp.asarray(pos[:1], jnp.float32), alone, (8, 8))
        masks.append(np.asarray(rast[0, ..., 3]) > 0)
    count = np.sum(masks, axis=0)
    assert count.max() == 1  # no pixel centre is covered twice
    # Every centre strictly inside the mesh's outline, and those on its left
    # and low-Y sides (the tie rule), is covered.
    assert count[1:6, 1:6].all() and count.sum() == 25
    rast, _ = K.rasterize(jnp.asarray(pos[:1], jnp.float32), tri, (8, 8))
    np.testing.assert_array_equal(np.asarray(rast[0, ..., 3]) > 0, count == 1)


def test_window_shapes_and_chunks_give_the_same_ids(default_flame):
    """The visibility pass tiles each screen box with windows (coverage.py):
    1 x 1 windows evaluate exactly the box's pixels; larger or odd windows
    overhang the box and the image, small capacities split the sweep into
    many chunks. None may change a single id. Scenes: large and tiny
    triangles, a clip-space soup (corners behind the eye, across w = 0 and the
    near/far planes), exact depth ties (a duplicated triangle: the larger id
    wins), and the default face."""
    from face3d_kernels import coverage

    big, tri = random_scene(5, spread=2.5)
    tiny, _ = random_scene(6, spread=0.15)
    soup, _ = random_scene(20, spread=1.5)
    rng = np.random.default_rng(0)
    soup[:, 3] = rng.uniform(-1.0, 1.5, V_PAD)
    soup[:, 2] = rng.uniform(-1.5, 1.5, V_PAD) * np.abs(soup[:, 3])
    tri = tri.copy()
    tri[-3:] = tri[:3]  # exact ties with triangles 1 to 3
    verts = np.asarray(default_flame.v_template, np.float64)
    verts = (verts - verts.mean(0)) / np.ptp(verts[:, 1])
    face = perspective(verts, -0.3, 1.6, focal=5.0)[None]
    cases = [(np.stack([big, tiny, soup]), tri, (40, 32)),
             (face, np.asarray(default_flame.faces, np.int32), (48, 40))]
    for pos, t, res in cases:
        pos = jnp.asarray(pos, jnp.float32)
        want = np.asarray(coverage.visible_triangles(pos, t, res, 1 << 20, window=(1, 1)))
        for window, capacity in [((4, 4), 1 << 18), ((8, 16), 1 << 18), ((3, 5), 15),
                                 ((4, 4), 100), ((1, 1), 7)]:
            for per_image in (False, True):
                got = coverage.visible_triangles(pos, t, res, capacity, window=window,
                                                 per_image=per_image)
                np.testing.assert_array_equal(np.asarray(got), want)
        assert (want > 0).mean() > 0.2
    # The ties against the reference: the duplicate (larger id) wins.
    rast, _ = check(big, tri, (40, 32))
    ids = rast[0, ..., 3].astype(int)
    assert (ids > T_PAD - 3).any() and not np.isin(ids, [1, 2, 3]).any()


def test_batches_match_images_one_by_one():
    """On the CPU a batch is rasterized image after image (lax.map): the same
    ids as one call per image, the same barycentrics to float32 rounding, and
    the same gradients."""
    scenes = [random_scene(seed)[0] for seed in (30, 31, 32)]
    tri = random_scene(30)[1]
    pos = jnp.asarray(np.stack(scenes), jnp.float32)
    rast, db = K.rasterize(pos, tri, RES)
    for n in range(len(scenes)):
        one, one_db = K.rasterize(pos[n:n + 1], tri, RES)
        np.testing.assert_array_equal(np.asarray(rast[n, ..., 3]), np.asarray(one[0, ..., 3]))
        np.testing.assert_allclose(np.asarray(rast[n]), np.asarray(one[0]), atol=1e-5)
        np.testing.assert_allclose(np.asarray(db[n]), np.asarray(one_db[0]), rtol=1e-4,
                                   atol=1e-5)

    def loss(p):
        r, d = K.rasterize(p, tri, RES)
        return jnp.sum(r[..., :3] ** 2) + jnp.sum(d ** 2)

    grad = np.asarray(jax.grad(loss)(pos))
    for n in range(len(scenes)):
        np.testing.assert_allclose(grad[n], np.asarray(jax.grad(loss)(pos[n:n + 1]))[0],
                                   rtol=1e-4, atol=1e-4)


# --- the pallas backend (Pallas's interpreter on CPU) -----------------------------

def test_pallas_backend_matches_jax_backend(default_flame):
    # Random meshes, a clip-space soup (behind the eye, across w = 0 and the
    # near/far planes), and the default face at a resolution that is not a
    # multiple of the 16 x 16 tile.
    scenes = [random_scene(seed)[0] for seed in range(2)]
    soup, tri = random_scene(20, spread=1.5)
    rng = np.random.default_rng(0)
    soup[:, 3] = rng.uniform(-1.0, 1.5, V_PAD)
    soup[:, 2] = rng.uniform(-1.5, 1.5, V_PAD) * np.abs(soup[:, 3])
    pos = jnp.asarray(np.stack(scenes + [soup]), jnp.float32)
    verts = np.asarray(default_flame.v_template, np.float64)
    verts = (verts - verts.mean(0)) / np.ptp(verts[:, 1])
    face = jnp.asarray(perspective(verts, -0.3, 1.6, focal=5.0)[None], jnp.float32)
    for p, t, res in [(pos, tri, (40, 32)), (face, np.asarray(default_flame.faces), (24, 40))]:
        want, want_db = K.rasterize(p, t, res)
        got, got_db = K.rasterize(p, t, res, backend="pallas")
        # Both backends evaluate the same edge functions: no tie may differ.
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        np.testing.assert_array_equal(np.asarray(got_db), np.asarray(want_db))
    assert (np.asarray(got[..., 3]) > 0).mean() > 0.3
    # Several chunks of (triangle, tile) pairs: the same picture.
    chunked, _ = K.rasterize(pos, tri, (40, 32), backend="pallas", capacity=8)
    np.testing.assert_array_equal(np.asarray(chunked), np.asarray(K.rasterize(pos, tri,
                                                                              (40, 32))[0]))



@pytest.mark.gpu
def test_pallas_kernel_compiled_for_the_gpu_matches_the_jax_backend(default_flame):
    """The path the CPU cannot take: on a GPU the kernel is lowered
    (interpret=False). The same scenes as above plus the default face at 512^2:
    ids identical except where a pixel centre lies on an edge (the GPU's fused
    multiply-adds may round an edge function the other way: shared edges
    only), barycentrics within float32 rounding where the ids agree."""
    gpu = jax.devices("gpu")[0]
    verts = np.asarray(default_flame.v_template, np.float64)
    verts = (verts - verts.mean(0)) / np.ptp(verts[:, 1])
    tri = np.asarray(default_flame.faces)
    face = np.stack([perspective(verts, 0.5, 3.0), perspective(verts, -0.3, 1.6, focal=5.0)])
    for p, t, res in [(np.stack([random_scene(s)[0] for s in range(2)]), random_scene(0)[1],
                       (40, 32)), (face, tri, (512, 512))]:
        p = jax.device_put(jnp.asarray(p, jnp.float32), gpu)
        want = np.asarray(K.rasterize(p, t, res)[0])
        got = np.asarray(K.rasterize(p, t, res, backend="pallas")[0])
        same = got[..., 3] == want[..., 3]
        assert same.mean() > 0.999, same.mean()
        for a, b in zip(got[..., 3][~same].astype(int), want[..., 3][~same].astype(int)):
            assert a == 0 or b == 0 or adjacent(t, a, b), (a, b)
        np.testing.assert_allclose(got[same][:, :3], want[same][:, :3], atol=1e-5)


# --- gradients -------------------------------------------------------------------

def interior_scene():
    """One perspective triangle, well inside the image."""
    return padded(np.array([[-0.8, -0.7, 0.1, 1.0], [0.9, -0.5, 0.3, 1.2],
                            [0.1, 0.8, -0.2, 0.9]]), np.array([[0, 1, 2]]))


def interior_pixels(rast):
    """Pixels whose 3 x 3 neighbourhood is covered: coverage cannot change there
    under a small move of the vertices."""
    covered = np.asarray(rast[0, ..., 3]) > 0
    inner = covered.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner &= np.roll(np.roll(covered, dy, 0), dx, 1)
    inner[[0, -1]] = False
    inner[:, [0, -1]] = False
    return inner


def central_difference(loss, p, idx, eps):
    return (loss(p.at[idx].add(eps)) - loss(p.at[idx].add(-eps))) / (2 * eps)


def test_rast_gradients_match_finite_differences():
    pos, tri = interior_scene()
    p0 = jnp.asarray(pos[None], jnp.float32)
    rast0, _ = K.rasterize(p0, tri, RES)
    mask = jnp.asarray(interior_pixels(rast0))[None, ..., None]
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(1,) + RES + (7,)), jnp.float32)

    @jax.jit
    def loss(p):  # (u, v, z/w) and all of rast_db
        rast, db = K.rasterize(p, tri, RES)
        out = jnp.concatenate([rast[..., :3], db * 10.0], axis=-1)
        return jnp.sum(out * weights * mask)

    grad = np.asarray(jax.grad(loss)(p0))
    for idx in [(0, 0, 0), (0, 1, 1), (0, 2, 3), (0, 1, 2), (0, 0, 3), (0, 2, 0)]:
        np.testing.assert_allclose(grad[idx], central_difference(loss, p0, idx, 1e-3),
                                   rtol=2e-2, atol=2e-3)
    assert np.all(grad[0, 3:] == 0)  # unused vertices


def test_rast_db_matches_differences_across_pixels():
    pos, tri = interior_scene()
    rast, db = K.rasterize(jnp.asarray(pos[None], jnp.float32), tri, RES)
    rast, db = np.asarray(rast[0]), np.asarray(db[0])
    inner = interior_pixels(rast[None])
    # Central differences of (u, v) over neighbouring pixel centres.
    ddx = (np.roll(rast, -1, 1) - np.roll(rast, 1, 1))[..., :2] / 2
    ddy = (np.roll(rast, -1, 0) - np.roll(rast, 1, 0))[..., :2] / 2
    fd = np.stack([ddx[..., 0], ddy[..., 0], ddx[..., 1], ddy[..., 1]], axis=-1)
    np.testing.assert_allclose(db[inner], fd[inner], rtol=0.05, atol=2e-4)


def test_interpolate_values_derivatives_and_gradients():
    pos, tri = interior_scene()
    pos[:, 3] = 1.0  # affine: screen position is linear in the barycentrics
    height, width = RES
    rast, db = K.rasterize(jnp.asarray(pos[None], jnp.float32), tri, RES)
    # Attributes: the vertex's column and row coordinates, and a constant.
    attr = np.stack([(pos[:, 0] + 1) * 0.5 * width, (pos[:, 1] + 1) * 0.5 * height,
                     np.full(V_PAD, 3.0)], axis=1).astype(np.float32)
    out, out_da = K.interpolate(jnp.asarray(attr), rast, tri, rast_db=db, diff_attrs="all")
    covered = np.asarray(rast[0, ..., 3] > 0)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    np.testing.assert_allclose(np.asarray(out[0, ..., 0])[covered], cols[covered], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out[0, ..., 1])[covered], rows[covered], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out[0, ..., 2])[covered], 3.0, atol=1e-5)
    assert np.all(np.asarray(out)[0][~covered] == 0)
    # nvdiffrast's layout: (dA0/dX, dA0/dY, dA1/dX, dA1/dY, dA2/dX, dA2/dY).
    np.testing.assert_allclose(np.asarray(out_da[0])[covered],
                               np.tile([1, 0, 0, 1, 0, 0], (covered.sum(), 1)), atol=1e-4)
    _, some = K.interpolate(jnp.asarray(attr), rast, tri, rast_db=db, diff_attrs=[1])
    np.testing.assert_allclose(some, out_da[..., 2:4])
    batched, _ = K.interpolate(jnp.asarray(attr[None]), rast, tri)
    np.testing.assert_allclose(batched, out)

    # Gradients with respect to attr (linear) and pos (through rast).
    pos, tri = interior_scene()
    p0, a0 = jnp.asarray(pos[None], jnp.float32), jnp.asarray(attr)
    mask = jnp.asarray(interior_pixels(K.rasterize(p0, tri, RES)[0]))[None, ..., None]
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(1,) + RES + (9,)), jnp.float32)

    def loss(p, a):
        rast, db = K.rasterize(p, tri, RES)
        out, out_da = K.interpolate(a, rast, tri, rast_db=db, diff_attrs="all")
        return jnp.sum(jnp.concatenate([out, out_da], axis=-1) * weights * mask)

    loss = jax.jit(loss)
    grad_p, grad_a = jax.grad(loss, argnums=(0, 1))(p0, a0)
    for idx in [(0, 0), (2, 1), (1, 2)]:
        fd = central_difference(lambda a: loss(p0, a), a0, idx, 1.0)  # linear in attr
        np.testing.assert_allclose(grad_a[idx], fd, rtol=1e-3, atol=1e-3)
    for idx in [(0, 0, 0), (0, 1, 1), (0, 2, 3)]:
        fd = central_difference(lambda p: loss(p, a0), p0, idx, 1e-3)
        np.testing.assert_allclose(grad_p[idx], fd, rtol=2e-2, atol=2e-2)


# --- transformations and validation ------------------------------------------------

def test_jit_and_vmap():
    pos, tri = random_scene(2)
    p = jnp.asarray(np.stack([pos, pos * 1.1 + 0.05]), jnp.float32)
    eager = K.rasterize(p, tri, RES)
    jitted = jax.jit(lambda q: K.rasterize(q, tri, RES))(p)
    mapped = jax.vmap(lambda q: jax.tree.map(lambda x: x[0], K.rasterize(q[None], tri, RES)))(p)
    for other in (jitted, mapped):
        np.testing.assert_array_equal(eager[0][..., 3], other[0][..., 3])
        np.testing.assert_allclose(eager[0], other[0], atol=1e-6)
        np.testing.assert_allclose(eager[1], other[1], atol=1e-5)
    rast, db = K.rasterize(p, tri, RES, grad_db=False)
    assert db is None
    np.testing.assert_array_equal(rast, eager[0])


def test_bad_input_and_backends():
    pos, tri = random_scene(0)
    p = jnp.asarray(pos[None], jnp.float32)
    cases = [
        (lambda: K.rasterize(jnp.zeros((1, 5, 3)), tri, (4, 4)), "pos must be"),
        (lambda: K.rasterize(p, tri + 100, (4, 4)), "tri indices span"),
        (lambda: K.rasterize(p, tri.astype(np.float32), (4, 4)), "integer"),
        (lambda: K.rasterize(p, tri[:, :2], (4, 4)), r"\(T, 3\)"),
        (lambda: K.rasterize(p.astype(jnp.int32), tri, (4, 4)), "floating"),
        (lambda: K.rasterize(p, tri, (0, 4)), ">= 1"),
        (lambda: K.rasterize(p, tri, (4.5, 4)), "two ints"),
        (lambda: K.rasterize(p, tri, (4, 4), capacity=0), "capacity"),
        (lambda: K.rasterize(p, tri, (4, 4), backend="opengl"), "unknown backend"),
        (lambda: K.interpolate(jnp.zeros((2, V_PAD, 3)), jnp.zeros((1, 4, 4, 4)), tri), "attr"),
        (lambda: K.interpolate(jnp.zeros((V_PAD, 3)), jnp.zeros((1, 4, 4)), tri), "rast must"),
        (lambda: K.interpolate(jnp.zeros((V_PAD, 3)), jnp.zeros((1, 4, 4, 4)), tri,
                               jnp.zeros((1, 4, 4, 4)), diff_attrs=[3]), "out of range"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    expected = (RuntimeError, "needs a CUDA GPU") if not _has_gpu() else (NotImplementedError, "")
    with pytest.raises(expected[0], match=expected[1]):
        K.rasterize(p, tri, (4, 4), backend="nvdiffrast")
    assert K.BACKENDS == ("jax", "pallas", "nvdiffrast")


def _has_gpu():
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False
