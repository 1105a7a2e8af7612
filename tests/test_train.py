"""The trainer (train/): the phase selector, the frozen side, non-finite steps,
data parallelism on 8 simulated devices, and a SIGKILLed run that resumes.

The micro config (train_fixtures.py) keeps every network of the paper's
pipeline but at sizes that compile in seconds; the dataset has the format of
`face3d data generate` with random content (the learning itself is measured
by `face3d train --config tiny`, see the README).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import micro_config, write_dataset

from face3d_train.data import Batches, to_global
from face3d_train.loop import Trainer, load_model, make_mesh
from face3d_train.metrics import read_metrics


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="module")
def trainer(dataset):
    config = micro_config(dataset)
    config.selector = "switch"
    return Trainer(config, load_model(config), make_mesh(jax.devices()[:1]))


def _batches(trainer, dataset, n):
    it = Batches(dataset, trainer.config, seed=0)
    return [next(it) for _ in range(n)]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _run(trainer, host_state, batch, step):
    # The step donates its state: give it fresh buffers (a typed PRNG key comes
    # back from device_get as the same device array).
    state = jax.tree.map(lambda x: x.copy(), jax.device_put(host_state, trainer.replicated))
    state = state.replace(step=jnp.int32(step))
    return trainer.compiled(state, batch)(state, batch, trainer.frozen)


def test_schedule(trainer):
    phases = [int(trainer.setup.phase_of(s)) for s in range(10)]
    # 2 pre-training steps, then 2 shape and 2 albedo steps, repeated.
    assert phases == [0, 0, 1, 1, 2, 2, 1, 1, 2, 2]


def test_each_phase_updates_one_side_and_leaves_the_other_bit_identical(trainer, dataset):
    batch = to_global(_batches(trainer, dataset, 1)[0], trainer.data_sharding)
    host = jax.device_get(trainer.init_state())
    for step, phase, trained, frozen in ((0, 0, "albedo", "shape"), (2, 1, "shape", "albedo"),
                                         (4, 2, "albedo", "shape")):
        new, metrics = _run(trainer, host, batch, step)
        assert int(metrics["phase"]) == phase and float(metrics["finite"]) == 1.0
        assert _same(getattr(new, frozen), getattr(host, frozen)), (step, frozen)
        assert _same(new.buffers, host.buffers)
        assert not _same(getattr(new, trained), getattr(host, trained)), (step, trained)
        assert int(new.step) == step + 1
    # The GAN phases count their own steps (the lazy regularisers' clock).
    assert int(new.albedo.gan_step) == 1


def test_a_non_finite_step_is_skipped(trainer, dataset):
    host_batch = _batches(trainer, dataset, 1)[0]
    host_batch["crop"][0, 0, 0, 0] = np.nan
    batch = to_global(host_batch, trainer.data_sharding)
    host = jax.device_get(trainer.init_state())
    new, metrics = _run(trainer, host, batch, 2)  # a shape step
    assert float(metrics["finite"]) == 0.0
    assert _same(new.shape, host.shape) and _same(new.albedo, host.albedo)
    assert int(new.bad_steps) == 1 and int(new.step) == 3


@pytest.mark.multidevice
def test_one_and_eight_devices_reach_the_same_parameters(trainer, dataset):
    """The 1-device run uses the module's switch step; the 8-device run the
    same config with the selector on the host, so the two selectors are
    compared too."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    config = micro_config(dataset)
    config.selector = "phase"
    eight = Trainer(config, trainer.model, make_mesh(jax.devices()[:8]))
    results = []
    for t in (trainer, eight):
        state = t.init_state()
        for step, host in enumerate(_batches(t, dataset, 6)):  # every phase twice
            state, _ = t.step(state, to_global(host, t.data_sharding), step)
        results.append(jax.device_get(state))
    one, eight = results
    for a, b in zip(_leaves(one.shape.params) + _leaves(one.albedo.g) + _leaves(one.albedo.d),
                    _leaves(eight.shape.params) + _leaves(eight.albedo.g)
                    + _leaves(eight.albedo.d), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    assert int(one.step) == int(eight.step) == 6


def _config_file(tmp_path: Path, dataset, total: int) -> Path:
    path = tmp_path / "micro.py"
    path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from train_fixtures import micro_config\n\n"
        "def get_config():\n"
        f"    c = micro_config({str(dataset)!r})\n"
        # Shape steps only and no evaluation: what is tested is the resumption,
        # and one compiled phase keeps the three processes short.
        f"    c.schedule.update(dict(total_steps={total}, albedo_pretrain_steps=0, "
        f"shape_steps={total}, albedo_steps=0))\n"
        "    c.selector = 'phase'\n"
        "    c.eval.identities = 0\n"
        "    return c\n")
    return path


def _train_cmd(config: Path, workdir: Path):
    return [sys.executable, "-m", "face3d_jax.cli", "train", "--config", str(config),
            "--workdir", str(workdir)]


def _losses(workdir: Path) -> dict[int, dict]:
    """step -> the train/* scalars, the last record of each step winning (a
    resumed run rewrites the steps after its checkpoint)."""
    out = {}
    for rec in read_metrics(workdir):
        train = {k: v for k, v in rec.items() if k.startswith("train/")}
        if train:
            out[rec["step"]] = train
    return out


def test_a_killed_run_resumes_and_follows_the_same_curve(tmp_path, dataset):
    total = 10
    config = _config_file(tmp_path, dataset, total)
    # One device in the three processes (resumption does not depend on the
    # count, tested above): on 2 cores it runs the micro step about twice as
    # fast as 8 simulated ones. The persistent cache compiles the step once.
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                     if "xla_force_host_platform_device_count" not in f)
    env = dict(os.environ, XLA_FLAGS=flags, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_cmd(config, whole), env=env, check=True, capture_output=True)

    proc = subprocess.Popen(_train_cmd(config, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # SIGKILL once the step-4 checkpoint is final and before the run ends.
    deadline = time.monotonic() + 600
    while not (killed / "checkpoints" / "4").is_dir() or not any(
            (killed / "checkpoints" / "4").glob("_CHECKPOINT_METADATA")):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "done.json").exists()

    subprocess.run(_train_cmd(config, killed), env=env, check=True, capture_output=True)
    a, b = _losses(whole), _losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, total + 1))
    for step in a:
        assert a[step].keys() == b[step].keys()
        for k in a[step]:
            np.testing.assert_allclose(b[step][k], a[step][k], rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {step} {k}")
    assert json.loads((killed / "done.json").read_text())["step"] == total
