"""Timing and memory measurements shared by the benchmarks.

Both sides of a comparison are timed in alternation, so that they see the same
machine load. Memory has no single figure that every backend reports, so each
helper returns None where its figure cannot be measured and the caller labels
which one it used.
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time


def interleaved_medians(fns, repeats: int, warmup: int, budget_s: float) -> list[float]:
    """Median seconds per call of each of `fns`, timed in alternation (one call
    of each per round); stops after `repeats` rounds, or once `budget_s` has
    passed and 3 rounds are done. Each fn must block until its result is ready
    (jax.block_until_ready, torch.cuda.synchronize)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    start_all = time.perf_counter()
    for round_ in range(repeats):
        for fn, acc in zip(fns, times):
            start = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - start)
        if round_ >= 2 and time.perf_counter() - start_all > budget_s:
            break
    return [statistics.median(acc) for acc in times]


def peak_rss_mib() -> float:
    """The process's peak resident memory so far, MiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0): the peak of what follows.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_peak_growth_mib(fn) -> float | None:
    """Peak resident-set growth (MiB) while fn() runs once, or None where
    unmeasurable (not Linux). Meaningful on a first call, whose working memory
    comes fresh from the OS; later calls reuse what the allocators kept."""
    gc.collect()
    if not _reset_peak_rss():
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    return None if before is None or peak is None else max(peak - before, 0) / 1024


def xla_plan_mib(compiled, parts=("temp", "argument", "output")) -> float | None:
    """XLA's buffer assignment of a compiled program (`jax.stages.Compiled`),
    MiB: the sum of the named parts (temp, argument, output), or None where
    the backend does not report it."""
    try:
        analysis = compiled.memory_analysis()
        return sum(getattr(analysis, f"{p}_size_in_bytes") for p in parts) / 2**20
    except Exception:  # noqa: BLE001 - not every backend/version reports it
        return None


def device_peak_mib() -> float | None:
    """Peak bytes in use on JAX's first device over the process's life, MiB;
    None on the CPU (no allocator statistics). JAX cannot reset this peak."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def ours_memory(compiled) -> tuple[float | None, str]:
    """(MiB, what it measures) for our side: the device's peak on an
    accelerator, else XLA's plan of `compiled` (temporaries + arguments +
    outputs, exact for that program)."""
    peak = device_peak_mib()
    if peak is not None:
        return peak, "device peak"
    plan = xla_plan_mib(compiled)
    return plan, ("XLA plan" if plan is not None else "n/a")
