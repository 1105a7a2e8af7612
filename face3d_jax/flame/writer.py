"""Writes a `FlameModel` in FLAME's own file formats.

The files are those of FLAME's distribution, so smplx and other FLAME code
read them as they read the official ones:

    write_flame_files(model, "out/flame")   # generic_model.pkl, FLAME_NEUTRAL.pkl, ...
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from face3d_jax.flame.files import (DYNAMIC_NAME, NUM_EXPRESSION, NUM_SHAPE, ROOT_PARENT,
                                    STATIC_NAME, UV_NAMES)
from face3d_jax.flame.model import NUM_JOINTS, FlameModel, validate


def write_flame_files(model: FlameModel, out_dir: str | os.PathLike) -> list[Path]:
    """Writes `model` in FLAME's own formats, readable by smplx and FLAME code.

    out_dir/generic_model.pkl and its copy FLAME_NEUTRAL.pkl (smplx's name):
    a protocol-2 pickle of a dict, as the official file but plain numpy:
    v_template (V, 3) float64, f (F, 3) uint32, shapedirs (V, 3, 400) float64
    (identity zero-padded to 300, then expression zero-padded to 100), posedirs
    (V, 3, 36) float64, J_regressor (5, V) scipy.sparse.csc_matrix float64,
    weights (V, 5) float64, kintree_table (2, 5) int64 (root parent 4294967295),
    J (5, 3) float64, bs_style 'lbs', bs_type 'lrotmin'. Also
    flame_static_embedding.pkl, flame_dynamic_embedding.npy and
    head_template.obj (v, vt, f v/vt). Returns the paths written.
    """
    import scipy.sparse


    model = validate(model, origin="model to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    pad = lambda a, n: np.pad(f64(a), ((0, 0), (0, 0), (0, n - a.shape[2])))  # noqa: E731
    regressor = scipy.sparse.csc_matrix(f64(model.J_regressor))
    generic = {
        "v_template": f64(model.v_template),
        "f": np.asarray(model.faces, np.uint32),
        "shapedirs": np.concatenate([pad(model.shapedirs, NUM_SHAPE),
                                     pad(model.exprdirs, NUM_EXPRESSION)], axis=2),
        "posedirs": f64(model.posedirs),
        "J_regressor": regressor,
        "weights": f64(model.weights),
        "kintree_table": np.array([[ROOT_PARENT if p < 0 else p for p in model.parents],
                                   list(range(NUM_JOINTS))], np.int64),
        "J": regressor @ f64(model.v_template),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    written = [out / "generic_model.pkl", out / "FLAME_NEUTRAL.pkl", out / STATIC_NAME,
               out / DYNAMIC_NAME, out / UV_NAMES[0]]
    for path in written[:2]:
        _write_pickle(path, generic)
    _write_pickle(out / STATIC_NAME, {
        "lmk_face_idx": np.asarray(model.static_lmk_faces_idx, np.int64),
        "lmk_b_coords": f64(model.static_lmk_bary_coords)})
    np.save(out / DYNAMIC_NAME, {
        "lmk_face_idx": np.asarray(model.dynamic_lmk_faces_idx, np.int64),
        "lmk_b_coords": f64(model.dynamic_lmk_bary_coords)}, allow_pickle=True)
    _write_obj(out / UV_NAMES[0], model)
    return written


def _write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=2)  # FLAME's files are protocol 2 (Python 2)


def _write_obj(path: Path, model: FlameModel) -> None:
    """v x y z, vt u v, f a/at b/bt c/ct (1-based); %.9g keeps float32 exact."""
    lines = ["# FLAME head template (UV layout), written by face3d-jax"]
    lines += [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in np.asarray(model.v_template).tolist()]
    lines += [f"vt {u:.9g} {v:.9g}" for u, v in np.asarray(model.uv_coords).tolist()]
    lines += ["f " + " ".join(f"{a + 1}/{t + 1}" for a, t in zip(tri, uv))
              for tri, uv in zip(np.asarray(model.faces).tolist(),
                                 np.asarray(model.uv_faces).tolist())]
    path.write_text("\n".join(lines) + "\n")
