"""The benchmark harness: every benchmark runs at its smallest size through
`face3d bench` and reports sane rows (never timings asserted as speed), and
the GPU check starts and reports cleanly without a GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from face3d_eval.gpu_check import gpu_devices, run_gpu_check, run_limited
from face3d_eval.harness import BENCHMARKS, sizes_of
from face3d_jax.cli import main

HEADER = "| benchmark | case | ours ms | peer | peer ms | ratio | peak memory |"


def _check_row(row: dict, name: str) -> None:
    assert row["benchmark"] == name and row["case"]
    assert "error" not in row["details"], row["details"]
    if row["ours_ms"] is None:  # a case the benchmark skips must say why
        assert row["peer_note"], row
        return
    assert math.isfinite(row["ours_ms"]) and row["ours_ms"] > 0
    if row["peer_ms"] is None:
        assert row["peer_note"] and row["ratio"] is None  # an absent peer says why
    else:
        assert math.isfinite(row["peer_ms"]) and row["peer_ms"] > 0
        assert row["ratio"] == pytest.approx(row["peer_ms"] / row["ours_ms"])
    assert row["peak_mib"] is None or row["peak_mib"] >= 0
    assert row["memory"]


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_runs_at_its_smallest_size(name, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", name, "--size", "smallest", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert rows and report["size"] == "smallest"
    assert report["environment"]["jax_backend"]
    for row in rows:
        _check_row(row, name)
    # One table, one line per row.
    assert HEADER in printed
    assert sum(line.startswith(f"| {name} |") for line in printed.splitlines()) == len(rows)
    if name == "render":  # no jaxrenderer interpreter given, no CUDA: the rows say so
        notes = {r["peer"]: r["peer_note"] for r in rows}
        assert "--jaxrenderer-python" in notes["jaxrenderer"]
        if report["environment"].get("torch_cuda") is False:
            assert "CUDA" in notes["nvdiffrast"]


def test_every_benchmark_has_the_sizes_the_tools_use():
    for name in BENCHMARKS:
        assert {"smallest", "default", "gpu"} <= set(sizes_of(name)), name


def test_unknown_names_and_sizes_are_one_line_errors(capsys):
    assert main(["bench", "flam", "--size", "smallest"]) == 2
    assert main(["bench", "flame", "--size", "huge"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'flam'" in err and "no size 'huge'" in err


def test_gpu_check_reports_cleanly_without_a_gpu(tmp_path):
    if gpu_devices()[0]:
        pytest.skip("a GPU is here: the check would run for real (minutes)")
    out = tmp_path / "gpu.json"
    # A fresh interpreter on the CPU platform: what a user on a machine without a GPU runs.
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "face3d_eval.gpu_check", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check") and "could not run: everything: JAX sees no GPU" in last
    report = json.loads(out.read_text())
    assert report["gpu"] is False and report["tests"] == [] and report["benchmarks"] == {}
    # The same through the CLI.
    out2 = tmp_path / "gpu2.json"
    assert main(["bench", "--gpu-check", "--json", str(out2)]) == 0
    assert json.loads(out2.read_text())["gpu"] is False


def test_gpu_check_lists_what_did_not_fit_its_time(tmp_path, capsys):
    # The GPU path's bookkeeping with no time at all: every step is listed as not run.
    report = run_gpu_check(tmp_path / "gpu.json", total_s=0.0, devices=["gpu:0 (pretend)"])
    assert report["gpu"] and not report["tests"] and not report["benchmarks"]
    assert len(report["not_run"]) == 2 + len(BENCHMARKS)
    assert all(line.endswith("out of time") for line in report["not_run"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "could not run: pallas rasterizer" in last and "bench identity: out of time" in last


def test_a_step_past_its_limit_is_killed():
    code = "import time; print('started', flush=True); time.sleep(60)"
    result = run_limited([sys.executable, "-c", code], limit_s=3.0)
    assert result["timed_out"] and result["seconds"] < 30 and result["tail"] == ["started"]


def test_bench_clip_styleclip_step_runs_both_sides_on_the_same_loss(tmp_path):
    # The whole StyleCLIP step (G(w+) -> StyleCLIP's resize -> CLIP -> loss + l2 ->
    # Adam) at the smallest size, through the harness: both sides compute the same
    # losses from the same w0, and the first step is StyleCLIP's lr-0 step.
    out = tmp_path / "clip.json"
    assert main(["bench", "clip", "--size", "smallest", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert "error" not in rows[0]["details"], rows[0]["details"]
    if rows[0]["peer_note"]:  # torch or openai-clip missing: the harness's row says which
        pytest.skip(rows[0]["peer_note"])
    steps = [r for r in rows if r["case"].startswith("StyleCLIP step")]
    assert len(steps) == 1
    row, d = steps[0], steps[0]["details"]
    _check_row(row, "clip")
    assert row["peer_ms"] is not None and d["torch_ms_as_styleclip"] > 0
    assert d["loss_agrees"] and d["clip_cos_diff"] <= d["cos_tolerance"]
    ours, theirs = d["first_losses_ours"], d["first_losses_torch"]
    assert len(ours) == len(theirs) == 3
    assert ours[0] == ours[1] and ours[2] != ours[0]  # lr 0 at t = 0, then w moves
    assert d["loss_rel_diff"] < 1e-5 and d["grad_rel_diff"] < 1e-4
