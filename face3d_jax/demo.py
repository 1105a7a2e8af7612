"""`face3d demo`: random faces of the face model, in seconds, without any
asset or training.

It samples random FLAME parameters, decodes them with the procedural default
model (or a FLAME model the user points at), paints each an albedo of a
random identity with the teacher world's painter (`teacher.albedo`), and
writes each face as OBJ (with UVs, MTL and the albedo PNG) and binary glTF
(the albedo embedded), plus the parameters and 68 landmarks, and renders the
first face at the paper's Table 4 yaws. A trained run's faces come from
`face3d train`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from face3d_jax import export
from face3d_jax.flame import FlameModel, default_model, flame_forward, load, sample_parameters
from face3d_jax.render.views import write_yaw_renders
from face3d_jax.teacher.albedo import painted_albedo

ALBEDO_SIZE = 512


def run_demo(out_dir: str | Path, num_faces: int = 4, seed: int = 0,
             model_path: str | Path | None = None, render_resolution: int = 256) -> list[Path]:
    """Decodes `num_faces` random faces and writes them under `out_dir`.

    Returns the written paths: face_<i>.obj/.mtl/.png, face_<i>.glb, params.npz
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
    albedo = np.asarray(painted_albedo(model, jax.random.fold_in(jax.random.key(seed), 1),
                                       num_faces, ALBEDO_SIZE))
    texture = np.round(np.clip(albedo, 0.0, 1.0) * 255.0).astype(np.uint8)
    written = []
    for i in range(num_faces):
        written += export.export_obj(out / f"face_{i}.obj", vertices[i], model.faces,
                                     model.uv_coords, model.uv_faces, texture=texture[i])
        written += export.export_glb(out / f"face_{i}.glb", vertices[i], model.faces,
                                     model.uv_coords, model.uv_faces, texture=texture[i])
    np.savez(out / "params.npz", landmarks=np.asarray(decoded.landmarks), **params)
    written.append(out / "params.npz")
    # The first face seen from the paper's Table 4 yaws.
    first = {k: v[:1] for k, v in params.items()}
    first["global_pose"] = np.zeros_like(first["global_pose"])
    written += write_yaw_renders(out / "renders", resolution=render_resolution,
                                 params=first, model_path=model_path, albedo=albedo[:1])
    for path in written:
        print(f"wrote {path}")
    return written
