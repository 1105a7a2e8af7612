"""StyleGAN2 losses (face3d_jax/gan_losses.py) against hand-computed values, float64
finite differences, and rosinality's formulas in PyTorch (the twin in
eval/torch_reference/gan_step.py), including the second-order gradients that the
lazy regularisers train with."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from face3d_jax.gan_losses import (
    d_logistic_loss, g_nonsaturating_loss, path_length_penalty, r1_penalty,
)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_logistic_losses_by_hand():
    real = jnp.array([[0.0], [2.0]])
    fake = jnp.array([[-1.0], [3.0], [0.5]])
    expect_d = (_softplus(-0.0) + _softplus(-2.0)) / 2 + (_softplus(-1.0) + _softplus(3.0)
                                                         + _softplus(0.5)) / 3
    np.testing.assert_allclose(float(d_logistic_loss(real, fake)), expect_d, rtol=1e-6)
    expect_g = (_softplus(1.0) + _softplus(-3.0) + _softplus(-0.5)) / 3
    np.testing.assert_allclose(float(g_nonsaturating_loss(fake)), expect_g, rtol=1e-6)
    assert float(g_nonsaturating_loss(jnp.zeros((4, 1)))) == pytest.approx(math.log(2.0))
    # Large logits stay finite (softplus, not log(sigmoid)).
    assert np.isfinite(float(d_logistic_loss(jnp.array([[-200.0]]), jnp.array([[200.0]]))))


# A small non-linear "discriminator" whose samples do not interact:
# D(x)_b = sum(A * sin(x_b)) + c * sum(x_b^2).
def _d_np(x, a, c):
    return (np.sum(a * np.sin(x), axis=(1, 2, 3)) + c * np.sum(x * x, axis=(1, 2, 3)))[:, None]


def _r1_np(x, a, c, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        grad[idx] = (_d_np(x + e, a, c).sum() - _d_np(x - e, a, c).sum()) / (2 * h)
    return np.mean(np.sum(grad.reshape(x.shape[0], -1) ** 2, axis=1))


def test_r1_penalty_matches_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 2, 2))
    a = rng.normal(size=(2, 2, 2))
    c = 0.3

    def d_fn(params):
        return lambda img: (jnp.sum(params[0] * jnp.sin(img), axis=(1, 2, 3))
                            + params[1] * jnp.sum(img * img, axis=(1, 2, 3)))[:, None]

    params = (jnp.asarray(a, jnp.float32), jnp.float32(c))
    penalty, logits = r1_penalty(d_fn(params), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(float(penalty), _r1_np(x, a, c), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), _d_np(x, a, c), rtol=1e-5, atol=1e-6)
    # d R1 / d c through the input gradient (the gradient D is trained with).
    grad_c = jax.grad(lambda p: r1_penalty(d_fn(p), jnp.asarray(x, jnp.float32))[0])(params)[1]
    h = 1e-4
    fd = (_r1_np(x, a, c + h) - _r1_np(x, a, c - h)) / (2 * h)
    np.testing.assert_allclose(float(grad_c), fd, rtol=1e-4)


# A small "synthesis": image = tanh(einsum(w+, M)) reshaped to (B, H, W, C).
B, L, D, H, W, C = 3, 4, 5, 2, 3, 2


def _synth_np(w, m):
    return np.tanh(np.einsum("bld,ldk->bk", w, m)).reshape(B, H, W, C)


def test_path_length_penalty_matches_finite_differences():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(B, L, D)) * 0.5
    m = rng.normal(size=(L, D, H * W * C)) * 0.3
    key, pl_mean, decay = jax.random.key(3), 0.7, 0.01
    y = np.asarray(jax.random.normal(key, (B, H, W, C), jnp.float32), np.float64) / math.sqrt(H * W)

    def synth(w_plus):
        return jnp.tanh(jnp.einsum("bld,ldk->bk", w_plus, jnp.asarray(m, jnp.float32))
                        ).reshape(B, H, W, C)

    penalty, new_mean, lengths = path_length_penalty(
        synth, jnp.asarray(w, jnp.float32), jnp.float32(pl_mean), key, decay=decay)

    h = 1e-6
    grad = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        e = np.zeros_like(w)
        e[idx] = h
        grad[idx] = np.sum((_synth_np(w + e, m) - _synth_np(w - e, m)) * y) / (2 * h)
    ref_lengths = np.sqrt(np.mean(np.sum(grad ** 2, axis=2), axis=1))
    ref_mean = pl_mean + decay * (ref_lengths.mean() - pl_mean)
    np.testing.assert_allclose(np.asarray(lengths), ref_lengths, rtol=1e-5)
    np.testing.assert_allclose(float(new_mean), ref_mean, rtol=1e-5)
    np.testing.assert_allclose(float(penalty), np.mean((ref_lengths - ref_mean) ** 2), rtol=1e-4)


def test_path_length_gradient_is_zero_not_nan_where_the_output_ignores_w():
    """A generator whose output does not depend on w (a zero output layer) has
    path lengths exactly 0, where sqrt's derivative is infinite: the
    parameters' gradient is then 0, not NaN."""
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
    m = jnp.asarray(rng.normal(size=(L, D, H * W * C)), jnp.float32)

    def penalty(scale):
        def synth(w_plus):
            return (scale * jnp.einsum("bld,ldk->bk", w_plus, m)).reshape(B, H, W, C)
        return path_length_penalty(synth, w, jnp.float32(0.0), jax.random.key(0))[0]

    assert float(penalty(0.0)) == 0.0
    assert float(jax.grad(penalty)(0.0)) == 0.0
    assert np.isfinite(float(jax.grad(penalty)(1.0)))


def test_regularisers_match_rosinality_in_torch():
    """Values and parameter gradients (second order) against rosinality's
    d_r1_loss / g_path_regularize in PyTorch on the same functions."""
    torch = pytest.importorskip("torch")
    from face3d_eval.torch_reference.gan_step import d_r1_loss, g_path_regularize

    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    k = rng.normal(size=(3 * 3 * 2, 5)).astype(np.float32) * 0.5
    # Minibatch interaction as in D's minibatch-stddev: logits see the batch std.
    def d_jax(kk):
        def d(img):
            h = jnp.tanh(img.reshape(img.shape[0], -1) @ kk)
            return (jnp.sum(h, 1) + jnp.std(h, axis=0).sum())[:, None]
        return d

    (r1, _), g_k = jax.value_and_grad(lambda kk: r1_penalty(d_jax(kk), jnp.asarray(x)),
                                      has_aux=True)(jnp.asarray(k))
    kt = torch.tensor(k, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tanh(xt.reshape(4, -1) @ kt)
    predt = (ht.sum(1) + ht.std(0, unbiased=False).sum())[:, None]
    r1_t = d_r1_loss(predt, xt)
    r1_t.backward()
    np.testing.assert_allclose(float(r1), r1_t.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_k), kt.grad.numpy(), rtol=1e-4, atol=1e-6)

    w = rng.normal(size=(B, L, D)).astype(np.float32) * 0.5
    m = rng.normal(size=(L, D, H * W * C)).astype(np.float32) * 0.3
    key, pl_mean = jax.random.key(5), 0.4

    def pl_jax(mm):
        def synth(w_plus):
            return jnp.tanh(jnp.einsum("bld,ldk->bk", w_plus, mm)).reshape(B, H, W, C)
        return path_length_penalty(synth, jnp.asarray(w), jnp.float32(pl_mean), key)

    (pen, (new_mean, lengths)), g_m = jax.value_and_grad(
        lambda mm: (lambda r: (r[0], r[1:]))(pl_jax(mm)), has_aux=True)(jnp.asarray(m))
    y = np.asarray(jax.random.normal(key, (B, H, W, C), jnp.float32)) / math.sqrt(H * W)
    mt = torch.tensor(m, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    img = torch.tanh(torch.einsum("bld,ldk->bk", wt, mt)).reshape(B, H, W, C)
    pen_t, mean_t, len_t = g_path_regularize(img, wt, torch.tensor(pl_mean), 0.01,
                                             noise=torch.tensor(y))
    pen_t.backward()
    np.testing.assert_allclose(float(pen), pen_t.item(), rtol=1e-4)
    np.testing.assert_allclose(float(new_mean), mean_t.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(lengths), len_t.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_m), mt.grad.numpy(), rtol=1e-3,
                               atol=1e-4 * np.abs(mt.grad.numpy()).max())
