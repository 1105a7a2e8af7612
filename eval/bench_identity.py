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
Ours is compiled ahead of the timing (compile time recorded, not counted) and
timed with block_until_ready; the two sides run in alternation, one call each
per round, so both see the same load; medians are reported. XLA uses all cores
this process may use; dlib's CPU path threads itself. Restrict both with
taskset for an equal-cores comparison. Without dlib (its Python module),
ours is timed alone and the rows say so.

    face3d bench identity [--size smallest|default]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from face3d_eval.harness import Options, PeerUnavailable, Row, import_peer
from face3d_eval.timing import interleaved_medians, ours_memory
from face3d_jax.convert.dlib_dnn import face_recognition_models_file
from face3d_jax.nets.dlib_resnet import MODEL_FILE, load_dlib_resnet

MODES = ("forward", "fwd+bwd")

SIZES = {
    "smallest": {"batches": (1,), "repeats": 2, "warmup": 1, "budget": 2.0},
    "default": {"batches": (1, 16, 64), "repeats": 10, "warmup": 2, "budget": 20.0},
    # gpu_check's rows: ours on the GPU, dlib's CPU build.
    "gpu": {"batches": (16, 64), "repeats": 5, "warmup": 1, "budget": 10.0},
}


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
    """(a function running one call, compile seconds, the compiled program);
    chips: (B, 150, 150, 3) uint8."""
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
    return (lambda: jax.block_until_ready(compiled(state, x))), compile_s, compiled


def run(options: Options, batches, repeats, warmup, budget, modes=MODES) -> list[Row]:
    """One row per (batch, mode): ms per call of a batch, ours vs dlib's forward."""
    del options  # dlib threads itself
    path = face_recognition_models_file(MODEL_FILE)
    model = load_dlib_resnet(path)
    try:
        dlib = import_peer("dlib", "pip install dlib-bin")
        rec, note = dlib.face_recognition_model_v1(str(path)), None
        peer = f"dlib {dlib.__version__} forward"
    except PeerUnavailable as exc:
        rec, note, peer = None, str(exc), "dlib"
    rows = []
    for batch in batches:
        chips = astronaut_chips(batch)
        chip_list = list(chips)

        def dlib_run(chip_list=chip_list):
            rec.compute_face_descriptor(chip_list)

        for mode in modes:
            ours_run, compile_s, compiled = ours_runner(model, chips, mode)
            fns = [ours_run] + ([] if rec is None else [dlib_run])
            times = interleaved_medians(fns, repeats, warmup, budget)
            peak, label = ours_memory(compiled)
            rows.append(Row("identity", f"dlib ResNet 150^2 B={batch} {mode}", times[0] * 1e3,
                            peer, times[1] * 1e3 if rec is not None else None, note,
                            peak_mib=peak, memory=label,
                            details={"batch": batch, "mode": mode, "ours_compile_s": compile_s,
                                     "ours_images_per_s": batch / times[0]}))
    return rows
