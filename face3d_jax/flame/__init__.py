"""The FLAME face model: decoder, assets and the built-in procedural default.

    model = face3d_jax.flame.load("path/to/flame_dir")   # or default_model()
    out = model(shape, expression, global_pose, neck_pose, jaw_pose, eye_pose)
    out.vertices, out.landmarks, out.joints
"""

from face3d_jax.flame.forward import FlameOutput, flame_forward
from face3d_jax.flame.geometry import displace, sample_uv_map, vertex_normals
from face3d_jax.flame.io import load, save_npz
from face3d_jax.flame.model import FlameModel, validate
from face3d_jax.flame.procedural import default_model
from face3d_jax.flame.sampling import sample_parameters
from face3d_jax.flame.writer import write_flame_files

__all__ = [
    "FlameModel", "FlameOutput", "default_model", "displace", "flame_forward", "load",
    "sample_parameters", "sample_uv_map", "save_npz", "validate", "vertex_normals", "write_flame_files",
]
