"""FLAME fitting to a photograph: 68 landmarks first, then photometric
(the 3DMM fit that Sec. 3.1 starts from).

The camera is DECA's weak perspective (s, tx, ty), the paper's "orthogonal
projection"; the parameters are FLAME's shape (first `num_shape`), expression
(first `num_expression`), global and jaw rotations, and, in the photometric
stage, a 9x3 SH light and a flat albedo colour (no albedo basis ships with the
procedural model; with FLAME's texture space the colour could become its
coefficients). Everything is batched and jitted; each stage is one
`lax.scan` of optax Adam steps.

Stages (as DECA's and the FLAME fitting scripts do):
1. rigid: camera and global rotation against the landmarks, the face's shape
   and expression held at zero (the contour landmarks follow the yaw);
2. landmarks: everything, with L2 priors on shape, expression and jaw
   (Gaussian priors of the PCA coefficients);
3. photometric (optional): the rendered face against the image over the
   rendered mask, plus the landmark term, light and colour free.

Landmark loss: the mean squared distance in units of the image size (so the
weights do not depend on the resolution), the 17 jaw-contour points weighted
down by `contour_weight` (their correspondence on the mesh slides, as DECA's
weighting acknowledges).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from face3d_jax.flame.forward import flame_forward
from face3d_jax.flame.model import FlameModel
from face3d_jax.render import cameras
from face3d_jax.render.renderer import WeakPerspectiveCamera, render


@struct.dataclass
class FitParams:
    """shape (B, S), expression (B, E), global_pose (B, 3), jaw_pose (B, 3),
    cam (B, 3) weak perspective, sh (B, 9, 3) SH light, colour (B, 3) flat
    albedo; all float32."""

    shape: Any
    expression: Any
    global_pose: Any
    jaw_pose: Any
    cam: Any
    sh: Any
    colour: Any


class FitResult(NamedTuple):
    params: FitParams
    vertices: Any      # (B, V, 3) fitted mesh
    landmarks2d: Any   # (B, 68, 2) fitted landmarks in pixels
    losses: Any        # (steps,) the total loss along the last stage


def decode(model: FlameModel, p: FitParams):
    """FLAME output of the fit parameters (neck and eyes at rest)."""
    batch = p.shape.shape[0]
    zeros3 = jnp.zeros((batch, 3), jnp.float32)
    return flame_forward(model, p.shape, p.expression, p.global_pose, zeros3, p.jaw_pose,
                         jnp.zeros((batch, 6), jnp.float32))


def project_landmarks(model: FlameModel, p: FitParams, resolution):
    """(B, 68, 2) pixel positions of the model's landmarks under p.cam."""
    out = decode(model, p)
    return cameras.clip_to_pixels(cameras.weak_perspective(out.landmarks, p.cam), resolution)


def initial_params(model: FlameModel, target, resolution, num_shape=100, num_expression=50):
    """Zero shape/expression/pose; the camera that maps the mean face's
    landmark box onto the target's (scale from the spreads, shift from the
    centroids).

    Args:
      target: (B, 68, 2) float32 landmarks in pixels.
      resolution: (H, W).
    """
    batch = target.shape[0]
    height, width = resolution
    zeros = lambda n: jnp.zeros((batch, n), jnp.float32)  # noqa: E731
    sh = jnp.zeros((batch, 9, 3), jnp.float32).at[:, 0].set(1.0 / 0.2820948)  # shading 1
    p = FitParams(shape=zeros(num_shape), expression=zeros(num_expression), global_pose=zeros(3),
                  jaw_pose=zeros(3), cam=jnp.tile(jnp.asarray([[1.0, 0.0, 0.0]]), (batch, 1)),
                  sh=sh, colour=jnp.full((batch, 3), 0.5, jnp.float32))
    mean = decode(model, p).landmarks[..., :2]  # (B, 68, 2) metres, y up
    # Pixels -> NDC (x right, y down); weak perspective: ndc = s (X + t), y negated.
    ndc = jnp.stack([2.0 * target[..., 0] / width - 1.0, 2.0 * target[..., 1] / height - 1.0], -1)
    ndc = ndc * jnp.asarray([1.0, -1.0])
    spread = lambda a: jnp.sqrt(jnp.mean(jnp.sum((a - a.mean(1, keepdims=True)) ** 2, -1), 1))  # noqa: E731
    s = spread(ndc) / spread(mean)
    t = ndc.mean(1) / s[:, None] - mean.mean(1)
    return p.replace(cam=jnp.concatenate([s[:, None], t], axis=1))


def landmark_loss(pred, target, resolution, contour_weight=0.5):
    """Mean squared landmark distance in image-size units; (B, 68, 2) inputs."""
    scale = jnp.asarray([resolution[1], resolution[0]], jnp.float32)
    weights = jnp.ones(68).at[:17].set(contour_weight)
    sq = jnp.sum(((pred - target) / scale) ** 2, axis=-1)
    return jnp.mean(jnp.sum(sq * weights, axis=-1) / jnp.sum(weights))


def _prior(p: FitParams, shape_w, expression_w, jaw_w):
    return (shape_w * jnp.mean(jnp.sum(p.shape ** 2, -1))
            + expression_w * jnp.mean(jnp.sum(p.expression ** 2, -1))
            + jaw_w * jnp.mean(jnp.sum(p.jaw_pose ** 2, -1)))


def _run(loss_fn, params, free, steps, lr):
    """`steps` Adam steps on the fields of `free` (a FitParams of 0/1)."""
    opt = optax.adam(lr)

    def step(carry, _):
        p, state = carry
        loss, grad = jax.value_and_grad(loss_fn)(p)
        grad = jax.tree.map(lambda g, f: g * f, grad, free)
        updates, state = opt.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params, losses


def _mask(p: FitParams, names):
    return FitParams(**{k: jnp.asarray(1.0 if k in names else 0.0)
                        for k in FitParams.__dataclass_fields__})


def fit_landmarks(model: FlameModel, target, resolution, *, num_shape=100, num_expression=50,
                  rigid_steps=100, steps=300, lr=0.01, shape_prior=1e-6, expression_prior=1e-6,
                  jaw_prior=1e-5, contour_weight=0.5, init: FitParams | None = None) -> FitResult:
    """Stages 1-2: FLAME and camera from 68 landmarks (jit this, or call it
    from jitted code; `model` and the sizes are static).

    Args:
      model: the face model.
      target: (B, 68, 2) float32 landmarks in pixels (x right, y down; iBUG).
      resolution: (H, W) of the image the landmarks belong to.
      num_shape, num_expression: how many FLAME components are fitted.
      rigid_steps, steps: Adam steps of the rigid and the full stage.
      lr: Adam learning rate (the parameters are O(1)).
      shape_prior, expression_prior, jaw_prior: weights of the L2 priors.
      contour_weight: weight of the 17 jaw-contour landmarks.
      init: parameters to start from instead of `initial_params`.
    Returns:
      A `FitResult`.
    """
    target = jnp.asarray(target, jnp.float32)
    p = init if init is not None else initial_params(model, target, resolution, num_shape,
                                                     num_expression)

    def loss_fn(q):
        pred = project_landmarks(model, q, resolution)
        return (landmark_loss(pred, target, resolution, contour_weight)
                + _prior(q, shape_prior, expression_prior, jaw_prior))

    p, _ = _run(loss_fn, p, _mask(p, {"cam", "global_pose"}), rigid_steps, lr)
    p, losses = _run(loss_fn, p, _mask(p, {"cam", "global_pose", "shape", "expression",
                                          "jaw_pose"}), steps, lr)
    out = decode(model, p)
    return FitResult(p, out.vertices, project_landmarks(model, p, resolution), losses)


def fit_photometric(model: FlameModel, image, target, fit: FitParams, *, steps=100, lr=0.005,
                    free=("sh", "colour"), landmark_weight=1.0, shape_prior=1e-6,
                    expression_prior=1e-6, jaw_prior=1e-5, contour_weight=0.5) -> FitResult:
    """Stage 3: refine against the pixels (flat albedo colour, SH light).

    By default only the light and the colour move: with a flat albedo, letting
    the geometry follow the pixels trades shading for shape (measured on faces
    rendered from known parameters: the mesh error doubled while the
    photometric loss fell). Pass e.g. free=("sh", "colour", "cam",
    "global_pose", "shape", "expression", "jaw_pose") for DECA's full
    photometric fit when an albedo basis is in use.

    Args:
      image: (B, H, W, 3) float32 in [0, 1], row 0 at the top.
      target: (B, 68, 2) landmarks in pixels (kept as a term, `landmark_weight`).
      fit: the landmark fit's parameters.
      free: names of the FitParams fields optimised.
    Returns:
      A `FitResult`.
    """
    height, width = image.shape[1:3]
    uv_tex = jnp.asarray(model.uv_coords)

    def loss_fn(q):
        out = decode(model, q)
        albedo = jnp.broadcast_to(q.colour[:, None, None, :], (q.colour.shape[0], 4, 4, 3))
        ren = render(out.vertices, model.faces, uv_tex, model.uv_faces, albedo,
                     WeakPerspectiveCamera(cam=q.cam), (height, width), sh_coeffs=q.sh,
                     filter_mode="linear")
        mask = jax.lax.stop_gradient(ren.mask)
        photo = jnp.sum(mask * jnp.abs(ren.image - image)) / jnp.maximum(jnp.sum(mask) * 3, 1.0)
        pred = cameras.clip_to_pixels(cameras.weak_perspective(out.landmarks, q.cam),
                                      (height, width))
        return (photo + landmark_weight * landmark_loss(pred, target, (height, width),
                                                        contour_weight)
                + _prior(q, shape_prior, expression_prior, jaw_prior))

    unknown = set(free) - set(FitParams.__dataclass_fields__)
    if unknown:
        raise ValueError(f"fit_photometric: unknown parameters {sorted(unknown)}; choose from "
                         f"{sorted(FitParams.__dataclass_fields__)}")
    p, losses = _run(loss_fn, fit, _mask(fit, set(free)), steps, lr)
    out = decode(model, p)
    return FitResult(p, out.vertices, project_landmarks(model, p, (height, width)), losses)
