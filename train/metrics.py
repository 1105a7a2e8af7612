"""Training metrics: a JSON-lines file (the record scripts read) and TensorBoard.

`MetricWriter(workdir)` appends one line {"step": step, **values} per
`scalars` call to workdir/metrics.jsonl, flushed at once so a killed run loses
at most the line being written, and mirrors scalars and image grids to
TensorBoard event files in workdir/tensorboard (tensorboardX). Only process 0
writes by default, so a multi-host run has one copy.

Non-finite values are written as JSON null: the file stays strict JSON, which
`json` elsewhere (and jq) can read; `read_metrics` returns them as None.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _scalar(name: str, value: Any) -> float:
    arr = np.asarray(value)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"metric {name!r} must be a real scalar, got shape {arr.shape} "
                         f"dtype {arr.dtype}")
    return float(arr.reshape(()))


def _drop_partial_tail(path: Path) -> None:
    """Cuts a last line without newline (a write a kill interrupted) off `path`.

    Appending after it would glue the next record onto the fragment and make a
    bad line in the middle of the file.
    """
    if not path.exists():
        return
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos, chunk = end, 4096
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        if keep != end:
            f.truncate(keep)


class MetricWriter:
    """Writes scalars to workdir/metrics.jsonl and TensorBoard, images to TensorBoard.

    Args:
      workdir: run folder (created on first use when enabled).
      enabled: write anything at all; None means `jax.process_index() == 0`.
        A disabled writer creates no files and ignores every call.
    """

    def __init__(self, workdir, *, enabled: bool | None = None):
        self.workdir = Path(workdir)
        self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
        self._file = None
        self._tb = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter  # only writers need it

        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / METRICS_FILE
        _drop_partial_tail(path)
        self._file = open(path, "a", encoding="utf-8")
        self._tb = SummaryWriter(str(self.workdir / TENSORBOARD_DIR))

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        """Records one step's scalars.

        Args:
          step: int, the training step (x axis in TensorBoard).
          values: name -> Python/numpy number or size-1 jax.Array (any shape
            with one element, any real dtype); written as float64, NaN/inf as null.
        """
        if not self.enabled:
            return
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            raise ValueError(f"step must be an int, got {step!r}")
        row: dict[str, Any] = {"step": int(step)}
        for name, value in values.items():
            if not isinstance(name, str) or name == "step":
                raise ValueError(f"metric name must be a str other than 'step', got {name!r}")
            row[name] = _scalar(name, value)
        line = json.dumps(
            {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
             for k, v in row.items()}, allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()
        for name, value in row.items():
            if name != "step":
                self._tb.add_scalar(name, value, int(step))

    def images(self, step: int, images: dict[str, Any]) -> None:
        """Records image grids to TensorBoard.

        Args:
          step: int, the training step.
          images: name -> array (B, H, W, C), C in {1, 3}, float in [0, 1]
            (values outside are clipped, NaN shown as 0); one grid per name.
        """
        if not self.enabled:
            return
        for name, value in images.items():
            arr = np.asarray(value, dtype=np.float32)
            if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.shape[0] < 1:
                raise ValueError(f"image {name!r} must be (B, H, W, C) with B >= 1 and "
                                 f"C in (1, 3), got shape {arr.shape}")
            arr = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)
            self._tb.add_images(name, arr, int(step), dataformats="NHWC")

    def flush(self) -> None:
        """Pushes pending TensorBoard events to disk (metrics.jsonl is always flushed)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes both files; later calls fail."""
        if self._file is not None:
            self._file.close()
            self._tb.close()
            self._file = self._tb = None

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path) -> list[dict]:
    """Reads a metrics.jsonl back.

    Args:
      path: the metrics.jsonl file, or the workdir holding it.

    Returns:
      One dict per line in file order: {"step": int, name: float or None}.
      A last line without newline that is not valid JSON (a write cut off by a
      kill) is skipped.

    Raises:
      FileNotFoundError: no such file. ValueError: a complete line is not a
      JSON object (file and line number named).
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    partial = lines.pop()  # "" when the file ends with a newline
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: not a JSON object")
        rows.append(row)
    if partial.strip():
        try:
            row = json.loads(partial)
        except json.JSONDecodeError:
            row = None  # cut off mid-write
        if isinstance(row, dict):
            rows.append(row)
    return rows
