"""A persistent XLA compilation cache that is safe to leave on.

JAX can keep compiled programs on disk (`jax_compilation_cache_dir`) so that a
second process skips XLA's compile: a full render takes 11-38 s to compile on
a 2-core CPU, the training step longer. JAX's cache key holds the program, the
compile options, the jax/jaxlib versions and the platform and device kind, but
on the CPU the device kind is just "cpu": an executable compiled for one
processor's instruction set (AVX-512 on one machine) would be loaded on
another that lacks it, if a cache folder were shared or copied. So the cache
lives in a folder per machine: `<root>/<machine key>`, the key hashing the
processor's model and feature flags with the jax and jaxlib versions.

    from face3d_jax import compile_cache
    compile_cache.enable()            # before the first jit compiles

Root: the argument, else `$FACE3D_COMPILE_CACHE`, else
`$XDG_CACHE_HOME/face3d-jax/xla` (`~/.cache/face3d-jax/xla`);
FACE3D_COMPILE_CACHE=off turns it off. A cache the user set up through JAX's
own `JAX_COMPILATION_CACHE_DIR` is left as it is. Programs that compile in
under `min_compile_secs` are not stored (JAX's default threshold, 1 s), and the
folder is kept under `max_bytes` by JAX's least-recently-used eviction.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import jax

ENV = "FACE3D_COMPILE_CACHE"
OFF = ("off", "none", "0", "false")


def default_root() -> Path:
    """`$FACE3D_COMPILE_CACHE` if set, else `$XDG_CACHE_HOME/face3d-jax/xla`."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "face3d-jax" / "xla"


def _cpu_description() -> str:
    """The processor's model name and instruction-set flags (Linux's cpuinfo),
    or what `platform` knows elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        # The first processor's entries; every core of one machine has the same.
        if key in ("model name", "flags", "Features", "CPU implementer", "CPU part") \
                and key not in fields:
            fields[key] = value.strip()
    return f"{platform.machine()} " + " | ".join(f"{k}={v}" for k, v in sorted(fields.items()))


def machine_key() -> str:
    """16 hex digits naming this machine's processor and the jax/jaxlib versions."""
    import jaxlib

    text = f"{_cpu_description()} | jax {jax.__version__} | jaxlib {jaxlib.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def enable(root: str | os.PathLike | None = None, *, min_compile_secs: float = 1.0,
           max_bytes: int = 4 << 30) -> Path | None:
    """Turns on JAX's persistent compilation cache in this machine's folder.

    Args:
      root: the cache root (default `default_root()`); "off" turns the cache off.
      min_compile_secs: programs compiling faster are not stored.
      max_bytes: the folder's size bound (least recently used entries go first).
    Returns:
      The folder in use, or None when off or when JAX's own cache setting
      (`JAX_COMPILATION_CACHE_DIR` / jax.config) was already made.
    """
    if jax.config.jax_compilation_cache_dir:
        return None  # the user's own choice
    if root is None and os.environ.get(ENV, "").strip().lower() in OFF:
        return None
    if root is not None and str(root).strip().lower() in OFF:
        return None
    folder = Path(root).expanduser() if root is not None else default_root()
    folder = folder / machine_key()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile as before rather than fail the command
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    return folder
