"""Time and memory of one training step per phase, on the default device.

    python -m face3d_eval.bench_train_step --config tiny
    python -m face3d_eval.bench_train_step --config paper --batch 8      # on a GPU

For each phase (pretrain, shape, albedo) of the config's step: the
ahead-of-time compile time, XLA's memory plan of the compiled step
(arguments, outputs, temporaries) and the mean time of `--steps` steps after
a warm-up, on a batch of random inputs of the config's sizes (the step's cost
does not depend on the pixel values). There is no peer: the paper's training
code was not released, and the GAN part alone is compared with its PyTorch
twin by bench_gan_step.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import face3d_train  # noqa: F401
except ImportError:  # a source checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from face3d_train.configs import apply_overrides, load  # noqa: E402
from face3d_train.data import to_global  # noqa: E402
from face3d_train.loop import Trainer, load_model, make_mesh  # noqa: E402
from face3d_train.state import PHASES  # noqa: E402


def random_batch(config, rng: np.random.Generator) -> dict:
    g = config.data.generate
    b = int(config.data.identities_per_batch) * int(config.data.images_per_identity)
    c, a = int(g.crop_size), int(g.albedo_size)
    return dict(crop=rng.uniform(size=(b, c, c, 3)).astype(np.float32),
                landmarks=(rng.uniform(0.3, 0.7, (b, 68, 2)) * c).astype(np.float32),
                albedo=rng.uniform(size=(b, a, a, 3)).astype(np.float32),
                w=rng.normal(size=(b, 18, 512)).astype(np.float32))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    args = parser.parse_args(argv)
    config = apply_overrides(load(args.config), args.set)
    config.selector = "phase"
    trainer = Trainer(config, load_model(config), make_mesh())
    batch = to_global(random_batch(config, np.random.default_rng(0)), trainer.data_sharding)
    state = trainer.init_state()
    print(f"{config.name} on {jax.devices()[0].device_kind} x{jax.device_count()}, batch "
          f"{batch['crop'].shape[0]}, albedo {config.model.albedo.resolution}^2, crop "
          f"{config.data.generate.crop_size}^2")
    sched = config.schedule
    first = {"pretrain": 0, "shape": int(sched.albedo_pretrain_steps),
             "albedo": int(sched.albedo_pretrain_steps) + int(sched.shape_steps)}
    for name in args.phases:
        step = first[name]
        start = time.perf_counter()
        exe = trainer.compiled(state, batch, PHASES.index(name))
        compile_s = time.perf_counter() - start
        mem = exe.memory_analysis()
        state, m = exe(state, batch, trainer.frozen)  # warm-up
        jax.block_until_ready(m)
        start = time.perf_counter()
        for _ in range(args.steps):
            state, m = exe(state, batch, trainer.frozen)
        jax.block_until_ready(m)
        ms = (time.perf_counter() - start) / args.steps * 1000
        mib = lambda x: x / 2**20
        print(f"{name:8s} step {step}: compile {compile_s:6.1f} s, {ms:8.1f} ms/step, memory "
              f"arguments {mib(mem.argument_size_in_bytes):7.0f} MiB, temporaries "
              f"{mib(mem.temp_size_in_bytes):7.0f} MiB, finite {bool(m['finite'])}")


if __name__ == "__main__":
    main()
