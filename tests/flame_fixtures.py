"""Small random but valid FLAME models for tests (not a face; just consistent arrays)."""

from __future__ import annotations

import numpy as np

from face3d_jax.flame.model import (
    NUM_CONTOUR_LANDMARKS, NUM_JOINTS, NUM_POSE_FEATURES, NUM_STATIC_LANDMARKS, NUM_YAW_BINS,
    FlameModel, vertex_uv_from_faces)


def _rows_summing_to_one(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype(np.float32)


def tiny_model(seed: int = 0, num_vertices: int = 60, num_faces: int = 100,
               num_shape: int = 300, num_expression: int = 100,
               num_uv: int = 70) -> FlameModel:
    """A validated FlameModel with numpy arrays: V = num_vertices, F = num_faces,
    S/E components (FLAME's full 300/100 by default, so that FLAME's file
    formats round-trip exactly), T = num_uv UV coordinates."""
    rng = np.random.default_rng(seed)
    v, f = num_vertices, num_faces
    faces = np.stack([rng.choice(v, 3, replace=False) for _ in range(f)]).astype(np.int32)
    uv_faces = rng.integers(0, num_uv, (f, 3), dtype=np.int32)
    uv_coords = rng.uniform(0, 1, (num_uv, 2)).astype(np.float32)
    # A sparse joint regressor, as FLAME's: each joint averages a few vertices.
    regressor = np.zeros((NUM_JOINTS, v), np.float32)
    for j in range(NUM_JOINTS):
        picked = rng.choice(v, 8, replace=False)
        regressor[j, picked] = _rows_summing_to_one(rng, (8,))
    return FlameModel.from_flame(
        v_template=rng.normal(0, 0.1, (v, 3)).astype(np.float32),
        shapedirs=rng.normal(0, 1e-3, (v, 3, num_shape)).astype(np.float32),
        exprdirs=rng.normal(0, 1e-3, (v, 3, num_expression)).astype(np.float32),
        posedirs=rng.normal(0, 1e-3, (v, 3, NUM_POSE_FEATURES)).astype(np.float32),
        J_regressor=regressor,
        weights=_rows_summing_to_one(rng, (v, NUM_JOINTS)),
        faces=faces,
        uv_coords=uv_coords,
        uv_faces=uv_faces,
        vertex_uv=vertex_uv_from_faces(v, faces, uv_faces, uv_coords),
        static_lmk_faces_idx=rng.integers(0, f, NUM_STATIC_LANDMARKS, dtype=np.int32),
        static_lmk_bary_coords=_rows_summing_to_one(rng, (NUM_STATIC_LANDMARKS, 3)),
        dynamic_lmk_faces_idx=rng.integers(0, f, (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS),
                                           dtype=np.int32),
        dynamic_lmk_bary_coords=_rows_summing_to_one(
            rng, (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS, 3)),
        source=f"tiny test model (seed {seed})",
        origin="tiny_model",
    )
