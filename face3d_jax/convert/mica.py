"""Convert MICA's checkpoint (`mica.tar`, PyTorch) into the ArcFace backbone and
the shape regressor of E_shape's MICA head.

MICA saves {"arcface": <insightface iresnet100 state dict>, "flameModel":
<its Generator's state dict>}. The Generator holds the mapping network under
`regressor.` (`regressor.network.<i>.weight|bias`, `regressor.output.weight|bias`)
and MICA's FLAME layer under `generator.` (buffers of FLAME itself, not used
here: FLAME comes from `model.flame`). The file is read without executing code
(`torch_state.read_torch_file`).

    backbone, mapping = convert_mica("mica.tar")     # IResNet, MicaMapping
    shape = mapping(normalize(backbone(arcface_preprocess(images01))))
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from face3d_jax.convert.arcface import convert_arcface
from face3d_jax.convert.torch_state import fill_module, read_torch_file, to_numpy_dict
from face3d_jax.nets.arcface import IResNet
from face3d_jax.nets.mica import MicaConfig, MicaMapping

_WHAT = "MICA weights"
_PREFIX = "regressor."


def _checkpoint(source, reader: str) -> tuple[Mapping[str, Any], str]:
    if isinstance(source, (str, os.PathLike)):
        obj = read_torch_file(source, _WHAT, reader)
        origin = str(source)
    else:
        obj, origin = source, "state dict"
    if not isinstance(obj, Mapping) or not isinstance(obj.get("flameModel"), Mapping) \
            or not isinstance(obj.get("arcface"), Mapping):
        keys = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{_WHAT}: {origin} is not MICA's mica.tar (expected the keys "
                         f"'arcface' and 'flameModel'; found {keys})")
    return obj, origin


def _mapping_state(obj: Mapping[str, Any], origin: str) -> dict[str, np.ndarray]:
    state = to_numpy_dict({k[len(_PREFIX):]: v for k, v in obj["flameModel"].items()
                           if str(k).startswith(_PREFIX)}, origin)
    if not state:
        raise ValueError(f"{_WHAT}: {origin}: 'flameModel' has no '{_PREFIX}*' keys (MICA "
                         "trained with regress=False has no mapping network)")
    return state


def mica_mapping_state(source: str | os.PathLike | Mapping[str, Any], reader: str = "auto"
                       ) -> dict[str, np.ndarray]:
    """The mapping network's state dict {"network.0.weight": array, ...}, the
    `regressor.` prefix removed (MICA's FLAME buffers are dropped)."""
    return _mapping_state(*_checkpoint(source, reader))


def infer_mica_config(state: Mapping[str, np.ndarray], origin: str = "state dict") -> MicaConfig:
    """Sizes and depth of a mapping state dict (`mica_mapping_state`)."""
    idx = sorted({int(m.group(1)) for k in state if (m := re.match(r"network\.(\d+)\.weight$", k))})
    if not idx or idx != list(range(len(idx))) or "output.weight" not in state \
            or state["network.0.weight"].ndim != 2 or state["output.weight"].ndim != 2:
        raise ValueError(f"{_WHAT}: {origin}: expected 2-D regressor.network.0..N and "
                         f"regressor.output weights, found {sorted(state)[:6]}")
    hidden, z_dim = (int(n) for n in state["network.0.weight"].shape)
    return MicaConfig(z_dim=z_dim, hidden_dim=hidden, out_dim=int(state["output.weight"].shape[0]),
                      layers=len(idx) - 1)


def _torch_key(path: tuple) -> str:
    names = [str(p) for p in path]
    leaf = "weight" if names[-1] == "kernel" else names[-1]
    return ".".join(names[:-1] + [leaf])


def _to_ours(path: tuple, value: np.ndarray) -> np.ndarray:
    return value.T if str(path[-1]) == "kernel" and value.ndim == 2 else value


def _mapping(obj: Mapping[str, Any], origin: str) -> MicaMapping:
    state = _mapping_state(obj, origin)
    config = infer_mica_config(state, origin)
    abstract = nnx.eval_shape(lambda: MicaMapping(config, rngs=nnx.Rngs(0)))
    return fill_module(abstract, _torch_key, _to_ours, state, f"{_WHAT}: {origin}")


def convert_mica_mapping(source: str | os.PathLike | Mapping[str, Any], *,
                         reader: str = "auto") -> MicaMapping:
    """The MicaMapping holding a mica.tar's regressor (sizes read from it).

    source: a torch file or the loaded checkpoint mapping. A missing or
    misshaped key raises ValueError naming it.
    """
    return _mapping(*_checkpoint(source, reader))


def convert_mica(source: str | os.PathLike | Mapping[str, Any], *, reader: str = "auto"
                 ) -> tuple[IResNet, MicaMapping]:
    """MICA's ArcFace backbone (inference mode) and mapping network, from one read."""
    obj, origin = _checkpoint(source, reader)
    try:
        backbone = convert_arcface(obj["arcface"])
    except ValueError as exc:  # convert_arcface names a loaded mapping "state dict"
        raise ValueError(f"{origin}: {exc}") from None
    return backbone, _mapping(obj, origin)
