"""Test conventions shared by every test file.

- The session runs with 8 simulated CPU devices (XLA_FLAGS is set here, before
  anything imports jax), so sharded code is testable on a 2-core machine;
  single-device tests simply use device 0. Hung collectives fail fast.
- Markers: `gpu` (skipped unless a CUDA device is present), `multidevice`
  (needs the 8 simulated devices). CI runs every other test.
- `default_flame`: the procedural default model, built once per session.
- XLA's persistent compilation cache is on (face3d_jax/compile_cache.py).
"""

from __future__ import annotations

import os

_FLAGS = ("--xla_force_host_platform_device_count=8 "
          "--xla_cpu_collective_call_terminate_timeout_seconds=60 "
          "--xla_cpu_collective_call_warn_stuck_timeout_seconds=20")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAGS).strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from face3d_jax import compile_cache  # noqa: E402

# The persistent compilation cache (one folder per processor; FACE3D_COMPILE_CACHE
# moves it or turns it off): xdist's workers and later runs load what another
# process compiled. Set before the first compile.
compile_cache.enable()


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def eight_devices():
    """The 8 simulated CPU devices; skips if the backend started with fewer."""
    devices = jax.devices("cpu")
    if len(devices) < 8:
        pytest.skip(f"needs 8 devices, found {len(devices)} (XLA_FLAGS set too late?)")
    return devices[:8]


@pytest.fixture(scope="session")
def cpu_mesh(eight_devices):
    """A 1-D `jax.sharding.Mesh` named 'data' over the 8 simulated devices."""
    return jax.sharding.Mesh(np.array(eight_devices), ("data",))


@pytest.fixture(scope="session")
def default_flame():
    """The procedural default FLAME-format model (numpy arrays), built once."""
    from face3d_jax.flame.procedural import default_model

    return default_model()
