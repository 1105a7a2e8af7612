"""StyleGAN2 training-step speed: this project's jitted `gan_step` (train/gan.py) vs
the PyTorch twin step (eval/torch_reference/gan_step.py, rosinality's train.py
loop on the twin networks), in the same process on the same device.

Both run one full iteration (Dmain, Gmain, G EMA; Dreg every 16 and Greg every
4 iterations, R1 and path length with second-order gradients) on the same
architecture (resolution, style_dim, n_mlp, channel_max of the size), random
real images of the batch, in the dtype (JAX: the networks' computation dtype;
torch: autocast). The weights differ (each side's own init): the cost does not depend
on them.

Three kinds of iteration are timed in alternation (one call of each side per
round, so both see the same machine load), median per kind:
  plain   Dmain + Gmain + EMA
  g_reg   plain + Greg (steps 4, 8, 12 of a 16-step cycle)
  both    plain + Dreg + Greg (step 0 of the cycle)
and combined as StyleGAN2's cycle: (1 * both + 3 * g_reg + 12 * plain) / 16 per
iteration (one more row, "cycle"); images/s = batch / that. Compile time is
recorded, not counted.

Memory: on GPU, peak device bytes (JAX `memory_stats()['peak_bytes_in_use']`,
torch `max_memory_allocated`). On CPU, JAX's figure is XLA's own accounting of
the compiled step (temporaries + arguments + outputs, exact); torch has no CPU
allocator statistics, so its figure is the growth of the process's peak RSS
during its first iteration (measured before JAX runs), an approximation.

    face3d bench gan-step [--size smallest|default|bfloat16]   # default: 64^2, batch 4
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from face3d_eval.harness import Options, Row, torch_module
from face3d_eval.timing import interleaved_medians, ours_memory, peak_rss_mib
from face3d_jax.nets.stylegan2 import StyleGAN2Config, count_params
from face3d_train.gan import GANConfig, gan_step_fn, init_gan_state

SIZES = {
    # Channels capped at 8, one mapping layer: every phase, in seconds.
    "smallest": {"resolution": 8, "batch": 2, "style_dim": 8, "n_mlp": 1, "channel_max": 8,
                 "repeats": 2, "warmup": 1, "budget": 2.0},
    "default": {"resolution": 64, "batch": 4, "repeats": 5, "warmup": 1, "budget": 60.0},
    # gpu_check's rows: one G+D training iteration at 256^2, config F channels.
    "gpu": {"resolution": 256, "batch": 8, "repeats": 5, "warmup": 1, "budget": 20.0},
    "bfloat16": {"resolution": 1024, "batch": 8, "dtype": "bfloat16", "repeats": 5,
                 "warmup": 1, "budget": 60.0},
}

KINDS = {"plain": 1, "g_reg": 4, "both": 0}  # a step counter value giving each kind
CYCLE = {"plain": 12, "g_reg": 3, "both": 1}  # occurrences in StyleGAN2's 16-step cycle


def jax_side(net: StyleGAN2Config, real: np.ndarray):
    """(runner(kind), compile s, memory MiB, memory label, G params, D params)."""
    state = init_gan_state(net, GANConfig(), jax.random.key(0))
    real = jnp.asarray(real)
    start = time.perf_counter()
    compiled = jax.jit(gan_step_fn, donate_argnums=0).lower(state, real).compile()
    compile_s = time.perf_counter() - start
    box = {"state": state}

    def run(kind):
        box["state"], metrics = compiled(box["state"].replace(step=jnp.int32(KINDS[kind])), real)
        jax.block_until_ready(metrics)

    run("both")  # first call: allocations
    mem, label = ours_memory(compiled)
    return (run, compile_s, mem, label, count_params(state.g_params),
            count_params(state.d_params))


def torch_side(torch, net: StyleGAN2Config, real: np.ndarray, dtype: str, device: str):
    """(runner(kind), memory MiB, memory label)."""
    from face3d_eval.torch_reference import stylegan2 as tref
    from face3d_eval.torch_reference.gan_step import TorchGANStep

    torch.manual_seed(0)
    g = tref.Generator(net.resolution, net.style_dim, net.n_mlp, channel_max=net.channel_max)
    d = tref.Discriminator(net.resolution, channel_max=net.channel_max)
    g, d = g.to(device), d.to(device)
    step = TorchGANStep(g, d, autocast_dtype=torch.bfloat16 if dtype == "bfloat16" else None)
    real_t = torch.from_numpy(real.transpose(0, 3, 1, 2).copy()).to(device)

    def run(kind):
        step.step = KINDS[kind]
        metrics = step(real_t)
        if device == "cuda":
            torch.cuda.synchronize()
        return metrics

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run("both")
        return run, torch.cuda.max_memory_allocated() / 2**20, "device peak"
    before = peak_rss_mib()
    run("both")
    return run, peak_rss_mib() - before, "peak RSS growth (approx.)"


def run(options: Options, resolution, batch, repeats, warmup, budget, dtype="float32",
        style_dim=512, n_mlp=8, channel_max=None) -> list[Row]:
    """One row per kind of iteration (plain, g_reg, both) and one for the
    16-step cycle: ms per iteration, ours vs the PyTorch twin step."""
    if batch < 1 or (batch > 4 and batch % 4):
        raise ValueError("gan-step: batch must be below 4 or a multiple of 4 "
                         "(minibatch-stddev group)")
    torch = torch_module(options)
    t_device = "cuda" if torch.cuda.is_available() else "cpu"
    jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    net = StyleGAN2Config(resolution=resolution, style_dim=style_dim, n_mlp=n_mlp,
                          channel_max=channel_max, dtype=jdtype)
    real = np.random.default_rng(0).uniform(
        -1, 1, (batch, resolution, resolution, 3)).astype(np.float32)
    # torch first: its CPU memory figure is peak-RSS growth, which JAX's buffers would mask.
    torch_run, torch_mem, torch_label = torch_side(torch, net, real, dtype, t_device)
    jax_run, compile_s, jax_mem, jax_label, g_n, d_n = jax_side(net, real)
    common = {"resolution": resolution, "batch": batch, "dtype": dtype, "compile_s": compile_s,
              "g_params": g_n, "d_params": d_n, "torch_mem_mib": torch_mem,
              "torch_memory": torch_label}
    peer = f"PyTorch twin ({t_device})"
    case = f"{resolution}^2 B={batch} {dtype}"
    rows, ms = [], {}
    for kind in KINDS:
        t_jax, t_torch = interleaved_medians(
            [lambda k=kind: jax_run(k), lambda k=kind: torch_run(k)], repeats, warmup, budget)
        ms[kind] = {"jax": t_jax * 1e3, "torch": t_torch * 1e3}
        rows.append(Row("gan-step", f"{case} {kind}", t_jax * 1e3, peer, t_torch * 1e3,
                        peak_mib=jax_mem, memory=jax_label, details={**common, "kind": kind}))
    per_iter = {side: sum(CYCLE[k] * ms[k][side] for k in KINDS) / 16 for side in ("jax", "torch")}
    rows.append(Row("gan-step", f"{case} 16-step cycle, per iteration", per_iter["jax"], peer,
                    per_iter["torch"], peak_mib=jax_mem, memory=jax_label,
                    details={**common, "kind": "cycle",
                             "images_per_s": {s: batch / (v / 1e3) for s, v in per_iter.items()},
                             "process_peak_rss_mib": peak_rss_mib()}))
    return rows
