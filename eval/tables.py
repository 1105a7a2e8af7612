"""The result layout shared by `face3d eval identity|diversity|teacher`
(face3d_eval.identity_poses, .diversity, .held_out): one JSON per command in
<workdir>/eval/<name>.json, read back by `face3d report`.

A result is a JSON-able dict with at least
  name: "identity", "diversity" or "teacher"; workdir: str; step: int (the
  checkpoint); tables: a list of display tables, each
    {"title": str, "columns": [str, ...] (C labels, the first names the rows),
     "rows": [[label, value, ..., value], ...] (C cells: a float, None where a
     value is missing, or a str saying why a row could not be computed, in
     the second cell with the rest None), "notes": [str, ...]}
and whatever figures the command adds (its module docstring says which).
The tables are what a person reads (printed as Markdown, drawn in the
report's HTML); the other keys are for programs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def table(title: str, columns, rows, notes=()) -> dict:
    """A display table (module docstring); floats are kept as given."""
    columns = [str(c) for c in columns]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"table {title!r}: row {row[0]!r} has {len(row)} cells, expected "
                             f"{len(columns)}")
    return {"title": str(title), "columns": columns, "rows": [list(r) for r in rows],
            "notes": [str(n) for n in notes]}


def cell_text(value, digits: int = 3) -> str:
    """A cell as text: floats to `digits` decimals, None as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(tables, digits: int = 3) -> str:
    """The display tables of a result as Markdown text (one block each)."""
    blocks = []
    for t in tables:
        lines = [f"{t['title']}", "| " + " | ".join(t["columns"]) + " |",
                 "|" + "---|" * len(t["columns"])]
        for row in t["rows"]:
            lines.append("| " + " | ".join(cell_text(v, digits) for v in row) + " |")
        lines += [f"  {n}" for n in t.get("notes", [])]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def default_path(workdir, name: str) -> Path:
    """<workdir>/eval/<name>.json."""
    return Path(workdir) / "eval" / f"{name}.json"


def write_result(result: dict, path) -> Path:
    """Writes a result as JSON (non-finite floats as null; the folder is
    created) and returns the path."""
    from face3d_eval.harness import write_json

    write_json(path, result)
    return Path(path)


def read_result(path) -> dict:
    """A result written by `write_result`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: unreadable, or not a result (no name, step and tables).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("name", "step", "tables")) \
            or not isinstance(data["tables"], list):
        raise ValueError(f"{path}: not a `face3d eval` result (it needs name, step and tables)")
    return data
