"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN", config F) in Flax NNX, as the paper uses it through rosinality's
stylegan2-pytorch: G_StlGAN (the frozen image generator), G_Ab (AlbedoGAN) and
G_Disp are generators of this kind, D_real its discriminator.

Interface (NHWC, float32 parameters):

    cfg = StyleGAN2Config(resolution=1024)            # n_latent = 18
    g = Generator(cfg, rngs=nnx.Rngs(0))
    w = g.mapping(z)                                  # z (B, 512) -> w (B, 512)
    img = g.synthesis(w, noise_mode="random", key=k)  # w (B, 512) or w+ (B, 18, 512)
                                                      #   -> (B, 1024, 1024, 3) float32
    img = g(z, key=k, truncation=0.5, noise_mode="const",
            mixing_key=k2, mixing_prob=0.9)           # z -> w -> truncate -> mix -> image
    g.latent_avg[...]                                 # (512,) LatentAvg, not an nnx.Param
    g.mean_latent(4096, key)                          # (512,) mean w of 4096 random z
    d = Discriminator(cfg, rngs=nnx.Rngs(1))
    logits = d(img)                                   # (B, 1024, 1024, 3) -> (B, 1) float32
    count_params(g)                                   # 30,370,060 at 1024^2, config F
    count_params(d)                                   # 29,012,513

noise_mode: "random" draws fresh N(0, 1) noise from `key` (required);
"const" uses the generator's own noise buffers (`g.noises[i]`, `NoiseBuffer`
variables of shape (1, r, r, 1), not Params), so the image is a pure function
of the latent; "none" injects no noise.

Choices where the sources differ (rosinality is followed):
- The mapping network starts with pixel norm, then n_mlp EqualLinear layers with
  fused leaky ReLU and lr multiplier 0.01.
- Truncation interpolates every w toward `latent_avg` before style mixing.
- Style mixing is decided per batch (one coin, one crossover index in
  [1, n_latent - 1], as rosinality's `mixing_noise` and the official
  `style_mixing_prob`), from `mixing_key`.
- Minibatch standard deviation: group min(B, 4), one feature; B must be a
  multiple of the group.
- Channels per resolution as rosinality: 512 up to 32^2, then
  {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16} * channel_multiplier, each
  capped by `channel_max` when set (tiny test configs).
- `dtype` (config) is the computation dtype (e.g. jnp.bfloat16); parameters
  stay float32, images and logits come out float32. No activation clamping
  (the official code clamps to +-256 in fp16 layers only).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from face3d_jax.nets.stylegan2_layers import (
    ConvLayer, EqualLinear, ResBlock, StyledConv, ToRGB,
)

NOISE_MODES = ("random", "const", "none")


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config:
    """StyleGAN2 hyper-parameters (defaults: config F as rosinality).

    resolution: output size (power of two, 8 to 1024); style_dim: z/w size;
    n_mlp: mapping layers; channel_multiplier: 2 for config F; lr_mlp: mapping
    lr multiplier; out_channels: image channels (G output, D input);
    blur_kernel: separable FIR taps; channel_max: cap on every layer's channels
    (None: no cap); dtype: computation dtype; fused_modconv: per-sample grouped
    convolution instead of activation modulation (same function).
    """

    resolution: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    lr_mlp: float = 0.01
    out_channels: int = 3
    blur_kernel: tuple[float, ...] = (1, 3, 3, 1)
    channel_max: int | None = None
    dtype: Any = jnp.float32
    fused_modconv: bool = False

    def __post_init__(self):
        log = math.log2(self.resolution) if self.resolution > 0 else -1
        if log != int(log) or not 3 <= log <= 10:
            raise ValueError(f"StyleGAN2 resolution must be a power of two from 8 to 1024, "
                             f"got {self.resolution}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def n_latent(self) -> int:
        """Number of w vectors the synthesis network takes: 2*log2(resolution) - 2."""
        return 2 * self.log_size - 2

    @property
    def num_noise_layers(self) -> int:
        return 2 * (self.log_size - 2) + 1

    def channels(self, res: int) -> int:
        """Feature channels at resolution `res` (4 ... resolution)."""
        cm = self.channel_multiplier
        table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm,
                 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
        ch = table[res]
        return ch if self.channel_max is None else min(ch, self.channel_max)


class LatentAvg(nnx.Variable):
    """The running average of w (truncation centre): not trained by optimizers."""


class NoiseBuffer(nnx.Variable):
    """A fixed per-layer noise image (1, r, r, 1) for deterministic synthesis."""


def count_params(module_or_state) -> int:
    """Number of scalar entries in the nnx.Param variables of a module or nnx.State
    (works on nnx.eval_shape results: no memory is allocated)."""
    if isinstance(module_or_state, nnx.Module):
        state = nnx.state(module_or_state, nnx.Param)
    else:
        state = nnx.filter_state(module_or_state, nnx.Param)
    leaves = jax.tree.leaves(state)
    return int(sum(math.prod(leaf.shape) for leaf in leaves))


def pixel_norm(x: jax.Array) -> jax.Array:
    """x * rsqrt(mean(x^2, -1) + 1e-8); x (B, D)."""
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-8)


class Generator(nnx.Module):
    """StyleGAN2 generator: mapping z -> w, synthesis w/w+ -> image (see module doc)."""

    def __init__(self, config: StyleGAN2Config, *, rngs: nnx.Rngs):
        cfg = self.config = config
        sd, bk, fused = cfg.style_dim, cfg.blur_kernel, cfg.fused_modconv
        self.style = nnx.List([EqualLinear(sd, sd, lr_mul=cfg.lr_mlp, activation="lrelu",
                                           rngs=rngs) for _ in range(cfg.n_mlp)])
        c4 = cfg.channels(4)
        self.input = nnx.Param(jax.random.normal(rngs.params(), (1, 4, 4, c4)))
        self.conv1 = StyledConv(c4, c4, 3, sd, blur_kernel=bk, fused=fused, rngs=rngs)
        self.to_rgb1 = ToRGB(c4, sd, cfg.out_channels, upsample=False, fused=fused, rngs=rngs)
        convs, to_rgbs, in_ch = [], [], c4
        for i in range(3, cfg.log_size + 1):
            out_ch = cfg.channels(2 ** i)
            convs.append(StyledConv(in_ch, out_ch, 3, sd, upsample=True, blur_kernel=bk,
                                    fused=fused, rngs=rngs))
            convs.append(StyledConv(out_ch, out_ch, 3, sd, blur_kernel=bk, fused=fused,
                                    rngs=rngs))
            to_rgbs.append(ToRGB(out_ch, sd, cfg.out_channels, blur_kernel=bk, fused=fused,
                                 rngs=rngs))
            in_ch = out_ch
        self.convs, self.to_rgbs = nnx.List(convs), nnx.List(to_rgbs)
        self.noises = nnx.List([
            NoiseBuffer(jax.random.normal(rngs.params(), (1, r, r, 1)))
            for r in (2 ** ((i + 5) // 2) for i in range(cfg.num_noise_layers))])
        self.latent_avg = LatentAvg(jnp.zeros((sd,), jnp.float32))

    def mapping(self, z: jax.Array) -> jax.Array:
        """z (B, style_dim) float -> w (B, style_dim) float32."""
        x = pixel_norm(jnp.asarray(z, jnp.float32))
        for layer in self.style:
            x = layer(x, jnp.float32)
        return x

    def mean_latent(self, n: int, key: jax.Array) -> jax.Array:
        """Mean w of n z ~ N(0, I) drawn from `key`: (style_dim,) float32."""
        return self.mapping(jax.random.normal(key, (n, self.config.style_dim))).mean(0)

    def synthesis(self, w: jax.Array, *, noise_mode: str = "random",
                  key: jax.Array | None = None) -> jax.Array:
        """w (B, style_dim) or w+ (B, n_latent, style_dim) -> image (B, R, R, out_channels)
        float32, roughly in [-1, 1]. noise_mode "random" needs `key`."""
        cfg = self.config
        w = jnp.asarray(w, jnp.float32)
        if w.ndim == 2:
            w = jnp.broadcast_to(w[:, None], (w.shape[0], cfg.n_latent, w.shape[1]))
        if w.ndim != 3 or w.shape[1:] != (cfg.n_latent, cfg.style_dim):
            raise ValueError(f"synthesis expects w (B, {cfg.style_dim}) or w+ (B, "
                             f"{cfg.n_latent}, {cfg.style_dim}), got {tuple(w.shape)}")
        noise = self._noise(w.shape[0], noise_mode, key)
        x = jnp.broadcast_to(self.input[...], (w.shape[0], *self.input.shape[1:]))
        x = self.conv1(x.astype(cfg.dtype), w[:, 0], noise[0])
        skip = self.to_rgb1(x, w[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            i = 1 + 2 * j
            x = self.convs[2 * j](x, w[:, i], noise[i])
            x = self.convs[2 * j + 1](x, w[:, i + 1], noise[i + 1])
            skip = to_rgb(x, w[:, i + 2], skip)
        return skip.astype(jnp.float32)

    def _noise(self, batch: int, mode: str, key) -> list:
        if mode == "const":
            return [buf[...] for buf in self.noises]
        if mode == "none":
            return [None] * len(self.noises)
        if mode != "random":
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")
        if key is None:
            raise ValueError('noise_mode="random" needs a PRNG key (key=...)')
        keys = jax.random.split(key, len(self.noises))
        return [jax.random.normal(k, (batch, *buf.shape[1:]), jnp.float32)
                for k, buf in zip(keys, self.noises)]

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None,
                 truncation: float = 1.0, noise_mode: str = "random",
                 mixing_key: jax.Array | None = None, mixing_prob: float = 0.0) -> jax.Array:
        """z (B, style_dim) -> image (B, R, R, out_channels) float32.

        truncation: w <- avg + truncation * (w - avg) with avg = latent_avg.
        mixing_prob > 0 (needs mixing_key): with that probability a second z
        drives the layers from a random crossover index on.
        """
        w = self.mapping(z)
        latents = w[:, None].repeat(self.config.n_latent, axis=1)
        if mixing_prob > 0:
            if mixing_key is None:
                raise ValueError("mixing_prob > 0 needs a PRNG key (mixing_key=...)")
            kz, kc, ki = jax.random.split(mixing_key, 3)
            w2 = self.mapping(jax.random.normal(kz, z.shape))
            n = self.config.n_latent
            cut = jax.random.randint(ki, (), 1, n)
            cut = jnp.where(jax.random.uniform(kc) < mixing_prob, cut, n)
            take_first = (jnp.arange(n) < cut)[None, :, None]
            latents = jnp.where(take_first, latents, w2[:, None])
        if truncation != 1.0:
            avg = self.latent_avg[...]
            latents = avg + truncation * (latents - avg)
        return self.synthesis(latents, noise_mode=noise_mode, key=key)


class Discriminator(nnx.Module):
    """StyleGAN2 residual discriminator: image (B, R, R, C) -> logits (B, 1) float32."""

    STDDEV_GROUP = 4

    def __init__(self, config: StyleGAN2Config, *, rngs: nnx.Rngs):
        cfg = self.config = config
        in_ch = cfg.channels(cfg.resolution)
        convs = [ConvLayer(cfg.out_channels, in_ch, 1, rngs=rngs)]
        for i in range(cfg.log_size, 2, -1):
            out_ch = cfg.channels(2 ** (i - 1))
            convs.append(ResBlock(in_ch, out_ch, blur_kernel=cfg.blur_kernel, rngs=rngs))
            in_ch = out_ch
        self.convs = nnx.List(convs)
        c4 = cfg.channels(4)
        self.final_conv = ConvLayer(in_ch + 1, c4, 3, rngs=rngs)
        # final_linear.0 takes the (4, 4, C) features flattened in H, W, C order.
        self.final_linear = nnx.List([
            EqualLinear(c4 * 16, c4, activation="lrelu", rngs=rngs),
            EqualLinear(c4, 1, rngs=rngs)])

    def __call__(self, image: jax.Array) -> jax.Array:
        cfg = self.config
        expect = (cfg.resolution, cfg.resolution, cfg.out_channels)
        if image.ndim != 4 or tuple(image.shape[1:]) != expect:
            raise ValueError(f"discriminator expects images (B, {expect[0]}, {expect[1]}, "
                             f"{expect[2]}), got {tuple(image.shape)}")
        group = min(image.shape[0], self.STDDEV_GROUP)
        if image.shape[0] % group:
            raise ValueError(f"discriminator batch {image.shape[0]} is not a multiple of the "
                             f"minibatch-stddev group {group}")
        x = image.astype(cfg.dtype)
        for layer in self.convs:
            x = layer(x)
        x = jnp.concatenate([x, self._minibatch_stddev(x)], axis=-1)
        x = self.final_conv(x)
        x = x.reshape(x.shape[0], -1)
        x = self.final_linear[0](x)
        return self.final_linear[1](x).astype(jnp.float32)

    def _minibatch_stddev(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, 1): std over groups of samples, averaged over C, H, W.

        Sample b belongs to group slot b % (B / G), as the official reshape(G, -1, ...)."""
        b, h, w, c = x.shape
        group = min(b, self.STDDEV_GROUP)
        y = x.astype(jnp.float32).reshape(group, b // group, h, w, c)
        std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8).mean(axis=(1, 2, 3))  # (B/G,)
        std = jnp.tile(std, group)[:, None, None, None]
        return jnp.broadcast_to(std, (b, h, w, 1)).astype(x.dtype)
