"""StyleGAN2's adversarial losses and regularisers as pure functions (Karras et al.
2020, "Analyzing and Improving the Image Quality of StyleGAN", Sec. 2-3 and App. B),
as the paper trains G_Ab with them (Sec. 5.2: "Similar to StyleGAN2, for the GAN
loss, we use the element-wise Softplus").

Each function follows rosinality's stylegan2-pytorch `train.py` (the code the
paper builds on) and the official stylegan2-ada-pytorch `training/loss.py`:

- `d_logistic_loss`: softplus(-D(x)) + softplus(D(G(z))), the logistic loss of
  Goodfellow et al. 2014 written with softplus (StyleGAN Eq. / rosinality
  `d_logistic_loss`).
- `g_nonsaturating_loss`: softplus(-D(G(z))), the non-saturating generator loss.
- `r1_penalty`: E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018, Eq. 9;
  the caller weights it by gamma / 2 and, when lazy, by the interval).
- `path_length_penalty`: StyleGAN2 Eq. 4, E (||J_w^T y||_2 - a)^2 with y ~ N(0, I)
  / sqrt(H W) and `a` the running mean of the lengths.

Shapes follow the project's NHWC convention. Nothing here knows about networks:
the regularisers take the network as a function, so they are differentiable with
respect to whatever parameters that function closes over (second-order AD).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp


def d_logistic_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Discriminator logistic loss: mean softplus(-D(x)) + mean softplus(D(G(z))).

    Args:
      real_logits: (B, 1) or (B,) float, D's logits on real images.
      fake_logits: (B', 1) or (B',) float, D's logits on generated images.
    Returns:
      () float32. Each term is averaged over its own batch (rosinality
      `d_logistic_loss`: real_loss.mean() + fake_loss.mean()).
    """
    real = jnp.asarray(real_logits, jnp.float32)
    fake = jnp.asarray(fake_logits, jnp.float32)
    return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))


def g_nonsaturating_loss(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating generator loss: mean softplus(-D(G(z))) = -mean log sigmoid(D(G(z))).

    Args:
      fake_logits: (B, 1) or (B,) float, D's logits on generated images.
    Returns:
      () float32.
    """
    return jnp.mean(jax.nn.softplus(-jnp.asarray(fake_logits, jnp.float32)))


def r1_penalty(d_fn: Callable[[jax.Array], jax.Array],
               real_images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """R1 gradient penalty on real images, unweighted (Mescheder et al. 2018, Eq. 9).

    R1 = mean_b sum_{h,w,c} (d sum_b' D(x_b') / d x_b)^2, i.e. the squared norm of
    each sample's input gradient, averaged over the batch (rosinality
    `d_r1_loss`; stylegan2-ada `r1_grads.square().sum([1,2,3])`). The gradient of
    the summed logits is the per-sample gradient because D's samples interact only
    through minibatch-stddev, as in the sources.

    StyleGAN2 trains D on `r1_gamma / 2 * R1`, times the lazy interval when the
    penalty is applied every k steps (done by the caller).

    Args:
      d_fn: images (B, H, W, C) -> logits (B, 1); may close over D's parameters,
        and the penalty is then differentiable with respect to them.
      real_images: (B, H, W, C) float32 real images.
    Returns:
      (penalty () float32, real_logits (B, 1) float32).
    """
    logits, vjp = jax.vjp(d_fn, real_images)
    (grad,) = vjp(jnp.ones_like(logits))
    grad = grad.astype(jnp.float32)
    penalty = jnp.mean(jnp.sum(jnp.square(grad).reshape(grad.shape[0], -1), axis=1))
    return penalty, logits


def path_length_penalty(synthesis_fn: Callable[[jax.Array], jax.Array], w_plus: jax.Array,
                        pl_mean: jax.Array, key: jax.Array, *, decay: float = 0.01
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """StyleGAN2 path-length regulariser (Eq. 4), unweighted.

    y ~ N(0, I) / sqrt(H W) has the image's shape; g = d sum(G(w) * y) / d w+
    (B, n_latent, D); the length of sample b is sqrt(mean_l sum_d g[b,l,d]^2)
    (rosinality `g_path_regularize`: grad.pow(2).sum(2).mean(1).sqrt()); the
    running mean a' = a + decay * (mean_b length - a), and the penalty is
    mean_b (length_b - a')^2.

    Choice where the sources differ: the official TF code reads the updated mean
    as a variable (no gradient through it); rosinality and stylegan2-ada-pytorch
    use the freshly computed a' inside the penalty, so a gradient of weight
    `decay` flows through the batch mean. We follow rosinality (the paper's code
    base); the returned new mean is gradient-free.

    Args:
      synthesis_fn: w+ (B, n_latent, D) -> images (B, H, W, C); may close over
        G's parameters (the penalty is differentiable with respect to them).
      w_plus: (B, n_latent, D) float32 latents fed to synthesis.
      pl_mean: () float32, running mean of the path lengths (0 at the start).
      key: PRNG key for y.
      decay: running-mean rate (StyleGAN2: 0.01).
    Returns:
      (penalty () float32, new pl_mean () float32 (stop-gradient),
       path_lengths (B,) float32).
    """
    images, vjp = jax.vjp(synthesis_fn, w_plus)
    height, width = images.shape[1], images.shape[2]
    y = jax.random.normal(key, images.shape, jnp.float32) / math.sqrt(height * width)
    (grad,) = vjp(y.astype(images.dtype))
    grad = grad.astype(jnp.float32)
    squared = jnp.mean(jnp.sum(jnp.square(grad), axis=2), axis=1)
    # sqrt's derivative is infinite at 0, which a generator whose output does
    # not depend on w (a zero-initialised output layer, `train/models.py`)
    # reaches exactly: there the gradient is taken as 0 rather than NaN
    # (rosinality's gives NaN); elsewhere this is sqrt.
    positive = squared > 0.0
    lengths = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
    pl_mean = jnp.asarray(pl_mean, jnp.float32)
    new_mean = pl_mean + decay * (jnp.mean(lengths) - pl_mean)
    penalty = jnp.mean(jnp.square(lengths - new_mean))
    return penalty, jax.lax.stop_gradient(new_mean), lengths
