"""face3d_kernels: a differentiable rasterizer with nvdiffrast's four primitives
(rasterize, interpolate, texture, antialias), in JAX.

Installed under the import name `face3d_kernels` (BUILD.md, "Import names").
It stands alone: it imports jax, never face3d_jax. The primitives arrive with
the renderer issue; nothing is implemented here yet.
"""
