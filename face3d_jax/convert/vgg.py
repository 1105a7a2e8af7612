"""Convert a torchvision VGG16 state dict (supplied by the user, e.g. the
`vgg16-397923af.pth` torchvision downloads) into face3d_jax.nets.vgg.VGG16Relu33.

Only the convolutions up to relu3_3 are read: keys
features.{0,2,5,7,10,12,14}.{weight,bias} (OIHW -> HWIO); the other keys
(deeper features, classifier) are ignored. A "module." or other prefix in front
of "features." is removed. Accepts a path (torch.load weights_only=True, or the
project's torch-free restricted reader) or a loaded mapping. torchvision itself
is not needed.

    vgg = convert_vgg16("vgg16.pth")
    feats = vgg(images01)    # (B, H, W, 3) in [0, 1] -> (B, H/4, W/4, 256)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from face3d_jax.convert.torch_state import (
    fill_module, read_torch_file, strip_prefix, to_numpy_dict,
)
from face3d_jax.nets.vgg import VGG16_RELU33_LAYERS, VGG16Relu33

_WHAT = "VGG16 weights"
_INDEX = {name: idx for name, idx, *_ in VGG16_RELU33_LAYERS}


def vgg16_state_dict(source: str | os.PathLike | Mapping[str, Any],
                     reader: str = "auto") -> dict[str, np.ndarray]:
    """The conv weights and biases up to relu3_3, keyed "features.{i}.{weight,bias}".

    reader: "torch" (torch.load weights_only=True), "restricted" (no torch) or
    "auto" (torch when installed).
    """
    origin = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    is_path = isinstance(source, (str, os.PathLike))
    obj = read_torch_file(source, _WHAT, reader) if is_path else source
    if not isinstance(obj, Mapping):
        raise ValueError(f"{_WHAT}: {origin} holds a {type(obj).__name__}, expected a state dict")
    if isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    state = to_numpy_dict({k: v for k, v in obj.items() if not isinstance(v, Mapping)}, origin)
    state = strip_prefix(state, "features.0.weight", origin,
                         anchor_ok=lambda a: a.ndim == 4 and a.shape[1] == 3)
    wanted = {f"features.{i}.{p}" for i in _INDEX.values() for p in ("weight", "bias")}
    return {k: v for k, v in state.items() if k in wanted}


def _torch_key(path: tuple) -> str:
    name, leaf = str(path[0]), str(path[-1])
    return f"features.{_INDEX[name]}.{'weight' if leaf == 'kernel' else 'bias'}"


def _to_ours(path: tuple, value: np.ndarray) -> np.ndarray:
    return value.transpose(2, 3, 1, 0) if path[-1] == "kernel" and value.ndim == 4 else value


def convert_vgg16(source: str | os.PathLike | Mapping[str, Any], dtype=None, *,
                  reader: str = "auto") -> VGG16Relu33:
    """A VGG16Relu33 holding torchvision VGG16 weights; ValueError names a missing or
    mis-shaped key, FileNotFoundError a missing file."""
    origin = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = vgg16_state_dict(source, reader)
    abstract = nnx.eval_shape(lambda: VGG16Relu33(rngs=nnx.Rngs(0), dtype=dtype))
    return fill_module(abstract, _torch_key, _to_ours, state, f"{_WHAT}: {origin}")
