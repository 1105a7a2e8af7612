"""The FLAME forward pass (Li et al. 2017; the paper's Eq. 2 plus pose).

    M_c = W(T + B_s s + B_psi psi + B_P(theta), J(s, psi), theta, weights)

A pure function of a `FlameModel` and parameter arrays; batched, float32, and
safe under jit, vmap and grad.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from face3d_jax.flame import lbs
from face3d_jax.flame.landmarks import landmarks68
from face3d_jax.flame.model import FlameModel


class FlameOutput(NamedTuple):
    """vertices (B, V, 3), landmarks (B, 68, 3) in iBUG order, joints (B, 5, 3);
    all float32, metres, translation applied."""

    vertices: jnp.ndarray
    landmarks: jnp.ndarray
    joints: jnp.ndarray


def _check(name, value, width, batch):
    if value.ndim != 2 or (width is not None and value.shape[1] != width):
        want = f"(B, {width})" if width is not None else "(B, K)"
        raise ValueError(f"flame_forward: '{name}' has shape {value.shape}, expected {want}")
    if value.shape[0] != batch:
        raise ValueError(f"flame_forward: '{name}' has batch {value.shape[0]}, "
                         f"but 'shape' has batch {batch}")


def flame_forward(model: FlameModel, shape, expression, global_pose, neck_pose, jaw_pose,
                  eye_pose, translation=None) -> FlameOutput:
    """Decodes FLAME parameters into a posed mesh, its landmarks and joints.

    Args:
      model: the face model.
      shape: (B, S) float32 identity coefficients, S <= model.num_shape (the
        first S components are used).
      expression: (B, E) float32 expression coefficients, E <= model.num_expression.
      global_pose: (B, 3) float32 axis-angle rotation of the whole head (root).
      neck_pose: (B, 3) float32 axis-angle.
      jaw_pose: (B, 3) float32 axis-angle.
      eye_pose: (B, 6) float32 axis-angle of the left then the right eye.
      translation: optional (B, 3) float32 added to every output point.
    Returns:
      FlameOutput(vertices (B, V, 3), landmarks (B, 68, 3), joints (B, 5, 3)).
    """
    shape = jnp.asarray(shape, jnp.float32)
    expression = jnp.asarray(expression, jnp.float32)
    batch = shape.shape[0] if shape.ndim == 2 else -1
    _check("shape", shape, None, batch)
    _check("expression", expression, None, batch)
    for name, value, width in (("global_pose", global_pose, 3), ("neck_pose", neck_pose, 3),
                               ("jaw_pose", jaw_pose, 3), ("eye_pose", eye_pose, 6)):
        _check(name, jnp.asarray(value), width, batch)
    if shape.shape[1] > model.num_shape or expression.shape[1] > model.num_expression:
        raise ValueError(
            f"flame_forward: {shape.shape[1]} shape / {expression.shape[1]} expression coefficients "
            f"given, the model has {model.num_shape} / {model.num_expression}")

    # Two blendshape products rather than one on concatenated bases: the
    # concatenation would copy the 25 MB bases on every call. Vertices stay
    # coordinate planes (B, 3, V) until skinning (model.py says why).
    template = jnp.transpose(model.v_template)[None]  # (1, 3, V)
    v_shaped = (template + lbs.blend_shapes(shape, model.shape_basis)
                + lbs.blend_shapes(expression, model.expr_basis))
    # J_regressor is folded into the bases (model.joint_shape/joint_expr): the
    # rest-pose joints are linear in the coefficients.
    joints_rest = (jnp.matmul(model.J_regressor, model.v_template)[None]
                   + jnp.einsum("bk,kjc->bjc", shape, model.joint_shape[:shape.shape[1]])
                   + jnp.einsum("bk,kjc->bjc", expression,
                                model.joint_expr[:expression.shape[1]]))  # (B, 5, 3)

    pose = jnp.concatenate([jnp.asarray(global_pose, jnp.float32), jnp.asarray(neck_pose, jnp.float32),
                            jnp.asarray(jaw_pose, jnp.float32),
                            jnp.asarray(eye_pose, jnp.float32)], axis=1).reshape(batch, -1, 3)
    rot_mats = lbs.axis_angle_to_matrix(pose)  # (B,5,3,3)
    v_posed = v_shaped + lbs.blend_shapes(lbs.pose_features(rot_mats), model.pose_basis)

    joints, rel = lbs.rigid_transforms(rot_mats, joints_rest, model.parents)
    vertices = lbs.skin(v_posed, model.weights, rel)

    head_rotation = rot_mats[:, 0] @ rot_mats[:, 1]
    landmarks = landmarks68(vertices, model.faces, head_rotation, model.static_lmk_faces_idx,
                            model.static_lmk_bary_coords, model.dynamic_lmk_faces_idx,
                            model.dynamic_lmk_bary_coords)
    if translation is not None:
        translation = jnp.asarray(translation, jnp.float32)
        _check("translation", translation, 3, batch)
        t = translation[:, None]
        vertices, landmarks, joints = vertices + t, landmarks + t, joints + t
    return FlameOutput(vertices, landmarks, joints)
