"""StyleGAN2 training-step speed: this project's jitted `gan_step` (train/gan.py) vs
the PyTorch twin step (eval/torch_reference/gan_step.py, rosinality's train.py
loop on the twin networks), in the same process on the same device.

Both run one full iteration (Dmain, Gmain, G EMA; Dreg every 16 and Greg every
4 iterations, R1 and path length with second-order gradients) on the same
architecture (--resolution, --style-dim, --n-mlp, --channel-max), random real
images of --batch, in --dtype (JAX: the networks' computation dtype; torch:
autocast). The weights differ (each side's own init): the cost does not depend
on them.

Three kinds of iteration are timed in alternation (one call of each side per
round, so both see the same machine load), median per kind:
  plain   Dmain + Gmain + EMA
  g_reg   plain + Greg (steps 4, 8, 12 of a 16-step cycle)
  both    plain + Dreg + Greg (step 0 of the cycle)
and combined as StyleGAN2's cycle: (1 * both + 3 * g_reg + 12 * plain) / 16 per
iteration; images/s = batch / that. Compile time is printed, not counted.

Memory: on GPU, peak device bytes (JAX `memory_stats()['peak_bytes_in_use']`,
torch `max_memory_allocated`). On CPU, JAX's figure is XLA's own accounting of
the compiled step (temporaries + arguments + outputs, exact); torch has no CPU
allocator statistics, so its figure is the growth of the process's peak RSS
during its first iteration (measured before JAX runs), an approximation.

    python -m face3d_eval.bench_gan_step                       # 64^2, batch 4, CPU
    python -m face3d_eval.bench_gan_step --resolution 1024 --batch 8 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

try:
    import face3d_jax  # noqa: F401
except ImportError:  # run as `python eval/bench_gan_step.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from face3d_jax.nets.stylegan2 import StyleGAN2Config, count_params  # noqa: E402

from face3d_train.gan import GANConfig, gan_step_fn, init_gan_state  # noqa: E402
from face3d_eval.timing import interleaved_medians, peak_rss_mib  # noqa: E402

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
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        mem, label = stats["peak_bytes_in_use"] / 2**20, "device peak"
    else:
        try:
            ma = compiled.memory_analysis()
            mem = (ma.temp_size_in_bytes + ma.argument_size_in_bytes
                   + ma.output_size_in_bytes) / 2**20
            label = "XLA temp+args+out"
        except Exception:  # noqa: BLE001 - not every backend reports it
            mem, label = float("nan"), "n/a"
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="face3d_eval.bench_gan_step",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4,
                        help="real images per step; a multiple of 4 or below 4 (default 4)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--style-dim", type=int, default=512)
    parser.add_argument("--n-mlp", type=int, default=8)
    parser.add_argument("--channel-max", type=int, default=None,
                        help="cap on every layer's channels (default: config F, no cap)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per kind after which no new round starts (default 60)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="also write results as JSON")
    args = parser.parse_args(argv)
    if args.batch < 1 or (args.batch > 4 and args.batch % 4):
        parser.error("--batch must be below 4 or a multiple of 4 (minibatch-stddev group)")
    try:
        import torch
    except ImportError as exc:
        print(f"bench_gan_step needs torch (pip install 'face3d-jax[torch]'): {exc}",
              file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t_device = "cuda" if torch.cuda.is_available() else "cpu"
    jdtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    net = StyleGAN2Config(resolution=args.resolution, style_dim=args.style_dim, n_mlp=args.n_mlp,
                          channel_max=args.channel_max, dtype=jdtype)
    real = np.random.default_rng(0).uniform(
        -1, 1, (args.batch, args.resolution, args.resolution, 3)).astype(np.float32)

    env = {"jax": jax.__version__, "jax_device": str(jax.devices()[0]), "torch": torch.__version__,
           "torch_device": t_device, "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "python": platform.python_version()}
    print(f"StyleGAN2 G+D training step: face3d-jax gan_step (jax.jit) vs PyTorch twin "
          f"(rosinality loop); {args.resolution}^2, batch {args.batch}, {args.dtype}")
    print(", ".join(f"{k} {v}" for k, v in env.items()))

    torch_run, torch_mem, torch_label = torch_side(torch, net, real, args.dtype, t_device)
    jax_run, compile_s, jax_mem, jax_label, g_n, d_n = jax_side(net, real)
    print(f"G {g_n:,} params, D {d_n:,} params; JAX compile {compile_s:.1f} s\n")

    rows = {}
    print(f"{'kind':>6} {'jax ms':>10} {'torch ms':>10} {'torch/jax':>9}")
    for kind in KINDS:
        t_jax, t_torch = interleaved_medians([lambda: jax_run(kind), lambda: torch_run(kind)],
                                             args.repeats, args.warmup, args.budget)
        rows[kind] = {"jax_ms": t_jax * 1e3, "torch_ms": t_torch * 1e3}
        print(f"{kind:>6} {t_jax * 1e3:>10.1f} {t_torch * 1e3:>10.1f} {t_torch / t_jax:>9.2f}",
              flush=True)
    per_iter = {side: sum(CYCLE[k] * rows[k][f"{side}_ms"] for k in KINDS) / 16
                for side in ("jax", "torch")}
    ips = {side: args.batch / (ms / 1e3) for side, ms in per_iter.items()}
    print(f"\n16-step cycle: jax {per_iter['jax']:.1f} ms/iter ({ips['jax']:.2f} img/s), "
          f"torch {per_iter['torch']:.1f} ms/iter ({ips['torch']:.2f} img/s), "
          f"torch/jax {per_iter['torch'] / per_iter['jax']:.2f} (> 1: JAX faster)")
    print(f"memory: jax {jax_mem:,.0f} MiB ({jax_label}), torch {torch_mem:,.0f} MiB "
          f"({torch_label}); process peak RSS {peak_rss_mib():,.0f} MiB")
    if args.out is not None:
        args.out.write_text(json.dumps({
            "environment": env, "args": {k: str(v) for k, v in vars(args).items()},
            "kinds": rows, "ms_per_iter": per_iter, "images_per_s": ips,
            "memory_mib": {"jax": jax_mem, "jax_label": jax_label, "torch": torch_mem,
                           "torch_label": torch_label}}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
