"""Parity of our FLAME decoder with smplx's FLAME (PyTorch, float64) on the same files.

The built-in procedural model is written with `write_flame_files`, then read by
smplx and by our own loader, so the files round trip through both readers; the
same random parameters are decoded by both and vertices, joints, landmarks and
gradients (torch autograd in float64 as the independent reference) must agree.

Known, intended differences handled here:
  * smplx's `joints` are [5 joints, 51 static landmarks, 17 contour landmarks];
    ours are separate, landmarks in iBUG order (contour 0..16 first).
  * smplx picks the contour's yaw bin from the global rotation alone
    (`NECK_IDX = 0`), we (like DECA) from global @ neck; contour landmarks are
    therefore compared only where the neck pose is zero.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
smplx = pytest.importorskip("smplx")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from face3d_jax.flame.forward import flame_forward  # noqa: E402
from face3d_jax.flame.io import load as load_flame  # noqa: E402
from face3d_jax.flame.landmarks import yaw_bin  # noqa: E402
from face3d_jax.flame.lbs import axis_angle_to_matrix  # noqa: E402
from face3d_jax.flame.writer import write_flame_files  # noqa: E402

NUM_SHAPE, NUM_EXPR = 300, 100
BATCH = 16
REL_TOL = 1e-5  # max abs error / template bounding-box diagonal
GRAD_TOL = 2e-4  # max abs error / max abs reference gradient, per parameter
PARAM_NAMES = ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "eye_pose",
               "translation")


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flame_pair(tmp_path_factory, default_flame):
    """(our model read back by our loader, smplx's FLAME in float64, head size)."""
    root = tmp_path_factory.mktemp("flame_assets")
    written = default_flame  # the procedural default, built once per session (conftest)
    # smplx.create(folder, model_type="flame") reads folder/flame/FLAME_NEUTRAL.pkl.
    write_flame_files(written, str(root / "flame"))
    ours = load_flame(str(root / "flame"))
    for name in ("v_template", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights",
                 "faces", "static_lmk_faces_idx", "static_lmk_bary_coords",
                 "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords"):
        np.testing.assert_allclose(np.asarray(getattr(ours, name)),
                                   np.asarray(getattr(written, name)),
                                   rtol=0, atol=1e-7, err_msg=name)
    theirs = smplx.create(str(root), model_type="flame", num_betas=NUM_SHAPE,
                          num_expression_coeffs=NUM_EXPR, use_face_contour=True,
                          dtype=torch.float64)
    assert theirs.shapedirs.shape[-1] == NUM_SHAPE and theirs.expr_dirs.shape[-1] == NUM_EXPR
    template = np.asarray(ours.v_template, np.float64)
    diag = float(np.linalg.norm(template.max(0) - template.min(0)))
    ours = jax.tree.map(jnp.asarray, ours)  # device arrays once, not per call
    return ours, theirs, diag


def _random_axis_angle(rng, batch, max_angle):
    axis = rng.normal(size=(batch, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return axis * rng.uniform(0.0, max_angle, size=(batch, 1))


def _random_params(seed, batch=BATCH, zero_neck_rows=BATCH // 2):
    """float32 parameters; rows [0, zero_neck_rows) have zero neck pose and row 0
    is the zero pose (all rotations zero; the common rest pose, where a naive
    Rodrigues formula has an undefined gradient)."""
    rng = np.random.default_rng(seed)
    jaw = np.zeros((batch, 3))
    jaw[:, 0] = rng.uniform(0.0, 0.4, batch)
    jaw[:, 1:] = rng.normal(0.0, 0.02, (batch, 2))
    p = {
        "shape": rng.normal(size=(batch, NUM_SHAPE)),
        "expression": rng.normal(size=(batch, NUM_EXPR)),
        "global_pose": _random_axis_angle(rng, batch, 0.5),
        "neck_pose": _random_axis_angle(rng, batch, 0.3),
        "jaw_pose": jaw,
        "eye_pose": rng.uniform(-0.2, 0.2, (batch, 6)),
        "translation": rng.uniform(-0.1, 0.1, (batch, 3)),
    }
    p["neck_pose"][:zero_neck_rows] = 0.0
    for name in ("global_pose", "jaw_pose", "eye_pose"):
        p[name][0] = 0.0
    return {k: v.astype(np.float32) for k, v in p.items()}


def _ours(model, p):
    return flame_forward(model, *(p[k] for k in PARAM_NAMES))


def _smplx(layer, p):
    """smplx's outputs rearranged as ours: (vertices, iBUG landmarks, joints)."""
    out = layer(betas=p["shape"], expression=p["expression"], global_orient=p["global_pose"],
                neck_pose=p["neck_pose"], jaw_pose=p["jaw_pose"],
                leye_pose=p["eye_pose"][:, :3], reye_pose=p["eye_pose"][:, 3:],
                transl=p["translation"])
    joints = out.joints
    assert joints.shape[1] == 5 + 51 + 17
    landmarks = torch.cat([joints[:, 56:73], joints[:, 5:56]], dim=1)
    return out.vertices, landmarks, joints[:, :5]


def _to_torch(p, requires_grad=False):
    return {k: torch.tensor(np.asarray(v, np.float64), requires_grad=requires_grad)
            for k, v in p.items()}


def _max_rel_err(ours, ref, diag):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64)))) / diag


def _loss_weights(seed, batch, num_vertices, contour_rows):
    """Random weights of the vertices, landmarks and joints in the scalar test
    loss; the contour landmarks count only in `contour_rows` (where the bins
    agree). Random vertex weights make the loss see the eyes turn (a sum of
    squared norms is nearly invariant to rotating a spherical eyeball)."""
    rng = np.random.default_rng(seed)
    w_vertices = rng.normal(size=(batch, num_vertices, 3))
    w_lmk = rng.normal(size=(batch, 68, 3))
    w_lmk[~contour_rows, :17] = 0.0
    w_joints = rng.normal(size=(batch, 5, 3))
    return tuple(w.astype(np.float32) for w in (w_vertices, w_lmk, w_joints))


def _jax_loss(model, p, w):
    out = _ours(model, p)
    return (jnp.sum(out.vertices * w[0]) + jnp.sum(out.landmarks * w[1])
            + jnp.sum(out.joints * w[2]) + 0.1 * jnp.sum(out.vertices ** 2))


def _torch_loss(layer, p, w):
    vertices, landmarks, joints = _smplx(layer, p)
    w = [torch.from_numpy(x.astype(np.float64)) for x in w]
    return ((vertices * w[0]).sum() + (landmarks * w[1]).sum() + (joints * w[2]).sum()
            + 0.1 * (vertices ** 2).sum())


# Compiled once for the module (same shapes across tests, so XLA compiles each once).
_forward = jax.jit(_ours)
_grad = jax.jit(jax.grad(_jax_loss, argnums=1))


# --------------------------------------------------------------------------
# forward parity
# --------------------------------------------------------------------------


def test_forward_matches_smplx(flame_pair):
    model, layer, diag = flame_pair
    p = _random_params(seed=0)
    out = _forward(model, p)
    with torch.no_grad():
        vertices, landmarks, joints = _smplx(layer, _to_torch(p))
    zero_neck = np.all(p["neck_pose"] == 0.0, axis=1)
    assert 0 < zero_neck.sum() < BATCH
    assert out.vertices.shape == vertices.shape and out.landmarks.shape == (BATCH, 68, 3)
    assert _max_rel_err(out.vertices, vertices, diag) < REL_TOL
    assert _max_rel_err(out.joints, joints, diag) < REL_TOL
    assert _max_rel_err(out.landmarks[:, 17:], landmarks[:, 17:], diag) < REL_TOL
    assert _max_rel_err(out.landmarks[zero_neck, :17], landmarks[zero_neck, :17], diag) < REL_TOL
    # Not vacuous: the parameters move the mesh far more than the tolerance.
    template = np.asarray(model.v_template)
    assert np.max(np.abs(np.asarray(out.vertices) - template)) / diag > 1e-2


# Degrees of yaw, none within 0.1 degree of a .5 rounding tie; 16 of them, the
# batch size of the other tests (one compilation). +-39.4 round to +-39 (rows
# 39 and 78), -39.6 and beyond clamp to the last row, +39.6 and beyond to row 39.
YAWS_DEG = (-50.0, -39.6, -39.4, -38.6, -25.3, -0.8, -0.3, 0.0, 0.3, 0.8, 5.2, 17.2, 38.6,
            39.4, 39.6, 50.0)


def test_contour_yaw_bins_match_smplx(flame_pair):
    model, layer, diag = flame_pair
    n = len(YAWS_DEG)
    p = _random_params(seed=1, batch=n, zero_neck_rows=n)
    yaw = np.deg2rad(np.asarray(YAWS_DEG))
    p["global_pose"] = np.stack([np.zeros(n), yaw, np.zeros(n)], axis=1).astype(np.float32)
    # FLAME's angle is minus the Euler y angle: a yaw of +y degrees reads -y.
    angle = np.clip(np.round(-np.asarray(YAWS_DEG)), -40, 39).astype(int)
    expected = np.where(angle >= 0, angle, np.where(angle < -39, 78, 39 - angle))
    rows = np.asarray(yaw_bin(axis_angle_to_matrix(jnp.asarray(p["global_pose"]))))
    np.testing.assert_array_equal(rows, expected)
    assert {0, 39, 40, 78} <= set(rows.tolist())

    out = _forward(model, p)
    with torch.no_grad():
        _, landmarks, _ = _smplx(layer, _to_torch(p))
    for i in range(n):
        err = _max_rel_err(out.landmarks[i, :17], landmarks[i, :17], diag)
        assert err < REL_TOL, f"yaw {YAWS_DEG[i]} deg (row {rows[i]}): error {err:.2e}"
    # Bins matter: the extreme rows put the contour in different places.
    assert _max_rel_err(out.landmarks[0, :17], out.landmarks[-1, :17], diag) > 1e-2


# --------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------


def _grad_err(g, ref):
    scale = np.max(np.abs(ref))
    assert scale > 0
    return np.max(np.abs(np.asarray(g, np.float64) - ref)) / scale


def test_gradients_match_torch_autograd(flame_pair):
    """jit(grad) in float32 against torch autograd through smplx in float64."""
    model, layer, _ = flame_pair
    p = _random_params(seed=2)
    contour_rows = np.all(p["neck_pose"] == 0.0, axis=1)
    w = _loss_weights(3, BATCH, model.num_vertices, contour_rows)

    grads = _grad(model, p, w)
    pt = _to_torch(p, requires_grad=True)
    _torch_loss(layer, pt, w).backward()
    for name in PARAM_NAMES:
        g, ref = np.asarray(grads[name]), pt[name].grad.numpy()
        assert np.all(np.isfinite(g)), name
        err = _grad_err(g, ref)
        assert err < GRAD_TOL, f"{name}: relative gradient error {err:.2e}"
        # Row 0 is the zero pose; held to the same standard on its own scale.
        err0 = _grad_err(g[0], ref[0])
        assert err0 < GRAD_TOL, f"{name} at the zero pose: relative gradient error {err0:.2e}"


def test_vmap_matches_batched_call(flame_pair):
    """vmap over single examples (with a batch axis of 1 inside) gives the
    batched call's outputs and per-example gradients, zero pose included."""
    model, _, _ = flame_pair
    p = _random_params(seed=4)
    w = _loss_weights(5, BATCH, model.num_vertices, np.ones(BATCH, bool))

    def add_batch(x):
        return x[None]

    def single(m, q):
        return jax.tree.map(lambda x: x[0], _ours(m, jax.tree.map(add_batch, q)))

    def single_loss(m, q, wq):
        return _jax_loss(m, jax.tree.map(add_batch, q), jax.tree.map(add_batch, wq))

    batched = _forward(model, p)
    mapped = jax.jit(jax.vmap(single, in_axes=(None, 0)))(model, p)
    for name, a, b in zip(batched._fields, batched, mapped):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6, err_msg=name)

    grads = _grad(model, p, w)
    per_example = jax.jit(jax.vmap(jax.grad(single_loss, argnums=1), in_axes=(None, 0, 0)))(
        model, p, w)
    for name in PARAM_NAMES:
        g, ge = np.asarray(grads[name]), np.asarray(per_example[name])
        assert np.all(np.isfinite(g)) and np.all(np.isfinite(ge)), name
        np.testing.assert_allclose(ge, g, rtol=1e-4, atol=1e-4 * np.max(np.abs(g)), err_msg=name)


# (parameter, index, step): central differences in float32, hence large steps.
FD_COORDS = (("shape", 0, 1e-1), ("shape", 7, 1e-1), ("expression", 3, 1e-1),
             ("global_pose", 0, 2e-3), ("global_pose", 1, 2e-3), ("global_pose", 2, 2e-3),
             ("neck_pose", 1, 2e-3), ("jaw_pose", 0, 2e-3), ("eye_pose", 1, 2e-3),
             ("eye_pose", 3, 2e-3), ("translation", 2, 1e-2))


def test_gradient_matches_finite_differences(flame_pair):
    """A coarse float32 check of a few coordinates; row 0 at the zero pose, row 1
    at a generic pose about 10 degrees of yaw from the nearest contour bin edge."""
    model, _, _ = flame_pair
    p = _random_params(seed=7, batch=2, zero_neck_rows=1)
    p["global_pose"][1] = [0.1, 0.18, -0.05]
    w = _loss_weights(8, 2, model.num_vertices, np.ones(2, bool))
    w = (w[0] / np.sqrt(model.num_vertices),) + w[1:]  # keep the float32 loss O(1)

    def loss(q):
        out = _ours(model, q)
        return (jnp.sum(out.vertices * w[0]) + jnp.sum(out.landmarks * w[1])
                + jnp.sum(out.joints * w[2]))

    grads = jax.jit(jax.grad(loss))(p)
    loss_jit = jax.jit(loss)
    for row in (0, 1):
        for name, index, step in FD_COORDS:
            plus = {k: v.copy() for k, v in p.items()}
            minus = {k: v.copy() for k, v in p.items()}
            plus[name][row, index] += step
            minus[name][row, index] -= step
            fd = (float(loss_jit(plus)) - float(loss_jit(minus))) / (2 * step)
            g = float(grads[name][row, index])
            assert np.isfinite(g)
            assert abs(g - fd) <= 2e-2 * abs(fd) + 2e-3, \
                f"row {row}, {name}[{index}]: grad {g:.5f}, finite difference {fd:.5f}"
