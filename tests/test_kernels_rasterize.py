"""rasterize and interpolate against a brute-force reference, edge cases and
gradients (finite differences)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import face3d_kernels as K
from face3d_kernels import raster_jax
from raster_reference import rasterize_reference


def random_scene(seed, num_v=30, num_t=20, spread=1.3):
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, (num_v, 1))
    ndc = np.concatenate([rng.uniform(-spread, spread, (num_v, 2)),
                          rng.uniform(-0.9, 0.9, (num_v, 1))], axis=1)
    pos = np.concatenate([ndc * w, w], axis=1)
    tri = rng.integers(0, num_v, (num_t, 3)).astype(np.int32)
    return pos, tri


def check_against_reference(pos, tri, height, width, min_same=1.0):
    rast, _ = K.rasterize(jnp.asarray(pos[None], jnp.float32), tri, (height, width))
    rast = np.asarray(rast[0])
    ref = rasterize_reference(pos.astype(np.float64), tri, height, width)
    same = rast[..., 3] == ref[..., 3]
    assert same.mean() >= min_same, same.mean()
    both = same & (ref[..., 3] > 0)
    np.testing.assert_allclose(rast[both][:, :3], ref[both][:, :3], atol=2e-5)
    return rast, ref


@pytest.mark.parametrize("seed", range(4))
def test_random_meshes_match_reference(seed):
    pos, tri = random_scene(seed)
    check_against_reference(pos, tri, 17, 23)


def test_default_face_matches_reference(default_flame):
    from face3d_jax.render.cameras import weak_perspective

    verts = jnp.asarray(default_flame.v_template[None])
    # Zoomed on the nose and eyes, where the mesh folds over itself in depth.
    pos = np.asarray(weak_perspective(verts, jnp.asarray([[25.0, 0.0, -0.01]])))[0]
    tri = np.asarray(default_flame.faces)
    centre = pos[tri, :2].mean(1)
    near = tri[np.all(np.abs(centre) < 1.1, axis=1)]
    rast, ref = check_against_reference(pos, near, 40, 32, min_same=0.995)
    assert (ref[..., 3] > 0).mean() > 0.9


def test_behind_the_camera_and_crossing_near_plane():
    pos, tri = random_scene(7)
    pos[:6, 3] = -0.4  # some vertices behind the eye
    pos[9:12] *= -1.0  # and a few wholly behind
    pos[6:9, 2] = -2.0 * pos[6:9, 3]  # in front of the near plane
    check_against_reference(pos, tri, 19, 21)


def test_zero_area_outside_and_huge_triangles():
    pos = np.array([[0, 0, 0, 1], [0.5, 0.5, 0, 1], [1, 1, 0, 1],  # degenerate (collinear)
                    [5, 5, 0.1, 1], [6, 5, 0.1, 1], [5, 6, 0.1, 1],  # wholly outside
                    [-30, -30, 0.5, 1], [30, -30, 0.5, 1], [0, 40, 0.5, 1]],  # larger than image
                   np.float64)
    tri = np.arange(9, dtype=np.int32).reshape(3, 3)
    rast, _ = check_against_reference(pos, tri, 12, 9)
    assert np.all(rast[..., 3] == 3)  # the huge triangle covers everything


def test_empty_scene():
    pos, tri = random_scene(3)
    pos[:, 0] += 10 * pos[:, 3]  # everything far to the right of the image
    rast, db = K.rasterize(jnp.asarray(pos[None], jnp.float32), tri, (8, 8))
    assert np.all(np.asarray(rast) == 0) and np.all(np.asarray(db) == 0)


def test_batch_of_different_positions():
    a, tri = random_scene(11)
    b, _ = random_scene(12)
    rast, _ = K.rasterize(jnp.asarray(np.stack([a, b]), jnp.float32), tri, (13, 15))
    for i, p in enumerate((a, b)):
        ref = rasterize_reference(p, tri, 13, 15)
        np.testing.assert_array_equal(np.asarray(rast[i, ..., 3]), ref[..., 3])


def test_many_chunks_lose_no_triangle(monkeypatch):
    # A tiny chunk budget forces every level through many while_loop rounds.
    monkeypatch.setattr(raster_jax, "_CHUNK_FRAGMENTS", 16)
    pos, tri = random_scene(5, num_v=60, num_t=80, spread=1.0)
    check_against_reference(pos, tri, 16, 16)


def interior_scene():
    pos = np.array([[-0.8, -0.7, 0.1, 1.0], [0.9, -0.5, 0.3, 1.2], [0.1, 0.8, -0.2, 0.9]],
                   np.float32)
    return pos, np.array([[0, 1, 2]], np.int32)


def test_barycentric_gradients_match_finite_differences():
    pos, tri = interior_scene()
    weights = np.random.default_rng(0).normal(size=(1, 10, 10, 3)).astype(np.float32)
    rast0, _ = K.rasterize(jnp.asarray(pos[None]), tri, (10, 10))
    inside = np.asarray(rast0[..., 3:4] > 0)

    @jax.jit
    def loss(p):
        rast, _ = K.rasterize(p, tri, (10, 10))
        return jnp.sum(rast[..., :3] * weights * inside)

    p0 = jnp.asarray(pos[None])
    grad = np.asarray(jax.grad(loss)(p0))
    eps = 1e-3
    for idx in [(0, 0, 0), (0, 1, 1), (0, 2, 3), (0, 1, 2), (0, 0, 3)]:
        fd = (loss(p0.at[idx].add(eps)) - loss(p0.at[idx].add(-eps))) / (2 * eps)
        np.testing.assert_allclose(grad[idx], fd, rtol=2e-2, atol=2e-3)


def test_interpolate_values_gradients_and_derivatives():
    pos, tri = interior_scene()
    pos[:, 3] = 1.0  # affine: screen position is linear in the barycentrics
    rast, db = K.rasterize(jnp.asarray(pos[None]), tri, (12, 10))
    pixel_x = (pos[:, 0] + 1) * 0.5 * 10  # attribute: the vertex's column coordinate
    pixel_y = (pos[:, 1] + 1) * 0.5 * 12
    attr = np.stack([pixel_x, pixel_y], axis=1).astype(np.float32)
    out, out_da = K.interpolate(jnp.asarray(attr), rast, tri, rast_db=db, diff_attrs="all")
    covered = np.asarray(rast[0, ..., 3] > 0)
    cols, rows = np.meshgrid(np.arange(10) + 0.5, np.arange(12) + 0.5)
    np.testing.assert_allclose(np.asarray(out[0, ..., 0])[covered], cols[covered], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out[0, ..., 1])[covered], rows[covered], atol=1e-4)
    # (dx/dX, dx/dY, dy/dX, dy/dY) = (1, 0, 0, 1) wherever covered.
    np.testing.assert_allclose(np.asarray(out_da[0])[covered], [[1, 0, 0, 1]] * covered.sum(),
                               atol=1e-4)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=out.shape), jnp.float32)
    g = jax.grad(lambda a: jnp.sum(K.interpolate(a, rast, tri)[0] * weights))(jnp.asarray(attr))
    eps = 1e-2
    for idx in [(0, 0), (2, 1)]:
        a = jnp.asarray(attr)
        fd = (jnp.sum(K.interpolate(a.at[idx].add(eps), rast, tri)[0] * weights)
              - jnp.sum(K.interpolate(a.at[idx].add(-eps), rast, tri)[0] * weights)) / (2 * eps)
        np.testing.assert_allclose(g[idx], fd, rtol=1e-3, atol=1e-3)


def test_jit_and_vmap():
    pos, tri = random_scene(2)
    p = jnp.asarray(np.stack([pos, pos * 1.1]), jnp.float32)
    eager = K.rasterize(p, tri, (9, 11))[0]
    jitted = jax.jit(lambda q: K.rasterize(q, tri, (9, 11))[0])(p)
    mapped = jax.vmap(lambda q: K.rasterize(q[None], tri, (9, 11))[0][0])(p)
    np.testing.assert_array_equal(eager[..., 3], jitted[..., 3])
    np.testing.assert_array_equal(eager[..., 3], mapped[..., 3])
    np.testing.assert_allclose(eager, jitted, atol=1e-6)
    np.testing.assert_allclose(eager, mapped, atol=1e-6)


def test_bad_input_and_backends():
    pos, tri = random_scene(0)
    with pytest.raises(ValueError, match="pos must be"):
        K.rasterize(jnp.zeros((1, 5, 3)), tri, (4, 4))
    with pytest.raises(ValueError, match="tri indices span"):
        K.rasterize(jnp.asarray(pos[None], jnp.float32), tri + 100, (4, 4))
    with pytest.raises(ValueError, match="unknown backend"):
        K.rasterize(jnp.asarray(pos[None], jnp.float32), tri, (4, 4), backend="opengl")
    with pytest.raises(NotImplementedError, match="not built yet"):
        K.rasterize(jnp.asarray(pos[None], jnp.float32), tri, (4, 4), backend="nvdiffrast")
