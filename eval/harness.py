"""One harness for every benchmark: `face3d bench NAME... [--size S] [--json PATH]`.

Each benchmark module (bench_flame, bench_render, ...) keeps its own
measurement and exposes two names:

    SIZES: dict[str, dict]   size name -> keyword arguments of run(); every
                             module has "smallest" (seconds on a 2-core CPU: the
                             tests run it) and "default" (the figures to quote)
    run(options, **size) -> list[Row]

The harness picks the size, guards optional peers (torch, smplx, dlib,
nvdiffrast, the jaxrenderer interpreter), records the environment, and prints
one markdown table and writes one JSON for all benchmarks. A benchmark whose
peer is missing still times our side, and its rows say why the peer is absent;
one that cannot run at all (its weights come from the PyTorch twin) gives one
row saying so; one that fails gives one row with the error, and the run's
exit status says so.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Name on the command line -> module of face3d_eval. Order: the order of `all`.
BENCHMARKS = {
    "flame": "bench_flame",
    "render": "bench_render",
    "stylegan2": "bench_stylegan2",
    "gan-step": "bench_gan_step",
    "iresnet": "bench_iresnet",
    "identity": "bench_identity",
    "train-step": "bench_train_step",
    "now": "bench_now",
    "clip": "bench_clip",
}


class PeerUnavailable(Exception):
    """A peer (or a package a benchmark needs) is not installed or cannot run
    here; the message says what is missing and how to get it."""


@dataclasses.dataclass
class Options:
    """Settings shared by every benchmark of one run.

    threads: torch.set_num_threads (None: torch's choice). XLA's CPU backend
      sizes its pool to the usable cores and has no per-call setting; restrict
      the whole process with taskset for an equal-cores comparison.
    jaxrenderer_python: interpreter of a venv with jaxrenderer (BUILD.md), or
      None: the render benchmark then says the peer was not run.
    """

    threads: int | None = None
    jaxrenderer_python: str | None = None


@dataclasses.dataclass
class Row:
    """One line of the table: our time for one case against one peer.

    ours_ms / peer_ms: median milliseconds per call (per image where the case
    says so), compile excluded; None when that side did not run. peer: the
    peer's name; peer_note: why it did not run (then peer_ms is None).
    peak_mib: our side's memory, `memory` says which figure (device peak, XLA
    plan, RSS growth). details: everything else the benchmark measured
    (compile seconds, the peer's memory, max differences, throughput).
    """

    benchmark: str
    case: str
    ours_ms: float | None
    peer: str
    peer_ms: float | None = None
    peer_note: str | None = None
    peak_mib: float | None = None
    memory: str = "n/a"
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """peer / ours: > 1 means ours is faster."""
        if self.ours_ms is None or self.peer_ms is None or self.ours_ms <= 0:
            return None
        return self.peer_ms / self.ours_ms

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


def import_peer(module: str, hint: str):
    """Imports `module` for a peer, or raises PeerUnavailable naming `hint`
    (the install command)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(f"{module} not installed ({hint}): {exc}") from None


def torch_module(options: Options):
    """torch with --threads applied, or PeerUnavailable."""
    torch = import_peer("torch", "pip install 'face3d-jax[torch]'")
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    return torch


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """The machine and the versions behind a run's numbers."""
    import jax

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    env = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
           "python": platform.python_version(), "jax": jax.__version__,
           "jaxlib": version("jaxlib"), "flax": version("flax"),
           "jax_backend": jax.default_backend(), "jax_device": str(jax.devices()[0]),
           "torch": version("torch"), "smplx": version("smplx"), "dlib": version("dlib-bin")}
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    return env


def sizes_of(name: str) -> dict[str, dict]:
    return importlib.import_module(f"face3d_eval.{BENCHMARKS[name]}").SIZES


def resolve(names: list[str]) -> list[str]:
    """Benchmark names in run order; "all" expands to every benchmark."""
    if not names or "all" in names:
        return list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r}; choose from "
                         f"{', '.join(BENCHMARKS)} or all")
    return [n for n in BENCHMARKS if n in names]


def run_one(name: str, size: str, options: Options) -> list[Row]:
    """Rows of one benchmark at one size; never raises for a missing peer or a
    failing benchmark (the row says what happened)."""
    module = importlib.import_module(f"face3d_eval.{BENCHMARKS[name]}")
    if size not in module.SIZES:
        raise ValueError(f"benchmark {name} has no size {size!r}; its sizes: "
                         f"{', '.join(module.SIZES)}")
    try:
        return module.run(options, **module.SIZES[size])
    except PeerUnavailable as exc:  # ours needs the peer's package too (its weights)
        return [Row(name, f"size {size}", None, "-", peer_note=f"not run: {exc}")]
    except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
        traceback.print_exc()
        return [Row(name, f"size {size}", None, "-",
                    details={"error": f"{type(exc).__name__}: {exc}"})]


def _ms(x: float | None) -> str:  # 3 significant digits or so, thousands separated
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def markdown_table(rows: list[Row]) -> str:
    """One markdown table of all rows (ratio = peer ms / ours ms, > 1: ours faster)."""
    lines = ["| benchmark | case | ours ms | peer | peer ms | ratio | peak memory |",
             "|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        peer = r.peer if r.peer_note is None else f"{r.peer}: {r.peer_note}"
        if "error" in r.details:
            peer = f"FAILED: {r.details['error']}"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        mem = "-" if r.peak_mib is None else f"{_ms(r.peak_mib)} MiB ({r.memory})"
        lines.append(f"| {r.benchmark} | {r.case} | {_ms(r.ours_ms)} | {peer.replace('|', '/')} "
                     f"| {_ms(r.peer_ms)} | {ratio} | {mem} |")
    return "\n".join(lines)


def run_benchmarks(names: list[str], size: str, options: Options, json_path=None,
                   out=None) -> list[Row]:
    """Runs the named benchmarks at `size`, prints progress and then the table
    to `out` (default: sys.stdout at call time), writes the JSON to `json_path`
    (if given) and returns the rows."""
    out = out or sys.stdout
    names = resolve(names)
    for name in names:  # a bad size fails before anything runs
        if size not in sizes_of(name):
            raise ValueError(f"benchmark {name} has no size {size!r}; its sizes: "
                             f"{', '.join(sizes_of(name))}")
    env = environment()
    print(f"face3d bench {' '.join(names)} --size {size}: jax {env['jax']} on "
          f"{env['jax_device']} ({env['cpu']}, {env['cpus_usable']} usable cores), "
          f"torch {env['torch']}", file=out, flush=True)
    rows, seconds = [], {}
    for name in names:
        start = time.perf_counter()
        got = run_one(name, size, options)
        seconds[name] = time.perf_counter() - start
        print(f"  {name}: {len(got)} rows in {seconds[name]:.1f} s", file=out, flush=True)
        rows.extend(got)
        if json_path is not None:  # after each benchmark: a run cut short keeps what it did
            write_json(json_path, {"size": size, "environment": env, "options":
                                   dataclasses.asdict(options), "seconds": seconds,
                                   "rows": [r.as_dict() for r in rows]})
    print("\n" + markdown_table(rows), file=out)
    print("\nratio = peer ms / ours ms (> 1: ours faster); medians, compile excluded.",
          file=out, flush=True)
    if json_path is not None:
        print(f"wrote {json_path}", file=out)
    return rows


def write_json(path, payload: dict) -> None:
    """Writes `payload` as indented JSON, creating the folder; NaN and infinities
    become null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):  # JSON has no NaN or infinity
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    path.write_text(json.dumps(clean(payload), indent=2, default=str) + "\n")


def failed(rows: list[Row]) -> list[Row]:
    """Rows of benchmarks that raised (not those whose peer is missing)."""
    return [r for r in rows if "error" in r.details]
