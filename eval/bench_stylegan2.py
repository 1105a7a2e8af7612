"""StyleGAN2 generator speed: our Flax NNX generator (jax.jit) vs the PyTorch twin
(eval/torch_reference/stylegan2.py, rosinality's architecture) in the same run.

Both sides hold the same weights (the twin's random initialisation, converted
with our rosinality converter) and compute the same function: z (B, 512) ->
mapping -> synthesis with the checkpoint's constant noise buffers
(`noise_mode="const"` / `randomize_noise=False`) -> image, config F channels
(channel multiplier 2). Ours is compiled ahead of the timing (compile time is
recorded, not counted); the twin runs under torch.inference_mode(). The two
sides are timed in alternation, one call each per round, so both see the same
machine load; each reports the median over `repeats` rounds (fewer once
`budget` seconds have passed) after `warmup` rounds. The largest difference
between the two images is recorded as a sanity check.

Memory: on a GPU, each side's allocator peak, weights included
(`memory_stats()["peak_bytes_in_use"]` over the process's life: run one
resolution and batch per process; `torch.cuda.max_memory_allocated`);
on the CPU, the growth of the process's peak resident set during each side's
first forward (Linux: VmHWM after resetting it through /proc/self/clear_refs;
later calls reuse memory the allocators kept), plus XLA's own plan (temp +
output bytes of the compiled program).

Size "bfloat16" (1024^2, batch 8): ours computes in bfloat16 with float32
parameters; the twin is cast to bfloat16 entirely (parameters too), as a
PyTorch user would. Meant for accelerators: on a 2-core CPU (2026-11-27) a
64^2 case did not finish in 500 s. `fused=True` (grouped per-sample convs)
ran 4x slower than the default on that CPU (XLA's grouped convs), so the
default modulates activations instead.

    face3d bench stylegan2 [--size smallest|default|bfloat16]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from face3d_eval.harness import Options, Row, torch_module
from face3d_eval.timing import (
    cpu_peak_growth_mib,
    device_peak_mib,
    interleaved_medians,
    xla_plan_mib,
)
from face3d_jax.convert.stylegan2 import generator_from_state_dict
from face3d_jax.convert.stylegan2_keys import infer_config
from face3d_jax.nets.stylegan2 import count_params

SIZES = {
    "smallest": {"resolutions": (8,), "batches": (1,), "repeats": 2, "warmup": 1,
                 "budget": 2.0},
    "default": {"resolutions": (64, 256), "batches": (2,), "repeats": 10, "warmup": 2,
                "budget": 20.0},
    # gpu_check's rows: the paper's 1024^2 and a mid size, float32.
    "gpu": {"resolutions": (256, 1024), "batches": (8,), "repeats": 5, "warmup": 2,
            "budget": 10.0},
    "bfloat16": {"resolutions": (1024,), "batches": (8,), "dtype": "bfloat16", "repeats": 10,
                     "warmup": 2, "budget": 20.0},
}


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


def run_case(torch, resolution, batch, dtype, fused, device, repeats, warmup, budget) -> dict:
    """Times one (resolution, batch): ms per call, memory and the images' max difference."""
    twin, ours = build_pair(torch, resolution, dtype, fused, device)
    z = np.random.default_rng(0).standard_normal((batch, 512)).astype(np.float32)
    graphdef, state = nnx.split(ours)

    def forward(state, z):
        return nnx.merge(graphdef, state)(z, noise_mode="const")

    zj = jnp.asarray(z)
    start = time.perf_counter()
    compiled = jax.jit(forward).lower(state, zj).compile()
    compile_s = time.perf_counter() - start
    xla_mib = xla_plan_mib(compiled, parts=("temp", "output"))
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
        ours_mib = device_peak_mib()
    else:
        # Each side's first forward: its working memory comes fresh from the OS then.
        ours_mib, twin_mib = cpu_peak_growth_mib(ours_run), cpu_peak_growth_mib(twin_run)
    diff = float(np.abs(np.asarray(ours_run(), np.float32)
                        - twin_run().float().permute(0, 2, 3, 1).cpu().numpy()).max())
    ours_s, twin_s = interleaved_medians([ours_run, twin_run], repeats, warmup, budget)
    return {"resolution": resolution, "batch": batch, "dtype": dtype, "fused_modconv": fused,
            "ours_ms": ours_s * 1e3, "torch_ms": twin_s * 1e3, "torch_over_ours": twin_s / ours_s,
            "ours_img_per_s": batch / ours_s, "torch_img_per_s": batch / twin_s,
            "ours_mem_mib": ours_mib, "torch_mem_mib": twin_mib, "ours_xla_plan_mib": xla_mib,
            "compile_s": compile_s, "max_abs_diff": diff, "params": count_params(ours)}


def run(options: Options, resolutions, batches, repeats, warmup, budget, dtype="float32",
        fused=False) -> list[Row]:
    """One row per (resolution, batch): ms per forward of a batch, ours vs the twin."""
    torch = torch_module(options)  # the twin gives both sides their weights
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    memory = "device peak" if on_gpu else "RSS growth, first call"
    rows = []
    for res in resolutions:
        for batch in batches:
            r = run_case(torch, res, batch, dtype, fused, device, repeats, warmup, budget)
            rows.append(Row("stylegan2", f"{res}^2 B={batch} {dtype} z->image", r["ours_ms"],
                            f"PyTorch twin ({device.type})", r["torch_ms"],
                            peak_mib=r["ours_mem_mib"], memory=memory, details=r))
    return rows
