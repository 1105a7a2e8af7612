"""StyleGAN2 generator speed: our Flax NNX generator (jax.jit) vs the PyTorch twin
(eval/torch_reference/stylegan2.py, rosinality's architecture) in the same run.

Both sides hold the same weights (the twin's random initialisation, converted
with our rosinality converter) and compute the same function: z (B, 512) ->
mapping -> synthesis with the checkpoint's constant noise buffers
(`noise_mode="const"` / `randomize_noise=False`) -> image, config F channels
(channel multiplier 2). Ours is compiled ahead of the timing (compile time is
printed, not counted); the twin runs under torch.inference_mode(). The two
sides are timed in alternation, one call each per round, so both see the same
machine load; each reports the median over --repeats rounds (fewer once
--budget seconds have passed) after --warmup rounds. The largest difference
between the two images is printed as a sanity check.

Memory: on a GPU, each side's allocator peak, weights included
(`memory_stats()["peak_bytes_in_use"]` over the process's life: run one
resolution and batch per process; `torch.cuda.max_memory_allocated`);
on the CPU, the growth of the process's peak resident set during each side's
first forward (Linux: VmHWM after resetting it through /proc/self/clear_refs;
later calls reuse memory the allocators kept), plus XLA's own plan (temp +
output bytes of the compiled program).

--dtype bfloat16: ours computes in bfloat16 with float32 parameters; the twin
is cast to bfloat16 entirely (parameters too), as a PyTorch user would. Meant
for accelerators: on a 2-core CPU (2026-11-27) a 64^2 case did not finish in
500 s. --fused (grouped per-sample convs) ran 4x slower than the default on
that CPU (XLA's grouped convs), so the default modulates activations instead.

    python -m face3d_eval.bench_stylegan2 --resolution 64 256 --batch 2
    python -m face3d_eval.bench_stylegan2 --resolution 1024 --batch 8 32 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

try:
    import face3d_jax  # noqa: F401
except ImportError:  # run as `python eval/bench_stylegan2.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from face3d_jax.convert.stylegan2 import generator_from_state_dict  # noqa: E402
from face3d_jax.convert.stylegan2_keys import infer_config  # noqa: E402
from face3d_jax.nets.stylegan2 import count_params  # noqa: E402
from face3d_eval.timing import interleaved_medians  # noqa: E402


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_peak_growth_mib(fn) -> float | None:
    """Peak resident-set growth (MiB) while fn() runs once, or None where unmeasurable."""
    gc.collect()
    if not _reset_peak_rss():
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    return None if before is None or peak is None else max(peak - before, 0) / 1024


def build_pair(torch, resolution: int, dtype: str, fused: bool, device):
    """(twin in eval mode on `device`, our Generator with the same weights)."""
    from face3d_eval.torch_reference.stylegan2 import Generator as TorchGenerator

    torch.manual_seed(0)
    twin = TorchGenerator(resolution, 512, 8).eval()
    sd = {k: v.numpy() for k, v in twin.state_dict().items()}
    cfg = infer_config(sd, "twin")
    cfg = type(cfg)(**{**cfg.__dict__, "fused_modconv": fused,
                       "dtype": jnp.bfloat16 if dtype == "bfloat16" else jnp.float32})
    ours = generator_from_state_dict(sd, cfg, latent_avg=np.zeros(cfg.style_dim), origin="twin")
    twin = twin.to(device=device, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    return twin, ours


def run_case(torch, resolution, batch, dtype, fused, device, args) -> dict:
    twin, ours = build_pair(torch, resolution, dtype, fused, device)
    z = np.random.default_rng(0).standard_normal((batch, 512)).astype(np.float32)
    graphdef, state = nnx.split(ours)

    def forward(state, z):
        return nnx.merge(graphdef, state)(z, noise_mode="const")

    zj = jnp.asarray(z)
    start = time.perf_counter()
    compiled = jax.jit(forward).lower(state, zj).compile()
    compile_s = time.perf_counter() - start
    try:
        mem = compiled.memory_analysis()
        xla_mib = (mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2**20
    except Exception:  # noqa: BLE001 - not every backend/version reports it
        xla_mib = None
    zt = torch.from_numpy(z).to(device=device, dtype=next(twin.parameters()).dtype)

    def ours_run():
        return jax.block_until_ready(compiled(state, zj))

    def twin_run():
        with torch.inference_mode():
            out, _ = twin([zt], randomize_noise=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    if device.type == "cuda":
        # Peak device memory in use, weights included (JAX cannot reset its peak: a
        # process-lifetime figure, so run one resolution/batch per process to compare).
        torch.cuda.reset_peak_memory_stats()
        twin_run()
        twin_mib = torch.cuda.max_memory_allocated() / 2**20
        ours_run()
        peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
        ours_mib = None if peak is None else peak / 2**20
    else:
        # Each side's first forward: its working memory comes fresh from the OS then.
        ours_mib, twin_mib = cpu_peak_growth_mib(ours_run), cpu_peak_growth_mib(twin_run)
    diff = float(np.abs(np.asarray(ours_run(), np.float32)
                        - twin_run().float().permute(0, 2, 3, 1).cpu().numpy()).max())
    ours_s, twin_s = interleaved_medians([ours_run, twin_run], args.repeats, args.warmup,
                                         args.budget)
    return {"resolution": resolution, "batch": batch, "dtype": dtype, "fused_modconv": fused,
            "ours_ms": ours_s * 1e3, "torch_ms": twin_s * 1e3, "torch_over_ours": twin_s / ours_s,
            "ours_img_per_s": batch / ours_s, "torch_img_per_s": batch / twin_s,
            "ours_mem_mib": ours_mib, "torch_mem_mib": twin_mib, "ours_xla_plan_mib": xla_mib,
            "compile_s": compile_s, "max_abs_diff": diff, "params": count_params(ours)}


def _fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="face3d_eval.bench_stylegan2",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, nargs="+", default=[2])
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--fused", action="store_true",
                        help="ours with per-sample grouped convs (rosinality's fused path) "
                             "instead of activation modulation")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds per case after which no new round starts (>= 3 rounds)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="also write results as JSON")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError as exc:
        print(f"bench_stylegan2 needs torch (pip install 'face3d-jax[torch]'): {exc}",
              file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    env = {"python": platform.python_version(), "jax": jax.__version__,
           "jax_backend": jax.default_backend(), "jax_device": str(jax.devices()[0]),
           "torch": torch.__version__, "torch_device": str(device),
           "torch_threads": torch.get_num_threads()}
    print(f"StyleGAN2 generator forward (z -> image, const noise), ours (jax.jit) vs the "
          f"PyTorch twin; {env}")
    head = (f"{'res':>5} {'batch':>5} {'dtype':>8} {'ours ms':>9} {'torch ms':>9} "
            f"{'torch/ours':>10} {'ours img/s':>10} {'torch img/s':>11} {'ours MiB':>8} "
            f"{'torch MiB':>9} {'XLA MiB':>8} {'compile s':>9} {'max diff':>9}")
    print(head)
    rows = []
    for res in args.resolution:
        for batch in args.batch:
            r = run_case(torch, res, batch, args.dtype, args.fused, device, args)
            rows.append(r)
            print(f"{res:>5} {batch:>5} {args.dtype:>8} {r['ours_ms']:>9.1f} "
                  f"{r['torch_ms']:>9.1f} {r['torch_over_ours']:>10.2f} "
                  f"{r['ours_img_per_s']:>10.2f} {r['torch_img_per_s']:>11.2f} "
                  f"{_fmt(r['ours_mem_mib'], '>8.1f')} {_fmt(r['torch_mem_mib'], '>9.1f')} "
                  f"{_fmt(r['ours_xla_plan_mib'], '>8.1f')} {r['compile_s']:>9.1f} "
                  f"{r['max_abs_diff']:>9.2e}", flush=True)
    print("\ntorch/ours > 1: ours is faster. Medians per call, compile excluded.")
    if args.out is not None:
        args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
