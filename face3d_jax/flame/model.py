"""The FLAME model as one immutable pytree of arrays.

`FlameModel` holds exactly what the FLAME forward pass needs (Li et al. 2017;
the paper's Eq. 2) plus the UV layout and the 68-point landmark embedding. It is
a `flax.struct.dataclass`, so it can be passed through `jax.jit`, `jax.vmap` and
`jax.tree.map`; the kinematic tree is static metadata.

Array names follow FLAME's generic_model.pkl where one exists (v_template,
shapedirs, posedirs, J_regressor, weights, f) so that readers of the official
code find their way; the 400 components of FLAME's `shapedirs` are split here
into `shapedirs` (identity, first 300) and `exprdirs` (expression, last 100).

Storage is laid out for the decoder, not as FLAME's files: the bases are kept
component-major and coordinate-major, (K, 3, V), so that a batch of
coefficients times a basis is one plain GEMM whose backward needs no transposed
copy of the 25 MB basis (XLA on CPU made one per call from FLAME's (V, 3, K):
5x slower forward+backward at batch 1), and the vertices come out as (B, 3, V)
planes that skinning reads with unit stride. The joint regressor is folded into
the identity and expression bases once, at construction (`joint_shape`,
`joint_expr`), as SMPL's authors suggest, so the rest-pose joints cost a
(B, K) x (K, 15) product instead of a regression over every vertex. FLAME's
layouts remain readable as the properties `shapedirs`, `exprdirs`, `posedirs`
(views of the same numbers). Build models with `FlameModel.from_flame`, which
validates and folds; the loaders and the procedural default do.
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


# The arrays of a model in FLAME's layouts: what `from_flame` takes, what the
# loaders and writers exchange, and the names of our npz format.
FLAME_ARRAYS = ("v_template", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights",
                "faces", "uv_coords", "uv_faces", "vertex_uv", "static_lmk_faces_idx",
                "static_lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords")


@struct.dataclass
class FlameModel:
    """A FLAME-format face model, stored for the decoder (module docstring).

    Attributes (V vertices, F triangles, T UV coordinates, S <= 300 identity and
    E <= 100 expression components):
      v_template: (V, 3) float32, the mean head in metres.
      shape_basis: (S, 3, V) float32, identity blendshapes (B_s of Eq. 2):
        shape_basis[k, c, v] = FLAME's shapedirs[v, c, k].
      expr_basis: (E, 3, V) float32, expression blendshapes (B_psi of Eq. 2).
      pose_basis: (36, 3, V) float32, pose correctives; component 9*(j-1)+3*r+c
        multiplies (R_j - I)[r, c] of joint j = 1..4 (FLAME's layout).
      J_regressor: (5, V) float32, joint locations from the shaped mesh.
      joint_shape: (S, 5, 3) float32, J_regressor applied to each identity
        component (the rest-pose joints are linear in the coefficients).
      joint_expr: (E, 5, 3) float32, the same for the expression components.
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
    shape_basis: Any
    expr_basis: Any
    pose_basis: Any
    J_regressor: Any
    joint_shape: Any
    joint_expr: Any
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

    @classmethod
    def from_flame(cls, *, parents=FLAME_PARENTS, source: str = "",
                   origin: str = "FLAME model", **arrays) -> FlameModel:
        """Validates arrays in FLAME's layouts and builds the model.

        Args:
          **arrays: every name of `FLAME_ARRAYS`: shapedirs (V, 3, S), exprdirs
            (V, 3, E), posedirs (V, 3, 36) and the attributes above, any array
            type and dtype that converts to float32 / int32.
          parents, source: as the attributes.
          origin: what to name in error messages (a file, a function).
        Returns:
          A FlameModel of numpy float32 / int32 arrays.
        Raises:
          ValueError naming `origin` and the array, for a missing or unknown
          array, a wrong shape, an index out of range or a non-finite value.
        """
        unknown = sorted(set(arrays) - set(FLAME_ARRAYS))
        if unknown:
            raise ValueError(f"{origin}: unknown array(s) {', '.join(unknown)}")
        fields = _checked_arrays(arrays, parents, origin)

        def planes(dirs):  # (V, 3, K) -> (K, 3, V), contiguous
            return np.ascontiguousarray(dirs.transpose(2, 1, 0))

        def joints_of(dirs):  # (V, 3, K) -> (K, 5, 3): J_regressor applied to each component
            folded = np.einsum("jv,vck->kjc", fields["J_regressor"].astype(np.float64), dirs)
            return folded.astype(np.float32)

        shapedirs, exprdirs = fields.pop("shapedirs"), fields.pop("exprdirs")
        posedirs = fields.pop("posedirs")
        return cls(shape_basis=planes(shapedirs), expr_basis=planes(exprdirs),
                   pose_basis=planes(posedirs), joint_shape=joints_of(shapedirs),
                   joint_expr=joints_of(exprdirs), parents=tuple(int(p) for p in parents),
                   source=source, **fields)

    def flame_arrays(self) -> dict[str, Any]:
        """{name: array} for every name of `FLAME_ARRAYS`, in FLAME's layouts."""
        return {name: getattr(self, name) for name in FLAME_ARRAYS}

    @property
    def shapedirs(self):
        """(V, 3, S) float32 identity basis in FLAME's layout (a transposed view)."""
        return self.shape_basis.transpose(2, 1, 0)

    @property
    def exprdirs(self):
        """(V, 3, E) float32 expression basis in FLAME's layout (a transposed view)."""
        return self.expr_basis.transpose(2, 1, 0)

    @property
    def posedirs(self):
        """(V, 3, 36) float32 pose correctives in FLAME's layout (a transposed view)."""
        return self.pose_basis.transpose(2, 1, 0)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shape_basis.shape[0])

    @property
    def num_expression(self) -> int:
        return int(self.expr_basis.shape[0])

    def __call__(self, shape, expression, global_pose, neck_pose, jaw_pose, eye_pose,
                 translation=None):
        """Decodes FLAME parameters; see `face3d_jax.flame.forward.flame_forward`."""
        from face3d_jax.flame.forward import flame_forward

        return flame_forward(self, shape, expression, global_pose, neck_pose,
                             jaw_pose, eye_pose, translation)

    def truncate(self, num_shape: int | None = None,
                 num_expression: int | None = None) -> FlameModel:
        """Keeps the first `num_shape` identity and `num_expression` expression
        components (the paper uses 300 and 50), for smaller decoders."""
        s, e = num_shape or self.num_shape, num_expression or self.num_expression
        return self.replace(shape_basis=self.shape_basis[:s], joint_shape=self.joint_shape[:s],
                            expr_basis=self.expr_basis[:e], joint_expr=self.joint_expr[:e])


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

    Returns the model rebuilt from its FLAME-layout arrays (numpy, canonical
    dtypes), so the folded joint bases agree with the bases and J_regressor.
    """
    return FlameModel.from_flame(**model.flame_arrays(), parents=model.parents,
                                 source=model.source, origin=origin)


def _checked_arrays(arrays: dict[str, Any], parents, origin: str) -> dict[str, np.ndarray]:
    """The FLAME-layout arrays cast to float32 / int32 and checked (see `validate`)."""
    def arr(name, dtype):
        value = arrays.get(name)
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
    parents = tuple(int(p) for p in parents)
    if parents != FLAME_PARENTS:
        raise ValueError(f"{origin}: kinematic tree {parents} is not FLAME's {FLAME_PARENTS}")
    return fields
