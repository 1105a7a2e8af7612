"""face3d_kernels: a differentiable rasterizer with nvdiffrast's four primitives,
in JAX: `rasterize`, `interpolate`, `texture`, `antialias`.

    from face3d_kernels import rasterize, interpolate, texture, antialias

    rast, rast_db = rasterize(pos, tri, (H, W), backend="jax")
    uv, uv_da = interpolate(uv_attr, rast, uv_tri, rast_db=rast_db, diff_attrs="all")

`rasterize(..., backend=...)` chooses the implementation: one of `BACKENDS`
("jax", the default, runs everywhere JAX does; "pallas", a tiled kernel for
accelerators, interpreted on CPU). Conventions (pixel centres,
row 0 at NDC y = -1, channel orders) are nvdiffrast's: see rasterize.py.
`face3d_kernels.reference.rasterize_reference` is a brute-force numpy version
for tests.

Installed under the import name `face3d_kernels` (BUILD.md, "Import names").
It stands alone: it imports jax and numpy, never face3d_jax.
"""

from face3d_kernels.antialias import antialias, antialias_construct_topology_hash
from face3d_kernels.interpolate import interpolate
from face3d_kernels.rasterize import BACKENDS, rasterize
from face3d_kernels.texture import texture

__all__ = ["BACKENDS", "antialias", "antialias_construct_topology_hash", "interpolate",
           "rasterize", "texture"]
