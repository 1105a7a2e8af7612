"""A `face3d train` run killed with SIGKILL mid-way resumes from its last
checkpoint and follows the uninterrupted run's loss curve (issue 7's
checkpoint requirement). Its own module, so pytest-xdist can run it beside
test_train.py's compiles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import write_dataset

from face3d_train.metrics import read_metrics


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train_data"))


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
