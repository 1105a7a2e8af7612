"""PyTorch twin of face3d_jax.nets.mica: MICA's shape regressor, with the
module names of MICA's `Generator` (models/generator.py), hence the keys of
the `flameModel` entry of mica.tar:

    regressor.network.{0..layers}.{weight,bias}, regressor.output.{weight,bias}

(MICA's Generator also holds its FLAME layer under `generator.`; `mica_checkpoint`
adds a stand-in buffer there so converters meet the real file's extra keys.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MappingNetwork(nn.Module):
    """Linear(z, h) and `layers` Linear(h, h), leaky ReLU 0.2 after each; with
    layers > 5, [z, h] after the layer at index layers // 2; Linear(h, out)."""

    def __init__(self, z_dim: int = 512, hidden: int = 300, out: int = 300, layers: int = 3):
        super().__init__()
        self.skips = [layers // 2] if layers > 5 else []
        self.network = nn.ModuleList(
            [nn.Linear(z_dim, hidden)]
            + [nn.Linear(hidden + (z_dim if i in self.skips else 0), hidden)
               for i in range(layers)])
        self.output = nn.Linear(hidden, out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i, layer in enumerate(self.network):
            h = F.leaky_relu(layer(h), negative_slope=0.2)
            if i in self.skips:
                h = torch.cat([z, h], 1)
        return self.output(h)


class Generator(nn.Module):
    """The `regressor` part of MICA's Generator."""

    def __init__(self, **kwargs):
        super().__init__()
        self.regressor = MappingNetwork(**kwargs)

    def forward(self, identity_code: torch.Tensor) -> torch.Tensor:
        return self.regressor(identity_code)


def mica_checkpoint(arcface: nn.Module, generator: Generator) -> dict:
    """What MICA's `model_dict()` saves: {"arcface": ..., "flameModel": ...}."""
    flame_model = dict(generator.state_dict())
    flame_model["generator.v_template"] = torch.zeros(5, 3)  # MICA's FLAME buffers
    return {"arcface": arcface.state_dict(), "flameModel": flame_model}


def mica_shape(arcface: nn.Module, generator: Generator, images: torch.Tensor) -> torch.Tensor:
    """MICA's shape code: mapping(normalize(arcface(images))), images (B, 3, 112, 112)."""
    return generator(F.normalize(arcface(images)))
