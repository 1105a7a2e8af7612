"""The face renderer end to end on the default model (small images)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from face3d_jax.flame.forward import flame_forward
from face3d_jax.render.renderer import PhongLight, render
from face3d_jax.render.views import default_sh_light, face_camera, plain_albedo, render_yaws


def mean_face(model):
    z = lambda n: np.zeros((1, n), np.float32)  # noqa: E731
    return dict(shape=z(300), expression=z(50), global_pose=z(3), neck_pose=z(3),
                jaw_pose=z(3), eye_pose=z(6))


def test_yaw_renders_cover_the_face_and_project_landmarks(default_flame):
    out = jax.jit(lambda m, p, a: render_yaws(m, p, a, yaws_deg=(0.0, 30.0),
                                              resolution=(48, 40)))(
        default_flame, mean_face(default_flame), plain_albedo(1))
    assert out.image.shape == (2, 48, 40, 3) and out.mask.shape == (2, 48, 40, 1)
    mask = np.asarray(out.mask[..., 0])
    assert 0.2 < mask.mean() < 0.9
    assert np.all(np.asarray(out.image) >= 0) and np.isfinite(np.asarray(out.image)).all()
    # The landmarks fall on the rendered face; the nose tip sits near the
    # middle at yaw 0 and moves to the viewer's right at +30 degrees.
    for b in range(2):
        cols, rows = np.asarray(out.landmarks2d[b, 17:]).T.astype(int)
        assert mask[b, rows.clip(0, 47), cols.clip(0, 39)].mean() > 0.95
        # The contour lies on the outline: all within a pixel and a half of the face.
        covered = np.argwhere(mask[b] > 0.5)[:, ::-1] + 0.5
        for point in np.asarray(out.landmarks2d[b]):
            assert np.min(np.linalg.norm(covered - point, axis=1)) < 1.5
    nose = np.asarray(out.landmarks2d[:, 30, 0])
    assert abs(nose[0] - 20) < 2 and nose[1] > nose[0] + 4


def test_gradients_reach_vertices_albedo_and_light_and_phong_works(default_flame):
    m = default_flame
    verts = flame_forward(m, **mean_face(m)).vertices
    albedo = plain_albedo(1, 16)
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), jnp.float32)

    @jax.jit
    def loss(v, a, sh):
        out = render(v, m.faces, m.uv_coords, m.uv_faces, a, face_camera(1), (32, 32),
                     sh_coeffs=sh)
        return jnp.sum(out.image * weights)

    gv, ga, gs = jax.grad(loss, argnums=(0, 1, 2))(verts, albedo, default_sh_light(1))
    for g in (gv, ga, gs):
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0
    phong = PhongLight(directions=jnp.asarray([[[0.0, 0.3, 0.95]]]),
                       colors=jnp.asarray([[[0.8, 0.8, 0.8]]]), ambient=jnp.asarray([[0.2] * 3]))
    out = render(verts, m.faces, m.uv_coords, m.uv_faces, albedo, face_camera(1), (24, 24),
                 phong=phong)
    assert float(out.mask.mean()) > 0.2
    with pytest.raises(ValueError, match="exactly one light"):
        render(verts, m.faces, m.uv_coords, m.uv_faces, albedo, face_camera(1), (24, 24))
