"""Blendshapes and linear blend skinning (Loper et al. 2015; Li et al. 2017, FLAME).

Pure functions of arrays; batched over a leading B axis; jit/vmap/grad safe.
The algebra follows the SMPL/FLAME reference (and smplx's `lbs`), so that a
model file gives the same mesh here and there.
"""

from __future__ import annotations

import jax.numpy as jnp

# Below this squared angle Rodrigues' formula is replaced by its Taylor series,
# whose gradient stays finite at the zero rotation (the common rest pose).
_SMALL_ANGLE_SQ = 1e-8


def axis_angle_to_matrix(rotvec):
    """Rodrigues' formula.

    Args:
      rotvec: (..., 3) float32 axis-angle vectors (angle = norm, radians).
    Returns:
      (..., 3, 3) float32 rotation matrices R with R @ x rotating column vectors.
    """
    theta_sq = jnp.sum(rotvec * rotvec, axis=-1, keepdims=True)
    small = theta_sq < _SMALL_ANGLE_SQ
    safe_sq = jnp.where(small, 1.0, theta_sq)
    theta = jnp.sqrt(safe_sq)
    # sin(t)/t and (1-cos(t))/t^2, with their series near zero.
    a = jnp.where(small, 1.0 - theta_sq / 6.0, jnp.sin(theta) / theta)
    b = jnp.where(small, 0.5 - theta_sq / 24.0, (1.0 - jnp.cos(theta)) / safe_sq)
    x, y, z = rotvec[..., 0], rotvec[..., 1], rotvec[..., 2]
    zero = jnp.zeros_like(x)
    k = jnp.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1)
    k = k.reshape(rotvec.shape[:-1] + (3, 3))
    eye = jnp.eye(3, dtype=rotvec.dtype)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def blend_shapes(coeffs, dirs):
    """Linear blendshape offsets.

    Args:
      coeffs: (B, K) float32 coefficients, K <= the basis' components (the
        first K components are used).
      dirs: (V, 3, K') float32 blendshape basis, K' >= K.
    Returns:
      (B, V, 3) float32 offsets sum_k coeffs[:, k] * dirs[..., k].
    """
    num_v, _, _ = dirs.shape
    k = coeffs.shape[1]
    # A plain GEMM on the free (V*3, K) view: an einsum over (V, 3, K) made
    # XLA transpose-copy the whole basis first.
    flat = jnp.reshape(dirs, (num_v * 3, dirs.shape[2]))[:, :k]
    return jnp.matmul(coeffs, flat.T).reshape(coeffs.shape[0], num_v, 3)


def pose_features(rot_mats):
    """(B, 9*(J-1)) float32: (R_j - I) flattened row-major for joints 1..J-1.

    Args:
      rot_mats: (B, J, 3, 3) float32 local joint rotations.
    """
    batch = rot_mats.shape[0]
    eye = jnp.eye(3, dtype=rot_mats.dtype)
    return (rot_mats[:, 1:] - eye).reshape(batch, -1)


def rigid_transforms(rot_mats, joints, parents):
    """Forward kinematics along a kinematic tree.

    Args:
      rot_mats: (B, J, 3, 3) float32 local rotations.
      joints: (B, J, 3) float32 rest-pose joint locations.
      parents: length-J sequence of ints, parents[0] = -1, parents[j] < j.
    Returns:
      posed_joints: (B, J, 3) float32.
      rel_transforms: (B, J, 4, 4) float32 world transforms with the rest-pose
        joint location removed, i.e. mapping rest-pose points to posed points.
    """
    batch, num_joints = joints.shape[:2]
    rel_joints = joints.at[:, 1:].add(-joints[:, jnp.asarray(parents[1:])])
    local = jnp.concatenate([rot_mats, rel_joints[..., None]], axis=-1)  # (B,J,3,4)
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], joints.dtype),
                              (batch, num_joints, 1, 4))
    local = jnp.concatenate([local, bottom], axis=-2)  # (B,J,4,4)
    chain = [local[:, 0]]
    for j in range(1, num_joints):
        chain.append(chain[parents[j]] @ local[:, j])
    world = jnp.stack(chain, axis=1)
    posed_joints = world[:, :, :3, 3]
    # Subtract R_world @ j_rest so the transform acts on rest-pose coordinates.
    correction = jnp.einsum("bjrc,bjc->bjr", world[:, :, :3, :3], joints)
    rel = world.at[:, :, :3, 3].add(-correction)
    return posed_joints, rel


def skin(vertices, weights, rel_transforms):
    """Linear blend skinning.

    Args:
      vertices: (B, V, 3) float32 rest-pose (shaped and pose-corrected) vertices.
      weights: (V, J) float32 skinning weights.
      rel_transforms: (B, J, 4, 4) float32 from `rigid_transforms`.
    Returns:
      (B, V, 3) float32 posed vertices.
    """
    batch, num_joints = rel_transforms.shape[:2]
    # Blend the 12 affine numbers with one GEMM into a (B, 12, V) layout, then
    # apply them with elementwise multiply-adds: a batched dot of B*V tiny 3x3
    # products (and its transposes) is several times slower on CPU.
    affine = rel_transforms[:, :, :3, :].reshape(batch, num_joints, 12)
    blended = jnp.einsum("bjk,vj->bkv", affine, weights).reshape(batch, 3, 4, -1)
    x, y, z = vertices[..., 0][:, None], vertices[..., 1][:, None], vertices[..., 2][:, None]
    posed = blended[:, :, 0] * x + blended[:, :, 1] * y + blended[:, :, 2] * z + blended[:, :, 3]
    return jnp.moveaxis(posed, 1, 2)  # (B, V, 3)
