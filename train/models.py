"""The trained networks of Sec. 3.3 and 4: E_shape, G_Disp, G_Ab and D_real,
and the frozen face network F of the identity and perceptual losses.

    nets = build_networks(config.model, model, key)       # NNX modules
    codes = decode_codes(nets.encoder(crops), cfg, prior)    # shape, expression, pose...

E_shape (Sec. 4.2): a face backbone and one linear head, as DECA's encoder,
whose output is split into shape s (S), expression psi (E), pose p (6 =
global rotation + jaw, axis-angle, DECA's layout), camera (3, DECA's weak
perspective s, tx, ty) and SH light (27). The head starts at zero weights, so
training starts from the mean face seen by a camera that frames the crop
(`crop_camera_prior`) under the ambient light of `render.views`. Backbones:
  "dlib"        the face-recognition ResNet shipped by face-recognition-models
                (pretrained, offline; the default of the small configs);
  "iresnet*"    ArcFace's iresnet (the paper: initialised from MICA's
                weights, `encoder.weights` = a torch file), on 112^2 input.
Backbone features are the last stage's map, averaged over space, and the
linear head reads them standardised by fixed statistics (`FeatureStats`:
mean 0 and scale 1, i.e. the raw features, until the shape prior sets those
of its training crops, `face3d_train.prior`). Why: dlib's pooled features are
all positive (mean 1.2, spread 0.1), so every Adam step of a head on the raw
features moves the codes of all images the same way by about lr x the sum of
the features (~300 lr): in `tiny` 10 shape steps at 1e-3 took the prior's
codes from |s|^2 ~ 300 to ~5000 and the NoW-region error from 3.1 to 21.7 mm.
On centred features a step's common move is the bias's alone.

Shape head (`encoder.shape_head`): "linear" (the shape rows of the one
linear head, DECA's layout) or "mica" (the paper's: Sec. 5.2 initialises
E_shape from MICA [61], and the authors' code takes the shape from MICA's two
parts, the iresnet's 512-d embedding, L2-normalised, through MICA's mapping
MLP, `face3d_jax.nets.mica`; the linear head then gives the other codes).
With "mica", `encoder.weights` is MICA's mica.tar (backbone and mapping
both converted); without weights the mapping's output layer starts at zero,
so the start is the mean face either way. The
iresnet's BatchNorm statistics stay those of the converted weights
(`use_running_average=True`): the usual choice when fine-tuning a
recognition backbone with small per-device batches, and it keeps the step a
pure function of the parameters, so any device count computes the same.

G_Disp: a StyleGAN2 generator (the authors' code: 256^2) from the same w,
one output channel, bounded to [-max, max] by max * tanh (Sec. 4.2: D_Geom in
[-0.01, 0.01]). G_Ab: a StyleGAN2 generator at the albedo size; its output x
in [-1, 1] is the albedo (x + 1) / 2. Both take the first n_latent rows of w
when their resolution needs fewer than w has (at 1024^2 all 18). A fresh
G_Ab's modulation weights (the affine maps w -> styles) start at
`albedo.modulation_init` times StyleGAN2's N(0, 1): 0 starts G_Ab independent
of w (`scale_modulation` says why a small dataset wants that).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from face3d_jax.flame import FlameModel
from face3d_jax.nets import arcface, dlib_resnet
from face3d_jax.nets.identity import IdentityHead, IdentityNetwork
from face3d_jax.nets.mica import MicaConfig, MicaMapping, normalize
from face3d_jax.nets.stylegan2 import Discriminator, Generator, StyleGAN2Config
from face3d_jax.nets.stylegan2_layers import ModulatedConv2d, ToRGB
from face3d_jax.render.views import default_sh_light

POSE_DIM, CAMERA_DIM, LIGHT_DIM = 6, 3, 27


class FeatureStats(nnx.Variable):
    """Fixed input statistics of E_shape's linear head: not trained (not an
    nnx.Param), set once by the shape prior."""
# dlib's network has unpadded strided layers: below 72 px its last stage is empty.
DLIB_MIN_INPUT = 72


@dataclasses.dataclass(frozen=True)
class CodeLayout:
    """Where each code lies in E_shape's output vector."""

    num_shape: int
    num_expression: int

    @property
    def size(self) -> int:
        return self.num_shape + self.num_expression + POSE_DIM + CAMERA_DIM + LIGHT_DIM

    def split(self, out: jax.Array) -> dict[str, jax.Array]:
        s, e = self.num_shape, self.num_expression
        edges = np.cumsum([s, e, POSE_DIM, CAMERA_DIM])
        parts = jnp.split(out, edges, axis=-1)
        return dict(zip(("shape", "expression", "pose", "camera", "light"), parts))


def crop_camera_prior(model: FlameModel, crop_scale: float = 1.25,
                      box_enlarge: float = 1.1) -> np.ndarray:
    """The weak-perspective camera (s, tx, ty) that frames the template's 68
    landmarks as DECA's crop (faces.crop_matrix) frames detected ones: the
    landmark box, enlarged by 1.1 and by the crop scale 1.25, spans the crop
    (NDC [-1, 1]), centred. Returns (3,) float32."""
    lmk = _template_landmarks(model)
    lo, hi = lmk[:, :2].min(0), lmk[:, :2].max(0)
    side = (hi - lo).sum() / 2 * box_enlarge * crop_scale
    centre = (lo + hi) / 2
    return np.array([2.0 / side, -centre[0], -centre[1]], np.float32)


def _template_landmarks(model: FlameModel) -> np.ndarray:
    from face3d_jax.flame import flame_forward

    z = lambda n: jnp.zeros((1, n), jnp.float32)
    out = flame_forward(model, z(1), z(1), z(3), z(3), z(3), z(6))
    return np.asarray(out.landmarks[0], np.float64)


class ShapeEncoder(nnx.Module):
    """E_shape: crops (B, c, c, 3) float32 RGB in [0, 1] -> (B, layout.size) float32
    (shape first, `CodeLayout`'s order, whichever the shape head)."""

    def __init__(self, backbone: str, layout: CodeLayout, *, input_size: int,
                 widths=(64, 128, 256, 512), weights: str = "", shape_head: str = "linear",
                 mica_hidden: int = 300, mica_layers: int = 3, rngs: nnx.Rngs):
        self.kind, self.input_size = backbone, int(input_size)
        if shape_head not in ("linear", "mica"):
            raise ValueError(f"unknown E_shape shape_head {shape_head!r}: 'linear' or 'mica'")
        if shape_head == "mica" and (not backbone.startswith("iresnet")
                                     or self.input_size != arcface.INPUT_SIZE):
            raise ValueError(f"shape_head 'mica' reads ArcFace's embedding: it needs an iresnet "
                             f"backbone at input_size {arcface.INPUT_SIZE}, got {backbone!r} at "
                             f"{input_size} (set model.encoder.shape_head=linear)")
        mica = None
        if backbone == "dlib":
            # The shipped network: real weights whenever the package is installed.
            self.backbone = dlib_resnet.load_dlib_resnet()
            width = dlib_resnet.STAGES[-1][0]
        elif backbone.startswith("iresnet"):
            if weights and shape_head == "mica":
                from face3d_jax.convert.mica import convert_mica

                self.backbone, mica = convert_mica(weights)
                if mica.config.out_dim != layout.num_shape:
                    raise ValueError(f"{weights}: MICA's mapping predicts "
                                     f"{mica.config.out_dim} shape coefficients, "
                                     f"model.num_shape is {layout.num_shape}")
            elif weights:
                from face3d_jax.convert.arcface import convert_arcface

                self.backbone = convert_arcface(weights)
            else:
                self.backbone = arcface.IResNet(
                    arcface.iresnet_config(backbone, widths=tuple(widths)), rngs=rngs)
            width = self.backbone.config.widths[-1]
            if shape_head == "mica" and mica is None:
                mica = MicaMapping(MicaConfig(
                    z_dim=self.backbone.config.num_features, hidden_dim=int(mica_hidden),
                    out_dim=layout.num_shape, layers=int(mica_layers)), rngs=rngs)
        else:
            raise ValueError(f"unknown E_shape backbone {backbone!r}: 'dlib' or 'iresnet18'..'200'")
        self.mica = mica
        # With the MICA head the linear head leaves out the shape rows.
        outputs = layout.size - (layout.num_shape if mica is not None else 0)
        self.head = nnx.Linear(width, outputs, kernel_init=nnx.initializers.zeros,
                               bias_init=nnx.initializers.zeros, rngs=rngs)
        self.feature_mean = FeatureStats(jnp.zeros((width,), jnp.float32))
        self.feature_scale = FeatureStats(jnp.ones((width,), jnp.float32))
        # The linear head's shape rows read the standardised features divided
        # by sqrt(width), about unit norm, as MICA's mapping reads ArcFace's
        # L2-normalised embedding: so that the paper's Adam lr (1e-4, set for
        # MICA) moves them as it moves MICA's first layer. Read unscaled, each
        # step moved a code about sqrt(512) ~ 23x further, and alternating
        # descent drifted the prior's shape by 1.6% per 50 shape steps (0.06%
        # at 1/23 of the lr; docs/training.md).
        self.linear_shape_rows = layout.num_shape if mica is None else 0
        self.shape_input_scale = 1.0 / math.sqrt(width)

    def feature_map(self, crops: jax.Array) -> jax.Array:
        """The backbone's last-stage map of crops (B, c, c, 3) in [0, 1], resized
        to input_size: (B, h, w, C), the computation dtype."""
        b = crops.shape[0]
        x = jnp.asarray(crops, jnp.float32)
        if x.shape[1:3] != (self.input_size, self.input_size):
            x = jax.image.resize(x, (b, self.input_size, self.input_size, 3), "bilinear")
        if self.kind == "dlib":
            return self.backbone.features(x * 255.0)[-1]
        return self.backbone.stem_and_stages(x * 2.0 - 1.0, use_running_average=True)

    def _mica_input(self, feat: jax.Array) -> jax.Array:
        """MICA's z = normalize(ArcFace embedding), (B, num_features) float32."""
        return normalize(self.backbone.embed_map(feat, use_running_average=True))

    def shape_features(self, crops: jax.Array) -> jax.Array:
        """What the shape head reads, (B, D) float32: the map averaged over space
        (linear head; before its `FeatureStats`) or ArcFace's embedding,
        L2-normalised (MICA's head)."""
        feat = self.feature_map(crops)
        if self.mica is None:
            return jnp.mean(feat.astype(jnp.float32), axis=(1, 2))
        return self._mica_input(feat)

    def __call__(self, crops: jax.Array) -> jax.Array:
        feat = self.feature_map(crops)
        pooled = jnp.mean(feat.astype(jnp.float32), axis=(1, 2))
        z = (pooled - self.feature_mean[...]) / self.feature_scale[...]
        kernel = self.head.kernel[...]
        if self.linear_shape_rows:
            kernel = kernel.at[:, :self.linear_shape_rows].multiply(self.shape_input_scale)
        out = z @ kernel + self.head.bias[...]
        if self.mica is None:
            return out
        return jnp.concatenate([self.mica(self._mica_input(feat)), out], axis=-1)


def decode_codes(out: jax.Array, layout: CodeLayout, camera_prior: jax.Array) -> dict:
    """E_shape's raw output (B, layout.size) -> FLAME, camera and light codes.

    Returns a dict of float32: shape (B, S), expression (B, E), global_pose,
    jaw_pose (B, 3) axis-angle, camera (B, 3) = (s0 * exp(c0), tx0 + c1, ty0 + c2)
    around the prior (so the scale stays positive), light (B, 9, 3) = the
    ambient default + the predicted offset.
    """
    parts = layout.split(out)
    cam = parts["camera"]
    camera = jnp.stack([camera_prior[0] * jnp.exp(cam[:, 0]), camera_prior[1] + cam[:, 1],
                        camera_prior[2] + cam[:, 2]], axis=-1)
    light = jnp.asarray(default_sh_light(1))[0] + parts["light"].reshape(-1, 9, 3)
    return dict(shape=parts["shape"], expression=parts["expression"],
                global_pose=parts["pose"][:, :3], jaw_pose=parts["pose"][:, 3:],
                camera=camera, light=light)


def _stylegan2(cfg, out_channels: int, style_dim: int) -> StyleGAN2Config:
    return StyleGAN2Config(resolution=int(cfg.resolution), style_dim=style_dim,
                           n_mlp=int(cfg.get("n_mlp", 8)),
                           channel_multiplier=int(cfg.channel_multiplier),
                           channel_max=int(cfg.channel_max) or None, out_channels=out_channels)


def scale_modulation(gen: Generator, scale: float) -> None:
    """Multiplies the modulation weights of every modulated conv and toRGB of
    a fresh generator by `scale`, in place (the biases stay 1).

    Why: a weight of a linear map of w only moves along the training w's
    span (its gradient is a sum of w_i outer products), so whatever it
    started with off that span stays. tiny's former 192 training w (32
    identities, 6 edits each along a few directions) spanned 36 of w's 512
    dimensions, and 77% of a held-out w's deviation from their mean lay off
    that span: G_Ab
    drew the held-out identities in the coloured blobs of its random
    initialisation, never trained away. At 0 it starts with one output for
    every w and its response to a new w comes from what was learnt. With
    10,000 identities (the paper) the span is the whole space.
    """
    if scale == 1.0:
        return
    for _, module in nnx.iter_modules(gen):
        if isinstance(module, ModulatedConv2d):
            weight = module.modulation.weight
            weight[...] = weight[...] * scale


class AlbedoBase(nnx.Variable):
    """The fixed image a `ResidualGenerator` adds to its output: not trained
    (not an nnx.Param), set once when a run starts."""


class ResidualGenerator(Generator):
    """StyleGAN2's generator drawing a residual over a fixed base image: its
    synthesis is Generator.synthesis(w) + base, base (R, R, C) float32 in the
    output's units ([-1, 1]; zeros until set).

    G_Ab in `tiny` (`model.albedo.residual_over_mean`, off in `paper`) with
    the training set's mean A_GT as the base and its toRGB weights started at
    0 (`zero_output`), so that it starts at the mean albedo and its training
    only has to learn how identities differ from it. Why: after tiny's 100
    pre-training steps a plain G_Ab scored 16.9 dB on held-out identities,
    below the 19.2 dB of the mean A_GT it had not yet learnt; StyleGAN2 at
    FFHQ's scale spends far more steps than that on the average face.
    """

    def __init__(self, config: StyleGAN2Config, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.base = AlbedoBase(jnp.zeros((config.resolution, config.resolution,
                                          config.out_channels), jnp.float32))

    def synthesis(self, w: jax.Array, *, noise_mode: str = "random",
                  key: jax.Array | None = None) -> jax.Array:
        """As `Generator.synthesis`, plus the base image."""
        return super().synthesis(w, noise_mode=noise_mode, key=key) + self.base[...]


def zero_output(gen: Generator) -> None:
    """Sets the conv weights of every toRGB of a fresh generator to 0, in
    place: its output starts at exactly 0 for every w (the toRGB biases start
    at 0) and the gradients reach the other layers once those weights move."""
    for _, module in nnx.iter_modules(gen):
        if isinstance(module, ToRGB):
            module.conv.weight[...] = jnp.zeros_like(module.conv.weight[...])


def latent_rows(w: jax.Array, n_latent: int) -> jax.Array:
    """The first n_latent rows of w (B, L, D) (L >= n_latent), (B, n_latent, D)."""
    if w.shape[1] < n_latent:
        raise ValueError(f"w has {w.shape[1]} rows; the generator needs {n_latent}")
    return w[:, :n_latent]


@dataclasses.dataclass
class Networks:
    """The modules, freshly built (see `build_networks`)."""

    encoder: ShapeEncoder
    displacement: Generator
    albedo: Generator
    discriminator: Discriminator
    identity: IdentityNetwork  # F, frozen
    perceptual: Any         # VGG16Relu33 (frozen) or None: the perceptual term uses F's maps
    layout: CodeLayout
    camera_prior: np.ndarray
    max_displacement: float


def build_encoder(cfg, rngs: nnx.Rngs) -> ShapeEncoder:
    """E_shape of a config's `model` section (its `encoder`, num_shape, num_expression)."""
    enc = cfg.encoder
    layout = CodeLayout(int(cfg.num_shape), int(cfg.num_expression))
    return ShapeEncoder(enc.backbone, layout, input_size=enc.input_size, widths=enc.widths,
                        weights=enc.weights, shape_head=enc.get("shape_head", "linear"),
                        mica_hidden=enc.get("mica_hidden", 300),
                        mica_layers=enc.get("mica_layers", 3), rngs=rngs)


def build_networks(cfg, model: FlameModel, key: jax.Array, style_dim: int = 512,
                   identity_head: IdentityHead | None = None) -> Networks:
    """The networks of a config's `model` section, initialised from `key`;
    F with `identity_head` when given (`face3d_train.identity`).

    G_Ab takes converted StyleGAN2 weights (`albedo.weights`, a `face3d convert
    stylegan2` folder) when given, as the paper starts AlbedoGAN from FFHQ's
    generator; otherwise a fresh initialisation.
    """
    for what, kind, size in (("encoder.input_size", cfg.encoder.backbone, cfg.encoder.input_size),
                             ("identity.chip_size", cfg.identity.kind, cfg.identity.chip_size)):
        if kind == "dlib" and int(size) < DLIB_MIN_INPUT:
            raise ValueError(f"model.{what} = {size}: dlib's network needs at least "
                             f"{DLIB_MIN_INPUT} pixels")
    if cfg.albedo.weights and cfg.albedo.get("residual_over_mean", False):
        raise ValueError("model.albedo.residual_over_mean starts a fresh G_Ab: it cannot be "
                         "combined with model.albedo.weights")
    perceptual = perceptual_network(cfg)  # first: a bad weights path fails before any build
    rngs = nnx.Rngs(key)
    layout = CodeLayout(int(cfg.num_shape), int(cfg.num_expression))
    encoder = build_encoder(cfg, rngs)
    disp = Generator(_stylegan2(cfg.displacement, 1, style_dim), rngs=rngs)
    if cfg.albedo.weights:
        from face3d_jax.convert.stylegan2 import load_discriminator, load_generator

        albedo = load_generator(cfg.albedo.weights)
    else:
        net = _stylegan2(cfg.albedo, 3, style_dim)
        if cfg.albedo.get("residual_over_mean", False):
            albedo = ResidualGenerator(net, rngs=rngs)
            zero_output(albedo)
        else:
            albedo = Generator(net, rngs=rngs)
        scale_modulation(albedo, float(cfg.albedo.get("modulation_init", 1.0)))
    if cfg.albedo.weights and (Path(cfg.albedo.weights) / "d.npz").is_file():
        disc = load_discriminator(cfg.albedo.weights)
    else:
        disc = Discriminator(albedo.config, rngs=rngs)
    identity = identity_network(cfg, identity_head)
    return Networks(encoder=encoder, displacement=disp, albedo=albedo, discriminator=disc,
                    identity=identity, perceptual=perceptual, layout=layout,
                    camera_prior=crop_camera_prior(model),
                    max_displacement=float(cfg.displacement.max_displacement))


def perceptual_network(cfg):
    """The perceptual loss's network (Sec. 4.1): VGG16 to relu3_3 from
    `perceptual.weights`, a torchvision VGG16 state dict (read without executing
    code), or None when empty: no VGG16 weights ship, and the perceptual term
    then compares F's mid-level maps (terms.py)."""
    weights = cfg.get("perceptual", {}).get("weights", "")
    if not weights:
        return None
    from face3d_jax.convert.vgg import convert_vgg16

    return convert_vgg16(weights)


def displacement_map(g: Generator, w: jax.Array, max_displacement: float, *,
                     noise_mode: str = "const", key=None) -> jax.Array:
    """G_Disp: w (B, L, 512) -> (B, Td, Td, 1) float32 metres in [-max, max]."""
    x = g.synthesis(latent_rows(w, g.config.n_latent), noise_mode=noise_mode, key=key)
    return max_displacement * jnp.tanh(x)


def albedo_map(g: Generator, w: jax.Array, *, noise_mode: str = "const", key=None) -> jax.Array:
    """G_Ab: w (B, L, 512) -> (B, Ta, Ta, 3) float32 albedo, (x + 1) / 2 of the
    generator's output (not clipped: clipping would stop the gradients)."""
    x = g.synthesis(latent_rows(w, g.config.n_latent), noise_mode=noise_mode, key=key)
    return (x + 1.0) * 0.5


def identity_network(cfg, head: IdentityHead | None = None) -> IdentityNetwork:
    """F of a config's `model` section (`model.identity`): dlib's ResNet
    (shipped) or ArcFace's iresnet (`identity.weights`, an insightface/MICA
    .pth), aligned as each was trained (`nets.identity`), with `head`."""
    ident = cfg.identity
    if ident.kind == "dlib":
        backbone = dlib_resnet.load_dlib_resnet(ident.weights or None)
    elif ident.kind == "arcface":
        if not ident.weights:
            raise ValueError("model.identity.kind = 'arcface' needs model.identity.weights "
                             "(an insightface/MICA iresnet .pth)")
        from face3d_jax.convert.arcface import convert_arcface

        backbone = convert_arcface(ident.weights)
    else:
        raise ValueError(f"unknown identity network {ident.kind!r}: 'dlib' or 'arcface'")
    return IdentityNetwork(backbone, chip_size=int(ident.chip_size), head=head)


def param_count(module) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param))))
