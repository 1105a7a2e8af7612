"""ArcFace iresnet speed: this project's jitted JAX/Flax network vs its PyTorch twin.

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
compiled ahead of the timing (compile time recorded, not counted) and timed
with block_until_ready. The two sides are timed in alternation, one call each
per round, so both see the same machine load; each reports the median over
`repeats` rounds (fewer once `budget` seconds have passed) after `warmup`
rounds. The twin runs on the CPU (the network's peer as published).

    face3d bench iresnet [--size smallest|default]    # default: iresnet100, B = 2 and 8
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from face3d_eval.harness import Options, Row, torch_module
from face3d_eval.timing import interleaved_medians, peak_rss_mib
from face3d_jax.convert.arcface import convert_arcface
from face3d_jax.nets.arcface import count_params

MODES = ("forward", "fwd+bwd")

SIZES = {
    "smallest": {"arch": "iresnet18", "batches": (2,), "repeats": 2, "warmup": 1,
                 "budget": 2.0},
    "default": {"arch": "iresnet100", "batches": (2, 8), "repeats": 10, "warmup": 2,
                "budget": 30.0},
    # gpu_check's rows: ours on the GPU, the twin on the CPU (as this benchmark runs it).
    "gpu": {"arch": "iresnet100", "batches": (8, 32), "repeats": 5, "warmup": 1,
            "budget": 10.0},
}


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


def check_same_embedding(torch, twin, model, images: np.ndarray) -> float:
    """max |ours - twin| / max |twin| of the embeddings of (B, 112, 112, 3) images."""
    twin.eval()
    with torch.no_grad():
        ref = twin(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
    ours = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(images)))
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def run(options: Options, arch, batches, repeats, warmup, budget, modes=MODES) -> list[Row]:
    """One row per (batch, mode): ms per call of a batch, ours vs the PyTorch twin."""
    torch = torch_module(options)  # the twin gives both sides their weights
    from face3d_eval.torch_reference.iresnet import iresnet, randomize_

    torch.manual_seed(0)
    twin = randomize_(iresnet(arch), seed=0)
    start = time.perf_counter()
    model = convert_arcface(twin.state_dict())
    rng = np.random.default_rng(0)
    rel = check_same_embedding(torch, twin, model,
                               rng.uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32))
    if not np.isfinite(rel):
        raise RuntimeError("iresnet: the embeddings are not finite: timings would be meaningless")
    common = {"arch": arch, "params": count_params(model), "max_rel_diff": rel,
              "convert_check_s": time.perf_counter() - start}
    rows = []
    for batch in batches:
        images = rng.uniform(-1, 1, (batch, 112, 112, 3)).astype(np.float32)
        for mode in modes:
            case = f"{arch} B={batch} {mode}"
            if mode == "fwd+bwd" and batch < 2:
                rows.append(Row("iresnet", case, None, "PyTorch twin (cpu)",
                                peer_note="skipped: training-mode BatchNorm1d needs B >= 2"))
                continue
            ours_run, compile_s = ours_runner(model, images, mode)
            torch_run = torch_runner(torch, twin, images, mode)
            ours_s, torch_s = interleaved_medians([ours_run, torch_run], repeats, warmup, budget)
            rows.append(Row("iresnet", case, ours_s * 1e3, "PyTorch twin (cpu)", torch_s * 1e3,
                            peak_mib=peak_rss_mib(), memory="process peak RSS",
                            details={**common, "batch": batch, "mode": mode,
                                     "ours_compile_s": compile_s,
                                     "ours_images_per_s": batch / ours_s,
                                     "torch_images_per_s": batch / torch_s}))
    return rows
