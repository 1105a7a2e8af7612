"""StyleGAN2's updates as pure functions: the one implementation of the D update
(logistic loss + lazy R1), G's lazy path-length regularisation and G's EMA,
used by the standalone GAN step (gan.py) and by the trainer's GAN phases
(step.py), and tested against rosinality's train.py in PyTorch
(tests/test_gan_step.py, eval/torch_reference/gan_step.py).

The functions take parameters, optimizer states and images, not a state type:
the standalone step keeps a GANState, the trainer an AlbedoSide, and each maps
its fields in and out. Networks enter as `merge(params) -> module` callables,
so a function differentiates with respect to the parameters it is given.

Lazy regularisation (StyleGAN2 Sec. 3.1 / App. B; rosinality `g_reg_ratio`,
stylegan2-ada `mb_ratio`): each network has one Adam, shared by its main and
reg updates, with lr' = lr * k/(k+1) and betas' = betas ** (k/(k+1)) for its
interval k (`lazy_adam_hparams`); the reg loss is multiplied by k and runs when
the GAN step counter is a multiple of k. A disabled regulariser (weight 0) has
no reg update and no rescaling. Skipped, a reg update leaves parameters,
optimizer moments and pl_mean bit-identical (`lax.cond`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from face3d_jax.gan_losses import d_logistic_loss, path_length_penalty, r1_penalty

Merge = Callable[[Any], nnx.Module]
"""params (nnx.State of nnx.Param) -> the module holding them."""


@dataclasses.dataclass(frozen=True)
class GANConfig:
    """Hyper-parameters of the GAN updates (defaults: paper Sec. 5.2 + StyleGAN2 config F).

    g_lr, d_lr: Adam learning rates before lazy rescaling; betas: Adam (beta1,
    beta2) before rescaling; adam_eps: Adam epsilon (torch's 1e-8); r1_gamma: R1
    weight gamma (0 disables Dreg); pl_weight: path-length weight (0 disables
    Greg); d_reg_every, g_reg_every: lazy intervals (>= 1); pl_decay: running
    path-length mean rate; pl_batch_shrink: Greg batch divisor; mixing_prob:
    style-mixing probability of the standalone step's sampled fakes (the
    trainer's fakes come from its data's w, unmixed); ema_kimg: G_ema half-life
    in thousands of images; ema_rampup: None, or the ramp-up ratio of
    stylegan2-ada (e.g. 0.05).
    """

    g_lr: float = 2e-3
    d_lr: float = 2e-3
    betas: tuple[float, float] = (0.0, 0.99)
    adam_eps: float = 1e-8
    r1_gamma: float = 10.0
    pl_weight: float = 2.0
    d_reg_every: int = 16
    g_reg_every: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    mixing_prob: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float | None = None

    def __post_init__(self):
        # A tuple keeps the config hashable: it is a static argument of the jitted step.
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.d_reg_every < 1 or self.g_reg_every < 1 or self.pl_batch_shrink < 1:
            raise ValueError("d_reg_every, g_reg_every and pl_batch_shrink must be >= 1, got "
                             f"{self.d_reg_every}, {self.g_reg_every}, {self.pl_batch_shrink}")
        if self.ema_kimg <= 0:
            raise ValueError(f"ema_kimg must be positive, got {self.ema_kimg}")


def lazy_adam_hparams(lr: float, betas: tuple[float, float], interval: int | None
                      ) -> tuple[float, tuple[float, float]]:
    """StyleGAN2's lazy-regularisation rescaling: with c = k / (k + 1) for a
    regulariser applied every k steps, lr' = lr * c and beta' = beta ** c
    (App. B; rosinality `g_reg_ratio`, stylegan2-ada `mb_ratio`).
    interval None: no lazy regularisation, values unchanged. Python floats."""
    if interval is None:
        return lr, tuple(betas)
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)


def lazy_adam(lr: float, betas, eps: float, interval: int | None) -> optax.GradientTransformation:
    """optax Adam with `lazy_adam_hparams` applied (interval None: plain Adam)."""
    lr, (b1, b2) = lazy_adam_hparams(lr, betas, interval)
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


def g_optimizer(config: GANConfig) -> optax.GradientTransformation:
    """G's Adam, rescaled for Greg when pl_weight > 0."""
    return lazy_adam(config.g_lr, config.betas, config.adam_eps,
                     config.g_reg_every if config.pl_weight > 0 else None)


def d_optimizer(config: GANConfig) -> optax.GradientTransformation:
    """D's Adam, rescaled for Dreg when r1_gamma > 0."""
    return lazy_adam(config.d_lr, config.betas, config.adam_eps,
                     config.d_reg_every if config.r1_gamma > 0 else None)


def grad_norm(tree) -> jax.Array:
    """Global L2 norm of a gradient pytree, () float32."""
    return optax.tree_utils.tree_norm(tree).astype(jnp.float32)


def adam_update(tx: optax.GradientTransformation, loss_fn: Callable, params, opt_state):
    """One optimizer step on loss_fn(params) -> (loss () float32, aux).
    Returns (params, opt_state, loss, aux, gradient norm () float32)."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux, grad_norm(grads)


def _is_reg_step(gan_step: jax.Array, interval: int) -> jax.Array:
    return jnp.mod(jnp.asarray(gan_step, jnp.int32), interval) == 0


# ------------------------------------------------------------------ D


def d_main_update(tx: optax.GradientTransformation, merge_d: Merge, d_params, d_opt_state,
                  real: jax.Array, fake: jax.Array):
    """Dmain: one Adam step of D on softplus(-D(x)) + softplus(D(G(z))).

    real, fake: (B, R, R, C) float32 in [-1, 1]; fake is a constant here (no
    gradient reaches G). Returns (d_params, d_opt_state, metrics) with metrics
    {"loss", "real_logits", "fake_logits" (batch means), "grad_norm"}, () float32.
    """
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(params):
        d = merge_d(params)
        fake_logits, real_logits = d(fake), d(real)
        return d_logistic_loss(real_logits, fake_logits), (real_logits, fake_logits)

    d_params, d_opt_state, loss, (rl, fl), norm = adam_update(tx, loss_fn, d_params, d_opt_state)
    return d_params, d_opt_state, {"loss": loss, "real_logits": jnp.mean(rl),
                                   "fake_logits": jnp.mean(fl), "grad_norm": norm}


def d_r1_update(config: GANConfig, tx: optax.GradientTransformation, merge_d: Merge,
                d_params, d_opt_state, real: jax.Array):
    """Dreg: one Adam step of D on r1_gamma / 2 * R1(x) * d_reg_every.
    real: (B, R, R, C) float32. Returns (d_params, d_opt_state, metrics) with
    metrics {"r1" (the unweighted penalty), "grad_norm"}, () float32."""
    def loss_fn(params):
        r1, _ = r1_penalty(merge_d(params), real)
        return config.r1_gamma / 2 * r1 * config.d_reg_every, r1

    d_params, d_opt_state, _, r1, norm = adam_update(tx, loss_fn, d_params, d_opt_state)
    return d_params, d_opt_state, {"r1": r1, "grad_norm": norm}


def d_update(config: GANConfig, tx: optax.GradientTransformation, merge_d: Merge,
             d_params, d_opt_state, real: jax.Array, fake: jax.Array, gan_step: jax.Array):
    """D's whole update of one GAN step: Dmain, then Dreg when r1_gamma > 0 and
    gan_step % d_reg_every == 0 (chosen inside the traced program).

    real, fake: (B, R, R, C) float32 in [-1, 1]; gan_step: () int, GAN steps done
    before this one. Returns (d_params, d_opt_state, metrics): metrics {"loss",
    "real_logits", "fake_logits", "grad_norm" (Dmain's), "r1", "reg_grad_norm"
    (0 when Dreg is skipped), "reg" (bool, whether Dreg ran)}.
    """
    d_params, d_opt_state, metrics = d_main_update(tx, merge_d, d_params, d_opt_state, real, fake)
    zero = {"r1": jnp.float32(0.0), "grad_norm": jnp.float32(0.0)}
    if config.r1_gamma > 0:
        run = _is_reg_step(gan_step, config.d_reg_every)
        d_params, d_opt_state, reg = jax.lax.cond(
            run, lambda p, o: d_r1_update(config, tx, merge_d, p, o, real),
            lambda p, o: (p, o, zero), d_params, d_opt_state)
    else:
        run, reg = jnp.bool_(False), zero
    metrics.update({"r1": reg["r1"], "reg_grad_norm": reg["grad_norm"], "reg": run})
    return d_params, d_opt_state, metrics


# ------------------------------------------------------------------ G


def g_path_length_update(config: GANConfig, tx: optax.GradientTransformation,
                         latents_fn: Callable, synthesis_fn: Callable, g_params, g_opt_state,
                         pl_mean: jax.Array, y_key: jax.Array):
    """Greg: one Adam step of G on pl_weight * path-length penalty * g_reg_every.

    latents_fn(g_params) -> w+ (P, n_latent, style_dim) float32: the path batch
    (P = max(1, B // pl_batch_shrink) is the caller's choice); it may depend on
    the parameters (the mapping network, as rosinality's `return_latents`) or not
    (the trainer's data w). synthesis_fn(g_params, w+) -> (P, R, R, C) float32,
    its noise fixed by the caller. pl_mean: () float32 running mean; y_key: PRNG
    key of the projection y (`path_length_penalty`).
    Returns (g_params, g_opt_state, pl_mean, metrics) with metrics {"penalty",
    "path_length" (batch mean), "grad_norm"}, () float32.
    """
    def loss_fn(params):
        penalty, new_mean, lengths = path_length_penalty(
            lambda w: synthesis_fn(params, w), latents_fn(params), pl_mean, y_key,
            decay=config.pl_decay)
        return config.pl_weight * penalty * config.g_reg_every, (penalty, new_mean, lengths)

    g_params, g_opt_state, _, (penalty, new_mean, lengths), norm = adam_update(
        tx, loss_fn, g_params, g_opt_state)
    return g_params, g_opt_state, new_mean, {"penalty": penalty,
                                             "path_length": jnp.mean(lengths),
                                             "grad_norm": norm}


def g_lazy_path_length_update(config: GANConfig, tx: optax.GradientTransformation,
                              latents_fn: Callable, synthesis_fn: Callable, g_params,
                              g_opt_state, pl_mean: jax.Array, y_key: jax.Array,
                              gan_step: jax.Array):
    """`g_path_length_update` when pl_weight > 0 and gan_step % g_reg_every == 0,
    else everything passed through bit-identical with zero metrics. Returns
    (g_params, g_opt_state, pl_mean, metrics) with metrics as
    `g_path_length_update`'s plus "reg" (bool, whether Greg ran)."""
    zero = {"penalty": jnp.float32(0.0), "path_length": jnp.float32(0.0),
            "grad_norm": jnp.float32(0.0)}
    if config.pl_weight > 0:
        run = _is_reg_step(gan_step, config.g_reg_every)
        g_params, g_opt_state, pl_mean, metrics = jax.lax.cond(
            run, lambda p, o, m: g_path_length_update(config, tx, latents_fn, synthesis_fn, p,
                                                      o, m, y_key),
            lambda p, o, m: (p, o, m, zero), g_params, g_opt_state, pl_mean)
    else:
        run, metrics = jnp.bool_(False), zero
    return g_params, g_opt_state, pl_mean, {**metrics, "reg": run}


# ------------------------------------------------------------------ EMA


def ema_beta(config: GANConfig, batch: int, gan_step: jax.Array) -> jax.Array:
    """G_ema decay: 0.5 ** (batch / ema_nimg), ema_nimg = ema_kimg * 1000, or with
    ramp-up min(ema_nimg, gan_step * batch * ema_rampup), the images seen
    *before* this step (stylegan2-ada's `cur_nimg`, advanced after the EMA: at
    step 0 beta is 0 and G_ema := G). batch: int; gan_step: () int. Returns ()
    float32."""
    ema_nimg = jnp.float32(config.ema_kimg * 1000.0)
    if config.ema_rampup is not None:
        seen = jnp.asarray(gan_step, jnp.float32) * batch
        ema_nimg = jnp.minimum(ema_nimg, seen * config.ema_rampup)
    return jnp.float32(0.5) ** (batch / jnp.maximum(ema_nimg, 1e-8))


def ema_update(ema_params, params, beta: jax.Array):
    """G_ema <- beta * G_ema + (1 - beta) * G, leaf by leaf (rosinality's
    `accumulate`: mul_(beta).add_(p, alpha=1 - beta)); beta: () float32.
    Returns the new G_ema pytree (dtypes kept)."""
    return jax.tree.map(lambda e, p: e * beta.astype(e.dtype) + (1 - beta).astype(p.dtype) * p,
                        ema_params, params)
