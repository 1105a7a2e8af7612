"""Loss terms of the trainer, by name: what a config's `losses.<phase>` weighs.

    config.losses.shape = {"identity": 0.5, "perceptual": 1.0, "landmark": 5.0, ...}

Each term is a function of a `Context` (the batch, the networks' outputs and
the renders of one step) returning a float32 scalar; the trainer sums
weight * term over the phase's names. A researcher adds a term with

    @register_term("my_term")
    def my_term(ctx): return ...

and names it in a config: the trainer is not touched. The terms wrap the pure
losses of `face3d_jax.losses` (Sec. 3.3, 4.1, 4.2, Eqs. 1, 4, 5) and
`face3d_jax.gan_losses`; what each compares:

  identity                         Eq. 1 between F(I_ren) and F(I_StlGAN), each
                                   aligned by its landmarks (`Context`)
  perceptual                       Sec. 4.1: mean squared difference of VGG16
                                   relu3_3 of I_ren and I_StlGAN (the paper's;
                                   model.perceptual.weights), or of F's mid-level
                                   maps on the target's chip when no VGG16
                                   weights are given
  landmark                         Sec. 4.1: MSE of the 68 landmarks, in crop
                                   units of [-1, 1] (DECA's normalisation, so the
                                   weight does not depend on the crop size)
  symmetric_reconstruction         Sec. 4.1: MSE(I, I_ren) + MSE(I, I'_ren) over the
                                   render's mask, I'_ren rendered with the albedo
                                   mirrored in UV (FLAME's layout is mirror-
                                   symmetric): both must explain the image, which
                                   is how the term asks for a symmetric albedo
  shape_center                     Eq. 4 over the batch's identities (G x K images)
  regularization                   Eq. 5: ||s||^2 + ||psi||^2 + ||D_Geom||_F^2
  albedo_symmetric_reconstruction  Sec. 5.2: the same between A_AbGAN and A_GT over
                                   the UV layout's texels
  albedo_identity                  Eq. 1 between F(A_AbGAN) and F(A_GT) (D_id)
  gan                              non-saturating G loss of D_real on A_AbGAN
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType

import jax
import jax.numpy as jnp

from face3d_jax import gan_losses
from face3d_jax import losses as L
from face3d_jax.faces.align import RENDER_TO_INDEX

TermFn = Callable[["Context"], jax.Array]
_TERMS: dict[str, TermFn] = {}
TERMS: Mapping[str, TermFn] = MappingProxyType(_TERMS)


def register_term(name: str) -> Callable[[TermFn], TermFn]:
    """Decorator registering a term; a taken name raises ValueError."""
    def decorate(fn: TermFn) -> TermFn:
        if _TERMS.get(name, fn) is not fn:
            raise ValueError(f"a loss term named {name!r} is already registered")
        _TERMS[name] = fn
        return fn

    return decorate


def check_weights(weights: Mapping[str, float], phase: str) -> dict[str, float]:
    """{name: float weight} of one phase, every name registered; ValueError otherwise."""
    out = {}
    for name, weight in dict(weights).items():
        if name not in _TERMS:
            raise ValueError(f"losses.{phase}.{name}: unknown loss term; registered: "
                             f"{', '.join(sorted(_TERMS))}")
        out[name] = float(weight)
    return out


def weighted_sum(weights: Mapping[str, float], ctx: "Context") -> tuple[jax.Array, dict]:
    """sum_n w_n term_n(ctx) over the non-zero weights, and {name: term value}."""
    values = {name: _TERMS[name](ctx) for name, w in weights.items() if w != 0.0}
    total = sum((weights[n] * v for n, v in values.items()), jnp.float32(0.0))
    return total, values


class Context:
    """What the terms read, computed on first use (under jit, only what a
    phase's terms need is traced).

    Given:
      batch: dict with crop (B, c, c, 3) float32 in [0, 1], landmarks (B, 68, 2)
        crop pixels (pixel centres at j + 0.5), albedo (B, Ta, Ta, 3) float32
        A_GT in [0, 1], w (B, L, 512).
      codes: `models.decode_codes` output; displacement (B, Td, Td, 1) or None;
      albedo (B, Ta, Ta, 3) A_AbGAN; render_fn: albedo -> RenderOutput of the
      detailed mesh under the predicted camera and light, over the crop;
      identity: F, a `nets.identity.IdentityNetwork`; albedo_chip: (3, 3)
      float32, UV map -> F's chip (the template's landmarks in UV placed as
      F aligns a face); perceptual_fn: images -> VGG16 relu3_3
      (B, H/4, W/4, 256), or None (the perceptual term uses F's maps);
      disc_fn: albedo in [0, 1] -> logits (B, 1); uv_mask: (Ta, Ta) float32;
      groups: (G, K) of the batch.

    F sees each image aligned as its network was trained: the target by its
    landmarks, the render by its projected landmarks (no gradient flows
    through an alignment), a UV albedo by `albedo_chip`. The perceptual term
    on F's maps warps the render with the target's alignment instead, so that
    the two are compared pixel for pixel and a misplaced face costs.
    """

    def __init__(self, *, batch, codes, displacement, albedo, render_fn, identity,
                 albedo_chip, disc_fn, uv_mask, groups, perceptual_fn=None):
        self.batch, self.codes, self.displacement, self.albedo = batch, codes, displacement, albedo
        self.render_fn, self.identity, self.disc_fn = render_fn, identity, disc_fn
        self.albedo_chip = albedo_chip
        self.perceptual_fn = perceptual_fn
        self.uv_mask, self.groups = uv_mask, groups

    target = property(lambda self: self.batch["crop"])

    @functools.cached_property
    def render(self):
        return self.render_fn(self.albedo)

    @functools.cached_property
    def render_flipped(self):
        return self.render_fn(jnp.flip(self.albedo, axis=2))

    def _chips(self, landmarks):
        return jax.lax.stop_gradient(self.identity.chip_matrices(landmarks + RENDER_TO_INDEX))

    @functools.cached_property
    def target_chip(self):
        return self._chips(self.batch["landmarks"])

    @functools.cached_property
    def identity_render(self):
        return self.identity.embed(self.render.image, self._chips(self.render.landmarks2d))

    @functools.cached_property
    def identity_target(self):
        return jax.tree.map(jax.lax.stop_gradient,
                            self.identity.embed(self.target, self.target_chip))

    @functools.cached_property
    def render_maps_on_target_chip(self):
        return self.identity.maps(self.render.image, self.target_chip)

    def _albedo_chips(self, albedo):
        return jnp.broadcast_to(self.albedo_chip, (albedo.shape[0], 3, 3))

    @functools.cached_property
    def identity_albedo(self):
        return self.identity.embed(self.albedo, self._albedo_chips(self.albedo))

    @functools.cached_property
    def identity_albedo_target(self):
        gt = self.batch["albedo"]
        return jax.tree.map(jax.lax.stop_gradient,
                            self.identity.embed(gt, self._albedo_chips(gt)))


def _uv_mask(ctx: Context, like: jax.Array) -> jax.Array:
    return jnp.broadcast_to(ctx.uv_mask[None], like.shape[:3])


@register_term("identity")
def _identity(ctx: Context) -> jax.Array:
    return L.identity_loss(ctx.identity_render[0], ctx.identity_target[0])


@register_term("perceptual")
def _perceptual(ctx: Context) -> jax.Array:
    # The render is already over the target (its background is the crop), so
    # no mask. Without VGG16: F's maps of both, on the target's chip.
    if ctx.perceptual_fn is None:
        return L.feature_distance(ctx.render_maps_on_target_chip, ctx.identity_target[1])
    return L.perceptual_loss(ctx.render.image, ctx.target, feature_fn=ctx.perceptual_fn)


@register_term("landmark")
def _landmark(ctx: Context) -> jax.Array:
    size = ctx.target.shape[1]
    return L.landmark_loss(ctx.render.landmarks2d * (2.0 / size),
                           ctx.batch["landmarks"] * (2.0 / size))


@register_term("symmetric_reconstruction")
def _sym_rec(ctx: Context) -> jax.Array:
    r, rf = ctx.render, ctx.render_flipped
    return L.symmetric_reconstruction_loss(r.image, ctx.target, rf.image, ctx.target,
                                           mask=r.mask, mask_flipped=rf.mask)


@register_term("shape_center")
def _shape_center(ctx: Context) -> jax.Array:
    g, k = ctx.groups
    s = ctx.codes["shape"]
    return L.shape_center_loss(s.reshape(g, k, s.shape[-1]))


@register_term("regularization")
def _regularization(ctx: Context) -> jax.Array:
    return L.regularization_loss(ctx.codes["shape"], ctx.codes["expression"], ctx.displacement)


@register_term("albedo_symmetric_reconstruction")
def _albedo_sym_rec(ctx: Context) -> jax.Array:
    a, gt = ctx.albedo, ctx.batch["albedo"]
    mask = _uv_mask(ctx, a)
    return L.symmetric_reconstruction_loss(a, gt, jnp.flip(a, axis=2), gt, mask=mask,
                                           mask_flipped=mask)


@register_term("albedo_identity")
def _albedo_identity(ctx: Context) -> jax.Array:
    return L.identity_loss(ctx.identity_albedo[0], ctx.identity_albedo_target[0])


@register_term("gan")
def _gan(ctx: Context) -> jax.Array:
    return gan_losses.g_nonsaturating_loss(ctx.disc_fn(ctx.albedo))
