"""The first GPU session's check: everything that only a GPU can tell, in one
run of at most 8 minutes and one JSON.

    python -m face3d_eval.gpu_check --out gpu_check.json
    face3d bench --gpu-check --json gpu_check.json

It runs, in this order, each in its own process with its own time limit (so a
hang, a crash or an out-of-memory in one leaves the others their time, and
each benchmark's device-memory peak is its own):
  1. the Pallas rasterizer compiled for the GPU, not interpreted
     (tests/test_kernels_rasterize.py -k pallas: on a GPU `rasterize(...,
     backend="pallas")` lowers with interpret=False) against the "jax" backend;
  2. the tests marked `gpu` (pytest -m gpu);
  3. every benchmark at its "gpu" size (`face3d bench NAME --size gpu`): the
     rows a GPU adds (Pallas rasterizer, nvdiffrast, device memory peaks).
Whatever does not fit the remaining time is listed as not run. Its last line
says, in one line, what could not run. Without a GPU (JAX sees none) it says so,
writes the JSON and exits 0: the check is for later, not a failure here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from face3d_eval.harness import BENCHMARKS, write_json

TOTAL_S = 480.0  # the whole check: 8 minutes
# The most each step may take, in order of what the first GPU session most
# needs to learn: the Pallas kernel has never been lowered on a GPU.
TEST_STEPS = (
    ("pallas rasterizer, interpret=False", ["tests/test_kernels_rasterize.py", "-k", "pallas"],
     120.0),
    ("tests marked gpu", ["tests", "-m", "gpu"], 90.0),
)
BENCH_CAPS = {"render": 120.0, "train-step": 120.0, "gan-step": 90.0, "stylegan2": 60.0,
              "iresnet": 60.0, "flame": 45.0, "identity": 45.0, "now": 45.0,
              "clip": 90.0}
MIN_STEP_S = 20.0  # below this a step cannot even import and compile: listed as not run


def gpu_devices() -> tuple[list[str], str]:
    """(JAX's GPU devices as strings, a one-line reason when there are none)."""
    import jax

    try:
        gpus = jax.devices("gpu")
    except RuntimeError as exc:  # no GPU backend in this jaxlib, or no device
        reason = f"JAX sees no GPU (backend {jax.default_backend()}): {str(exc).splitlines()[0]}"
        return [], reason
    return [str(d) for d in gpus], ""


def run_limited(cmd: list[str], limit_s: float, cwd=None) -> dict:
    """Runs cmd with a wall-clock limit; on timeout kills its whole process
    group (started as a new session). {rc, seconds, timed_out, tail}."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        timed_out = True
    lines = (out or "").strip().splitlines()
    return {"cmd": cmd, "rc": proc.returncode, "seconds": time.perf_counter() - start,
            "timed_out": timed_out, "tail": lines[-15:]}


def _pytest_summary(result: dict) -> str:
    if result["timed_out"]:
        return f"timed out after {result['seconds']:.0f} s"
    if result["rc"] == 5:  # pytest: no tests collected
        return "no test selected"
    last = result["tail"][-1] if result["tail"] else "no output"
    return last.strip("= ")


def run_gpu_check(out_path, total_s: float = TOTAL_S, repo: Path | None = None,
                  devices: list[str] | None = None) -> dict:
    """Runs the check and writes its JSON to out_path; returns it. Never raises
    for a missing GPU, a failing test or a failing benchmark: the JSON and the
    last printed line say what happened. repo: the source checkout holding
    tests/ (default: this file's); devices: the GPUs to report (default: JAX's;
    given, the tests can walk the GPU path's bookkeeping on a CPU)."""
    start = time.perf_counter()
    repo = repo or Path(__file__).resolve().parents[1]
    gpus, reason = (devices, "") if devices is not None else gpu_devices()
    report = {"gpu": bool(gpus), "devices": gpus, "tests": [], "benchmarks": {},
              "not_run": [], "budget_s": total_s}
    if not gpus:
        report["not_run"].append(f"everything: {reason}")
    else:
        def left():
            return total_s - (time.perf_counter() - start)

        tests_dir = repo / "tests"
        for name, args, cap in TEST_STEPS:
            if not tests_dir.is_dir():
                report["not_run"].append(f"{name}: no tests/ folder (run from a source checkout)")
                continue
            if left() < MIN_STEP_S:
                report["not_run"].append(f"{name}: out of time")
                continue
            result = run_limited([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                  *args], min(cap, left()), cwd=repo)
            result.update(name=name, summary=_pytest_summary(result))
            report["tests"].append(result)
            if result["rc"] not in (0, 5):
                report["not_run"].append(f"{name}: {result['summary']}")
        with tempfile.TemporaryDirectory() as tmp:
            for bench in sorted(BENCHMARKS, key=list(BENCH_CAPS).index):
                if left() < MIN_STEP_S:
                    report["not_run"].append(f"bench {bench}: out of time")
                    continue
                path = Path(tmp) / f"{bench}.json"
                result = run_limited([sys.executable, "-m", "face3d_jax.cli", "bench", bench,
                                      "--size", "gpu", "--json", str(path)],
                                     min(BENCH_CAPS[bench], left()))
                if path.exists():
                    result["rows"] = json.loads(path.read_text())["rows"]
                report["benchmarks"][bench] = result
                errors = [r["details"]["error"] for r in result.get("rows", [])
                          if "error" in r["details"]]
                if result["timed_out"]:
                    report["not_run"].append(f"bench {bench}: timed out after "
                                             f"{result['seconds']:.0f} s")
                elif errors or result["rc"] != 0:
                    why = errors[0] if errors else (result["tail"] or ["no output"])[-1]
                    report["not_run"].append(f"bench {bench}: {why}")
                for row in result.get("rows", []):  # one entry per missing peer
                    if row.get("peer_note") and row["peer_ms"] is None:
                        report["not_run"].append(f"bench {bench}: peer {row['peer']}: "
                                                 f"{row['peer_note']}")
    report["not_run"] = list(dict.fromkeys(report["not_run"]))
    report["seconds"] = time.perf_counter() - start
    write_json(out_path, report)
    if report["not_run"]:
        summary = "could not run: " + "; ".join(report["not_run"])
    else:
        summary = "everything ran"
    print(f"gpu_check ({report['seconds']:.0f} s, {out_path}): {summary}", flush=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="face3d_eval.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON (default: "
                                                                "gpu_check.json)")
    parser.add_argument("--budget", type=float, default=TOTAL_S,
                        help=f"seconds for the whole check (default {TOTAL_S:.0f})")
    args = parser.parse_args(argv)
    run_gpu_check(args.out, args.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
