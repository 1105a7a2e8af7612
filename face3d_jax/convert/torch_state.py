"""Shared plumbing of the converters: read a PyTorch state dict safely, unwrap it,
and fill an abstract NNX module from it with every shape checked.

Torch files are read with `torch.load(..., weights_only=True)` (torch's own
restricted unpickler, which rebuilds tensors and plain containers and refuses
any other object) or, without torch, with the project's restricted reader
`face3d_jax.formats.torch_file`: either way no code from the file runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx


def read_torch_file(path: str | os.PathLike, what: str, reader: str = "auto") -> Any:
    """The object saved in a torch file (.pt/.pth/.tar of torch.save).

    reader: "torch" (torch.load(weights_only=True): tensors as torch tensors),
    "restricted" (the project's torch-free reader `face3d_jax.formats.torch_file`:
    tensors as DeferredTensor, read on demand) or "auto" (torch when installed,
    else restricted). Raises FileNotFoundError (no file) or ValueError (not a
    torch file, or it holds objects other than tensors and containers), each with
    one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {path}")
    if reader not in ("auto", "torch", "restricted"):
        raise ValueError(f"reader must be 'auto', 'torch' or 'restricted', got {reader!r}")
    torch = None
    if reader in ("auto", "torch"):
        try:
            import torch
        except ImportError as exc:
            if reader == "torch":
                raise RuntimeError(f"{what}: reading {path} with reader='torch' needs PyTorch "
                                   f"(pip install 'face3d-jax[torch]'): {exc}") from None
    if torch is None:
        from face3d_jax.formats.torch_file import load_torch_file

        try:
            return load_torch_file(path)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; all mean "not readable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{what}: {path} is not a readable torch state dict "
                         f"(torch.load weights_only=True: {first[:200]})") from None


def to_numpy_dict(state: Mapping[str, Any], origin: str) -> dict[str, np.ndarray]:
    """{key: numpy array} from a state dict of torch tensors or array-likes."""
    out = {}
    for key, value in state.items():
        if hasattr(value, "detach"):  # a torch tensor, without importing torch here
            value = value.detach().cpu()
            if str(value.dtype) == "torch.bfloat16":
                value = value.float()
            value = value.numpy()
        elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):
            value = value.numpy()  # DeferredTensor of the restricted reader
        try:
            # A copy: torch's .numpy() shares memory with the tensor, and jax on CPU
            # may share it with numpy, so a later in-place torch update (BN running
            # stats) would otherwise change our parameters.
            out[str(key)] = np.array(value, copy=True)
        except Exception:  # noqa: BLE001
            raise ValueError(f"{origin}: entry {key!r} is not an array "
                             f"({type(value).__name__})") from None
    return out


def strip_prefix(state: Mapping[str, np.ndarray], anchor: str, origin: str,
                 anchor_ok: Callable[[np.ndarray], bool] = lambda a: True) -> dict[str, np.ndarray]:
    """Keys of the sub-network whose `anchor` key (e.g. "conv1.weight") is found, with
    the prefix before it (e.g. "arcface.", "module.", "backbone.") removed; keys
    outside that prefix are dropped. The anchor must be unique."""
    hits = [k for k in state if k.endswith(anchor) and (k == anchor or k[-len(anchor) - 1] == ".")
            and anchor_ok(state[k])]
    if not hits:
        raise ValueError(f"{origin}: no key ending in {anchor!r} found "
                         f"(first keys: {', '.join(list(state)[:5])})")
    prefixes = sorted({k[: len(k) - len(anchor)] for k in hits}, key=len)
    prefix = prefixes[0]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def fill_module(abstract: nnx.Module, torch_key: Callable[[tuple], str],
                transform: Callable[[tuple, np.ndarray], np.ndarray],
                state: Mapping[str, np.ndarray], origin: str,
                ignore: Callable[[str], bool] = lambda k: False) -> nnx.Module:
    """A concrete module from an abstract one (`nnx.eval_shape`) and a state dict.

    torch_key(path) names the state-dict entry of each of our variables (path: a
    tuple of attribute names / list indices); transform(path, array) turns it into
    our layout. Every variable must be found with the right shape after the
    transform, and every state-dict entry must be used (except `ignore(key)`):
    otherwise ValueError naming the key and both shapes.
    """
    graphdef, abstract_state = nnx.split(abstract)
    used, filled = set(), []
    for path, var in nnx.to_flat_state(abstract_state):
        key = torch_key(path)
        if key not in state:
            raise ValueError(f"{origin}: missing key {key!r} (for {'.'.join(map(str, path))})")
        value = transform(path, state[key])
        want = var.get_value()
        if tuple(value.shape) != tuple(want.shape):
            raise ValueError(f"{origin}: key {key!r} has shape {tuple(state[key].shape)}, "
                             f"expected {tuple(want.shape)} after layout change "
                             f"(got {tuple(value.shape)})")
        filled.append((path, var.replace(jnp.array(value, dtype=want.dtype, copy=True))))
        used.add(key)
    extra = sorted(k for k in state if k not in used and not ignore(k))
    if extra:
        raise ValueError(f"{origin}: {len(extra)} unexpected keys, e.g. {extra[:3]} "
                         "(a different architecture?)")
    return nnx.merge(graphdef, nnx.from_flat_state(filled))
