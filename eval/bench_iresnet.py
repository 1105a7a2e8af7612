"""ArcFace iresnet speed: this project's jitted JAX/Flax network vs its PyTorch twin on the CPU.

Both sides hold the same weights: the PyTorch twin
(face3d_eval.torch_reference.iresnet, insightface's module layout) gets random
weights of a trained-like scale (`randomize_`: insightface's own N(0, 0.1)
init overflows to inf/NaN through 100 layers, and non-finite numbers would
distort CPU timings) and is converted by face3d_jax.convert.arcface; the two
embeddings are compared before timing (relative max difference printed).
Input: random (B, 112, 112, 3) images in [-1, 1], float32 on both sides, in
the same process on the same CPU.

Modes:
  forward   inference: running BN statistics (torch: eval() under no_grad()).
  fwd+bwd   one training step's gradient: batch statistics (and running-stat
            updates), the value and gradient of sum(embedding^2) w.r.t. every
            trainable parameter (torch: train(), loss.backward(); its
            BatchNorm1d needs B >= 2, so batch 1 is skipped in this mode).

Ours runs as one jax.jit of a pure function of (params, batch stats, images),
compiled ahead of the timing (compile time printed, not counted) and timed with
block_until_ready. The two sides are timed in alternation, one call each per
round, so both see the same machine load; each reports the median over
--repeats rounds (fewer once --budget seconds have passed) after --warmup
rounds. Threads: --threads sets torch.set_num_threads; XLA's CPU backend uses
all usable cores (restrict the whole process with taskset for an equal-cores
comparison).

    python -m face3d_eval.bench_iresnet                          # iresnet100, B = 2 and 8
    python eval/bench_iresnet.py --arch iresnet18 --batches 4 --modes forward
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
except ImportError:  # run as `python eval/bench_iresnet.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from face3d_eval.bench_flame import (  # noqa: E402
    _cpu_name, _peak_rss_mib, _version, interleaved_medians,
)
from face3d_jax.convert.arcface import convert_arcface  # noqa: E402
from face3d_jax.nets.arcface import ARCHITECTURES, count_params  # noqa: E402

MODES = ("forward", "fwd+bwd")


def ours_runner(model, images: np.ndarray, mode: str):
    """(a function running one call, compile seconds) for our network."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.asarray(images)

    def forward(params, rest, x):
        return nnx.merge(graphdef, params, rest)(x, use_running_average=True)

    def loss(params, rest, x):
        net = nnx.merge(graphdef, params, rest, copy=True)
        emb = net(x, use_running_average=False)
        return jnp.sum(emb * emb), nnx.state(net, nnx.BatchStat)

    fn = forward if mode == "forward" else jax.value_and_grad(loss, has_aux=True)
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(params, rest, x).compile()
    compile_s = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(params, rest, x))), compile_s


def torch_runner(torch, twin, images: np.ndarray, mode: str):
    """A function running one call of the PyTorch twin."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    if mode == "forward":
        twin.eval()

        def run():
            with torch.no_grad():
                twin(x)
    else:
        twin.train()

        def run():
            twin.zero_grad(set_to_none=True)
            emb = twin(x)
            (emb * emb).sum().backward()
    return run


def _check_same_embedding(torch, twin, model, images: np.ndarray) -> float:
    twin.eval()
    with torch.no_grad():
        ref = twin(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
    ours = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(images)))
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="face3d_eval.bench_iresnet",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="iresnet100",
                        help="insightface architecture (default iresnet100)")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8],
                        help="batch sizes (default: 2 8)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed rounds per measurement (median reported; default 10)")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="seconds per measurement after which no new round starts "
                             "(at least 3 rounds; default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write results as JSON")
    args = parser.parse_args(argv)
    if min(args.batches) < 1 or args.repeats < 1 or args.warmup < 0 or args.budget <= 0:
        parser.error("batches, repeats and budget must be positive, warmup non-negative")

    try:
        import torch

        from face3d_eval.torch_reference.iresnet import iresnet, randomize_
    except ImportError as exc:
        print(f"bench_iresnet needs torch (pip install 'face3d-jax[torch]'): {exc}",
              file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    env = {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
           "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
           "jax": jax.__version__, "jaxlib": _version("jaxlib"), "flax": _version("flax"),
           "jax_backend": jax.default_backend(), "torch": torch.__version__}
    print(f"ArcFace {args.arch} benchmark: face3d-jax (jax.jit) vs PyTorch twin, float32, "
          "112x112 input, 512-d embedding")
    print(f"CPU: {env['cpu']}; os.cpu_count() = {env['cpu_count']}, usable = "
          f"{env['cpus_usable']}; torch threads = {env['torch_threads']}; XLA: all usable cores")
    print(f"python {env['python']}, jax {env['jax']} (jaxlib {env['jaxlib']}, backend "
          f"{env['jax_backend']}), flax {env['flax']}, torch {env['torch']}")

    torch.manual_seed(0)
    twin = randomize_(iresnet(args.arch), seed=0)
    start = time.perf_counter()
    model = convert_arcface(twin.state_dict())
    rng = np.random.default_rng(0)
    check = rng.uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
    rel = _check_same_embedding(torch, twin, model, check)
    if not np.isfinite(rel):
        print("the embeddings are not finite: timings would be meaningless", file=sys.stderr)
        return 1
    print(f"parameters: {count_params(model):,} trainable; conversion + check "
          f"{time.perf_counter() - start:.1f} s; max |ours - torch| / max |torch| = {rel:.1e}\n")

    print(f"{'batch':>6} {'mode':>8} {'ours ms':>10} {'torch ms':>10} {'torch/ours':>10} "
          f"{'ours img/s':>10} {'torch img/s':>11} {'compile s':>9} {'peak RSS MiB':>12}")
    rows = []
    for batch in args.batches:
        images = rng.uniform(-1, 1, (batch, 112, 112, 3)).astype(np.float32)
        for mode in args.modes:
            if mode == "fwd+bwd" and batch < 2:
                print(f"{batch:>6} {mode:>8}  skipped: training-mode BatchNorm1d needs B >= 2")
                continue
            ours_run, compile_s = ours_runner(model, images, mode)
            torch_run = torch_runner(torch, twin, images, mode)
            ours_s, torch_s = interleaved_medians([ours_run, torch_run], args.repeats,
                                                  args.warmup, args.budget)
            row = {"arch": args.arch, "batch": batch, "mode": mode, "ours_ms": ours_s * 1e3,
                   "torch_ms": torch_s * 1e3, "ratio": torch_s / ours_s,
                   "ours_images_per_s": batch / ours_s, "torch_images_per_s": batch / torch_s,
                   "ours_compile_s": compile_s, "peak_rss_mib": _peak_rss_mib()}
            rows.append(row)
            print(f"{batch:>6} {mode:>8} {row['ours_ms']:>10.1f} {row['torch_ms']:>10.1f} "
                  f"{row['ratio']:>10.2f} {row['ours_images_per_s']:>10.1f} "
                  f"{row['torch_images_per_s']:>11.1f} {compile_s:>9.1f} "
                  f"{row['peak_rss_mib']:>12.0f}", flush=True)
    print("\ntorch/ours > 1: ours is faster. Times are medians per call, compile excluded.")
    if args.out is not None:
        args.out.write_text(json.dumps({"environment": env, "arch": args.arch,
                                        "repeats": args.repeats, "budget_s": args.budget,
                                        "warmup": args.warmup, "results": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
