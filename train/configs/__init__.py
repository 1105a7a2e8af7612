"""Training configs (ml_collections): `paper` holds the paper's sizes and weights,
`tiny` is derived from it for a 2-core CPU. `load(name_or_path)` returns one."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import ml_collections

NAMES = ("paper", "tiny", "small")


def load(name_or_path: str) -> ml_collections.ConfigDict:
    """The ConfigDict of a named config ("paper", "tiny") or of a Python file
    defining `get_config()`. Raises ValueError for an unknown name and
    FileNotFoundError for a missing file."""
    if name_or_path in NAMES:
        return importlib.import_module(f"face3d_train.configs.{name_or_path}").get_config()
    path = Path(name_or_path)
    if path.suffix != ".py":
        raise ValueError(f"unknown config {name_or_path!r}: expected one of {', '.join(NAMES)} "
                         "or a .py file with get_config()")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"face3d_user_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: defines no get_config()")
    return module.get_config()


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """Applies "a.b.c=VALUE" strings (VALUE a Python literal, else a string).
    An unknown field raises ValueError naming it."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            if name not in node:
                raise ValueError(f"--set {item!r}: the config has no field {key!r}")
            node = node[name]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ValueError(f"--set {item!r}: the config has no field {key!r}")
        old = node[leaf]
        if isinstance(old, float) and isinstance(value, int):
            value = float(value)
        node[leaf] = value
    return config
