"""The FLAME forward pass: rigid-motion identities, references from scipy and
trimesh, jit/vmap consistency, and gradients (smplx parity: test_flame_smplx)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from face3d_jax.flame import lbs
from face3d_jax.flame.forward import flame_forward
from face3d_jax.flame.geometry import barycentric_points, displace, sample_uv_map, vertex_normals
from face3d_jax.flame.landmarks import yaw_bin


def zeros(batch, num_shape=300, num_expression=100):
    return dict(shape=np.zeros((batch, num_shape), np.float32),
                expression=np.zeros((batch, num_expression), np.float32),
                global_pose=np.zeros((batch, 3), np.float32),
                neck_pose=np.zeros((batch, 3), np.float32),
                jaw_pose=np.zeros((batch, 3), np.float32),
                eye_pose=np.zeros((batch, 6), np.float32))


def random_params(seed, batch, num_shape=300, num_expression=100):
    rng = np.random.default_rng(seed)
    p = zeros(batch, num_shape, num_expression)
    p["shape"] = rng.normal(size=p["shape"].shape).astype(np.float32)
    p["expression"] = rng.normal(size=p["expression"].shape).astype(np.float32)
    for k, scale in (("global_pose", 0.4), ("neck_pose", 0.2), ("eye_pose", 0.2)):
        p[k] = (scale * rng.normal(size=p[k].shape)).astype(np.float32)
    p["jaw_pose"][:, 0] = rng.uniform(0, 0.3, size=batch)
    return p


def test_rodrigues_matches_scipy():
    rng = np.random.default_rng(0)
    vecs = np.concatenate([rng.normal(size=(50, 3)) * 1.5, rng.normal(size=(5, 3)) * 1e-5,
                           np.zeros((1, 3))]).astype(np.float32)
    ours = np.asarray(lbs.axis_angle_to_matrix(jnp.asarray(vecs)))
    np.testing.assert_allclose(ours, Rotation.from_rotvec(vecs.astype(np.float64)).as_matrix(),
                               atol=2e-6)


def test_rodrigues_gradient_finite_at_zero():
    g = jax.jacobian(lambda v: lbs.axis_angle_to_matrix(v))(jnp.zeros(3))
    assert np.all(np.isfinite(g))
    # d R / d v_x at 0 is the generator of rotations about x.
    np.testing.assert_allclose(g[..., 0], [[0, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-6)


def test_rest_pose_is_the_template(default_flame):
    m = default_flame
    out = flame_forward(m, **zeros(2))
    np.testing.assert_allclose(out.vertices[0], m.v_template, atol=1e-6)
    np.testing.assert_allclose(out.joints[1], m.J_regressor @ m.v_template, atol=1e-6)
    assert out.vertices.shape == (2, m.num_vertices, 3) and out.vertices.dtype == jnp.float32
    assert out.landmarks.shape == (2, 68, 3) and out.joints.shape == (2, 5, 3)


def test_global_pose_rotates_rigidly_about_the_root(default_flame):
    m = default_flame
    p = random_params(1, 3)
    p.update(neck_pose=0 * p["neck_pose"], jaw_pose=0 * p["jaw_pose"], eye_pose=0 * p["eye_pose"])
    rest = dict(p, global_pose=0 * p["global_pose"])
    a, b = flame_forward(m, **p), flame_forward(m, **rest)
    for i in range(3):
        r = Rotation.from_rotvec(p["global_pose"][i].astype(np.float64)).as_matrix()
        root = np.asarray(b.joints[i, 0], np.float64)
        want = (np.asarray(b.vertices[i]) - root) @ r.T + root
        np.testing.assert_allclose(a.vertices[i], want, atol=2e-6)
        want_lmk = (np.asarray(b.landmarks[i]) - root) @ r.T + root
        # Contour landmarks slide with yaw; the static ones are carried along.
        np.testing.assert_allclose(a.landmarks[i, 17:], want_lmk[17:], atol=2e-6)


def test_translation_moves_every_output(default_flame):
    p = random_params(2, 2)
    t = np.array([[0.1, -0.2, 0.3], [0.0, 0.5, -1.0]], np.float32)
    a, b = flame_forward(default_flame, **p), flame_forward(default_flame, **p, translation=t)
    for x, y in zip(a, b):
        np.testing.assert_allclose(y - x, np.broadcast_to(t[:, None], x.shape), atol=1e-6)


def test_jaw_opens_the_mouth_and_leaves_the_skull(default_flame):
    m = default_flame
    gaps = []
    for angle in (0.0, 0.1, 0.3):
        p = zeros(1)
        p["jaw_pose"][0, 0] = angle
        out = flame_forward(m, **p)
        gaps.append(float(out.landmarks[0, 62, 1] - out.landmarks[0, 66, 1]))  # inner lips
        # Skinned to the neck alone and out of reach of the jaw's correctives.
        skull = (np.asarray(m.weights[:, 1]) == 1.0) & np.all(
            np.asarray(m.posedirs[:, :, 9:18]) == 0, axis=(1, 2))
        np.testing.assert_allclose(out.vertices[0][skull], np.asarray(m.v_template)[skull],
                                   atol=1e-6)
    assert gaps[0] < 0.004 and gaps[1] > gaps[0] + 0.004 and gaps[2] > gaps[1] + 0.008


def test_fewer_components_equal_zero_padding(default_flame):
    p = random_params(3, 2, num_shape=300, num_expression=100)
    p["shape"][:, 40:] = 0
    p["expression"][:, 10:] = 0
    full = flame_forward(default_flame, **p)
    short = flame_forward(default_flame, **dict(p, shape=p["shape"][:, :40],
                                                expression=p["expression"][:, :10]))
    np.testing.assert_allclose(full.vertices, short.vertices, atol=1e-6)


def test_jit_and_vmap_agree_with_eager(default_flame):
    p = random_params(4, 3)
    eager = flame_forward(default_flame, **p)
    jitted = jax.jit(flame_forward)(default_flame, **p)

    def single(*args):
        args = [a[None] for a in args]
        return jax.tree.map(lambda x: x[0], flame_forward(default_flame, *args))

    mapped = jax.vmap(single)(p["shape"], p["expression"], p["global_pose"], p["neck_pose"],
                              p["jaw_pose"], p["eye_pose"])
    for a, b, c in zip(eager, jitted, mapped):
        np.testing.assert_allclose(a, b, atol=2e-6)
        np.testing.assert_allclose(a, c, atol=2e-6)


def test_bad_parameter_shapes_are_named(default_flame):
    p = zeros(2)
    with pytest.raises(ValueError, match="'jaw_pose' has shape"):
        flame_forward(default_flame, **dict(p, jaw_pose=np.zeros((2, 4), np.float32)))
    with pytest.raises(ValueError, match="'eye_pose' has batch 3"):
        flame_forward(default_flame, **dict(p, eye_pose=np.zeros((3, 6), np.float32)))
    with pytest.raises(ValueError, match="301 shape"):
        flame_forward(default_flame, **dict(p, shape=np.zeros((2, 301), np.float32)))


def test_yaw_bins_follow_flames_table():
    def reference(deg):  # smplx/DECA: round(clamp(-euler_y, max=39)), negatives to 39 - a
        a = int(np.round(min(-deg, 39)))
        return a if a >= 0 else (78 if a < -39 else 39 - a)

    degrees = np.array([-60, -39.4, -20.2, -0.4, 0.3, 1.2, 20.7, 38.6, 39.6, 75.0])
    rot = Rotation.from_euler("y", degrees[:, None], degrees=True).as_matrix().astype(np.float32)
    np.testing.assert_array_equal(yaw_bin(jnp.asarray(rot)), [reference(d) for d in degrees])


def test_vertex_normals_match_trimesh():
    trimesh = pytest.importorskip("trimesh")
    mesh = trimesh.creation.icosphere(subdivisions=2)
    verts = mesh.vertices * np.array([1.0, 0.7, 1.3])  # not a sphere: normals not radial
    tri = verts[mesh.faces]
    area_weighted = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    want = trimesh.geometry.mean_vertex_normals(len(verts), mesh.faces, area_weighted)
    ours = vertex_normals(jnp.asarray(verts[None], jnp.float32), jnp.asarray(mesh.faces))
    np.testing.assert_allclose(ours[0], want, atol=1e-5)


def test_barycentric_points_are_convex_combinations():
    v = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 3)), jnp.float32)
    faces = jnp.asarray([[0, 1, 2], [3, 4, 5]])
    pts = barycentric_points(v, faces, jnp.asarray([1, 0]), jnp.asarray([[0.2, 0.3, 0.5],
                                                                        [1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(pts[:, 0], 0.2 * v[:, 3] + 0.3 * v[:, 4] + 0.5 * v[:, 5], atol=1e-6)
    np.testing.assert_allclose(pts[:, 1], v[:, 0], atol=1e-6)


def test_uv_sampling_is_exact_on_linear_maps():
    h, w = 8, 12
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    u_centre, v_centre = (cols + 0.5) / w, 1 - (rows + 0.5) / h
    linear = (0.3 * u_centre - 0.7 * v_centre + 0.1)[None, ..., None].astype(np.float32)
    rng = np.random.default_rng(0)  # inside the texel centres, where bilinear is exact
    uv = np.stack([rng.uniform(0.5 / w, 1 - 0.5 / w, 40), rng.uniform(0.5 / h, 1 - 0.5 / h, 40)],
                  axis=-1)[None].astype(np.float32)
    got = sample_uv_map(jnp.asarray(linear), jnp.asarray(uv))
    np.testing.assert_allclose(got[0, :, 0], 0.3 * uv[0, :, 0] - 0.7 * uv[0, :, 1] + 0.1, atol=1e-6)


def test_displacement_moves_vertices_along_normals(default_flame):
    m = default_flame
    verts = flame_forward(m, **random_params(5, 2)).vertices
    const = jnp.full((2, 16, 16, 1), 0.004)
    moved = displace(verts, m.faces, m.vertex_uv, const)
    n = vertex_normals(verts, m.faces)
    np.testing.assert_allclose(moved - verts, 0.004 * n, atol=1e-6)
    np.testing.assert_allclose(displace(verts, m.faces, m.vertex_uv, 0 * const), verts, atol=0)
    # Gradient reaches the map, finite everywhere.
    g = jax.grad(lambda d: jnp.sum(displace(verts, m.faces, m.vertex_uv, d) ** 2))(const)
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


def test_gradients_are_finite_and_match_finite_differences(default_flame):
    m = default_flame
    p = {k: jnp.asarray(v) for k, v in random_params(6, 2).items()}
    w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 68, 3)), jnp.float32)

    def loss(params):
        out = flame_forward(m, **params)
        return jnp.sum(out.landmarks * w) + 10.0 * jnp.mean(out.vertices ** 2)

    grads = jax.jit(jax.grad(loss))(p)
    for name, g in grads.items():
        assert np.all(np.isfinite(g)), name
    zero_grads = jax.grad(loss)({k: 0 * v for k, v in p.items()})
    assert all(np.all(np.isfinite(g)) for g in zero_grads.values())
    # Central differences on a few coordinates (float32: loose tolerance).
    eps = 1e-3
    for name, idx in (("shape", (0, 0)), ("expression", (1, 3)), ("jaw_pose", (0, 0)),
                      ("neck_pose", (1, 1)), ("eye_pose", (0, 2)), ("global_pose", (1, 2))):
        plus = dict(p, **{name: p[name].at[idx].add(eps)})
        minus = dict(p, **{name: p[name].at[idx].add(-eps)})
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        np.testing.assert_allclose(grads[name][idx], fd, rtol=2e-2, atol=2e-3)


def test_two_decodes_in_one_program_equal_one_decode(default_flame):
    """A trained run decodes the same codes twice in one jitted program (posed
    and frontal). XLA's CPU backend once ran rigid_transforms' scatter in place
    on the joints both decodes share, so the second saw the first's result
    (17 cm off); each decode must equal the decode alone, to float32 rounding
    of the same graph compiled twice."""
    p = random_params(3, 2, num_expression=50)
    frontal = dict(p, global_pose=jnp.zeros_like(p["global_pose"]))

    def both(p):
        return (flame_forward(default_flame, **p).vertices,
                flame_forward(default_flame, **dict(p, global_pose=jnp.zeros_like(
                    p["global_pose"]))).vertices)

    posed, front = jax.jit(both)(p)
    for got, params in ((posed, p), (front, frontal)):
        want = jax.jit(lambda q: flame_forward(default_flame, **q).vertices)(params)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
