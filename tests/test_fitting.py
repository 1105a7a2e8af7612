"""FLAME fitting (face3d_jax/fitting.py) on faces made from known parameters:
the landmarks of a known face, and its picture from our renderer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from face3d_jax import fitting as F
from face3d_jax.render.renderer import WeakPerspectiveCamera, render
from face3d_jax.render.views import default_sh_light


def known_faces(batch, seed=0):
    rng = np.random.default_rng(seed)
    pad = lambda a, n: np.concatenate([a, np.zeros((batch, n - a.shape[1]))], 1)  # noqa: E731
    return F.FitParams(
        shape=jnp.asarray(pad(rng.normal(size=(batch, 20)), 100), jnp.float32),
        expression=jnp.asarray(pad(0.7 * rng.normal(size=(batch, 10)), 50), jnp.float32),
        global_pose=jnp.asarray(rng.uniform(-1, 1, (batch, 3)) * [0.1, 0.5, 0.05], jnp.float32),
        jaw_pose=jnp.asarray(np.abs(rng.normal(size=(batch, 3))) * [0.1, 0, 0], jnp.float32),
        cam=jnp.asarray(np.stack([rng.uniform(6, 8, batch), rng.uniform(-0.02, 0.02, batch),
                                  rng.uniform(-0.02, 0.02, batch)], 1), jnp.float32),
        sh=default_sh_light(batch), colour=jnp.tile(jnp.asarray([[0.7, 0.5, 0.4]]), (batch, 1)))


def vertex_error_mm(a, b):
    return 1000 * np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1).mean(axis=1)


def test_landmark_fit_recovers_a_known_face(default_flame):
    m, res = default_flame, (224, 224)
    true = known_faces(2)
    target = F.project_landmarks(m, true, res)
    fit = jax.jit(lambda t: F.fit_landmarks(m, t, res))(target)
    err_px = np.linalg.norm(np.asarray(fit.landmarks2d - target), axis=-1)
    assert err_px.mean() < 0.75, err_px.mean(axis=1)
    truth = F.decode(m, true).vertices
    start = F.decode(m, F.initial_params(m, target, res)).vertices
    before, after = vertex_error_mm(start, truth), vertex_error_mm(fit.vertices, truth)
    # 68 points cannot pin 100 shape components down, but the fit must get
    # the pose, the camera and the gross shape: the error falls at least 3x.
    assert np.all(after < 0.33 * before), (before, after)
    np.testing.assert_allclose(np.asarray(fit.params.global_pose),
                               np.asarray(true.global_pose), atol=0.05)
    assert float(fit.losses[-1]) < float(fit.losses[0])


def test_photometric_stage_fits_light_and_colour_and_keeps_the_mesh(default_flame):
    m, res = default_flame, (64, 64)
    true = known_faces(1, seed=1)
    out = F.decode(m, true)
    albedo = jnp.broadcast_to(true.colour[:, None, None], (1, 4, 4, 3))
    image = render(out.vertices, m.faces, m.uv_coords, m.uv_faces, albedo,
                   WeakPerspectiveCamera(cam=true.cam), res, sh_coeffs=true.sh).image
    target = F.project_landmarks(m, true, res)
    fit = F.fit_landmarks(m, target, res, rigid_steps=50, steps=100)
    photo = jax.jit(lambda im, t, p: F.fit_photometric(m, im, t, p, steps=40, lr=0.05))(
        image, target, fit.params)
    losses = np.asarray(photo.losses)
    assert losses[-1] < 0.2 * losses[0], losses
    for name in ("shape", "expression", "global_pose", "jaw_pose", "cam"):  # held
        np.testing.assert_array_equal(np.asarray(getattr(photo.params, name)),
                                      np.asarray(getattr(fit.params, name)))
    # The colour's channel ratios come back (light and albedo share one scale).
    colour = np.asarray(photo.params.colour[0])
    np.testing.assert_allclose(colour / colour[0], [1.0, 0.5 / 0.7, 0.4 / 0.7], atol=0.08)
    with pytest.raises(ValueError, match="unknown parameters"):
        F.fit_photometric(m, image, target, fit.params, free=("albedo",))
