"""The persistent compilation cache: one folder per processor, off on request,
and a second process loads what the first compiled (same result)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from face3d_jax import compile_cache

# A program that takes well over the threshold to compile is not needed: the
# threshold is passed as 0, so any compiled program is stored.
_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from face3d_jax import compile_cache
folder = compile_cache.enable(sys.argv[1], min_compile_secs=0.0)
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)
x = jnp.arange(64.0).reshape(8, 8) / 64
out = f(x)
print(json.dumps({"folder": None if folder is None else str(folder),
                  "sum": float(out.sum()),
                  "files": sorted(p.name for p in folder.iterdir()) if folder else []}))
"""


def _run(root, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR",
                                                            compile_cache.ENV)}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(root)], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_machine_key_is_stable_and_names_the_versions():
    key = compile_cache.machine_key()
    assert key == compile_cache.machine_key() and len(key) == 16
    assert all(c in "0123456789abcdef" for c in key)


def test_a_second_process_loads_the_first_ones_program(tmp_path):
    first = _run(tmp_path)
    assert first["folder"] == str(tmp_path / compile_cache.machine_key())
    assert first["files"], "the first process stored nothing"
    second = _run(tmp_path)
    assert second["sum"] == first["sum"]
    # Loading adds no entry: the same key was found.
    assert second["files"] == first["files"]


def test_off_and_the_users_own_jax_setting_win(tmp_path):
    assert _run("off")["folder"] is None
    mine = tmp_path / "mine"
    out = _run(tmp_path / "ours", {"JAX_COMPILATION_CACHE_DIR": str(mine)})
    assert out["folder"] is None
    assert not (tmp_path / "ours").exists()
