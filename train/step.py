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

from face3d_jax.flame import displace, flame_forward
from face3d_jax.render.cameras import clip_to_pixels
from face3d_jax.render.renderer import WeakPerspectiveCamera, render
from face3d_train import gan_updates
from face3d_train import terms as T
from face3d_train.models import albedo_map, decode_codes, displacement_map
from face3d_train.state import PHASES, Setup, ShapeSide, TrainState


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
    "const" for evaluation).

    With `config.losses.rigid_from_landmarks` the render's image sees head pose
    and camera through a stop-gradient and its landmarks (`landmarks2d`) see
    them directly: the same values, but only the landmark term moves the rigid
    codes. Why (`tiny`): the image terms on F's maps fall as the face is drawn
    smaller, even with the pseudo-ground-truth albedo A_GT in place of
    G_Ab's (a scan of the camera scale at step 100: the perceptual term lowest
    at 0.55 of the prior's scale, the landmark term at 0.9), and under Adam
    the sign of a consistent gradient is what counts, not its size.
    """
    cfg = setup.config
    model = setup.model
    k_disp, k_alb = jax.random.split(key)
    codes = decode_codes(nets.encoder(batch["crop"]), setup.layout,
                         jnp.asarray(setup.camera_prior))
    bsz = batch["crop"].shape[0]
    zeros = lambda n: jnp.zeros((bsz, n), jnp.float32)

    def flame(global_pose):
        return flame_forward(model, codes["shape"], codes["expression"], global_pose,
                             zeros(3), codes["jaw_pose"], zeros(6))

    rigid_by_landmarks = bool(cfg.losses.get("rigid_from_landmarks", False))
    sg = jax.lax.stop_gradient if rigid_by_landmarks else (lambda x: x)
    out = flame(sg(codes["global_pose"]))
    disp = displacement_map(nets.displacement, batch["w"], setup.max_displacement,
                            noise_mode=noise_mode, key=k_disp)
    vertices = displace(out.vertices, model.faces, model.vertex_uv, disp)
    if albedo is None:
        albedo = albedo_map(nets.albedo, batch["w"], noise_mode=noise_mode, key=k_alb)
    size = int(cfg.model.render_size)
    crop = batch["crop"]
    landmarks2d = None
    if rigid_by_landmarks:
        # The render's landmark values; their gradient alone reaches head pose
        # and camera. Traced once, whichever renders use it (unused: removed by XLA).
        points = WeakPerspectiveCamera(cam=codes["camera"]).project(
            flame(codes["global_pose"]).landmarks)
        landmarks2d = clip_to_pixels(points, (size, size))

    def render_fn(albedo_):
        r = render(vertices, model.faces, model.uv_coords, model.uv_faces, albedo_,
                   WeakPerspectiveCamera(cam=sg(codes["camera"])), (size, size),
                   sh_coeffs=codes["light"], landmarks=out.landmarks, background=crop)
        return r if landmarks2d is None else r._replace(landmarks2d=landmarks2d)

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


def _gan_phase(setup: Setup, state: TrainState, batch, frozen, key, phase: str):
    """D_real then G_Ab (pretrain or albedo phase), lazy regularisers, EMA: the
    updates of gan_updates.py (the standalone GAN step's, tested against
    rosinality's train.py), on A_GT as the real images and G_Ab(w of the batch)
    as the fakes. G's main loss is the phase's weighted terms (the `gan` term
    is StyleGAN2's non-saturating loss; AlbedoGAN adds identity, ...)."""
    gan = setup.gan
    side, buffers = state.albedo, state.buffers
    k_fake, k_g, k_pl = jax.random.split(key, 3)
    g_graph, d_graph = setup.graphs["albedo"], setup.graphs["discriminator"]
    merge_g = lambda p: nnx.merge(g_graph, p, buffers["albedo"])
    merge_d = lambda p: nnx.merge(d_graph, p, buffers["discriminator"])
    real = batch["albedo"] * 2.0 - 1.0
    gen = merge_g(side.g)
    n_latent = gen.config.n_latent
    fake = gen.synthesis(batch["w"][:, :n_latent], noise_mode="random", key=k_fake)
    d, d_opt, dm = gan_updates.d_update(gan, setup.d_tx, merge_d, side.d, side.d_opt, real, fake,
                                        side.gan_step)
    d_ok = jnp.isfinite(dm["loss"]) & jnp.isfinite(dm["grad_norm"]) & jnp.isfinite(dm["r1"])
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

    g_params, g_opt, loss, values, gnorm = gan_updates.adam_update(setup.g_tx, loss_fn, side.g,
                                                                   side.g_opt)
    # Path length on the batch's w (no mapping network in G_Ab), its first
    # max(1, B // pl_batch_shrink) rows, random noise inputs.
    k_noise, k_y = jax.random.split(k_pl)
    path_w = batch["w"][:max(1, batch["w"].shape[0] // gan.pl_batch_shrink), :n_latent]
    g_params, g_opt, pl_mean, pm = gan_updates.g_lazy_path_length_update(
        gan, setup.g_tx, lambda p: path_w,
        lambda p, w: merge_g(p).synthesis(w, noise_mode="random", key=k_noise),
        g_params, g_opt, side.pl_mean, k_y, side.gan_step)
    ok = (d_ok & jnp.isfinite(loss) & jnp.isfinite(gnorm) & jnp.isfinite(pm["penalty"])
          & jnp.isfinite(pm["grad_norm"]))
    beta = gan_updates.ema_beta(gan, batch["w"].shape[0], side.gan_step)
    new = side.replace(g=g_params, d=d, g_opt=g_opt, d_opt=d_opt, pl_mean=pl_mean,
                       g_ema=gan_updates.ema_update(side.g_ema, g_params, beta),
                       gan_step=side.gan_step + 1)
    metrics = {f"{phase}/{n}": v for n, v in values.items()}
    metrics.update({"gan/d_loss": dm["loss"], "gan/r1": dm["r1"], "grad_norm/d": dm["grad_norm"],
                    "gan/real_logits": dm["real_logits"], "gan/fake_logits": dm["fake_logits"]})
    metrics.update({f"{phase}/loss": loss, "grad_norm/g": gnorm, "gan/path_length": pm["penalty"]})
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
