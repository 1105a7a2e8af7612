"""Identity-network speed: our Flax port of dlib's face-recognition ResNet vs dlib itself, CPU.

Both run the same 150x150 aligned chips (dlib.get_face_chip of skimage's
astronaut photo at three framings, tiled to the batch size, plus +-2 of pixel
noise so no two are equal) through the same weights
(dlib_face_recognition_resnet_model_v1.dat from face-recognition-models), in the
same process on the same CPU.

Modes:
  forward   128-d descriptors. dlib: face_recognition_model_v1.compute_face_descriptor
            on the list of chips (dlib batches them 16 at a time).
  fwd+bwd   ours: the value and gradient of an identity loss (1 - cosine to a
            fixed descriptor) w.r.t. the input images, what a training step needs.
            dlib's Python API has no backward pass, so its forward time is the
            peer here too; the ratio says how many dlib forwards one of our
            forward+backward costs.
Ours is compiled ahead of the timing (compile time printed, not counted) and
timed with block_until_ready; the two sides run in alternation, one call each
per round, so both see the same load; medians are reported. XLA uses all cores
this process may use; dlib's CPU path threads itself. Restrict both with
taskset for an equal-cores comparison.

    python -m face3d_eval.bench_identity --batches 1 16
    python eval/bench_identity.py --batches 1 8 --out results.json
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
except ImportError:  # run as `python eval/bench_identity.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from face3d_eval.timing import interleaved_medians  # noqa: E402
from face3d_jax.convert.dlib_dnn import face_recognition_models_file  # noqa: E402
from face3d_jax.nets.dlib_resnet import MODEL_FILE, load_dlib_resnet  # noqa: E402

MODES = ("forward", "fwd+bwd")


def astronaut_chips(batch: int, seed: int = 0) -> np.ndarray:
    """(batch, 150, 150, 3) uint8 aligned chips of a real face."""
    from skimage import data, transform

    from face3d_jax.faces.detect import FaceTools, face_chip

    img = data.astronaut()
    views = [img, np.round(transform.rescale(img, 0.7, channel_axis=-1) * 255).astype(np.uint8),
             np.round(transform.resize(img[40:300, 100:360], (390, 390)) * 255).astype(np.uint8)]
    tools = FaceTools.load()
    chips = np.stack([face_chip(v, tools.detect(v)[0]) for v in views])
    rng = np.random.default_rng(seed)
    tiled = chips[np.arange(batch) % len(chips)].astype(np.int16)
    return np.clip(tiled + rng.integers(-2, 3, tiled.shape), 0, 255).astype(np.uint8)


def ours_runner(model, chips: np.ndarray, mode: str):
    """(a function running one call, compile seconds)."""
    graphdef, state = nnx.split(model)
    x = jnp.asarray(chips, jnp.float32)
    target = jnp.ones((128,), jnp.float32) / np.sqrt(128.0)

    def forward(s, images):
        return nnx.merge(graphdef, s)(images)

    def id_loss(images, s):
        d = forward(s, images)
        cos = d @ target / jnp.linalg.norm(d, axis=-1)
        return jnp.mean(1.0 - cos)

    def forward_backward(s, images):
        return jax.value_and_grad(id_loss)(images, s)

    fn = forward if mode == "forward" else forward_backward
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(state, x).compile()
    compile_s = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(state, x))), compile_s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="face3d_eval.bench_identity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64],
                        help="batch sizes (default: 1 16 64)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed rounds, one call of each side per round (default 10)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds per measurement after which no new round starts "
                             "(at least 3 rounds; default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (default 2)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", type=Path, default=None, help="also write results as JSON")
    args = parser.parse_args(argv)
    if min(args.batches) < 1 or args.repeats < 1 or args.warmup < 0 or args.budget <= 0:
        parser.error("batches, repeats and budget must be positive, warmup non-negative")
    try:
        import dlib
    except ImportError as exc:
        print(f"bench_identity needs dlib (pip install dlib-bin): {exc}", file=sys.stderr)
        return 2
    path = face_recognition_models_file(MODEL_FILE)
    rec = dlib.face_recognition_model_v1(str(path))
    model = load_dlib_resnet(path)
    env = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "cpus_usable": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                           else None),
           "python": platform.python_version(), "jax": jax.__version__,
           "jax_backend": jax.default_backend(), "dlib": dlib.__version__,
           "dlib_uses_blas": bool(getattr(dlib, "DLIB_USE_BLAS", False)),
           "dlib_uses_cuda": bool(getattr(dlib, "DLIB_USE_CUDA", False))}
    print("Identity network benchmark: face3d-jax DlibFaceResNet (jax.jit) vs dlib "
          "compute_face_descriptor, 150x150 chips, float32")
    print(f"cores: {env['cpu_count']} (usable {env['cpus_usable']}); jax {env['jax']} "
          f"({env['jax_backend']}); dlib {env['dlib']} (BLAS {env['dlib_uses_blas']}, "
          f"CUDA {env['dlib_uses_cuda']}); repeats {args.repeats}, budget {args.budget:g} s\n")
    print(f"{'batch':>6} {'mode':>8} {'ours ms':>10} {'dlib fwd ms':>12} {'dlib/ours':>10} "
          f"{'ours img/s':>11} {'dlib img/s':>11} {'compile s':>9}")
    rows = []
    for batch in args.batches:
        chips = astronaut_chips(batch)
        chip_list = list(chips)

        def dlib_run():
            rec.compute_face_descriptor(chip_list)

        for mode in args.modes:
            ours_run, compile_s = ours_runner(model, chips, mode)
            ours_s, dlib_s = interleaved_medians([ours_run, dlib_run], args.repeats,
                                                 args.warmup, args.budget)
            row = {"batch": batch, "mode": mode, "ours_ms": ours_s * 1e3, "dlib_ms": dlib_s * 1e3,
                   "ratio": dlib_s / ours_s, "ours_images_per_s": batch / ours_s,
                   "dlib_images_per_s": batch / dlib_s, "ours_compile_s": compile_s}
            rows.append(row)
            print(f"{batch:>6} {mode:>8} {row['ours_ms']:>10.2f} {row['dlib_ms']:>12.2f} "
                  f"{row['ratio']:>10.2f} {row['ours_images_per_s']:>11.1f} "
                  f"{row['dlib_images_per_s']:>11.1f} {compile_s:>9.2f}", flush=True)
    print("\ndlib/ours > 1: ours is faster. fwd+bwd compares our forward+backward with "
          "dlib's forward (dlib has no Python backward).")
    if args.out is not None:
        args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
