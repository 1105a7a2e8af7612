"""Convert insightface / MICA iresnet weights (PyTorch) into face3d_jax.nets.arcface.IResNet.

Accepted inputs (a path to a torch file, or an already loaded mapping):
- insightface arcface_torch backbones (`backbone.pth`, e.g. ms1mv3_arcface_r100):
  a flat state dict with keys `conv1.weight`, `layer1.0.bn1.weight`, ... ,
  `fc.weight`, `features.running_var`;
- MICA's `mica.tar`: {"arcface": <that state dict>, "flameModel": ...};
- the state dict of a wrapper holding the backbone under a prefix
  ("arcface.", "module." of DataParallel, "backbone.", ...): the prefix is found
  from the `conv1.weight` key of the stem and removed.

The architecture (blocks per stage, widths, embedding size) is read from the
keys and shapes, so iresnet18/34/50/100/200 all load. Layouts: conv OIHW ->
HWIO; fc (F, C*7*7) flattened C, H, W -> (7*7*C, F) flattened H, W, C;
BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var;
`features.weight` -> the FrozenScale; `num_batches_tracked` is dropped.

    net = convert_arcface("backbone.pth")           # IResNet, inference mode
    emb = net(arcface_preprocess(images01))         # (B, 112, 112, 3) -> (B, 512)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from face3d_jax.convert.torch_state import (
    fill_module, read_torch_file, strip_prefix, to_numpy_dict,
)
from face3d_jax.nets.arcface import FC_SPATIAL, IResNet, IResNetConfig

_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_WHAT = "ArcFace iresnet weights"


def arcface_state_dict(source: str | os.PathLike | Mapping[str, Any],
                       reader: str = "auto") -> dict[str, np.ndarray]:
    """The backbone's flat state dict {key: numpy array}, prefixes removed.

    source: a torch file or a loaded mapping (torch tensors or arrays), in any of
    the layouts of the module docstring. reader: how a file is read: "torch"
    (torch.load weights_only=True), "restricted" (no torch) or "auto" (torch
    when installed); see `face3d_jax.convert.torch_state.read_torch_file`.
    """
    origin = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    is_path = isinstance(source, (str, os.PathLike))
    obj = read_torch_file(source, _WHAT, reader) if is_path else source
    if not isinstance(obj, Mapping):
        raise ValueError(f"{_WHAT}: {origin} holds a {type(obj).__name__}, expected a state dict")
    for wrapper in ("arcface", "state_dict", "model"):
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    state = to_numpy_dict({k: v for k, v in obj.items() if not isinstance(v, Mapping)}, origin)
    # The stem conv is the only conv1.weight with 3 input channels.
    return strip_prefix(state, "conv1.weight", origin,
                        anchor_ok=lambda a: a.ndim == 4 and a.shape[1] == 3)


def infer_iresnet_config(state: Mapping[str, np.ndarray], origin: str = "state dict",
                         **overrides) -> IResNetConfig:
    """Blocks per stage, widths and embedding size of an iresnet state dict."""
    layers, widths = [], []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state
               if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        key = f"layer{stage}.0.conv1.weight"
        if not idx or key not in state:
            raise ValueError(f"{_WHAT}: {origin} has no key {key!r}: not an iresnet state dict")
        layers.append(max(idx) + 1)
        widths.append(int(state[key].shape[0]))
    if "fc.weight" not in state:
        raise ValueError(f"{_WHAT}: {origin} has no key 'fc.weight'")
    return IResNetConfig(layers=tuple(layers), widths=tuple(widths),
                         num_features=int(state["fc.weight"].shape[0]), **overrides)


def iresnet_torch_key(path: tuple) -> str:
    """The insightface state-dict key of one of our IResNet variables (path from nnx)."""
    *mods, leaf = (str(p) for p in path)
    if mods == [] and leaf == "features_scale":
        return "features.weight"
    if mods == [] and leaf == "features_bias":
        return "features.bias"
    if leaf == "kernel":
        leaf = "weight"
    elif mods and (mods[-1].startswith("bn") or mods[-1] == "features"
                   or (mods[-2:-1] == ["downsample"] and mods[-1] == "1")):
        leaf = _BN_NAMES[leaf]
    return ".".join(mods + [leaf])


def _to_ours(path: tuple, value: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return value
    if path[0] == "fc":
        if value.ndim != 2 or value.shape[1] % (FC_SPATIAL * FC_SPATIAL):
            return value  # wrong shape: fill_module reports it
        f, n = value.shape
        c = n // (FC_SPATIAL * FC_SPATIAL)
        value = value.reshape(f, c, FC_SPATIAL, FC_SPATIAL).transpose(2, 3, 1, 0)
        return value.reshape(FC_SPATIAL * FC_SPATIAL * c, f)
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value


def convert_arcface(source: str | os.PathLike | Mapping[str, Any],
                    config: IResNetConfig | None = None, *, reader: str = "auto",
                    **config_overrides) -> IResNet:
    """An IResNet (inference mode) holding the weights of an insightface/MICA checkpoint.

    source: torch file path or loaded mapping (see module docstring); reader: as
    in `arcface_state_dict`.
    config: the expected architecture; None reads it from the weights
    (config_overrides, e.g. dtype=jnp.bfloat16, then apply). A mismatch raises
    ValueError naming the key and the shapes.
    """
    origin = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = arcface_state_dict(source, reader)
    if config is None:
        config = infer_iresnet_config(state, origin, **config_overrides)
    abstract = nnx.eval_shape(lambda: IResNet(config, rngs=nnx.Rngs(0)))
    return fill_module(abstract, iresnet_torch_key, _to_ours, state, f"{_WHAT}: {origin}",
                       ignore=lambda k: k.endswith("num_batches_tracked"))
