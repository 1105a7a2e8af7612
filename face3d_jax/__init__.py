"""face3d-jax: generative 3D faces (FLAME shape, AlbedoGAN albedo) in JAX/Flax.

Sub-packages: `flame` (the face model and its assets), `export` (meshes to
OBJ/glTF/PLY), `cli` (the `face3d` command).
"""

__version__ = "0.1.0"
