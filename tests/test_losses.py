"""The paper's losses (face3d_jax.losses): known values computed by hand, masks,
gradients where the equation fixes them, and the one way to name a loss (the
trainer's terms)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from face3d_jax import losses
from face3d_jax.losses import (
    DECA_LANDMARK_WEIGHTS, identity_loss, landmark_loss, masked_mse, perceptual_loss,
    regularization_loss, shape_center_loss, symmetric_reconstruction_loss,
)

def test_one_registry_the_trainers_terms():
    """Losses are plain functions; the only registry is the trainer's terms
    (`face3d_train.terms`), which a config weighs by name."""
    assert not any(hasattr(losses, name) for name in ("register_loss", "get_loss", "LOSSES"))
    from face3d_train import terms as T

    assert {"identity", "perceptual", "landmark", "symmetric_reconstruction", "shape_center",
            "regularization", "gan"} <= set(T.TERMS)
    with pytest.raises(ValueError, match="already registered"):
        T.register_term("identity")(lambda ctx: 0.0)


def test_identity_loss_eq1_values():
    a = jnp.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    b = jnp.array([[0.0, 1.0], [2.0, 2.0], [-3.0, 0.0]])
    # cosines 0, 1, -1 -> 1 - cos = 1, 0, 2 -> mean 1
    np.testing.assert_allclose(identity_loss(a, b), 1.0, atol=1e-6)
    np.testing.assert_allclose(identity_loss(a[1:2], 5 * a[1:2]), 0.0, atol=1e-6)
    # 1 - cos(60 deg) = 0.5
    np.testing.assert_allclose(identity_loss(jnp.array([[1.0, 0.0]]),
                                             jnp.array([[0.5, np.sqrt(3) / 2]])), 0.5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        identity_loss(a, b[:, :1])


def test_perceptual_loss_values_mask_and_feature_maps():
    rendered = jnp.full((2, 4, 4, 3), 0.5)
    target = jnp.zeros((2, 4, 4, 3))
    ident = lambda x: x  # noqa: E731
    np.testing.assert_allclose(perceptual_loss(rendered, target, feature_fn=ident), 0.25)
    # Outside the mask the render is replaced by the target: half the pixels differ.
    mask = jnp.zeros((2, 4, 4)).at[:, :, :2].set(1.0)
    np.testing.assert_allclose(perceptual_loss(rendered, target, feature_fn=ident, mask=mask),
                               0.125)
    # Several maps: the mean of their MSEs, (0.25 + 1.0) / 2.
    two = lambda x: {"a": x, "b": 2 * x}  # noqa: E731
    np.testing.assert_allclose(perceptual_loss(rendered, target, feature_fn=two), 0.625)
    # Features are what is compared, not pixels: a pooled feature ignores a checkerboard.
    checker = jnp.indices((4, 4)).sum(0) % 2
    img = jnp.broadcast_to(checker[None, :, :, None], (2, 4, 4, 3)).astype(jnp.float32)
    mean_pool = lambda x: jnp.mean(x, axis=(1, 2))  # noqa: E731
    np.testing.assert_allclose(perceptual_loss(img, jnp.full_like(img, 0.5),
                                               feature_fn=mean_pool), 0.0, atol=1e-7)


def test_landmark_loss_plain_deca_and_confidence():
    target = jnp.asarray(np.random.default_rng(0).uniform(0, 224, (1, 68, 2)), jnp.float32)
    pred = target.at[0, 30].add(jnp.array([3.0, 4.0]))  # one point off by 5 px
    # plain MSE over 68 x 2 coordinates: 25 / 136
    np.testing.assert_allclose(landmark_loss(pred, target), 25 / 136, rtol=1e-6)
    # DECA weights sum to 68 + 2 + 2 + 4.5 + 4.5 + 10 + 3 = 94; point 30 weighs 3.
    assert DECA_LANDMARK_WEIGHTS.sum() == 94.0
    np.testing.assert_allclose(landmark_loss(pred, target, weights="deca"), 3 * 25 / (2 * 94),
                               rtol=1e-6)
    conf = jnp.ones((1, 68)).at[0, 30].set(0.0)
    np.testing.assert_allclose(landmark_loss(pred, target, confidence=conf), 0.0, atol=1e-9)
    # DECA's table (decalib/utils/lossfunc.py weighted_landmark_loss), written out.
    want = np.ones(68)
    want[[5, 6, 10, 11]] = 2
    want[27:36] = 1.5
    want[48:68] = 1.5
    want[[30, 31, 35, 48, 54]] = 3
    np.testing.assert_array_equal(DECA_LANDMARK_WEIGHTS, want)
    with pytest.raises(ValueError, match="'deca'"):
        landmark_loss(pred, target, weights="dlib")


def test_symmetric_reconstruction_loss_values_and_mask():
    rng = np.random.default_rng(1)
    target = jnp.asarray(rng.uniform(size=(2, 4, 6, 3)), jnp.float32)
    flipped = jnp.flip(target, axis=2)
    # 0.1^2 + 0.2^2: the second term compares with the mirrored target by default.
    loss = symmetric_reconstruction_loss(target + 0.1, target, flipped + 0.2)
    np.testing.assert_allclose(loss, 0.05, rtol=1e-5)
    # A render wrong only outside the face mask costs nothing; the flipped term uses
    # the mirrored mask.
    mask = jnp.zeros((2, 4, 6, 1)).at[:, :, :2].set(1.0)
    outside = 1.0 - mask
    loss = symmetric_reconstruction_loss(target + outside, target, flipped + jnp.flip(outside, 2),
                                         mask=mask)
    np.testing.assert_allclose(loss, 0.0, atol=1e-7)
    # Inside the mask: masked mean = (1/C) sum_c over masked pixels of 0.3^2 = 0.09.
    np.testing.assert_allclose(masked_mse(target + 0.3 * mask, target, mask), 0.09, rtol=1e-5)
    with pytest.raises(ValueError, match="mask"):
        masked_mse(target, target, jnp.ones((2, 4, 5)))


def test_shape_center_loss_eq4_and_gradient():
    shapes = jnp.array([[[1.0], [3.0]], [[0.0], [4.0]]])  # 2 identities x 2 images
    # means 2 and 2: (1 + 1) + (4 + 4) = 10
    np.testing.assert_allclose(shape_center_loss(shapes), 10.0)
    flat = shapes.reshape(4, 1)
    ids = jnp.array([0, 0, 1, 1])
    np.testing.assert_allclose(shape_center_loss(flat, ids, num_identities=3), 10.0)
    # gradient 2 (s - mu)
    g = jax.grad(lambda s: shape_center_loss(s, ids, num_identities=2))(flat)
    np.testing.assert_allclose(g, [[-2.0], [2.0], [-4.0], [4.0]], atol=1e-6)
    # unequal group sizes, under jit: ids 0 -> {1, 2, 6} (mu 3), 1 -> {5} (mu 5): 4 + 1 + 9
    f = jax.jit(shape_center_loss, static_argnames="num_identities")
    np.testing.assert_allclose(f(jnp.array([[1.0], [2.0], [5.0], [6.0]]), jnp.array([0, 0, 1, 0]),
                                 num_identities=2), 14.0)
    with pytest.raises(ValueError, match="num_identities"):
        shape_center_loss(flat, ids)


def test_regularization_loss_eq5():
    s = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    e = jnp.array([[3.0], [0.0]])
    d = jnp.ones((2, 2, 2, 1)).at[1].set(0.0)
    # image 0: 1 + 4 + 9 + 4 = 18, image 1: 0 -> mean 9
    np.testing.assert_allclose(regularization_loss(s, e, d), 9.0)
    np.testing.assert_allclose(regularization_loss(s, e), 7.0)
    g = jax.grad(regularization_loss)(s, e, d)
    np.testing.assert_allclose(g, s)  # d/ds of mean_b ||s_b||^2 = 2 s / B


def test_losses_jit_and_return_float32_scalars():
    x = jnp.ones((2, 4, 4, 3), jnp.float32)
    out = jax.jit(symmetric_reconstruction_loss)(x, 0 * x, x)
    assert out.shape == () and out.dtype == jnp.float32
    lm = jnp.zeros((2, 68, 2), jnp.bfloat16)
    out = jax.jit(landmark_loss, static_argnames="weights")(lm, lm + 1, weights="deca")
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, 1.0)
