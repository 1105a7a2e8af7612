"""FLAME decoding speed: this project's jitted JAX decoder vs smplx (PyTorch) on the CPU.

Both decode the same random parameters of the built-in procedural model
(V = 5,238 vertices), written to a temporary folder with `write_flame_files`
and read back by smplx: 300 identity + 100 expression coefficients, all five
joints posed, 68 landmarks with the dynamic face contour on, float32 on both
sides, in the same process on the same CPU.

Modes:
  forward   decode only (smplx under torch.no_grad()).
  fwd+bwd   the value and gradient of a scalar loss (sum of squared vertices,
            landmarks and joints) w.r.t. all parameters: shape, expression, the
            five joint rotations and the translation (smplx: loss.backward() on
            leaf tensors with requires_grad).

Ours is compiled ahead of the timing (compile time is printed, not counted) and
timed with block_until_ready. The two sides are timed in alternation, one call
each per round, so that both see the same machine load; each reports the
median over --repeats rounds (fewer once --budget seconds have passed) after
--warmup rounds. Threads: --threads sets torch.set_num_threads; XLA's CPU
backend sizes its own thread pool to all the cores it may use and has no
per-call setting, so for an equal-cores comparison restrict the whole process
(e.g. `taskset -c 0-3 python -m face3d_eval.bench_flame --threads 4`).

    python -m face3d_eval.bench_flame                      # installed
    python eval/bench_flame.py --batches 1 64 --out results.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

try:
    import face3d_jax  # noqa: F401
except ImportError:  # run as `python eval/bench_flame.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from face3d_eval.timing import interleaved_medians, peak_rss_mib  # noqa: E402
from face3d_jax.flame.forward import flame_forward  # noqa: E402
from face3d_jax.flame.procedural import default_model  # noqa: E402
from face3d_jax.flame.writer import write_flame_files  # noqa: E402

NUM_SHAPE, NUM_EXPR = 300, 100
PARAM_NAMES = ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "eye_pose",
               "translation")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def random_params(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 FLAME parameters of a plausible spread."""
    rng = np.random.default_rng(seed)
    jaw = np.zeros((batch, 3))
    jaw[:, 0] = rng.uniform(0.0, 0.4, batch)
    p = {
        "shape": rng.normal(size=(batch, NUM_SHAPE)),
        "expression": rng.normal(size=(batch, NUM_EXPR)),
        "global_pose": rng.uniform(-0.5, 0.5, (batch, 3)),
        "neck_pose": rng.uniform(-0.3, 0.3, (batch, 3)),
        "jaw_pose": jaw,
        "eye_pose": rng.uniform(-0.2, 0.2, (batch, 6)),
        "translation": rng.uniform(-0.1, 0.1, (batch, 3)),
    }
    return {k: v.astype(np.float32) for k, v in p.items()}


# ---------------------------------------------------------------- ours (JAX)


def _ours_forward(model, p):
    return flame_forward(model, *(p[k] for k in PARAM_NAMES))


def _ours_loss(model, p):
    out = _ours_forward(model, p)
    return (jnp.sum(out.vertices ** 2) + jnp.sum(out.landmarks ** 2)
            + jnp.sum(out.joints ** 2))


_OURS_FNS = {"forward": _ours_forward,
             "fwd+bwd": jax.value_and_grad(_ours_loss, argnums=1)}


def ours_runner(model, p, mode):
    """(a function running one call, compile seconds, XLA temp bytes or None)."""
    p = {k: jnp.asarray(v) for k, v in p.items()}
    start = time.perf_counter()
    compiled = jax.jit(_OURS_FNS[mode]).lower(model, p).compile()
    compile_s = time.perf_counter() - start
    try:
        temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend/version reports it
        temp_bytes = None
    return (lambda: jax.block_until_ready(compiled(model, p))), compile_s, temp_bytes


# ---------------------------------------------------------------- smplx (PyTorch)


def _smplx_call(layer, t):
    return layer(betas=t["shape"], expression=t["expression"], global_orient=t["global_pose"],
                 neck_pose=t["neck_pose"], jaw_pose=t["jaw_pose"],
                 leye_pose=t["eye_pose"][:, :3], reye_pose=t["eye_pose"][:, 3:],
                 transl=t["translation"])


def smplx_runner(torch, layer, p, mode):
    """A function running one call of smplx."""
    if mode == "forward":
        t = {k: torch.from_numpy(v) for k, v in p.items()}

        def run():
            with torch.no_grad():
                _smplx_call(layer, t)
    else:
        t = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in p.items()}

        def run():
            for v in t.values():
                v.grad = None
            out = _smplx_call(layer, t)
            # out.joints = [5 joints, 51 static + 17 contour landmarks]: the same loss as ours.
            loss = (out.vertices ** 2).sum() + (out.joints ** 2).sum()
            loss.backward()
    return run


# ---------------------------------------------------------------- main


def markdown_table(rows) -> str:
    lines = ["| batch | mode | ours ms | smplx ms | smplx/ours | ours meshes/s |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['mode']} | {r['ours_ms']:.3f} | {r['smplx_ms']:.3f} "
                     f"| {r['ratio']:.2f} | {r['ours_meshes_per_s']:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="face3d_eval.bench_flame",
        description=__doc__.split("\n\n")[0],
        epilog="XLA uses all the cores this process may run on (no per-call setting); "
               "--threads only sets torch.set_num_threads. Use taskset to restrict both.")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024],
                        help="batch sizes (default: 1 64 1024)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed rounds per measurement, one call of each side per round; "
                             "the median is reported (default 20)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds per measurement after which no new round starts "
                             "(at least 3 rounds; default 20)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed runs before timing (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--modes", nargs="+", choices=tuple(_OURS_FNS), default=list(_OURS_FNS))
    parser.add_argument("--out", type=Path, default=None, help="also write results as JSON")
    args = parser.parse_args(argv)
    if min(args.batches) < 1 or args.repeats < 1 or args.warmup < 0 or args.budget <= 0:
        parser.error("batches, repeats and budget must be positive, warmup non-negative")

    try:
        import smplx
        import torch
    except ImportError as exc:
        print(f"bench_flame needs torch and smplx (pip install 'face3d-jax[torch]'): {exc}",
              file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    env = {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "jax_backend": jax.default_backend(),
        "torch": torch.__version__,
        "smplx": _version("smplx"),
        "numpy": np.__version__,
    }
    print("FLAME decode benchmark: face3d-jax (jax.jit) vs smplx (torch), float32, "
          f"{NUM_SHAPE} shape + {NUM_EXPR} expression coefficients, face contour on")
    print(f"CPU: {env['cpu']}; os.cpu_count() = {env['cpu_count']}, usable = {env['cpus_usable']}; "
          f"torch threads = {env['torch_threads']}; XLA: all usable cores")
    print(f"python {env['python']}, jax {env['jax']} (jaxlib {env['jaxlib']}, backend "
          f"{env['jax_backend']}), torch {env['torch']}, smplx {env['smplx']}, numpy {env['numpy']}")

    model = default_model()
    with tempfile.TemporaryDirectory() as tmp:
        write_flame_files(model, Path(tmp) / "flame")
        layer = smplx.create(tmp, model_type="flame", num_betas=NUM_SHAPE,
                             num_expression_coeffs=NUM_EXPR, use_face_contour=True,
                             dtype=torch.float32)
    layer.eval()
    model = jax.tree.map(jnp.asarray, model)
    print(f"model: V = {model.num_vertices}, {model.num_shape} shape + "
          f"{model.num_expression} expression components; repeats = {args.repeats} "
          f"rounds at most (median), budget = {args.budget:g} s, warmup = {args.warmup}\n")

    header = (f"{'batch':>6} {'mode':>8} {'ours ms':>10} {'smplx ms':>10} {'smplx/ours':>10} "
              f"{'ours meshes/s':>14} {'compile s':>9} {'XLA temp MiB':>12} {'peak RSS MiB':>12}")
    print(header)
    rows = []
    for batch in args.batches:
        p = random_params(batch)
        for mode in args.modes:
            ours_run, compile_s, temp = ours_runner(model, p, mode)
            smplx_run = smplx_runner(torch, layer, p, mode)
            ours_s, smplx_s = interleaved_medians([ours_run, smplx_run], args.repeats,
                                                  args.warmup, args.budget)
            row = {"batch": batch, "mode": mode, "ours_ms": ours_s * 1e3,
                   "smplx_ms": smplx_s * 1e3, "ratio": smplx_s / ours_s,
                   "ours_meshes_per_s": batch / ours_s, "ours_compile_s": compile_s,
                   "ours_xla_temp_mib": None if temp is None else temp / 2**20,
                   "peak_rss_mib": peak_rss_mib()}
            rows.append(row)
            temp_txt = "n/a" if temp is None else f"{temp / 2**20:.1f}"
            print(f"{batch:>6} {mode:>8} {row['ours_ms']:>10.3f} {row['smplx_ms']:>10.3f} "
                  f"{row['ratio']:>10.2f} {row['ours_meshes_per_s']:>14,.0f} {compile_s:>9.2f} "
                  f"{temp_txt:>12} {row['peak_rss_mib']:>12.0f}", flush=True)

    print("\nsmplx/ours > 1: ours is faster. Times are medians per call, compile excluded.\n")
    print(markdown_table(rows))
    if args.out is not None:
        args.out.write_text(json.dumps({"environment": env, "repeats": args.repeats,
                                        "budget_s": args.budget, "warmup": args.warmup,
                                        "results": rows}, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
