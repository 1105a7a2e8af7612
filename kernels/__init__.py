"""face3d_kernels: a differentiable rasterizer with nvdiffrast's four primitives,
in JAX: `rasterize`, `interpolate`, `texture`, `antialias`.

    from face3d_kernels import rasterize, interpolate, texture, antialias

Installed under the import name `face3d_kernels` (BUILD.md, "Import names").
It stands alone: it imports jax and numpy, never face3d_jax.
"""

from face3d_kernels.antialias import antialias, antialias_construct_topology_hash
from face3d_kernels.rasterize import BACKENDS, interpolate, rasterize
from face3d_kernels.texture import texture

__all__ = ["BACKENDS", "antialias", "antialias_construct_topology_hash", "interpolate",
           "rasterize", "texture"]
