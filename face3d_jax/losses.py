"""The paper's losses (Sec. 3.3, 4.1, 4.2), each a plain pure JAX function.

    from face3d_jax.losses import identity_loss
    loss = identity_loss(emb_ren, emb_gt)

There is no registry here: the trainer picks losses by name through its terms
(`face3d_train.terms`, `@register_term`), which call these functions on a
step's Context. To add a loss, write a pure function (here, or anywhere) and
register a term that calls it; a config then weighs it by the term's name.

Functions and equations:
    identity_loss                  Eq. 1   1 - cosine similarity of face embeddings
    perceptual_loss                Sec. 4.1 squared L2 of relu3_3 (or identity-net) features
    landmark_loss                  Sec. 4.1 MSE over the 68 landmarks (optionally DECA-weighted)
    symmetric_reconstruction_loss  Sec. 4.1 MSE(I, I_ren) + MSE(I', I'_ren) over the face mask
    shape_center_loss              Eq. 4   sum_i sum_k ||s_ik - mu_i||^2
    regularization_loss            Eq. 5   ||s||^2 + ||psi||^2 + ||D_Geom||_F^2
    vertex_loss                    MICA's  region-weighted L1 of neutral vertices (the shape prior)

Conventions: images NHWC float32; a loss returns a float32 scalar; batch means
unless the equation says sum (Eq. 4). Masks are (B, H, W) or (B, H, W, 1) in
[0, 1] (the renderer's coverage of the face). The weights lambda are the
trainer's business, not the losses'. GAN losses live in face3d_jax.gan_losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------- helpers


def _mask4(mask: jax.Array | None, like: jax.Array) -> jax.Array | None:
    """A mask (B, H, W) or (B, H, W, 1) as (B, H, W, 1) in the dtype of `like`."""
    if mask is None:
        return None
    mask = jnp.asarray(mask, like.dtype)
    if mask.ndim == 3:
        mask = mask[..., None]
    if mask.ndim != 4 or mask.shape[:3] != like.shape[:3] or mask.shape[3] != 1:
        raise ValueError(f"mask must be (B, H, W) or (B, H, W, 1) matching images "
                         f"{tuple(like.shape)}, got {tuple(mask.shape)}")
    return mask


def masked_mse(a: jax.Array, b: jax.Array, mask: jax.Array | None = None,
               eps: float = 1e-8) -> jax.Array:
    """Mean squared error over the pixels inside `mask`.

    a, b: (B, H, W, C) float. mask: None (all pixels), (B, H, W) or (B, H, W, 1)
    weights in [0, 1]. Returns sum(mask * (a - b)^2) / (C * sum(mask) + eps), a
    float32 scalar (the plain mean when mask is None). Pixels are pooled over the
    whole batch, so an image with a small face weighs less than one with a big face.
    """
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    m = _mask4(mask, a)
    if m is None:
        return jnp.mean(jnp.square(a - b))
    return jnp.sum(m * jnp.square(a - b)) / (a.shape[-1] * jnp.sum(m) + eps)


def composite_over(rendered: jax.Array, background: jax.Array,
                   mask: jax.Array | None) -> jax.Array:
    """rendered inside the mask, background outside (DECA composites renders this way
    before its identity and perceptual networks, so background pixels the render
    does not cover cannot dominate the features).

    rendered, background: (B, H, W, C); mask (B, H, W) or (B, H, W, 1) or None
    (returns `rendered`). Returns (B, H, W, C).
    """
    m = _mask4(mask, rendered)
    return rendered if m is None else m * rendered + (1.0 - m) * background


# ----------------------------------------------------------------- the paper's losses


def identity_loss(embedding: jax.Array, embedding_target: jax.Array,
                  eps: float = 1e-8) -> jax.Array:
    """Identity loss, Eq. 1: 1 - F(a).F(b) / (||F(a)||_2 ||F(b)||_2), averaged over the batch.

    Used between A_AbGAN and A_GT (Sec. 3.3) and between I_ren and I_StlGAN
    (Sec. 4.1, 4.2); F is the face-recognition network (ArcFace iresnet).
    embedding, embedding_target: (B, D) float, the F outputs. Returns a float32
    scalar in [0, 2]. eps guards a zero embedding (its cosine is then 0).
    """
    a = jnp.asarray(embedding, jnp.float32)
    b = jnp.asarray(embedding_target, jnp.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embeddings must both be (B, D), got {a.shape} and {b.shape}")
    cos = jnp.sum(a * b, axis=-1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
                                     + eps)
    return jnp.mean(1.0 - cos)


def perceptual_loss(rendered: jax.Array, target: jax.Array, *,
                    feature_fn: Callable[[jax.Array], Any],
                    mask: jax.Array | None = None) -> jax.Array:
    """Perceptual loss, Sec. 4.1: the L2 distance between feature maps of I_ren and
    I_StlGAN, taken as the mean squared difference over feature elements.

    rendered, target: (B, H, W, 3) float RGB in [0, 1].
    feature_fn: images -> a feature map (B, h, w, c) or a pytree of them
      (`face3d_jax.nets.perceptual.perceptual_features` gives VGG16 relu3_3 or the
      identity network's mid-level maps). With several maps the loss is the mean
      of their per-map mean squared differences.
    mask: (B, H, W) or (B, H, W, 1) face mask of the render, or None. When given,
      the render is composited over the target (`composite_over`) before the
      features, so only the face region can differ.
    Returns a float32 scalar.
    """
    rendered = composite_over(rendered, target, mask)
    return feature_distance(feature_fn(rendered), feature_fn(target))


def feature_distance(features: Any, features_target: Any) -> jax.Array:
    """The perceptual loss's distance (Sec. 4.1) on features already computed:
    the mean over maps of each map's mean squared difference.

    features, features_target: a feature map (B, h, w, c) or a pytree of them,
      the same structure for both. Returns a float32 scalar.
    """
    leaves_r, leaves_t = jax.tree.leaves(features), jax.tree.leaves(features_target)
    if not leaves_r or len(leaves_r) != len(leaves_t):
        raise ValueError("feature_fn must return one or more feature maps, the same "
                         "structure for both images")
    per_map = [jnp.mean(jnp.square(jnp.asarray(r, jnp.float32) - jnp.asarray(t, jnp.float32)))
               for r, t in zip(leaves_r, leaves_t)]
    return sum(per_map) / len(per_map)


# DECA's `weighted_landmark_loss` (decalib/utils/lossfunc.py), 0-based iBUG-68
# indices: jaw points 5-6 and 10-11 x2, nose 27-35 x1.5 with 30, 31, 35 x3,
# mouth 48-67 x1.5 with the corners 48, 54 x3, all others x1. (DECA weighs the
# eyes by separate eye-closure terms, not here.)
DECA_LANDMARK_WEIGHTS = np.ones(68, np.float32)
DECA_LANDMARK_WEIGHTS[5:7] = 2.0
DECA_LANDMARK_WEIGHTS[10:12] = 2.0
DECA_LANDMARK_WEIGHTS[27:36] = 1.5
DECA_LANDMARK_WEIGHTS[[30, 31, 35]] = 3.0
DECA_LANDMARK_WEIGHTS[48:68] = 1.5
DECA_LANDMARK_WEIGHTS[[48, 54]] = 3.0
DECA_LANDMARK_WEIGHTS.setflags(write=False)


def landmark_loss(landmarks: jax.Array, landmarks_target: jax.Array, *,
                  weights: str | jax.Array | None = None,
                  confidence: jax.Array | None = None) -> jax.Array:
    """Landmark loss, Sec. 4.1: MSE between the 68 landmarks of I_ren and I_StlGAN.

    landmarks, landmarks_target: (B, 68, 2) float (any consistent image units).
    weights: None (plain MSE), "deca" (DECA_LANDMARK_WEIGHTS) or a (68,) array of
      per-landmark weights. confidence: optional (B, 68) per-detection weights.
    Returns sum_bk w_k c_bk ||p_bk - q_bk||^2 / (2 * sum_bk w_k c_bk), a float32
    scalar: with unit weights exactly the mean over all coordinates (DECA
    normalises its weighted L1 the same way).
    """
    p = jnp.asarray(landmarks, jnp.float32)
    q = jnp.asarray(landmarks_target, jnp.float32)
    if p.shape != q.shape or p.ndim != 3:
        raise ValueError(f"landmarks must both be (B, K, D), got {p.shape} and {q.shape}")
    if isinstance(weights, str):
        if weights != "deca":
            raise ValueError(f"landmark weights must be None, 'deca' or an array, got {weights!r}")
        if p.shape[1] != 68:
            raise ValueError(f"DECA landmark weights need 68 landmarks, got {p.shape[1]}")
        weights = DECA_LANDMARK_WEIGHTS
    w = jnp.ones(p.shape[:2], jnp.float32)
    if weights is not None:
        w = w * jnp.asarray(weights, jnp.float32)[None, :]
    if confidence is not None:
        w = w * jnp.asarray(confidence, jnp.float32)
    sq = jnp.sum(jnp.square(p - q), axis=-1)
    return jnp.sum(w * sq) / (p.shape[-1] * jnp.sum(w) + 1e-8)


def symmetric_reconstruction_loss(rendered: jax.Array, target: jax.Array,
                                  rendered_flipped: jax.Array,
                                  target_flipped: jax.Array | None = None, *,
                                  mask: jax.Array | None = None,
                                  mask_flipped: jax.Array | None = None) -> jax.Array:
    """Symmetric reconstruction loss, Sec. 4.1:
    MSE(I_StlGAN, I_ren) + MSE(I'_StlGAN, I'_ren) (the albedo symmetry consistency term).

    rendered: (B, H, W, 3) I_ren. target: (B, H, W, 3) I_StlGAN.
    rendered_flipped: (B, H, W, 3) I'_ren, the render with flipped albedo, pose and
      light (the caller renders it). target_flipped: I'_StlGAN; default the
      horizontal mirror of `target`.
    mask, mask_flipped: the renders' face masks (B, H, W) or (B, H, W, 1); the
      photometric terms are averaged over them (`masked_mse`). mask_flipped
      defaults to the mirror of `mask`. None means every pixel.
    For the albedo-space use (A_AbGAN vs A_GT, Sec. 4.1) pass albedos as images
    and the UV mask. Returns a float32 scalar.
    """
    if target_flipped is None:
        target_flipped = jnp.flip(target, axis=2)
    if mask_flipped is None and mask is not None:
        mask_flipped = jnp.flip(mask, axis=2)
    return (masked_mse(target, rendered, mask)
            + masked_mse(target_flipped, rendered_flipped, mask_flipped))


def shape_center_loss(shapes: jax.Array, identity: jax.Array | None = None,
                      num_identities: int | None = None) -> jax.Array:
    """Shape centre loss, Eq. 4: sum_i sum_k ||s_ik - mu_i||^2, mu_i the mean shape
    code of identity i's images in the batch (a sum, as the equation writes it).

    Either shapes (N, K, S): N identities with K images each (then identity and
    num_identities are None), or shapes (B, S) with identity (B,) int in
    [0, num_identities) (num_identities a Python int, static under jit; an
    identity with no image contributes nothing). Returns a float32 scalar.
    The gradient w.r.t. s_ik is 2 (s_ik - mu_i) whether or not mu_i is treated
    as a constant (the deviations sum to zero).
    """
    s = jnp.asarray(shapes, jnp.float32)
    if identity is None:
        if s.ndim != 3:
            raise ValueError(f"shapes must be (N, K, S) without identity ids, got {s.shape}")
        return jnp.sum(jnp.square(s - jnp.mean(s, axis=1, keepdims=True)))
    if s.ndim != 2 or num_identities is None:
        raise ValueError(f"with identity ids, shapes must be (B, S) and num_identities "
                         f"given; got {s.shape}, num_identities={num_identities}")
    ids = jnp.asarray(identity, jnp.int32)
    sums = jax.ops.segment_sum(s, ids, num_segments=num_identities)
    counts = jax.ops.segment_sum(jnp.ones_like(ids, jnp.float32), ids,
                                 num_segments=num_identities)
    mu = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.sum(jnp.square(s - mu[ids]))


def regularization_loss(shape: jax.Array, expression: jax.Array,
                        displacement: jax.Array | None = None) -> jax.Array:
    """Regularisation, Eq. 5: ||s||_2^2 + ||psi||_2^2 + ||D_Geom||_F^2, per image,
    averaged over the batch (pulls codes toward the mean face).

    shape: (B, 300) s. expression: (B, 50) psi. displacement: (B, n, n) or
    (B, n, n, 1) UV displacement map D_Geom, or None (coarse-only training).
    Returns a float32 scalar.
    """
    s = jnp.asarray(shape, jnp.float32)
    e = jnp.asarray(expression, jnp.float32)
    per_image = jnp.sum(jnp.square(s.reshape(s.shape[0], -1)), axis=1) \
        + jnp.sum(jnp.square(e.reshape(e.shape[0], -1)), axis=1)
    if displacement is not None:
        d = jnp.asarray(displacement, jnp.float32)
        per_image = per_image + jnp.sum(jnp.square(d.reshape(d.shape[0], -1)), axis=1)
    return jnp.mean(per_image)



def vertex_loss(vertices: jax.Array, vertices_target: jax.Array,
                weights: jax.Array | None = None) -> jax.Array:
    """MICA's 3D supervision (Zielonka et al. 2022, `compute_losses`): the mean
    over batch, vertices and axes of |v - v_gt| * w, times 1000 (metres to
    millimetres). It trains E_shape's shape prior (`face3d_train.prior`).

    vertices, vertices_target: (B, V, 3) float32 metres (neutral meshes).
    weights: (V,) or (B, V) per-vertex region weights (MICA's mask: 150 on the
    face, 1 elsewhere), or None for all ones. Returns a float32 scalar.
    """
    v = jnp.asarray(vertices, jnp.float32)
    t = jnp.asarray(vertices_target, jnp.float32)
    if v.shape != t.shape or v.ndim != 3:
        raise ValueError(f"vertex_loss: vertices {v.shape} and target {t.shape} must both be "
                         "(B, V, 3)")
    diff = jnp.abs(v - t)
    if weights is not None:
        diff = diff * jnp.broadcast_to(jnp.asarray(weights, jnp.float32), v.shape[:2])[..., None]
    return 1000.0 * jnp.mean(diff)
