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


def blend_shapes(coeffs, basis):
    """Linear blendshape offsets, as coordinate planes.

    Args:
      coeffs: (B, K) float32 coefficients, K <= the basis' components (the
        first K components are used).
      basis: (K', 3, V) float32 blendshape basis (`FlameModel.shape_basis`
        layout), K' >= K.
    Returns:
      (B, 3, V) float32 offsets sum_k coeffs[:, k] * basis[k].
    """
    k = coeffs.shape[1]
    _, _, num_v = basis.shape
    # One GEMM on the free (K, 3V) view of the leading rows: its transpose
    # (the backward) reads the same rows, so XLA copies nothing.
    flat = jnp.reshape(basis[:k], (k, 3 * num_v))
    return jnp.matmul(coeffs, flat).reshape(coeffs.shape[0], 3, num_v)


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
    # A concatenation, not joints.at[:, 1:].add(...): XLA's CPU backend ran that
    # scatter in place on a buffer shared by two calls in one program (two
    # decodes of the same joints: the second read the first's result).
    rel_joints = jnp.concatenate(
        [joints[:, :1], joints[:, 1:] - joints[:, jnp.asarray(parents[1:])]], axis=1)
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


def skin(planes, weights, rel_transforms):
    """Linear blend skinning.

    Args:
      planes: (B, 3, V) float32 rest-pose (shaped and pose-corrected) vertices
        as coordinate planes (x, y, z rows).
      weights: (V, J) float32 skinning weights.
      rel_transforms: (B, J, 4, 4) float32 from `rigid_transforms`.
    Returns:
      (B, V, 3) float32 posed vertices.
    """
    batch, num_joints = rel_transforms.shape[:2]
    # Blend the 12 affine numbers per vertex with one GEMM into (B, 12, V),
    # then apply them as multiply-adds on unit-stride planes: a batched dot of
    # B*V tiny 3x4 products (and its transposes) is several times slower on CPU.
    affine = rel_transforms[:, :, :3, :].reshape(batch, num_joints, 12)
    blended = jnp.einsum("bjk,vj->bkv", affine, weights)
    x, y, z = planes[:, 0], planes[:, 1], planes[:, 2]
    posed = [blended[:, 4 * r] * x + blended[:, 4 * r + 1] * y + blended[:, 4 * r + 2] * z
             + blended[:, 4 * r + 3] for r in range(3)]
    return jnp.stack(posed, axis=-1)  # (B, V, 3)
