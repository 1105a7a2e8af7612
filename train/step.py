"""One jitted training step: a selector runs exactly one phase's update.

    step_fn = make_step(setup)                # (state, batch, frozen) -> (state, metrics)
    state, metrics = jax.jit(step_fn)(state, batch, setup.frozen)

Phases (design card: alternating descent as data, not Python control flow):
the step counter picks one by `lax.switch` (`Setup.phase_of`):
  pretrain  AlbedoGAN pre-training (Sec. 3.3, 5.2): D_real on A_GT against
            G_Ab(w) (+ R1 every d_reg_every GAN steps), then G_Ab on the GAN
            loss + lambda_ID * identity(A_AbGAN, A_GT) (+ path length every
            g_reg_every), then G_Ab's EMA.
  shape     E_shape and G_Disp on the rendering losses (Sec. 4.2); G_Ab frozen.
  albedo    G_Ab fine-tuned with the rendering and albedo losses and the GAN
            loss (Sec. 4.1, 5.2), D_real kept training as in pre-training; E_shape
            and G_Disp frozen.
Whatever a phase does not update comes out bit-identical (parameters and
optimizer states): `lax.switch` passes it through.

Each phase's update is applied only when its losses and gradient norms are
finite; otherwise the state keeps its parameters, `bad_steps` counts up and
the metrics say `finite = 0` (the loop logs it and stops after
`config.max_bad_steps` in a row). The step counter and the key always advance.

Metrics: one flat dict of float32 scalars with the same keys in every phase
(`<phase>/<term>`, `<phase>/loss`, `gan/*`, `grad_norm/*`, `finite`, `phase`);
the keys of phases not run hold 0 and the loop keeps only the run phase's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from face3d_jax import gan_losses
from face3d_jax.flame import displace, flame_forward
from face3d_jax.render.renderer import WeakPerspectiveCamera, render
from face3d_train import terms as T
from face3d_train.models import albedo_map, decode_codes, displacement_map
from face3d_train.state import PHASES, AlbedoSide, Setup, ShapeSide, TrainState


def _norm(tree) -> jax.Array:
    return optax.tree_utils.tree_norm(tree).astype(jnp.float32)


def _select(ok, new, old):
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def metric_keys(setup: Setup) -> list[str]:
    keys = ["finite", "phase", "grad_norm/shape", "grad_norm/g", "grad_norm/d",
            "gan/d_loss", "gan/r1", "gan/path_length", "gan/real_logits", "gan/fake_logits"]
    for phase in PHASES:
        keys += [f"{phase}/loss"] + [f"{phase}/{n}" for n, w in setup.weights[phase].items()
                                     if w != 0.0]
    return sorted(set(keys))


class Nets:
    """The modules of one step, merged from the state's parameters."""

    def __init__(self, setup: Setup, state: TrainState, frozen, *, shape=None, g=None, d=None):
        b = state.buffers
        gr = setup.graphs
        shape = state.shape.params if shape is None else shape
        self.encoder = nnx.merge(gr["encoder"], shape["encoder"], b["encoder"])
        self.displacement = nnx.merge(gr["displacement"], shape["displacement"], b["displacement"])
        self.albedo = nnx.merge(gr["albedo"], state.albedo.g if g is None else g, b["albedo"])
        self.discriminator = nnx.merge(gr["discriminator"], state.albedo.d if d is None else d,
                                       b["discriminator"])
        fg = setup.frozen_graphs
        self.identity = nnx.merge(fg["identity"], frozen["identity"])
        self.perceptual = (nnx.merge(fg["perceptual"], frozen["perceptual"])
                           if "perceptual" in fg else None)


def context(setup: Setup, nets: Nets, batch: dict, key, *, albedo=None,
             noise_mode: str = "random") -> T.Context:
    """Runs E_shape, G_Disp, FLAME and G_Ab on a batch; rendering is lazy.
    noise_mode: the generators' noise inputs ("random" from `key` in training,
    "const" for evaluation)."""
    cfg = setup.config
    model = setup.model
    k_disp, k_alb = jax.random.split(key)
    codes = decode_codes(nets.encoder(batch["crop"]), setup.layout,
                         jnp.asarray(setup.camera_prior))
    bsz = batch["crop"].shape[0]
    zeros = lambda n: jnp.zeros((bsz, n), jnp.float32)
    out = flame_forward(model, codes["shape"], codes["expression"], codes["global_pose"],
                        zeros(3), codes["jaw_pose"], zeros(6))
    disp = displacement_map(nets.displacement, batch["w"], setup.max_displacement,
                            noise_mode=noise_mode, key=k_disp)
    vertices = displace(out.vertices, model.faces, model.vertex_uv, disp)
    if albedo is None:
        albedo = albedo_map(nets.albedo, batch["w"], noise_mode=noise_mode, key=k_alb)
    size = int(cfg.model.render_size)
    crop = batch["crop"]

    def render_fn(albedo_):
        return render(vertices, model.faces, model.uv_coords, model.uv_faces, albedo_,
                      WeakPerspectiveCamera(cam=codes["camera"]), (size, size),
                      sh_coeffs=codes["light"], landmarks=out.landmarks, background=crop)

    return T.Context(
        batch=batch, codes=codes, displacement=disp, albedo=albedo, render_fn=render_fn,
        identity=nets.identity, albedo_chip=jnp.asarray(setup.albedo_chip),
        perceptual_fn=nets.perceptual, disc_fn=lambda a: nets.discriminator(a * 2.0 - 1.0),
        uv_mask=jnp.asarray(setup.uv_mask), groups=setup.groups)


def _shape_phase(setup: Setup, state: TrainState, batch, frozen, key):
    weights = setup.weights["shape"]

    def loss_fn(params):
        nets = Nets(setup, state, frozen, shape=params,
                     g=jax.lax.stop_gradient(state.albedo.g))
        total, values = T.weighted_sum(weights, context(setup, nets, batch, key))
        return total, values

    (loss, values), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.shape.params)
    updates, opt = setup.shape_tx.update(grads, state.shape.opt_state, state.shape.params)
    new = ShapeSide(params=optax.apply_updates(state.shape.params, updates), opt_state=opt)
    gnorm = _norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    metrics = {f"shape/{n}": v for n, v in values.items()}
    metrics.update({"shape/loss": loss, "grad_norm/shape": gnorm})
    return state.replace(shape=_select(ok, new, state.shape)), metrics, ok


def _d_update(setup: Setup, side: AlbedoSide, buffers, real, fake):
    """D_real main update, and its lazy R1 update every d_reg_every GAN steps."""
    g = setup.config.optim.gan
    graph = setup.graphs["discriminator"]
    fake = jax.lax.stop_gradient(fake)

    def main_loss(d):
        disc = nnx.merge(graph, d, buffers)
        real_logits, fake_logits = disc(real), disc(fake)
        return gan_losses.d_logistic_loss(real_logits, fake_logits), (real_logits, fake_logits)

    (d_loss, (rl, fl)), grads = jax.value_and_grad(main_loss, has_aux=True)(side.d)
    updates, d_opt = setup.d_tx.update(grads, side.d_opt, side.d)
    d = optax.apply_updates(side.d, updates)
    gnorm = _norm(grads)

    def r1(args):
        d, d_opt = args

        def loss(d):
            pen, _ = gan_losses.r1_penalty(nnx.merge(graph, d, buffers), real)
            return float(g.r1_gamma) / 2.0 * pen * int(g.d_reg_every), pen

        (_, pen), grads = jax.value_and_grad(loss, has_aux=True)(d)
        updates, d_opt = setup.d_tx.update(grads, d_opt, d)
        return optax.apply_updates(d, updates), d_opt, pen

    if float(g.r1_gamma) > 0:
        run = jnp.mod(side.gan_step, int(g.d_reg_every)) == 0
        d, d_opt, pen = jax.lax.cond(run, r1, lambda a: (*a, jnp.float32(0.0)), (d, d_opt))
    else:
        pen = jnp.float32(0.0)
    metrics = {"gan/d_loss": d_loss, "gan/r1": pen, "grad_norm/d": gnorm,
               "gan/real_logits": jnp.mean(rl), "gan/fake_logits": jnp.mean(fl)}
    return d, d_opt, metrics, jnp.isfinite(d_loss) & jnp.isfinite(gnorm) & jnp.isfinite(pen)


def _g_path_length(setup: Setup, g_params, g_opt, pl_mean, buffers, w, key):
    """G_Ab's lazy path-length update (StyleGAN2), on w from the data."""
    g = setup.config.optim.gan
    graph = setup.graphs["albedo"]
    n = max(1, w.shape[0] // int(g.pl_batch_shrink))

    def loss(params):
        gen = nnx.merge(graph, params, buffers)
        w_plus = w[:n, :gen.config.n_latent]
        k_noise, k_y = jax.random.split(key)
        pen, new_mean, _ = gan_losses.path_length_penalty(
            lambda x: gen.synthesis(x, noise_mode="random", key=k_noise), w_plus, pl_mean, k_y,
            decay=float(g.pl_decay))
        return float(g.pl_weight) * int(g.g_reg_every) * pen, (pen, new_mean)

    (_, (pen, new_mean)), grads = jax.value_and_grad(loss, has_aux=True)(g_params)
    updates, g_opt = setup.g_tx.update(grads, g_opt, g_params)
    return optax.apply_updates(g_params, updates), g_opt, new_mean, pen


def _ema(setup: Setup, side: AlbedoSide, batch_size: int):
    g = setup.config.optim.gan
    ema_nimg = jnp.float32(float(g.ema_kimg) * 1000.0)
    if float(g.ema_rampup) > 0:
        seen = side.gan_step.astype(jnp.float32) * batch_size
        ema_nimg = jnp.minimum(ema_nimg, seen * float(g.ema_rampup))
    beta = jnp.float32(0.5) ** (batch_size / jnp.maximum(ema_nimg, 1e-8))
    return jax.tree.map(lambda e, p: p + beta * (e - p), side.g_ema, side.g)


def _gan_phase(setup: Setup, state: TrainState, batch, frozen, key, phase: str):
    """D_real then G_Ab (pretrain or albedo phase), lazy regularisers, EMA."""
    g = setup.config.optim.gan
    side, buffers = state.albedo, state.buffers
    k_fake, k_g, k_pl = jax.random.split(key, 3)
    real = batch["albedo"] * 2.0 - 1.0
    gen = nnx.merge(setup.graphs["albedo"], side.g, buffers["albedo"])
    fake = gen.synthesis(batch["w"][:, :gen.config.n_latent], noise_mode="random", key=k_fake)
    d, d_opt, d_metrics, d_ok = _d_update(setup, side, buffers["discriminator"], real, fake)
    weights = setup.weights[phase]

    def loss_fn(g_params):
        if phase == "pretrain":
            nets = Nets(setup, state, frozen, g=g_params, d=d)
            # No rendering in pre-training: a context whose albedo terms only.
            alb = albedo_map(nets.albedo, batch["w"], noise_mode="random", key=k_g)
            ctx = T.Context(batch=batch, codes=None, displacement=None, albedo=alb,
                            render_fn=None, identity=nets.identity,
                            albedo_chip=jnp.asarray(setup.albedo_chip),
                            perceptual_fn=nets.perceptual, disc_fn=lambda a: nets.discriminator(a * 2.0 - 1.0),
                            uv_mask=jnp.asarray(setup.uv_mask), groups=setup.groups)
        else:
            shape = jax.lax.stop_gradient(state.shape.params)
            nets = Nets(setup, state, frozen, shape=shape, g=g_params, d=d)
            ctx = context(setup, nets, batch, k_g)
        return T.weighted_sum(weights, ctx)

    (loss, values), grads = jax.value_and_grad(loss_fn, has_aux=True)(side.g)
    updates, g_opt = setup.g_tx.update(grads, side.g_opt, side.g)
    g_params = optax.apply_updates(side.g, updates)
    gnorm = _norm(grads)
    pl_mean, pen = side.pl_mean, jnp.float32(0.0)
    if float(g.pl_weight) > 0:
        run = jnp.mod(side.gan_step, int(g.g_reg_every)) == 0
        g_params, g_opt, pl_mean, pen = jax.lax.cond(
            run, lambda a: _g_path_length(setup, *a, buffers["albedo"], batch["w"], k_pl),
            lambda a: (*a, jnp.float32(0.0)), (g_params, g_opt, pl_mean))
    ok = d_ok & jnp.isfinite(loss) & jnp.isfinite(gnorm) & jnp.isfinite(pen)
    new = side.replace(g=g_params, d=d, g_opt=g_opt, d_opt=d_opt, pl_mean=pl_mean,
                       gan_step=side.gan_step + 1)
    new = new.replace(g_ema=_ema(setup, new, batch["w"].shape[0]))
    metrics = {f"{phase}/{n}": v for n, v in values.items()}
    metrics.update(d_metrics)
    metrics.update({f"{phase}/loss": loss, "grad_norm/g": gnorm, "gan/path_length": pen})
    return state.replace(albedo=_select(ok, new, side)), metrics, ok


def make_step(setup: Setup, phase: int | None = None):
    """The step function (state, batch, frozen) -> (state, metrics); jit it.

    phase: None: the selector picks the phase from the step counter
    (`lax.switch`); 0, 1 or 2: that phase's update only (the caller picks by
    `setup.phase_of`, see loop.py's "selector").
    batch: dict of global arrays, B = G * K identity-major images: crop
    (B, c, c, 3), landmarks (B, 68, 2), albedo (B, Ta, Ta, 3), w (B, L, 512),
    all float32. frozen: `setup.frozen`.
    """
    keys = metric_keys(setup)

    def branch(fn):
        def run(state, batch, frozen, key):
            new, metrics, ok = fn(setup, state, batch, frozen, key)
            full = {k: jnp.float32(0.0) for k in keys}
            full.update({k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()})
            full["finite"] = ok.astype(jnp.float32)
            return new, full, ok
        return run

    branches = [branch(functools.partial(_gan_phase, phase="pretrain")), branch(_shape_phase),
                branch(functools.partial(_gan_phase, phase="albedo"))]

    def step(state: TrainState, batch: dict, frozen):
        key, sub = jax.random.split(state.key)
        if phase is None:
            index = setup.phase_of(state.step)
            new, metrics, ok = jax.lax.switch(index, branches, state, batch, frozen, sub)
        else:
            index = jnp.int32(phase)
            new, metrics, ok = branches[phase](state, batch, frozen, sub)
        metrics["phase"] = index.astype(jnp.float32)
        new = new.replace(step=state.step + 1, key=key,
                          bad_steps=jnp.where(ok, 0, state.bad_steps + 1).astype(jnp.int32))
        return new, metrics

    return step
