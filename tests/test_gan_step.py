"""The GAN train step (train/gan.py) with the real StyleGAN2 networks at a tiny
config: lazy regularisation runs exactly at its steps, phases touch only their
own network, skipped phases leave state bit-identical, G_ema follows the
half-life formula, the lazy Adam equals torch's Adam with StyleGAN2's rescaled
lr/betas (rosinality's optimiser), a non-finite loss is reported.

The step is compiled once per module (XLA's cheaper backend settings and the
rbg PRNG keep compilation short on a 2-core CPU; both change neither the
program's meaning nor the checks)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from face3d_jax.nets.stylegan2 import StyleGAN2Config
from face3d_train.gan import (
    GANConfig, authors_script_config, d_main_phase, d_optimizer, d_reg_phase, ema_beta,
    g_main_phase, g_optimizer, g_reg_phase, gan_step, init_gan_state, lazy_adam_hparams,
)

NET = StyleGAN2Config(resolution=8, style_dim=8, n_mlp=1, channel_max=4)
BATCH, STEPS = 4, 17  # 17 steps: D reg at 0 and 16, G reg at 0, 4, 8, 12, 16
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _key(seed):
    return jax.random.key(seed, impl="unsafe_rbg")


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _bit_identical(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(x.dtype == y.dtype and np.array_equal(x, y)
                                      for x, y in zip(la, lb))


def _adam_count(opt_state) -> int:
    return int(opt_state[0].count)


@pytest.fixture(scope="module")
def real_images():
    return jax.random.uniform(jax.random.key(1), (BATCH, 8, 8, 3), jnp.float32, -1.0, 1.0)


@pytest.fixture(scope="module")
def state0():
    key = _key(0)
    return init_gan_state.lower(NET, GANConfig(), key).compile(FAST_COMPILE)(key)


@pytest.fixture(scope="module")
def compiled_step(state0, real_images):
    return gan_step.lower(state0, real_images).compile(compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def trajectory(state0, real_images, compiled_step):
    """States 0..STEPS and the metrics of steps 0..STEPS-1."""
    states, metrics = [state0], []
    for _ in range(STEPS):
        state, m = compiled_step(states[-1], real_images)
        states.append(state)
        metrics.append(jax.device_get(m))
    return states, metrics


def test_lazy_regularisation_runs_at_its_steps(trajectory):
    states, metrics = trajectory
    for s, m in enumerate(metrics):
        d_reg, g_reg = s % 16 == 0, s % 4 == 0
        assert bool(m["Progress/d_reg"]) == d_reg and bool(m["Progress/g_reg"]) == g_reg, s
        # One Adam step per phase run: main every step, reg at its steps.
        assert _adam_count(states[s + 1].d_opt_state) - _adam_count(states[s].d_opt_state) \
            == 1 + d_reg, s
        assert _adam_count(states[s + 1].g_opt_state) - _adam_count(states[s].g_opt_state) \
            == 1 + g_reg, s
        assert (float(m["Loss/D/r1"]) > 0) == d_reg and (float(m["Loss/G/pl_penalty"]) > 0) \
            == g_reg, s
        # pl_mean is touched by Greg only; skipped, it is bit-identical.
        assert (states[s + 1].pl_mean == states[s].pl_mean) == (not g_reg), s
        assert int(states[s + 1].step) == s + 1


def test_training_runs_finite_and_moves_both_networks(trajectory):
    states, metrics = trajectory
    assert all(bool(m["finite"]) for m in metrics)
    for s in range(STEPS):
        assert not _bit_identical(states[s].d_params, states[s + 1].d_params)
        assert not _bit_identical(states[s].g_params, states[s + 1].g_params)
        assert _bit_identical(states[s].g_rest, states[s + 1].g_rest)
    # path-length mean: exponential average of the measured lengths (decay 0.01)
    lengths = [float(m["Loss/G/path_length"]) for m in metrics if m["Progress/g_reg"]]
    mean = 0.0
    for length in lengths:
        mean += 0.01 * (length - mean)
    np.testing.assert_allclose(float(states[-1].pl_mean), mean, rtol=1e-5)


def test_ema_follows_the_half_life(trajectory):
    states, metrics = trajectory
    beta = 0.5 ** (BATCH / (10 * 1000))
    for s in (0, 1, 16):
        assert float(metrics[s]["Progress/ema_beta"]) == pytest.approx(beta, rel=1e-6)
        for e0, e1, g1 in zip(_leaves(states[s].g_ema_params), _leaves(states[s + 1].g_ema_params),
                              _leaves(states[s + 1].g_params)):
            expect = beta * e0.astype(np.float64) + (1 - beta) * g1.astype(np.float64)
            np.testing.assert_allclose(e1, expect, rtol=1e-6, atol=1e-7)
    # G_ema starts as a copy of G, then lags behind it.
    assert _bit_identical(states[0].g_ema_params, states[0].g_params)
    assert not _bit_identical(states[-1].g_ema_params, states[-1].g_params)


def test_ema_rampup():
    cfg = GANConfig(ema_rampup=0.05)
    assert float(ema_beta(cfg, 4, jnp.int32(0))) == 0.0  # G_ema := G at the first step
    np.testing.assert_allclose(float(ema_beta(cfg, 4, jnp.int32(100))), 0.5 ** (4 / 20), rtol=1e-6)
    np.testing.assert_allclose(float(ema_beta(cfg, 4, jnp.int32(10 ** 6))), 0.5 ** (4 / 1e4),
                               rtol=1e-6)


@pytest.mark.parametrize("name", ["d_main", "d_reg", "g_main", "g_reg"])
def test_phases_touch_only_their_network(name, state0, real_images):
    """Each phase returns the other network's params and Adam state (and, except
    Greg, pl_mean) bit-identical; the step counter and key are never touched."""
    key = _key(7)
    phase, others = {
        "d_main": (lambda s: d_main_phase(s, real_images, key)[0],
                   ("g_params", "g_opt_state", "g_ema_params", "pl_mean")),
        "d_reg": (lambda s: d_reg_phase(s, real_images)[0],
                  ("g_params", "g_opt_state", "g_ema_params", "pl_mean")),
        "g_main": (lambda s: g_main_phase(s, key, BATCH)[0],
                   ("d_params", "d_opt_state", "g_ema_params", "pl_mean")),
        "g_reg": (lambda s: g_reg_phase(s, key, BATCH)[0],
                  ("d_params", "d_opt_state", "g_ema_params")),
    }[name]
    fields = others + ("g_rest", "d_rest", "step", "rng")

    # Only the fields under test are returned: XLA prunes the rest of the phase,
    # so this compiles fast, and a phase that wrote them would show here.
    @jax.jit
    def untouched(state):
        out = phase(state)
        return {f: jax.random.key_data(getattr(out, f)) if f == "rng" else getattr(out, f)
                for f in fields}

    got = untouched(state0)
    for f in fields:
        before = getattr(state0, f)
        before = jax.random.key_data(before) if f == "rng" else before
        assert _bit_identical(got[f], before), f


def test_non_finite_loss_is_reported(state0, real_images, compiled_step):
    bad = real_images.at[0, 0, 0, 0].set(jnp.nan)
    _, metrics = compiled_step(state0, bad)
    assert not bool(metrics["finite"])
    _, metrics = compiled_step(state0, real_images)
    assert bool(metrics["finite"])


def test_lazy_rescaling_is_stylegan2s():
    lr, betas = lazy_adam_hparams(2e-3, (0.0, 0.99), 16)
    assert lr == pytest.approx(2e-3 * 16 / 17) and betas[0] == 0.0
    assert betas[1] == pytest.approx(0.99 ** (16 / 17))
    lr, betas = lazy_adam_hparams(2e-3, (0.0, 0.99), 4)
    assert lr == pytest.approx(1.6e-3) and betas[1] == pytest.approx(0.99 ** 0.8)
    assert lazy_adam_hparams(1e-3, (0.5, 0.9), None) == (1e-3, (0.5, 0.9))
    assert GANConfig().g_lr == GANConfig().d_lr == 2e-3  # paper Sec. 5.2
    authors = authors_script_config()
    assert authors.g_lr == authors.d_lr == 1e-3
    assert dataclasses.replace(authors, g_lr=2e-3, d_lr=2e-3) == GANConfig()


@pytest.mark.parametrize("which", ["g", "d", "g_no_reg"])
def test_lazy_adam_matches_rosinality_torch_adam(which):
    """Three updates of our optax Adam equal torch.optim.Adam built as rosinality's
    train.py builds it (lr * k/(k+1), betas ** (k/(k+1)))."""
    torch = pytest.importorskip("torch")
    from face3d_eval.torch_reference.gan_step import lazy_adam

    cfg = GANConfig(pl_weight=0.0) if which == "g_no_reg" else GANConfig()
    tx = d_optimizer(cfg) if which == "d" else g_optimizer(cfg)
    interval = {"g": 4, "d": 16, "g_no_reg": None}[which]
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) * s for s in (1.0, 0.1, 3.0)]

    params, opt = jnp.asarray(p0), tx.init(jnp.asarray(p0))
    update = jax.jit(functools.partial(tx.update))
    for g in grads:
        upd, opt = update(jnp.asarray(g), opt, params)
        params = params + upd
    pt = torch.nn.Parameter(torch.tensor(p0))
    topt = lazy_adam([pt], 2e-3, (0.0, 0.99), interval)
    for g in grads:
        pt.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(np.asarray(params), pt.detach().numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(params), p0)


# ------------------------------------------------------------------ against the twin step


def _perturbed(module, seed):
    """Non-zero biases and noise strengths, so every parameter has a gradient."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return module


def _ours(module_state_dict, kind):
    """Our Param tree of a twin network's state dict (the tested converter). The
    tensors are cloned first: on the CPU our arrays may share the numpy buffers
    of torch's tensors, which the twin's optimizer then updates in place."""
    from flax import nnx

    from face3d_jax.convert.stylegan2 import (
        discriminator_from_state_dict, generator_from_state_dict,
    )
    module_state_dict = {k: v.detach().clone() for k, v in module_state_dict.items()}
    if kind == "g":
        module = generator_from_state_dict(module_state_dict, NET,
                                           latent_avg=np.zeros(NET.style_dim, np.float32))
    else:
        module = discriminator_from_state_dict(module_state_dict, NET)
    return nnx.split(module, nnx.Param, ...)


def test_the_shared_updates_match_rosinalitys_train_py():
    """Two iterations of rosinality's train.py (the twin, eval/torch_reference/
    gan_step.py: Dmain, Dreg, Gmain, Greg, EMA at step 0; Dmain, Gmain, EMA at
    step 1) against gan_updates.py's functions composed in that order, on the
    same networks, real images, z, noise and path-length projection y: D's and
    G's parameters, G_ema, pl_mean and the losses after each step.

    The twin draws z, noise and y itself; here they are fixed (mixing 0, the
    generator's noise buffers, y given) so both sides see the same inputs."""
    torch = pytest.importorskip("torch")
    from flax import nnx

    from face3d_eval.torch_reference import gan_step as twin
    from face3d_eval.torch_reference import stylegan2 as tref
    from face3d_jax.gan_losses import g_nonsaturating_loss
    from face3d_train.gan_updates import (
        adam_update, d_update, ema_beta, ema_update, g_lazy_path_length_update,
    )

    torch.manual_seed(0)
    g_t = _perturbed(tref.Generator(8, NET.style_dim, NET.n_mlp, channel_max=NET.channel_max), 1)
    d_t = _perturbed(tref.Discriminator(8, channel_max=NET.channel_max), 2)
    g_graph, g0, g_rest = _ours(g_t.state_dict(), "g")
    d_graph, d0, d_rest = _ours(d_t.state_dict(), "d")
    # ema_kimg 0.01: beta = 0.5 ** (4 / 10) ~ 0.76, so the EMA visibly mixes G in.
    cfg = GANConfig(mixing_prob=0.0, ema_kimg=0.01)
    step = twin.TorchGANStep(g_t, d_t, mixing=0.0, ema_kimg=cfg.ema_kimg)
    step.g.forward = functools.partial(step.g.forward, randomize_noise=False)

    rng = np.random.default_rng(3)
    real = rng.uniform(-1, 1, (BATCH, 8, 8, 3)).astype(np.float32)
    path_batch = BATCH // cfg.pl_batch_shrink
    # Per step: z of Dmain, Gmain and Greg (Greg at step 0 only, the twin draws
    # no z for a skipped Greg).
    zs = [[rng.normal(size=(n, NET.style_dim)).astype(np.float32)
           for n in (BATCH, BATCH, path_batch)] for _ in range(2)]
    y_key = jax.random.key(11)
    y = np.asarray(jax.random.normal(y_key, (path_batch, 8, 8, 3), jnp.float32)) / 8.0
    queue = [torch.tensor(z) for z in zs[0] + zs[1][:2]]
    real_pl = twin.g_path_regularize
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(twin, "mixing_noise", lambda *a: [queue.pop(0)])
        mp.setattr(twin, "g_path_regularize", lambda img, lat, mean, decay: real_pl(
            img, lat, mean, decay, noise=torch.tensor(y.transpose(0, 3, 1, 2))))
        twin_metrics = [step(torch.tensor(real.transpose(0, 3, 1, 2))) for _ in range(2)]
    assert not queue

    merge_g = lambda p: nnx.merge(g_graph, p, g_rest)
    merge_d = lambda p: nnx.merge(d_graph, p, d_rest)
    g_tx, d_tx = g_optimizer(cfg), d_optimizer(cfg)

    def w_plus(p, z):
        w = merge_g(p).mapping(z)
        return jnp.broadcast_to(w[:, None], (z.shape[0], NET.n_latent, NET.style_dim))

    def synthesis(p, w):
        return merge_g(p).synthesis(w, noise_mode="const")

    @jax.jit
    def rosinality_order(state, z_d, z_g, z_pl, gan_step):
        g, g_ema, d, g_opt, d_opt, pl_mean = state
        fake = synthesis(g, w_plus(g, z_d))
        d, d_opt, dm = d_update(cfg, d_tx, merge_d, d, d_opt, jnp.asarray(real), fake, gan_step)
        disc = merge_d(d)
        g, g_opt, g_loss, _, _ = adam_update(
            g_tx, lambda p: (g_nonsaturating_loss(disc(synthesis(p, w_plus(p, z_g)))), None),
            g, g_opt)
        g, g_opt, pl_mean, pm = g_lazy_path_length_update(
            cfg, g_tx, lambda p: w_plus(p, z_pl), synthesis, g, g_opt, pl_mean, y_key, gan_step)
        g_ema = ema_update(g_ema, g, ema_beta(cfg, BATCH, gan_step))
        metrics = {"Loss/D/loss": dm["loss"], "Loss/D/r1": dm["r1"], "Loss/G/loss": g_loss,
                   "Loss/G/pl_penalty": pm["penalty"]}
        return (g, g_ema, d, g_opt, d_opt, pl_mean), metrics

    state = (g0, jax.tree.map(jnp.copy, g0), d0, g_tx.init(g0), d_tx.init(d0),
             jnp.float32(0.0))
    for s in range(2):
        z_pl = zs[s][2] if s == 0 else np.zeros((path_batch, NET.style_dim), np.float32)
        state, metrics = rosinality_order(state, *map(jnp.asarray, zs[s][:2]), z_pl,
                                          jnp.int32(s))
        for name, value in twin_metrics[s].items():
            # Losses: the same float32 forward passes in two frameworks.
            np.testing.assert_allclose(float(metrics[name]), float(value), rtol=1e-5,
                                       err_msg=f"step {s} {name}")
        if s == 1:  # the lazy regularisers skipped, as the twin did
            assert float(metrics["Loss/D/r1"]) == 0 and float(metrics["Loss/G/pl_penalty"]) == 0
            assert set(twin_metrics[1]) == {"Loss/D/loss", "Loss/G/loss"}
    g, g_ema, d, _, _, pl_mean = state
    np.testing.assert_allclose(float(pl_mean), float(step.mean_path_length), rtol=1e-5)
    ref = {"g": _ours(step.g.state_dict(), "g")[1], "d": _ours(step.d.state_dict(), "d")[1],
           "g_ema": _ours(step.g_ema.state_dict(), "g")[1]}
    start = {"g": g0, "d": d0, "g_ema": g0}
    for name, ours in (("g", g), ("d", d), ("g_ema", g_ema)):
        moved = 0.0
        for (path, a), b, a0 in zip(jax.tree_util.tree_leaves_with_path(ours),
                                    jax.tree.leaves(ref[name]), jax.tree.leaves(start[name]),
                                    strict=True):
            a, b, a0 = np.asarray(a), np.asarray(b), np.asarray(a0)
            moved = max(moved, float(np.abs(b - a0).max()))
            # Both sides run the same float32 arithmetic; the losses agree to 1e-5,
            # so do the gradients, and Adam's normalised steps (<= ~1.4 lr = 3e-3
            # each) then agree to ~1e-5 of a step. What is left is float32 rounding
            # of the parameter itself over the ~10 operations of two steps and the
            # EMA: 1e-6 of the leaf's largest entry (its ulp is 6e-8 of it). A
            # wrong weight, interval, rescaling or skipped phase moves parameters
            # by a sizeable part of a step, >= 1e-4, far above this.
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * max(1.0, np.abs(b).max()),
                                       err_msg=f"{name}{jax.tree_util.keystr(path)}")
        assert moved > 1e-3, name  # the steps moved every network
