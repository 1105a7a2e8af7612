"""StyleGAN2 GAN training step as a pure function of one state pytree (paper Sec. 3
and 5.2: G_Ab is trained "similar to StyleGAN2"; Karras et al. 2020, App. B).

One call of `gan_step(state, real_images)` is one iteration of rosinality's
`train.py` loop (the paper's code base), with its phases in its order:

    Dmain  D on softplus(-D(x)) + softplus(D(G(z)))              every step
    Dreg   D on r1_gamma/2 * R1(x) * d_reg_every                 step % d_reg_every == 0
    Gmain  G on softplus(-D(G(z)))                               every step
    Greg   G on pl_weight * path_length_penalty * g_reg_every    step % g_reg_every == 0
    EMA    G_ema <- beta * G_ema + (1 - beta) * G                 every step

The step counter picks the regularisation phases inside the jitted step
(`lax.cond`): skipped phases leave parameters, optimizer moments and pl_mean
bit-identical, and a phase touches only its own network (G phases never change
D's parameters or optimizer state, nor D phases G's).

Lazy regularisation (StyleGAN2 Sec. 3.1 / App. B): each network has one Adam,
shared by its main and reg phases, with lr' = lr * k/(k+1) and
betas' = betas ** (k/(k+1)) for its interval k (`lazy_adam_hparams`), and the
reg loss multiplied by k. A disabled regulariser (weight 0) has no reg phase and
no rescaling.

G EMA: the official half-life form, beta = 0.5 ** (batch / (ema_kimg * 1000)),
ema_kimg = 10 (StyleGAN2 config F), with the batch of the call; optional
ramp-up (stylegan2-ada: ema_nimg = min(ema_nimg, images_seen * ema_rampup)).
rosinality instead fixes accum = 0.5 ** (32 / 10000), i.e. this formula at
batch 32 whatever the batch; the two agree at batch 32. Non-parameter variables
(noise buffers, latent_avg) are shared by G and G_ema and never trained.

The fakes of Dmain, Gmain and Greg come from fresh z with style mixing
(probability `mixing_prob`, one crossover per batch, as rosinality's
`mixing_noise`) and random noise inputs; Greg runs at batch
max(1, B // pl_batch_shrink).

Defaults are the paper's (Sec. 5.2: Adam lr 2e-3 for G and D, betas (0, 0.99),
G reg every 4, D reg every 16) with StyleGAN2's R1 gamma 10, path weight 2,
pl_decay 0.01, path batch shrink 2, mixing 0.9; `authors_script_config()` gives
the authors' training script's values (lr 1e-3; batch 16 at 1024^2 is the
caller's choice).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from face3d_jax.gan_losses import (
    d_logistic_loss, g_nonsaturating_loss, path_length_penalty, r1_penalty,
)
from face3d_jax.nets.stylegan2 import Discriminator, Generator, StyleGAN2Config


@dataclasses.dataclass(frozen=True)
class GANConfig:
    """Hyper-parameters of the GAN step (defaults: paper Sec. 5.2 + StyleGAN2 config F).

    g_lr, d_lr: Adam learning rates before lazy rescaling; betas: Adam (beta1,
    beta2) before rescaling; adam_eps: Adam epsilon (torch's 1e-8); r1_gamma: R1
    weight gamma (0 disables Dreg); pl_weight: path-length weight (0 disables
    Greg); d_reg_every, g_reg_every: lazy intervals (>= 1); pl_decay: running
    path-length mean rate; pl_batch_shrink: Greg batch divisor; mixing_prob:
    style-mixing probability; ema_kimg: G_ema half-life in thousands of images;
    ema_rampup: None, or the ramp-up ratio of stylegan2-ada (e.g. 0.05).
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


def authors_script_config(**overrides: Any) -> GANConfig:
    """The AlbedoGAN authors' training-script values (rosinality train.py flags:
    lr 1e-3, r1 10, path_regularize 2, d_reg_every 16, g_reg_every 4, mixing 0.9;
    they ran 1024^2 at batch 16), with `overrides` applied."""
    return dataclasses.replace(GANConfig(g_lr=1e-3, d_lr=1e-3), **overrides)


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


def _optimizer(lr: float, betas, eps: float, interval: int | None) -> optax.GradientTransformation:
    lr, (b1, b2) = lazy_adam_hparams(lr, betas, interval)
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


def g_optimizer(config: GANConfig) -> optax.GradientTransformation:
    """G's Adam, rescaled for Greg when pl_weight > 0."""
    return _optimizer(config.g_lr, config.betas, config.adam_eps,
                      config.g_reg_every if config.pl_weight > 0 else None)


def d_optimizer(config: GANConfig) -> optax.GradientTransformation:
    """D's Adam, rescaled for Dreg when r1_gamma > 0."""
    return _optimizer(config.d_lr, config.betas, config.adam_eps,
                      config.d_reg_every if config.r1_gamma > 0 else None)


def ema_beta(config: GANConfig, batch: int, step: jax.Array) -> jax.Array:
    """G_ema decay: 0.5 ** (batch / ema_nimg), ema_nimg = ema_kimg * 1000, or with
    ramp-up min(ema_nimg, step * batch * ema_rampup) (images seen before this step).
    batch: int; step: () int. Returns () float32."""
    ema_nimg = jnp.float32(config.ema_kimg * 1000.0)
    if config.ema_rampup is not None:
        seen = jnp.asarray(step, jnp.float32) * batch
        ema_nimg = jnp.minimum(ema_nimg, seen * config.ema_rampup)
    return jnp.float32(0.5) ** (batch / jnp.maximum(ema_nimg, 1e-8))


@struct.dataclass
class GANState:
    """The whole GAN training state, one pytree (graph definitions and config static).

    step: () int32 iterations done; rng: PRNG key; g_params, g_ema_params,
    d_params: nnx.State of the nnx.Param variables; g_rest, d_rest: nnx.State of
    the other variables (noise buffers, latent_avg), never trained; g_opt_state,
    d_opt_state: optax Adam states; pl_mean: () float32 running path length.
    """

    step: jax.Array
    rng: jax.Array
    g_params: nnx.State
    g_ema_params: nnx.State
    g_rest: nnx.State
    d_params: nnx.State
    d_rest: nnx.State
    g_opt_state: Any
    d_opt_state: Any
    pl_mean: jax.Array
    g_graphdef: Any = struct.field(pytree_node=False)
    d_graphdef: Any = struct.field(pytree_node=False)
    config: GANConfig = struct.field(pytree_node=False)

    def generator(self, ema: bool = True) -> Generator:
        """A Generator module holding G_ema (ema=True) or G's current parameters."""
        params = self.g_ema_params if ema else self.g_params
        return nnx.merge(self.g_graphdef, params, self.g_rest)

    def discriminator(self) -> Discriminator:
        return nnx.merge(self.d_graphdef, self.d_params, self.d_rest)


def gan_state_from_modules(generator: Generator, discriminator: Discriminator,
                           config: GANConfig, key: jax.Array) -> GANState:
    """A step-0 state from built (e.g. converted, pretrained) networks; G_ema starts
    as a copy of G. key: PRNG key of the training randomness."""
    g_graphdef, g_params, g_rest = nnx.split(generator, nnx.Param, ...)
    d_graphdef, d_params, d_rest = nnx.split(discriminator, nnx.Param, ...)
    return GANState(
        step=jnp.zeros((), jnp.int32), rng=key,
        g_params=g_params, g_ema_params=jax.tree.map(jnp.array, g_params), g_rest=g_rest,
        d_params=d_params, d_rest=d_rest,
        g_opt_state=g_optimizer(config).init(g_params),
        d_opt_state=d_optimizer(config).init(d_params),
        pl_mean=jnp.zeros((), jnp.float32),
        g_graphdef=g_graphdef, d_graphdef=d_graphdef, config=config)


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_gan_state(net_config: StyleGAN2Config, config: GANConfig, key: jax.Array) -> GANState:
    """Fresh G and D (StyleGAN2 initialisation) for `net_config`, and their state.
    key: PRNG key, split into G init, D init and training randomness. Jitted (one
    compiled initialiser instead of hundreds of eager ops); the configs are static."""
    k_g, k_d, k_train = jax.random.split(key, 3)
    generator = Generator(net_config, rngs=nnx.Rngs(k_g))
    discriminator = Discriminator(net_config, rngs=nnx.Rngs(k_d))
    return gan_state_from_modules(generator, discriminator, config, k_train)


# ------------------------------------------------------------------ sampling


def sample_w_plus(g: Generator, key: jax.Array, batch: int, mixing_prob: float) -> jax.Array:
    """w+ (batch, n_latent, style_dim) float32 from z ~ N(0, I), with style mixing as
    rosinality (`mixing_noise` + `Generator.forward`): with probability mixing_prob
    a second z drives the layers from index cut ~ U{1..n_latent-1} on."""
    cfg = g.config
    k_z, k_mix = jax.random.split(key)
    w = g.mapping(jax.random.normal(k_z, (batch, cfg.style_dim), jnp.float32))
    latents = jnp.broadcast_to(w[:, None], (batch, cfg.n_latent, cfg.style_dim))
    if mixing_prob <= 0:
        return latents
    k_z2, k_coin, k_cut = jax.random.split(k_mix, 3)
    w2 = g.mapping(jax.random.normal(k_z2, (batch, cfg.style_dim), jnp.float32))
    n = cfg.n_latent
    cut = jax.random.randint(k_cut, (), 1, n)
    cut = jnp.where(jax.random.uniform(k_coin) < mixing_prob, cut, n)
    return jnp.where((jnp.arange(n) < cut)[None, :, None], latents, w2[:, None])


def _fakes(g: Generator, key: jax.Array, batch: int, mixing_prob: float) -> jax.Array:
    k_w, k_noise = jax.random.split(key)
    return g.synthesis(sample_w_plus(g, k_w, batch, mixing_prob), noise_mode="random",
                       key=k_noise)


# ------------------------------------------------------------------ phases


def d_main_phase(state: GANState, real_images: jax.Array, key: jax.Array
                 ) -> tuple[GANState, dict]:
    """Dmain: one Adam step of D on the logistic loss; G fixed. real_images
    (B, R, R, C) float32. Returns the state (only D's params and opt state
    changed) and metrics."""
    cfg = state.config
    fake = _fakes(state.generator(ema=False), key, real_images.shape[0], cfg.mixing_prob)

    def loss_fn(d_params):
        d = nnx.merge(state.d_graphdef, d_params, state.d_rest)
        fake_logits, real_logits = d(fake), d(real_images)
        return d_logistic_loss(real_logits, fake_logits), (real_logits, fake_logits)

    (loss, (real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.d_params)
    d_params, d_opt = _apply(d_optimizer(cfg), grads, state.d_opt_state, state.d_params)
    metrics = {"Loss/D/loss": loss, "Loss/scores/real": jnp.mean(real_logits),
               "Loss/scores/fake": jnp.mean(fake_logits),
               "Grad/D/main_norm": _norm(grads)}
    return state.replace(d_params=d_params, d_opt_state=d_opt), metrics


def d_reg_phase(state: GANState, real_images: jax.Array) -> tuple[GANState, dict]:
    """Dreg: one Adam step of D on r1_gamma / 2 * R1 * d_reg_every (real images
    (B, R, R, C) float32). Only D's params and opt state change."""
    cfg = state.config

    def loss_fn(d_params):
        d = nnx.merge(state.d_graphdef, d_params, state.d_rest)
        r1, _ = r1_penalty(d, real_images)
        return cfg.r1_gamma / 2 * r1 * cfg.d_reg_every, r1

    (_, r1), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
    d_params, d_opt = _apply(d_optimizer(cfg), grads, state.d_opt_state, state.d_params)
    metrics = {"Loss/D/r1": r1, "Grad/D/reg_norm": _norm(grads)}
    return state.replace(d_params=d_params, d_opt_state=d_opt), metrics


def g_main_phase(state: GANState, key: jax.Array, batch: int) -> tuple[GANState, dict]:
    """Gmain: one Adam step of G on the non-saturating loss of `batch` fakes; D fixed.
    Only G's params and opt state change."""
    cfg = state.config
    d = state.discriminator()

    def loss_fn(g_params):
        g = nnx.merge(state.g_graphdef, g_params, state.g_rest)
        return g_nonsaturating_loss(d(_fakes(g, key, batch, cfg.mixing_prob)))

    loss, grads = jax.value_and_grad(loss_fn)(state.g_params)
    g_params, g_opt = _apply(g_optimizer(cfg), grads, state.g_opt_state, state.g_params)
    metrics = {"Loss/G/loss": loss, "Grad/G/main_norm": _norm(grads)}
    return state.replace(g_params=g_params, g_opt_state=g_opt), metrics


def g_reg_phase(state: GANState, key: jax.Array, batch: int) -> tuple[GANState, dict]:
    """Greg: one Adam step of G on pl_weight * path-length penalty * g_reg_every, at
    batch max(1, batch // pl_batch_shrink); updates pl_mean. Only G's params,
    opt state and pl_mean change."""
    cfg = state.config
    path_batch = max(1, batch // cfg.pl_batch_shrink)
    k_w, k_noise, k_y = jax.random.split(key, 3)

    def loss_fn(g_params):
        g = nnx.merge(state.g_graphdef, g_params, state.g_rest)
        w_plus = sample_w_plus(g, k_w, path_batch, cfg.mixing_prob)

        def synthesis(w):
            return g.synthesis(w, noise_mode="random", key=k_noise)

        penalty, pl_mean, lengths = path_length_penalty(synthesis, w_plus, state.pl_mean, k_y,
                                                        decay=cfg.pl_decay)
        return cfg.pl_weight * penalty * cfg.g_reg_every, (penalty, pl_mean, lengths)

    (_, (penalty, pl_mean, lengths)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.g_params)
    g_params, g_opt = _apply(g_optimizer(cfg), grads, state.g_opt_state, state.g_params)
    metrics = {"Loss/G/pl_penalty": penalty, "Loss/G/path_length": jnp.mean(lengths),
               "Grad/G/reg_norm": _norm(grads)}
    return state.replace(g_params=g_params, g_opt_state=g_opt, pl_mean=pl_mean), metrics


def ema_phase(state: GANState, batch: int) -> tuple[GANState, jax.Array]:
    """G_ema <- beta * G_ema + (1 - beta) * G (rosinality `accumulate`); returns
    (state, beta () float32)."""
    beta = ema_beta(state.config, batch, state.step)
    ema = jax.tree.map(lambda e, p: e * beta.astype(e.dtype) + (1 - beta).astype(p.dtype) * p,
                       state.g_ema_params, state.g_params)
    return state.replace(g_ema_params=ema), beta


def _norm(tree) -> jax.Array:
    """Global L2 norm of a gradient pytree, () float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _apply(tx, grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _skipped(metrics_like: dict) -> dict:
    return {k: jnp.zeros_like(v) for k, v in metrics_like.items()}


def _maybe(phase, run: jax.Array, state: GANState, *args) -> tuple[GANState, dict]:
    """lax.cond(run, phase, identity): a skipped phase returns the state untouched
    and zero metrics of the same structure."""
    shapes = jax.eval_shape(phase, state, *args)[1]

    def skip(state, *_):
        return state, _skipped(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

    return jax.lax.cond(run, phase, skip, state, *args)


# ------------------------------------------------------------------ the step


def gan_step_fn(state: GANState, real_images: jax.Array) -> tuple[GANState, dict]:
    """One StyleGAN2 iteration (module docstring), as a pure function to jit with the
    caller's shardings and donation (e.g. `jax.jit(gan_step_fn, donate_argnums=0,
    in_shardings=..., out_shardings=...)`); `gan_step` is this function jitted
    without donation. The step counter is traced: one compilation serves every
    step, the regularisation phases being chosen inside by `lax.cond`.

    Args:
      state: GANState at step s.
      real_images: (B, R, R, C) float32 in [-1, 1], B a multiple of 4 or B < 4
        (D's minibatch-stddev group).
    Returns:
      (state at step s + 1, metrics: dict of () arrays). Metrics of a skipped reg
      phase are 0; "Progress/d_reg", "Progress/g_reg" say which ran;
      "finite" is False when any loss or gradient norm of this step is not finite
      (the caller decides to stop; the update has been applied).
    """
    cfg = state.config
    batch = real_images.shape[0]
    rng, k_d, k_g, k_pl = jax.random.split(state.rng, 4)
    d_reg = (cfg.r1_gamma > 0) & (state.step % cfg.d_reg_every == 0)
    g_reg = (cfg.pl_weight > 0) & (state.step % cfg.g_reg_every == 0)

    state, metrics = d_main_phase(state, real_images, k_d)
    if cfg.r1_gamma > 0:
        state, m = _maybe(d_reg_phase, d_reg, state, real_images)
        metrics.update(m)
    state, m = g_main_phase(state, k_g, batch)
    metrics.update(m)
    if cfg.pl_weight > 0:
        state, m = _maybe(functools.partial(g_reg_phase, batch=batch), g_reg, state, k_pl)
        metrics.update(m)
    state, beta = ema_phase(state, batch)

    metrics["finite"] = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
    metrics.update({"pl_mean": state.pl_mean, "Progress/d_reg": d_reg, "Progress/g_reg": g_reg,
                    "Progress/ema_beta": beta})
    return state.replace(step=state.step + 1, rng=rng), metrics


gan_step = jax.jit(gan_step_fn)
