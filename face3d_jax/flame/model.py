"""The FLAME model as one immutable pytree of arrays.

`FlameModel` holds exactly what the FLAME forward pass needs (Li et al. 2017;
the paper's Eq. 2) plus the UV layout and the 68-point landmark embedding. It is
a `flax.struct.dataclass`, so it can be passed through `jax.jit`, `jax.vmap` and
`jax.tree.map`; the kinematic tree is static metadata.

Array names follow FLAME's generic_model.pkl where one exists (v_template,
shapedirs, posedirs, J_regressor, weights, f) so that readers of the official
code find their way; the 400 components of FLAME's `shapedirs` are split here
into `shapedirs` (identity, first 300) and `exprdirs` (expression, last 100).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import struct

NUM_JOINTS = 5
JOINT_NAMES = ("global", "neck", "jaw", "left_eye", "right_eye")
# FLAME's kintree_table[0] with the root's parent (uint32 max in the file) as -1.
FLAME_PARENTS = (-1, 0, 1, 1, 1)
NUM_POSE_FEATURES = 9 * (NUM_JOINTS - 1)
NUM_STATIC_LANDMARKS = 51
NUM_CONTOUR_LANDMARKS = 17
# Yaw look-up table of the dynamic contour: 0..39 degrees, then -1..-39 degrees.
NUM_YAW_BINS = 79


@struct.dataclass
class FlameModel:
    """A FLAME-format face model.

    Attributes (V vertices, F triangles, T UV coordinates, S <= 300 identity and
    E <= 100 expression components):
      v_template: (V, 3) float32, the mean head in metres.
      shapedirs: (V, 3, S) float32, identity blendshapes (B_s of Eq. 2).
      exprdirs: (V, 3, E) float32, expression blendshapes (B_psi of Eq. 2).
      posedirs: (V, 3, 36) float32, pose correctives; column 9*(j-1)+3*r+c
        multiplies (R_j - I)[r, c] of joint j = 1..4 (FLAME's layout).
      J_regressor: (5, V) float32, joint locations from the shaped mesh.
      weights: (V, 5) float32, linear-blend-skinning weights (rows sum to 1).
      faces: (F, 3) int32, triangles, counter-clockwise seen from outside.
      uv_coords: (T, 2) float32, UV coordinates in [0, 1], v pointing up (OBJ).
      uv_faces: (F, 3) int32, per-triangle indices into `uv_coords`.
      vertex_uv: (V, 2) float32, one UV coordinate per vertex (the first corner
        that references it), where a displacement map is sampled.
      static_lmk_faces_idx: (51,) int32, triangles of iBUG landmarks 17..67.
      static_lmk_bary_coords: (51, 3) float32, their barycentric coordinates.
      dynamic_lmk_faces_idx: (79, 17) int32, triangles of the contour landmarks
        0..16 per yaw bin (rows 0..39: yaw 0..39 degrees, rows 40..78: yaw
        -1..-39 degrees, in FLAME's sign convention; see landmarks.py).
      dynamic_lmk_bary_coords: (79, 17, 3) float32.
      parents: static, the kinematic tree (FLAME's: -1, 0, 1, 1, 1).
      source: static, a short human-readable description of where it came from.
    """

    v_template: Any
    shapedirs: Any
    exprdirs: Any
    posedirs: Any
    J_regressor: Any
    weights: Any
    faces: Any
    uv_coords: Any
    uv_faces: Any
    vertex_uv: Any
    static_lmk_faces_idx: Any
    static_lmk_bary_coords: Any
    dynamic_lmk_faces_idx: Any
    dynamic_lmk_bary_coords: Any
    parents: tuple[int, ...] = struct.field(pytree_node=False, default=FLAME_PARENTS)
    source: str = struct.field(pytree_node=False, default="")

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[-1])

    @property
    def num_expression(self) -> int:
        return int(self.exprdirs.shape[-1])

    def __call__(self, shape, expression, global_pose, neck_pose, jaw_pose, eye_pose,
                 translation=None):
        """Decodes FLAME parameters; see `face3d_jax.flame.forward.flame_forward`."""
        from face3d_jax.flame.forward import flame_forward

        return flame_forward(self, shape, expression, global_pose, neck_pose,
                             jaw_pose, eye_pose, translation)

    def truncate(self, num_shape: int | None = None,
                 num_expression: int | None = None) -> "FlameModel":
        """Keeps the first `num_shape` identity and `num_expression` expression
        components (the paper uses 300 and 50), for smaller decoders."""
        return self.replace(
            shapedirs=self.shapedirs[..., : (num_shape or self.num_shape)],
            exprdirs=self.exprdirs[..., : (num_expression or self.num_expression)],
        )


def vertex_uv_from_faces(num_vertices: int, faces: np.ndarray, uv_faces: np.ndarray,
                         uv_coords: np.ndarray) -> np.ndarray:
    """(V, 2) float32: for each vertex, the UV of the first triangle corner using it.

    Vertices on a UV seam have several UV coordinates; any one of them samples a
    continuous displacement map to the same value up to the seam's texel error.
    Vertices used by no triangle get (0, 0).
    """
    out = np.zeros((num_vertices, 2), np.float32)
    flat_v = np.asarray(faces).reshape(-1)
    flat_t = np.asarray(uv_faces).reshape(-1)
    # Reverse so that the first occurrence wins the assignment.
    out[flat_v[::-1]] = np.asarray(uv_coords, np.float32)[flat_t[::-1]]
    return out


def validate(model: FlameModel, origin: str = "FLAME model") -> FlameModel:
    """Checks shapes, dtypes and index ranges; raises ValueError naming `origin`.

    Returns the model with arrays cast to the canonical dtypes (numpy).
    """
    def arr(name, dtype):
        value = getattr(model, name)
        if value is None:
            raise ValueError(f"{origin}: missing array '{name}'")
        try:
            return np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{origin}: array '{name}' cannot be read as {np.dtype(dtype).name}: {exc}") from None

    fields = {name: arr(name, np.float32) for name in (
        "v_template", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights",
        "uv_coords", "vertex_uv", "static_lmk_bary_coords", "dynamic_lmk_bary_coords")}
    fields.update({name: arr(name, np.int32) for name in (
        "faces", "uv_faces", "static_lmk_faces_idx", "dynamic_lmk_faces_idx")})

    num_v = fields["v_template"].shape[0] if fields["v_template"].ndim == 2 else -1
    num_f = fields["faces"].shape[0] if fields["faces"].ndim == 2 else -1
    num_t = fields["uv_coords"].shape[0] if fields["uv_coords"].ndim == 2 else -1
    expected = {
        "v_template": (num_v, 3),
        "shapedirs": (num_v, 3, None),
        "exprdirs": (num_v, 3, None),
        "posedirs": (num_v, 3, NUM_POSE_FEATURES),
        "J_regressor": (NUM_JOINTS, num_v),
        "weights": (num_v, NUM_JOINTS),
        "faces": (num_f, 3),
        "uv_coords": (num_t, 2),
        "uv_faces": (num_f, 3),
        "vertex_uv": (num_v, 2),
        "static_lmk_faces_idx": (NUM_STATIC_LANDMARKS,),
        "static_lmk_bary_coords": (NUM_STATIC_LANDMARKS, 3),
        "dynamic_lmk_faces_idx": (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS),
        "dynamic_lmk_bary_coords": (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS, 3),
    }
    for name, want in expected.items():
        got = fields[name].shape
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)) \
                or min(got, default=1) < 0:
            shown = tuple("*" if w is None else w for w in want)
            raise ValueError(f"{origin}: array '{name}' has shape {got}, expected {shown}")
    if num_v < 3 or num_f < 1:
        raise ValueError(f"{origin}: a mesh needs at least 3 vertices and 1 triangle, "
                         f"found {num_v} and {num_f}")
    if fields["shapedirs"].shape[2] > 300 or fields["exprdirs"].shape[2] > 100:
        raise ValueError(f"{origin}: at most 300 shape and 100 expression components, found "
                         f"{fields['shapedirs'].shape[2]} and {fields['exprdirs'].shape[2]}")
    for name, bound in (("faces", num_v), ("uv_faces", num_t), ("static_lmk_faces_idx", num_f),
                        ("dynamic_lmk_faces_idx", num_f)):
        idx = fields[name]
        if idx.size and (idx.min() < 0 or idx.max() >= bound):
            raise ValueError(f"{origin}: array '{name}' has indices in [{idx.min()}, {idx.max()}], "
                             f"expected [0, {bound - 1}]")
    for name, value in fields.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"{origin}: array '{name}' holds NaN or infinite values")
    parents = tuple(int(p) for p in model.parents)
    if parents != FLAME_PARENTS:
        raise ValueError(f"{origin}: kinematic tree {parents} is not FLAME's {FLAME_PARENTS}")
    return model.replace(**fields)
