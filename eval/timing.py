"""Timing shared by the benchmarks: both sides of a comparison are timed in
alternation, so that they see the same machine load."""

from __future__ import annotations

import resource
import statistics
import sys
import time


def interleaved_medians(fns, repeats: int, warmup: int, budget_s: float) -> list[float]:
    """Median seconds per call of each of `fns`, timed in alternation (one call
    of each per round); stops after `repeats` rounds, or once `budget_s` has
    passed and 3 rounds are done."""
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
