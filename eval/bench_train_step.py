"""Time and memory of one training step per phase, on the default device.

    face3d bench train-step [--size smallest|default]

For each phase (pretrain, shape, albedo) of the config's step: the
ahead-of-time compile time, XLA's memory plan of the compiled step
(arguments, outputs, temporaries) and the mean time of `steps` steps after a
warm-up step, on a batch of random inputs of the config's sizes (the step's
cost does not depend on the pixel values). Size "default" is the `tiny`
config (2-core CPU), "gpu" the same with more steps, "paper" the paper's
config (an accelerator), "smallest" one phase of `tiny` shrunk as the
trainer's tests shrink it. The batch is sharded over all devices. There is
no peer: the paper's training code was not released, and the GAN part alone is
compared with its PyTorch twin by `face3d bench gan-step`.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from face3d_eval.harness import Options, Row
from face3d_train.configs import apply_overrides, load
from face3d_train.data import to_global
from face3d_train.loop import Trainer, load_model, make_mesh
from face3d_train.state import PHASES

NO_PEER = "the paper's training code is not released (GAN part: gan-step)"

# `tiny` shrunk until each phase compiles in seconds (as tests/train_fixtures.py).
_MICRO = [
    "data.identities_per_batch=2", "data.images_per_identity=4",
    "data.generate.crop_size=32", "data.generate.albedo_size=16",
    "model.encoder.backbone='iresnet18'", "model.encoder.widths=(8, 8, 16, 16)",
    "model.encoder.input_size=32", "model.albedo.resolution=16", "model.albedo.channel_max=16",
    "model.albedo.n_mlp=1", "model.displacement.resolution=8",
    "model.displacement.channel_max=8", "model.displacement.n_mlp=1",
    "model.identity.chip_size=72", "model.identity.world_head.identities=0",
    "model.render_size=32",
]
SIZES = {
    # One phase only: each phase's step took 1-2 minutes to compile even at
    # these sizes on a busy 2-core CPU; the trainer's own tests compile all three.
    "smallest": {"config": "tiny", "overrides": tuple(_MICRO), "steps": 1,
                 "phases": ("shape",)},
    "default": {"config": "tiny", "overrides": (), "steps": 3},
    # gpu_check's rows: `tiny` (the paper config's compile could take the
    # check's whole budget), more steps.
    "gpu": {"config": "tiny", "overrides": (), "steps": 10},
    "paper": {"config": "paper", "overrides": (), "steps": 3},
}


def random_batch(config, rng: np.random.Generator) -> dict:
    """Random inputs of the config's sizes: crop (B, C, C, 3), landmarks (B, 68, 2),
    albedo (B, A, A, 3), w (B, 18, 512), all float32."""
    g = config.data.generate
    b = int(config.data.identities_per_batch) * int(config.data.images_per_identity)
    c, a = int(g.crop_size), int(g.albedo_size)
    return {"crop": rng.uniform(size=(b, c, c, 3)).astype(np.float32),
                "landmarks": (rng.uniform(0.3, 0.7, (b, 68, 2)) * c).astype(np.float32),
                "albedo": rng.uniform(size=(b, a, a, 3)).astype(np.float32),
                "w": rng.normal(size=(b, 18, 512)).astype(np.float32)}



def run(options: Options, config, overrides, steps, phases=PHASES) -> list[Row]:
    """One row per phase: mean ms per step of the compiled phase step."""
    del options  # no peer, no torch
    config = apply_overrides(load(config), list(overrides))
    config.selector = "phase"
    trainer = Trainer(config, load_model(config), make_mesh())
    batch = to_global(random_batch(config, np.random.default_rng(0)), trainer.data_sharding)
    state = trainer.init_state()
    size = (f"{config.name} batch {batch['crop'].shape[0]}, albedo "
            f"{config.model.albedo.resolution}^2, crop {config.data.generate.crop_size}^2")
    rows = []
    for name in phases:
        start = time.perf_counter()
        exe = trainer.compiled(state, batch, PHASES.index(name))
        compile_s = time.perf_counter() - start
        mem = exe.memory_analysis()
        state, m = exe(state, batch, trainer.frozen)  # warm-up
        jax.block_until_ready(m)
        start = time.perf_counter()
        for _ in range(steps):
            state, m = exe(state, batch, trainer.frozen)
        jax.block_until_ready(m)
        ms = (time.perf_counter() - start) / steps * 1000
        plan = (mem.argument_size_in_bytes + mem.temp_size_in_bytes
                + mem.output_size_in_bytes) / 2**20
        rows.append(Row("train-step", f"{name} ({size})", ms, "none", peer_note=NO_PEER,
                        peak_mib=plan, memory="XLA plan",
                        details={"phase": name, "compile_s": compile_s, "steps": steps,
                                 "finite": bool(m["finite"]), "devices": jax.device_count(),
                                 "argument_mib": mem.argument_size_in_bytes / 2**20,
                                 "temp_mib": mem.temp_size_in_bytes / 2**20}))
    return rows
