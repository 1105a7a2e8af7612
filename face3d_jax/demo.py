"""`face3d demo`: the main job on the built-in default, end to end.

Today it samples random FLAME parameters, decodes them with the procedural
default model (or a FLAME model the user points at) and writes each face as
OBJ (with UVs) and binary glTF, plus the parameters and 68 landmarks, and
renders the first face at the paper's Table 4 yaws. It grows
with the project (rendering, albedo, training) as issues land.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from face3d_jax import export
from face3d_jax.flame import FlameModel, default_model, flame_forward, load
from face3d_jax.render.views import write_yaw_renders


def sample_parameters(key: jax.Array, batch: int, num_shape: int = 300,
                      num_expression: int = 50) -> dict[str, np.ndarray]:
    """Random but plausible FLAME parameters (the paper's 300 shape and 50
    expression components), all float32:

    shape (B, 300) ~ N(0, 1); expression (B, 50) ~ N(0, 0.7^2); global_pose
    (B, 3) with yaw in +-0.4 rad; neck_pose (B, 3) small; jaw_pose (B, 3) an
    opening in [0, 0.25] rad about x; eye_pose (B, 6) small.
    """
    ks = jax.random.split(key, 6)
    shape = jax.random.normal(ks[0], (batch, num_shape))
    expression = 0.7 * jax.random.normal(ks[1], (batch, num_expression))
    yaw = jax.random.uniform(ks[2], (batch,), minval=-0.4, maxval=0.4)
    global_pose = jax.numpy.stack([0.0 * yaw, yaw, 0.0 * yaw], axis=1)
    neck_pose = 0.05 * jax.random.normal(ks[3], (batch, 3))
    jaw_open = jax.random.uniform(ks[4], (batch,), minval=0.0, maxval=0.25)
    jaw_pose = jax.numpy.stack([jaw_open, 0.0 * jaw_open, 0.0 * jaw_open], axis=1)
    eye_pose = 0.1 * jax.random.normal(ks[5], (batch, 6))
    params = dict(shape=shape, expression=expression, global_pose=global_pose,
                  neck_pose=neck_pose, jaw_pose=jaw_pose, eye_pose=eye_pose)
    return {k: np.asarray(v, np.float32) for k, v in params.items()}


def run_demo(out_dir: str | Path, num_faces: int = 4, seed: int = 0,
             model_path: str | Path | None = None, render_resolution: int = 256) -> list[Path]:
    """Decodes `num_faces` random faces and writes them under `out_dir`.

    Returns the written paths: face_<i>.obj/.mtl, face_<i>.glb, params.npz
    (the parameters and the (N, 68, 3) landmarks) and renders/yaw_<deg>.png
    (the first face at 0, +-15, +-30, +-45 degrees).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model: FlameModel = load(model_path) if model_path else default_model()
    print(f"model: {model.source or model_path}: {model.num_vertices} vertices, "
          f"{len(model.faces)} triangles, {model.num_shape} shape / "
          f"{model.num_expression} expression components")
    params = sample_parameters(jax.random.key(seed), num_faces,
                               num_shape=min(300, model.num_shape),
                               num_expression=min(50, model.num_expression))
    decoded = jax.jit(flame_forward)(model, **params)
    vertices = np.asarray(decoded.vertices)
    written = []
    for i in range(num_faces):
        written += export.export_obj(out / f"face_{i}.obj", vertices[i], model.faces,
                                     model.uv_coords, model.uv_faces)
        written += export.export_glb(out / f"face_{i}.glb", vertices[i], model.faces,
                                     model.uv_coords, model.uv_faces)
    np.savez(out / "params.npz", landmarks=np.asarray(decoded.landmarks), **params)
    written.append(out / "params.npz")
    # The first face seen from the paper's Table 4 yaws.
    first = {k: v[:1] for k, v in params.items()}
    first["global_pose"] = np.zeros_like(first["global_pose"])
    written += write_yaw_renders(out / "renders", resolution=render_resolution,
                                 params=first, model_path=model_path)
    for path in written:
        print(f"wrote {path}")
    return written
