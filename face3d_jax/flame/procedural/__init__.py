"""The built-in procedural default: a deterministic face model in FLAME's format.

FLAME itself needs a licence and registration, so it cannot ship. This package
generates a stand-in with FLAME's array names, sizes and semantics
(docs/architecture.md): a head mesh with a mouth slit and eyeballs, a UV
layout, 5 joints with skinning weights and a joint regressor, 300 identity and
100 expression components (designed ones first, then smooth random fields),
pose correctives and the 68-point landmark embedding. The same code paths that
read the real FLAME files read this model, in memory or written with
`face3d_jax.flame.write_flame_files` (`face3d assets make-default`).
"""

from __future__ import annotations

import numpy as np

from face3d_jax.flame.model import FLAME_PARENTS, FlameModel, vertex_uv_from_faces
from face3d_jax.flame.procedural.bases import make_bases
from face3d_jax.flame.procedural.embedding import dynamic_embedding, static_embedding
from face3d_jax.flame.procedural.head import build_head
from face3d_jax.flame.procedural.rig import joint_regressor, pose_correctives, skinning_weights

DEFAULT_SEED = 0


def template_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) float64 area-weighted unit vertex normals of a single mesh."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def default_model(seed: int = DEFAULT_SEED) -> FlameModel:
    """Generates the procedural FLAME-format model (about 2 s on a laptop CPU).

    Args:
      seed: seeds the random part of the identity and expression bases; the
        mesh, rig and landmark embedding do not depend on it.
    Returns:
      A validated `FlameModel` with numpy float32/int32 arrays: V = 5,238
      vertices, F = 10,344 triangles, 300 shape and 100 expression components.
    """
    head = build_head()
    normals = template_normals(head.vertices, head.faces)
    shapedirs, exprdirs = make_bases(head, normals, np.random.default_rng(seed))
    static_idx, static_bary = static_embedding(head)
    dynamic_idx, dynamic_bary = dynamic_embedding(head)
    return FlameModel.from_flame(
        v_template=head.vertices,
        shapedirs=shapedirs,
        exprdirs=exprdirs,
        posedirs=pose_correctives(head, normals),
        J_regressor=joint_regressor(head),
        weights=skinning_weights(head),
        faces=head.faces,
        uv_coords=head.uv_coords,
        uv_faces=head.uv_faces,
        vertex_uv=vertex_uv_from_faces(len(head.vertices), head.faces, head.uv_faces,
                                       head.uv_coords),
        static_lmk_faces_idx=static_idx,
        static_lmk_bary_coords=static_bary,
        dynamic_lmk_faces_idx=dynamic_idx,
        dynamic_lmk_bary_coords=dynamic_bary,
        parents=FLAME_PARENTS,
        source=f"face3d-jax procedural default (seed {seed})",
        origin="procedural default model",
    )
