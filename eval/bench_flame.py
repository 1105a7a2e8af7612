"""FLAME decoding speed: this project's jitted JAX decoder vs smplx (PyTorch).

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

Ours is compiled ahead of the timing (compile time recorded, not counted) and
timed with block_until_ready. The two sides are timed in alternation, one call
each per round, so that both see the same machine load; each reports the
median over `repeats` rounds (fewer once `budget` seconds have passed) after
`warmup` rounds. Without smplx, ours is timed alone and the rows say so.

    face3d bench flame [--size smallest|default]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from face3d_eval.harness import Options, PeerUnavailable, Row, import_peer, torch_module
from face3d_eval.timing import interleaved_medians, peak_rss_mib, xla_plan_mib
from face3d_jax.flame.forward import flame_forward
from face3d_jax.flame.procedural import default_model
from face3d_jax.flame.writer import write_flame_files

NUM_SHAPE, NUM_EXPR = 300, 100
PARAM_NAMES = ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "eye_pose",
               "translation")
MODES = ("forward", "fwd+bwd")

# Batch sizes and timing per size; "smallest" is what the tests run.
SIZES = {
    "smallest": {"batches": (1,), "repeats": 2, "warmup": 1, "budget": 2.0},
    "default": {"batches": (1, 64, 1024), "repeats": 20, "warmup": 3, "budget": 20.0},
    # gpu_check's rows (ours on the GPU, smplx on the CPU as published), in under a minute.
    "gpu": {"batches": (1, 1024), "repeats": 10, "warmup": 2, "budget": 5.0},
}


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
    """(a function running one call, compile seconds, XLA temporaries MiB or None).

    p: random_params(B); mode: one of MODES."""
    p = {k: jnp.asarray(v) for k, v in p.items()}
    start = time.perf_counter()
    compiled = jax.jit(_OURS_FNS[mode]).lower(model, p).compile()
    compile_s = time.perf_counter() - start
    temp_mib = xla_plan_mib(compiled, parts=("temp",))
    return (lambda: jax.block_until_ready(compiled(model, p))), compile_s, temp_mib


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




def smplx_layer(torch, smplx, model):
    """smplx's FLAME layer reading our procedural model from FLAME's own files."""
    with tempfile.TemporaryDirectory() as tmp:
        write_flame_files(model, Path(tmp) / "flame")
        layer = smplx.create(tmp, model_type="flame", num_betas=NUM_SHAPE,
                             num_expression_coeffs=NUM_EXPR, use_face_contour=True,
                             dtype=torch.float32)
    return layer.eval()


def run(options: Options, batches, repeats, warmup, budget, modes=MODES) -> list[Row]:
    """One row per (batch, mode): ms per call of a batch, ours vs smplx."""
    model = default_model()
    try:
        torch = torch_module(options)
        smplx = import_peer("smplx", "pip install 'face3d-jax[torch]'")
        layer, note = smplx_layer(torch, smplx, model), None
    except PeerUnavailable as exc:
        layer, note = None, str(exc)
    model = jax.tree.map(jnp.asarray, model)
    rows = []
    for batch in batches:
        p = random_params(batch)
        for mode in modes:
            ours_run, compile_s, temp_mib = ours_runner(model, p, mode)
            fns = [ours_run] + ([] if layer is None else [smplx_runner(torch, layer, p, mode)])
            times = interleaved_medians(fns, repeats, warmup, budget)
            ours_ms = times[0] * 1e3
            peer_ms = times[1] * 1e3 if layer is not None else None
            rows.append(Row(
                "flame", f"B={batch} {mode}", ours_ms, "smplx", peer_ms, note,
                peak_mib=peak_rss_mib(), memory="process peak RSS",
                details={"batch": batch, "mode": mode, "ours_compile_s": compile_s,
                         "ours_xla_temp_mib": temp_mib,
                         "ours_meshes_per_s": batch / times[0],
                         "vertices": int(model.num_vertices)}))
    return rows
