"""Cameras and shading against their mathematical definitions."""

import math

import jax.numpy as jnp
import numpy as np

from face3d_jax.render import cameras, shading


def test_sh_basis_is_orthonormal_up_to_lambert_factors():
    # H_b = A_l Y_b with Y_b the real orthonormal SH; DECA's band 0 omits A_0 = pi.
    rng = np.random.default_rng(0)
    n = rng.normal(size=(400_000, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    h = np.asarray(shading.sh_basis(jnp.asarray(n, jnp.float32)), np.float64)
    a = np.array([1.0] + [2 * math.pi / 3] * 3 + [math.pi / 4] * 5)
    y = h / a
    gram = 4 * math.pi * (y.T @ y) / len(n)  # Monte-Carlo integral over the sphere
    np.testing.assert_allclose(gram, np.eye(9), atol=0.02)


def test_sh_shading_sums_coefficients_times_basis():
    rng = np.random.default_rng(1)
    normals = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    coeffs = rng.normal(size=(2, 9, 3)).astype(np.float32)
    got = shading.sh_shading(jnp.asarray(normals), jnp.asarray(coeffs))
    want = np.einsum("bhwk,bkc->bhwc", np.asarray(shading.sh_basis(jnp.asarray(normals))), coeffs)
    np.testing.assert_allclose(got, want, atol=1e-5)
    const = np.zeros((2, 9, 3), np.float32)
    const[:, 0] = 1.0
    np.testing.assert_allclose(shading.sh_shading(jnp.asarray(normals), jnp.asarray(const)),
                               1 / math.sqrt(4 * math.pi), atol=1e-6)


def test_phong_terms():
    normals = jnp.asarray([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    view = jnp.asarray([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    light_dir = jnp.asarray([[[0.0, 0.0, 1.0]]])
    color = jnp.asarray([[[0.5, 0.6, 0.7]]])
    ambient = jnp.asarray([[0.1, 0.1, 0.1]])
    diffuse, spec = shading.phong_shading(normals, view, light_dir, color, ambient,
                                          specular=0.3, shininess=10.0)
    np.testing.assert_allclose(diffuse[0, 0], [0.6, 0.7, 0.8], atol=1e-6)  # facing the light
    np.testing.assert_allclose(spec[0, 0], 0.3 * np.array([0.5, 0.6, 0.7]), atol=1e-6)
    np.testing.assert_allclose(diffuse[0, 1], [0.1, 0.1, 0.1], atol=1e-6)  # grazing: ambient
    np.testing.assert_allclose(spec[0, 1], 0.0, atol=1e-6)


def test_perspective_matches_the_pinhole_model():
    rng = np.random.default_rng(2)
    pts = np.concatenate([rng.uniform(-0.2, 0.2, (1, 50, 2)), rng.uniform(0.3, 2.0, (1, 50, 1))],
                         axis=-1).astype(np.float32)
    k = np.array([[800.0, 820.0, 250.0, 260.0]], np.float32)
    clip = cameras.perspective(jnp.asarray(pts), jnp.asarray(k), (480, 512), near=0.3, far=2.0)
    pix = cameras.clip_to_pixels(clip, (480, 512))
    np.testing.assert_allclose(pix[0, :, 0], 800 * pts[0, :, 0] / pts[0, :, 2] + 250, rtol=1e-5)
    np.testing.assert_allclose(pix[0, :, 1], 820 * pts[0, :, 1] / pts[0, :, 2] + 260, rtol=1e-5)
    planes = jnp.asarray([[[0.0, 0.0, 0.3], [0.0, 0.0, 2.0]]])
    depth = cameras.perspective(planes, jnp.asarray(k), (480, 512), near=0.3, far=2.0)
    np.testing.assert_allclose(depth[0, :, 2] / depth[0, :, 3], [-1.0, 1.0], atol=1e-5)


def test_weak_perspective_is_decas_projection_with_rows_down():
    rng = np.random.default_rng(3)
    verts = rng.normal(size=(2, 10, 3)).astype(np.float32) * 0.1
    cam = np.array([[8.0, 0.01, -0.02], [5.0, 0.0, 0.03]], np.float32)
    clip = np.asarray(cameras.weak_perspective(jnp.asarray(verts), jnp.asarray(cam)))
    deca = cam[:, None, :1] * (verts[..., :2] + cam[:, None, 1:])
    np.testing.assert_allclose(clip[..., 0], deca[..., 0], atol=1e-6)
    np.testing.assert_allclose(clip[..., 1], -deca[..., 1], atol=1e-6)
    assert np.all(clip[..., 3] == 1)
    nearer = verts[..., 2] > verts[..., 2].mean()
    assert clip[..., 2][nearer].mean() < clip[..., 2][~nearer].mean()


def test_look_at_face_sees_the_nose_in_front():
    rot, trans = cameras.look_at_face(1.0)
    cam_pts = cameras.world_to_camera(jnp.asarray([[[0.0, 0.0, 0.1], [0.0, 0.1, 0.0]]]), rot, trans)
    np.testing.assert_allclose(cam_pts[0, 0], [0.0, 0.0, 0.9], atol=1e-6)  # nose nearer
    assert cam_pts[0, 1, 1] < 0  # up in the world is up (negative y) in the image
