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

The D update, Greg and the EMA are gan_updates.py's, the implementation the
trainer's GAN phases (step.py) use too; lazy regularisation (one Adam per
network with StyleGAN2's k/(k+1) rescaling, reg losses multiplied by k) is
described there.

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
from flax import nnx, struct

from face3d_jax.gan_losses import g_nonsaturating_loss
from face3d_jax.nets.stylegan2 import Discriminator, Generator, StyleGAN2Config
from face3d_train.gan_updates import (
    GANConfig, adam_update, d_main_update, d_optimizer, d_r1_update, d_update, ema_beta,
    ema_update, g_lazy_path_length_update, g_optimizer, g_path_length_update, lazy_adam_hparams,
)

__all__ = [
    "GANConfig", "GANState", "authors_script_config", "d_main_phase", "d_optimizer",
    "d_reg_phase", "ema_beta", "ema_phase", "g_main_phase", "g_optimizer", "g_reg_phase",
    "gan_state_from_modules", "gan_step", "gan_step_fn", "init_gan_state", "lazy_adam_hparams",
    "sample_w_plus",
]


def authors_script_config(**overrides: Any) -> GANConfig:
    """The AlbedoGAN authors' training-script values (rosinality train.py flags:
    lr 1e-3, r1 10, path_regularize 2, d_reg_every 16, g_reg_every 4, mixing 0.9;
    they ran 1024^2 at batch 16), with `overrides` applied."""
    return dataclasses.replace(GANConfig(g_lr=1e-3, d_lr=1e-3), **overrides)


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
        return self.merge_g(self.g_ema_params if ema else self.g_params)

    def discriminator(self) -> Discriminator:
        return self.merge_d(self.d_params)

    def merge_g(self, g_params: nnx.State) -> Generator:
        """A Generator holding `g_params` and this state's non-trained variables."""
        return nnx.merge(self.g_graphdef, g_params, self.g_rest)

    def merge_d(self, d_params: nnx.State) -> Discriminator:
        """A Discriminator holding `d_params` and this state's non-trained variables."""
        return nnx.merge(self.d_graphdef, d_params, self.d_rest)


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
# Each phase is one update of gan_updates.py on the state's fields; the phases
# exist on their own so tests can check what each touches.


def d_main_phase(state: GANState, real_images: jax.Array, key: jax.Array
                 ) -> tuple[GANState, dict]:
    """Dmain: one Adam step of D on the logistic loss; G fixed. real_images
    (B, R, R, C) float32. Returns the state (only D's params and opt state
    changed) and metrics."""
    cfg = state.config
    fake = _fakes(state.generator(ema=False), key, real_images.shape[0], cfg.mixing_prob)
    d_params, d_opt, m = d_main_update(d_optimizer(cfg), state.merge_d, state.d_params,
                                       state.d_opt_state, real_images, fake)
    return state.replace(d_params=d_params, d_opt_state=d_opt), _d_metrics(m)


def d_reg_phase(state: GANState, real_images: jax.Array) -> tuple[GANState, dict]:
    """Dreg: one Adam step of D on r1_gamma / 2 * R1 * d_reg_every (real images
    (B, R, R, C) float32). Only D's params and opt state change."""
    cfg = state.config
    d_params, d_opt, m = d_r1_update(cfg, d_optimizer(cfg), state.merge_d, state.d_params,
                                     state.d_opt_state, real_images)
    metrics = {"Loss/D/r1": m["r1"], "Grad/D/reg_norm": m["grad_norm"]}
    return state.replace(d_params=d_params, d_opt_state=d_opt), metrics


def g_main_phase(state: GANState, key: jax.Array, batch: int) -> tuple[GANState, dict]:
    """Gmain: one Adam step of G on the non-saturating loss of `batch` fakes; D fixed.
    Only G's params and opt state change."""
    cfg = state.config
    d = state.discriminator()

    def loss_fn(g_params):
        fakes = _fakes(state.merge_g(g_params), key, batch, cfg.mixing_prob)
        return g_nonsaturating_loss(d(fakes)), None

    g_params, g_opt, loss, _, norm = adam_update(g_optimizer(cfg), loss_fn, state.g_params,
                                                 state.g_opt_state)
    metrics = {"Loss/G/loss": loss, "Grad/G/main_norm": norm}
    return state.replace(g_params=g_params, g_opt_state=g_opt), metrics


def _path_batch(state: GANState, key: jax.Array, batch: int):
    """Greg's inputs as rosinality draws them: (latents_fn, synthesis_fn, y_key),
    w+ from fresh z through G's mapping (so the mapping is regularised too) at
    batch max(1, batch // pl_batch_shrink), random noise inputs."""
    cfg = state.config
    path_batch = max(1, batch // cfg.pl_batch_shrink)
    k_w, k_noise, k_y = jax.random.split(key, 3)

    def latents_fn(g_params):
        return sample_w_plus(state.merge_g(g_params), k_w, path_batch, cfg.mixing_prob)

    def synthesis_fn(g_params, w_plus):
        return state.merge_g(g_params).synthesis(w_plus, noise_mode="random", key=k_noise)

    return latents_fn, synthesis_fn, k_y


def g_reg_phase(state: GANState, key: jax.Array, batch: int) -> tuple[GANState, dict]:
    """Greg: one Adam step of G on pl_weight * path-length penalty * g_reg_every, at
    batch max(1, batch // pl_batch_shrink); updates pl_mean. Only G's params,
    opt state and pl_mean change."""
    cfg = state.config
    latents_fn, synthesis_fn, y_key = _path_batch(state, key, batch)
    g_params, g_opt, pl_mean, m = g_path_length_update(
        cfg, g_optimizer(cfg), latents_fn, synthesis_fn, state.g_params, state.g_opt_state,
        state.pl_mean, y_key)
    return (state.replace(g_params=g_params, g_opt_state=g_opt, pl_mean=pl_mean),
            _g_reg_metrics(m))


def ema_phase(state: GANState, batch: int) -> tuple[GANState, jax.Array]:
    """G_ema <- beta * G_ema + (1 - beta) * G (rosinality `accumulate`); returns
    (state, beta () float32)."""
    beta = ema_beta(state.config, batch, state.step)
    return state.replace(g_ema_params=ema_update(state.g_ema_params, state.g_params, beta)), beta


def _d_metrics(m: dict) -> dict:
    return {"Loss/D/loss": m["loss"], "Loss/scores/real": m["real_logits"],
            "Loss/scores/fake": m["fake_logits"], "Grad/D/main_norm": m["grad_norm"]}


def _g_reg_metrics(m: dict) -> dict:
    return {"Loss/G/pl_penalty": m["penalty"], "Loss/G/path_length": m["path_length"],
            "Grad/G/reg_norm": m["grad_norm"]}


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

    fake = _fakes(state.generator(ema=False), k_d, batch, cfg.mixing_prob)
    d_params, d_opt, dm = d_update(cfg, d_optimizer(cfg), state.merge_d, state.d_params,
                                   state.d_opt_state, real_images, fake, state.step)
    state = state.replace(d_params=d_params, d_opt_state=d_opt)
    metrics = _d_metrics(dm)
    metrics.update({"Loss/D/r1": dm["r1"], "Grad/D/reg_norm": dm["reg_grad_norm"]})

    state, m = g_main_phase(state, k_g, batch)
    metrics.update(m)
    latents_fn, synthesis_fn, y_key = _path_batch(state, k_pl, batch)
    g_params, g_opt, pl_mean, gm = g_lazy_path_length_update(
        cfg, g_optimizer(cfg), latents_fn, synthesis_fn, state.g_params, state.g_opt_state,
        state.pl_mean, y_key, state.step)
    state = state.replace(g_params=g_params, g_opt_state=g_opt, pl_mean=pl_mean)
    metrics.update(_g_reg_metrics(gm))
    state, beta = ema_phase(state, batch)

    metrics["finite"] = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
    metrics.update({"pl_mean": state.pl_mean, "Progress/d_reg": dm["reg"],
                    "Progress/g_reg": gm["reg"], "Progress/ema_beta": beta})
    return state.replace(step=state.step + 1, rng=rng), metrics


gan_step = jax.jit(gan_step_fn)
