"""The train state: one pytree holding both sides of alternating descent.

    setup = make_setup(config, model, key)       # static: graphdefs, optimizers, sizes
    state = setup.init_state(key)                # the pytree the jitted step maps

Design card: two optax states, one per phase, in one train state.
  state.shape   E_shape and G_Disp parameters and their Adam (Sec. 5.2: lr 1e-4);
  state.albedo  G_Ab and D_real parameters, G_Ab's EMA, their Adams (StyleGAN2's
                lazy-regularisation rescaling), the path-length mean and the GAN
                step counter that schedules the lazy regularisers;
  state.buffers the modules' non-trained variables (noise buffers, latent_avg,
                frozen BatchNorm statistics, fixed scales): read, never written.
The frozen networks (F of the identity and perceptual losses, VGG16 when its
weights are given) are not part of the state: they are an argument of the
step, never checkpointed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from face3d_jax import texture as tex
from face3d_jax.flame import FlameModel
from face3d_jax.flame.uv import landmark_uvs
from face3d_jax.nets.identity import IdentityNetwork
from face3d_train import terms as T
from face3d_train.gan_updates import GANConfig, d_optimizer, g_optimizer, lazy_adam
from face3d_train.models import Networks, ResidualGenerator, build_networks

PHASES = ("pretrain", "shape", "albedo")


@struct.dataclass
class ShapeSide:
    params: Any      # {"encoder": nnx.State, "displacement": nnx.State} of nnx.Param
    opt_state: Any


@struct.dataclass
class AlbedoSide:
    g: Any           # G_Ab parameters
    g_ema: Any
    d: Any           # D_real parameters
    g_opt: Any
    d_opt: Any
    pl_mean: Any     # () float32
    gan_step: Any    # () int32: GAN updates done (pretrain and albedo phases)


@struct.dataclass
class TrainState:
    step: Any        # () int32
    key: Any         # PRNG key
    shape: ShapeSide
    albedo: AlbedoSide
    buffers: Any     # {"encoder", "displacement", "albedo", "discriminator"}: non-Param variables
    bad_steps: Any   # () int32: consecutive non-finite steps


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything static about a run: graphdefs, optimizers, sizes, weights."""

    config: Any
    model: FlameModel
    graphs: dict            # name -> nnx.GraphDef
    frozen_graphs: dict     # "identity" (F) and, with VGG16 weights, "perceptual"
    layout: Any
    camera_prior: np.ndarray
    max_displacement: float
    uv_mask: np.ndarray     # (Ta, Ta) float32 texels of the UV layout
    albedo_chip: np.ndarray  # (3, 3) float32 UV albedo map -> F's chip (`uv_face_matrix`)
    weights: dict           # phase -> {term: weight}
    shape_tx: optax.GradientTransformation
    gan: GANConfig          # the GAN phases' hyper-parameters (config.optim.gan)
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    groups: tuple[int, int]
    initial: Any            # (state without optimizer, {name: frozen state}), see init_state

    def phase_of(self, step: jax.Array) -> jax.Array:
        """0 pretrain, 1 shape, 2 albedo for a step counter (traced or not)."""
        s = self.config.schedule
        cycle = int(s.shape_steps) + int(s.albedo_steps)
        after = jnp.asarray(step, jnp.int32) - int(s.albedo_pretrain_steps)
        in_shape = jnp.mod(jnp.maximum(after, 0), max(cycle, 1)) < int(s.shape_steps)
        return jnp.where(after < 0, 0, jnp.where(in_shape, 1, 2)).astype(jnp.int32)

    def init_state(self, key: jax.Array, prior=None, albedo_base=None) -> TrainState:
        """The state at step 0 (parameters from `make_setup`'s key, fresh Adams).
        prior: (params, buffers) of E_shape to start from instead, nnx.States
        of the same structure (the shape prior, `face3d_train.prior`).
        albedo_base: (T, T, 3) float32 in [0, 1], the albedo G_Ab draws its
        residual over when it is a `models.ResidualGenerator` (resized to its
        resolution, linear), e.g. the training set's mean A_GT."""
        params, buffers = self.initial[0]
        if prior is not None:
            params = {**params, "encoder": prior[0]}
            buffers = {**buffers, "encoder": prior[1]}
        if albedo_base is not None:
            buffers = {**buffers, "albedo": self._with_base(params["albedo"], buffers["albedo"],
                                                            albedo_base)}
        shape_params = {"encoder": params["encoder"], "displacement": params["displacement"]}
        return TrainState(
            step=jnp.zeros((), jnp.int32), key=key,
            shape=ShapeSide(params=shape_params, opt_state=self.shape_tx.init(shape_params)),
            albedo=AlbedoSide(g=params["albedo"],
                              # A copy: a donated state must not hold one buffer twice.
                              g_ema=jax.tree.map(jnp.copy, params["albedo"]), d=params["discriminator"],
                              g_opt=self.g_tx.init(params["albedo"]),
                              d_opt=self.d_tx.init(params["discriminator"]),
                              pl_mean=jnp.zeros((), jnp.float32),
                              gan_step=jnp.zeros((), jnp.int32)),
            buffers=buffers, bad_steps=jnp.zeros((), jnp.int32))

    def _with_base(self, params, buffers, albedo_base):
        gen = nnx.merge(self.graphs["albedo"], params, buffers)
        if not isinstance(gen, ResidualGenerator):
            raise ValueError("an albedo base needs model.albedo.residual_over_mean = True")
        size = gen.base.shape
        base = jnp.asarray(albedo_base, jnp.float32)
        if base.ndim != 3 or base.shape[-1] != size[-1]:
            raise ValueError(f"albedo base of shape {tuple(base.shape)}: expected (T, T, "
                             f"{size[-1]})")
        gen.base[...] = jax.image.resize(base, size, "linear") * 2.0 - 1.0
        return nnx.split(gen, nnx.Param, ...)[2]

    @property
    def frozen(self):
        """The frozen networks' variables (the step's third argument)."""
        return self.initial[1]


def _adam(lr, b1, b2):
    return lazy_adam(float(lr), (float(b1), float(b2)), 1e-8, None)


def gan_config(optim_gan) -> GANConfig:
    """The GAN updates' hyper-parameters from a config's `optim.gan` (a ConfigDict
    with g_lr, d_lr, b1, b2, r1_gamma, pl_weight, d_reg_every, g_reg_every,
    pl_decay, pl_batch_shrink, ema_kimg, ema_rampup; ema_rampup 0 means none).
    Adam's epsilon is torch's 1e-8, as the standalone GAN step's."""
    g = optim_gan
    rampup = float(g.ema_rampup)
    return GANConfig(
        g_lr=float(g.g_lr), d_lr=float(g.d_lr), betas=(float(g.b1), float(g.b2)), adam_eps=1e-8,
        r1_gamma=float(g.r1_gamma), pl_weight=float(g.pl_weight),
        d_reg_every=int(g.d_reg_every), g_reg_every=int(g.g_reg_every),
        pl_decay=float(g.pl_decay), pl_batch_shrink=int(g.pl_batch_shrink),
        ema_kimg=float(g.ema_kimg), ema_rampup=rampup if rampup > 0 else None)


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def shape_optimizer(cfg) -> optax.GradientTransformation:
    """Adam of the shape side (Sec. 5.2: lr 1e-4).

    The pretrained backbone of E_shape runs at lr * `backbone_lr_scale` (1 in the
    paper config; 0 freezes it), so a config can train the heads and G_Disp
    without shaking the converted face network. With
    `frozen_backbone_stages` = n > 0 an iresnet's stem and first n stages are
    not updated at all: MICA's ArcFace freezes the stem and stages 1-3 and
    trains stage 4, fc and the embedding's BatchNorm (MICA's models/arcface.py,
    which the authors' code uses for E_shape), so the paper config uses 3.
    """
    scale = float(cfg.get("backbone_lr_scale", 1.0))
    frozen = int(cfg.get("frozen_backbone_stages", 0))
    if not 0 <= frozen <= 4:
        raise ValueError(f"optim.shape.frozen_backbone_stages must be 0..4, got {frozen}")
    base = _adam(cfg.lr, cfg.b1, cfg.b2)
    if scale == 1.0 and frozen == 0:
        return base
    frozen_names = ({"conv1", "bn1", "prelu"} | {f"layer{i}" for i in range(1, frozen + 1)}
                    if frozen else set())

    def label(path, _):
        names = _path_names(path)
        if names[:2] != ["encoder", "backbone"]:
            return "rest"
        if scale == 0.0:
            return "frozen"
        return "frozen" if names[2:3] and names[2] in frozen_names else "backbone"

    def labels(params):
        return jax.tree_util.tree_map_with_path(label, params)

    transforms = {"rest": base}
    if scale != 0.0:
        transforms["backbone"] = _adam(float(cfg.lr) * scale, cfg.b1, cfg.b2)
    if frozen or scale == 0.0:  # only then: other runs keep the optimizer state they had
        transforms["frozen"] = optax.set_to_zero()
    return optax.multi_transform(transforms, labels)


def uv_face_matrix(model: FlameModel, identity: IdentityNetwork, size: int) -> np.ndarray:
    """The map from an S x S UV albedo (row 0 at v = 1) to F's chip that
    places the template's landmarks, in UV, where F's alignment puts a
    face's: F sees the albedo's face as it sees a photograph's (the paper's
    D_id, Eq. 1, compares albedos through F). (3, 3) float32."""
    uv = landmark_uvs(model)  # (51, 2), iBUG 17..67
    index = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], axis=-1)
    # The contour (iBUG 0..16) has no place in UV and neither alignment reads it.
    landmarks = np.concatenate([np.zeros((17, 2)), index]).astype(np.float32)
    return np.asarray(identity.chip_matrices(landmarks[None]))[0]


def make_setup(config, model: FlameModel, key: jax.Array,
               networks: Networks | None = None, identity_head=None) -> Setup:
    """Builds the networks of `config.model` from `key` and everything static.

    Raises ValueError for an unknown loss term or schedule that cannot work
    (e.g. a shape-centre loss with one image per identity).
    """
    if int(config.model.render_size) != int(config.data.generate.crop_size):
        raise ValueError(f"model.render_size = {config.model.render_size} must equal "
                         f"data.generate.crop_size = {config.data.generate.crop_size}: the "
                         "render is compared with the crop pixel for pixel")
    if int(config.optim.shape.get("frozen_backbone_stages", 0)) and \
            not str(config.model.encoder.backbone).startswith("iresnet"):
        raise ValueError("optim.shape.frozen_backbone_stages freezes an iresnet's stages (MICA's "
                         f"ArcFace); model.encoder.backbone is {config.model.encoder.backbone!r}")
    nets = networks or build_networks(config.model, model, key, identity_head=identity_head)
    weights = {p: T.check_weights(config.losses.get(p, {}), p) for p in PHASES}
    groups = (int(config.data.identities_per_batch), int(config.data.images_per_identity))
    if weights["shape"].get("shape_center", 0.0) and groups[1] < 2:
        raise ValueError("losses.shape.shape_center needs data.images_per_identity >= 2")
    graphs, params, buffers = {}, {}, {}
    for name in ("encoder", "displacement", "albedo", "discriminator"):
        graphs[name], params[name], buffers[name] = nnx.split(getattr(nets, name), nnx.Param, ...)
    frozen_graphs, frozen = {}, {}
    for name in ("identity", "perceptual"):
        if getattr(nets, name) is not None:
            frozen_graphs[name], frozen[name] = nnx.split(getattr(nets, name))
    gan = gan_config(config.optim.gan)
    uvr = tex.uv_raster(model.uv_coords, model.uv_faces, nets.albedo.config.resolution)
    return Setup(
        config=config, model=model, graphs=graphs, frozen_graphs=frozen_graphs,
        layout=nets.layout, camera_prior=nets.camera_prior,
        max_displacement=nets.max_displacement,
        uv_mask=np.asarray(uvr.inside, np.float32), weights=weights,
        albedo_chip=uv_face_matrix(model, nets.identity, nets.albedo.config.resolution),
        shape_tx=shape_optimizer(config.optim.shape),
        gan=gan, g_tx=g_optimizer(gan), d_tx=d_optimizer(gan),
        groups=groups, initial=((params, buffers), frozen))
