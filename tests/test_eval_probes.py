"""The shape-criterion probes (eval/shape_probe.py, eval/shape_ceiling.py,
eval/term_gradients.py) and the albedo probe (eval/albedo_probe.py),
whose figures the README and the closing notes quote: the ridge read-out
against numpy's least squares, and the landmark fit against landmarks made
from known codes with DECA's orthographic projection written out here."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from face3d_eval.albedo_probe import true_albedo
from face3d_eval.shape_ceiling import fit_codes
from face3d_eval.shape_probe import ridge_fit
from face3d_eval.term_gradients import cosines
from face3d_jax.flame import flame_forward
from face3d_train.models import CodeLayout, crop_camera_prior


@pytest.mark.parametrize("n, d", [(40, 6), (5, 12)])  # the primal and the dual form
def test_ridge_fit_is_ridge_regression_on_standardised_inputs(n, d):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [0.5 + i for i in range(d)], (n, d))
    y = rng.standard_normal((n, 3))
    q = rng.normal(3.0, 2.0, (4, d))
    for penalty in (1e-3, 10.0):
        # min |Z a + b - y|^2 + penalty |a|^2 (b free), Z standardised, as one
        # augmented least-squares problem.
        mu, sd = x.mean(0), x.std(0) + 1e-8
        z = np.hstack([(x - mu) / sd, np.ones((n, 1))])
        reg = np.hstack([np.sqrt(penalty) * np.eye(d), np.zeros((d, 1))])
        coef = np.linalg.lstsq(np.vstack([z, reg]), np.vstack([y, np.zeros((d, 3))]),
                               rcond=None)[0]
        want = np.hstack([(q - mu) / sd, np.ones((4, 1))]) @ coef
        np.testing.assert_allclose(ridge_fit(x, y, penalty)(q), want, rtol=1e-6, atol=1e-8)


def _pixels(model, shape, expression, pose, crop):
    """68 landmarks in crop pixels: DECA's batch_orth_proj s (X + t) with the
    crop prior's camera, y up in NDC, pixel centres at j + 0.5."""
    n = shape.shape[0]
    z = lambda k: jnp.zeros((n, k), jnp.float32)  # noqa: E731
    out = flame_forward(model, shape, expression, pose, z(3), z(3), z(6))
    s, tx, ty = (float(v) for v in crop_camera_prior(model))
    lmk = np.asarray(out.landmarks, np.float64)
    ndc = s * (lmk[..., :2] + np.array([tx, ty]))
    return np.stack([(ndc[..., 0] + 1) * 0.5 * crop, (1 - ndc[..., 1]) * 0.5 * crop], -1)


def test_the_landmark_fit_reaches_landmarks_of_known_codes(default_flame):
    layout, crop, views = CodeLayout(10, 5), 64, 2
    rng = np.random.default_rng(1)
    shape = np.repeat(rng.standard_normal((2, 10)), views, axis=0).astype(np.float32)
    expression = (0.5 * rng.standard_normal((4, 5))).astype(np.float32)
    pose = (0.1 * rng.standard_normal((4, 3))).astype(np.float32)
    target = _pixels(default_flame, shape, expression, pose, crop).astype(np.float32)
    start = np.mean(np.linalg.norm(_pixels(default_flame, 0 * shape, 0 * expression, 0 * pose,
                                           crop) - target, axis=-1))
    for shared in (False, True):
        got_shape, got_px = fit_codes(default_flame, layout, target, crop, views,
                                      shared=shared, steps=600)
        got_shape, got_px = np.asarray(got_shape), np.asarray(got_px)
        err = np.mean(np.linalg.norm(got_px - target, axis=-1))
        assert start > 1.0 and err < 0.1 * start, (shared, start, err)
        assert got_shape.shape == (4, 10)
        # One shape per identity when shared, one per view otherwise.
        tied = np.allclose(got_shape[0::2], got_shape[1::2])
        assert tied == shared


def test_cosines_over_all_and_the_first_coefficients():
    to_truth = np.array([[1.0, 0.0, 0.0, 0.0, 0.0, 2.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    step = np.array([[2.0, 0.0, 0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # Row 0: (2 - 2) / (sqrt 5 sqrt 5) = 0 over all, 1 over the first 5; row 1
    # is a zero step and counts as 0.
    assert cosines(step, to_truth) == pytest.approx((0.0, 0.5))
    assert cosines(-to_truth, to_truth, first=2) == pytest.approx((-1.0, -1.0))


def test_the_albedo_probe_reads_each_identitys_w_and_true_albedo(default_flame):
    """Batched draws (5 in batches of 2): each w row is mapping(z) and each map
    the teacher scene's albedo of that w, drawn here one at a time."""
    import jax

    from face3d_jax import teacher as tt

    teacher = tt.make_teacher(jax.random.key(0), default_flame,
                              tt.TeacherConfig(resolution=32, albedo_size=16,
                                               displacement_size=16, calibration_samples=256))
    w, maps = true_albedo(teacher, jax.random.key(1), 5, batch=2)
    assert w.shape == (5, 512) and maps.shape == (5, 16, 16, 3)
    assert len({tuple(np.round(r[:4], 6)) for r in w}) == 5  # five different identities
    keys = jax.random.split(jax.random.key(1), 3)
    z = jax.random.normal(keys[2], (1, 512))  # the last batch holds one identity
    full = tt.mapping(teacher, z)
    # The same program on one row instead of two: float32 round-off only.
    np.testing.assert_allclose(w[4], np.asarray(full[0, 0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps[4], np.asarray(tt.scene(teacher, full).albedo[0]),
                               atol=1e-5)
