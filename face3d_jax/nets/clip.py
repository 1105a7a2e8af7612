"""CLIP (Radford et al. 2021), the ViT variants, in Flax NNX, NHWC: the image and
text encoders StyleCLIP-style editing scores faces with (issue 22).

    cfg = clip_config("ViT-B/32")                    # or CLIPConfig(...) for other sizes
    model = CLIP(cfg, rngs=nnx.Rngs(0))              # or convert_clip(path) for real weights
    img = model.encode_image(clip_preprocess(images))   # (B, H, W, 3) -> (B, 224, 224, 3) -> (B, 512)
    txt = model.encode_text(tokens)                  # (B, 77) int32 from nets.clip_tokenizer -> (B, 512)

Architecture (OpenAI's `clip/model.py`, followed exactly; attribute names are
OpenAI's state-dict names so the converter is a renaming):
- image tower `visual`: conv1 (patch x patch, stride patch, no bias) turns the
  image into a grid of width-d tokens (row-major, as torch's reshape of NCHW);
  a learned class token is prepended, a positional embedding added, ln_pre,
  `transformer` (residual attention blocks), ln_post on the class token, then
  `proj` (width, embed_dim).
- text tower: token_embedding + positional_embedding, `transformer` with a
  causal mask (token i attends to tokens <= i), ln_final, the features at the
  end-of-text token (OpenAI takes the argmax of the token ids: <end_of_text> is
  the largest id, 49407), then `text_projection` (text_width, embed_dim).
- a residual attention block is pre-LN: x + attn(ln_1(x)), then
  x + mlp(ln_2(x)); attention is torch's nn.MultiheadAttention (one in_proj
  producing q, k, v; q scaled by head_dim**-0.5; out_proj); the MLP is
  c_fc (4x width) -> QuickGELU x * sigmoid(1.702 x) -> c_proj.
- LayerNorms have eps 1e-5 (torch's default) and are computed in float32 (OpenAI
  does the same for its fp16 weights). logit_scale is stored as its log.

Preprocessing (`clip_preprocess`) follows CLIP's torchvision pipeline: resize
the shorter side to image_size with bicubic interpolation, centre crop, scale
to [0, 1], normalise with CLIP's mean and std. It runs in JAX
(jax.image.resize), so it is differentiable for StyleCLIP's losses; see its
docstring for how it differs from PIL's bicubic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Sizes of a ViT CLIP (defaults: ViT-B/32).

    embed_dim: size of the joint embedding. image_size, patch_size: input side
    and patch side (image_size must be a multiple of patch_size).
    vision_width/layers/heads: the image transformer. context_length,
    vocab_size, text_width/heads/layers: the text transformer. dtype:
    computation dtype of the linear layers and attention (parameters stay
    float32; embeddings come out float32).
    """

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    dtype: Any = None

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPConfig: image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        for width, heads, what in ((self.vision_width, self.vision_heads, "vision"),
                                   (self.text_width, self.text_heads, "text")):
            if width % heads:
                raise ValueError(f"CLIPConfig: {what}_width {width} is not a multiple of "
                                 f"{what}_heads {heads}")

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size


# OpenAI's released ViTs (clip.available_models()); heads = width // 64 as in build_model.
CLIP_CONFIGS: dict[str, CLIPConfig] = {
    "ViT-B/32": CLIPConfig(),
    "ViT-B/16": CLIPConfig(patch_size=16),
    "ViT-L/14": CLIPConfig(embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24,
                           vision_heads=16, text_width=768, text_heads=12),
    "ViT-L/14@336px": CLIPConfig(embed_dim=768, image_size=336, patch_size=14,
                                 vision_width=1024, vision_layers=24, vision_heads=16,
                                 text_width=768, text_heads=12),
}


def clip_config(name: str = "ViT-B/32", **overrides) -> CLIPConfig:
    """The config of one of OpenAI's ViT CLIPs by name (see CLIP_CONFIGS), fields
    optionally replaced (e.g. dtype=jnp.bfloat16)."""
    if name not in CLIP_CONFIGS:
        raise ValueError(f"unknown CLIP model {name!r}; known: {', '.join(CLIP_CONFIGS)}")
    return dataclasses.replace(CLIP_CONFIGS[name], **overrides)


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI's QuickGELU, x * sigmoid(1.702 x) (not the erf GELU: the weights were
    trained with this one)."""
    return x * jax.nn.sigmoid(1.702 * x)


def _layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(width, epsilon=LN_EPS, dtype=jnp.float32, rngs=rngs)


class MultiheadAttention(nnx.Module):
    """torch.nn.MultiheadAttention(width, heads) with batch-first NLD inputs:
    in_proj (width -> 3 width: q, k, v in that order) and out_proj."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, dtype=None):
        self.heads = heads
        self.in_proj = nnx.Linear(width, 3 * width, dtype=dtype, rngs=rngs)
        self.out_proj = nnx.Linear(width, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, causal: bool) -> jax.Array:
        """x: (B, L, D) -> (B, L, D); causal: token i sees tokens <= i only."""
        b, n, d = x.shape
        head_dim = d // self.heads
        q, k, v = jnp.split(self.in_proj(x), 3, axis=-1)
        q, k, v = (t.reshape(b, n, self.heads, head_dim) for t in (q, k, v))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim ** -0.5, k)
        logits = logits.astype(jnp.float32)  # softmax in float32 whatever the compute dtype
        if causal:
            keep = jnp.tril(jnp.ones((n, n), dtype=bool))
            logits = jnp.where(keep, logits, -jnp.inf)  # as OpenAI's additive -inf mask
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, d)
        return self.out_proj(out)


class MLP(nnx.Module):
    """c_fc (width -> 4 width) - QuickGELU - c_proj (4 width -> width)."""

    def __init__(self, width: int, *, rngs: nnx.Rngs, dtype=None):
        self.c_fc = nnx.Linear(width, 4 * width, dtype=dtype, rngs=rngs)
        self.c_proj = nnx.Linear(4 * width, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(quick_gelu(self.c_fc(x)))


class ResidualAttentionBlock(nnx.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, dtype=None):
        self.dtype = dtype
        self.attn = MultiheadAttention(width, heads, rngs=rngs, dtype=dtype)
        self.ln_1 = _layer_norm(width, rngs)
        self.mlp = MLP(width, rngs=rngs, dtype=dtype)
        self.ln_2 = _layer_norm(width, rngs)

    def _ln(self, ln: nnx.LayerNorm, x: jax.Array) -> jax.Array:
        y = ln(x.astype(jnp.float32))
        return y if self.dtype is None else y.astype(self.dtype)

    def __call__(self, x: jax.Array, causal: bool) -> jax.Array:
        """x: (B, L, D) -> (B, L, D)."""
        x = x + self.attn(self._ln(self.ln_1, x), causal)
        return x + self.mlp(self._ln(self.ln_2, x))


class Transformer(nnx.Module):
    """`layers` residual attention blocks (attribute `resblocks`)."""

    def __init__(self, width: int, layers: int, heads: int, *, rngs: nnx.Rngs, dtype=None):
        self.resblocks = nnx.List([ResidualAttentionBlock(width, heads, rngs=rngs, dtype=dtype)
                                   for _ in range(layers)])

    def __call__(self, x: jax.Array, causal: bool = False) -> jax.Array:
        for block in self.resblocks:
            x = block(x, causal)
        return x


class VisionTransformer(nnx.Module):
    """CLIP's image tower (OpenAI's `visual` for ViT models)."""

    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        w, p = cfg.vision_width, cfg.patch_size
        self.cfg = cfg
        scale = w ** -0.5  # OpenAI's initialisation scale
        self.conv1 = nnx.Conv(3, w, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                              dtype=cfg.dtype, rngs=rngs)
        self.class_embedding = nnx.Param(scale * jax.random.normal(rngs.params(), (w,)))
        self.positional_embedding = nnx.Param(
            scale * jax.random.normal(rngs.params(), (cfg.grid ** 2 + 1, w)))
        self.ln_pre = _layer_norm(w, rngs)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, rngs=rngs,
                                       dtype=cfg.dtype)
        self.ln_post = _layer_norm(w, rngs)
        self.proj = nnx.Param(scale * jax.random.normal(rngs.params(), (w, cfg.embed_dim)))

    def __call__(self, images: jax.Array) -> jax.Array:
        """images: (B, S, S, 3) float32 CLIP-normalised, S = image_size -> (B, embed_dim)
        float32."""
        x = self.conv1(images if self.cfg.dtype is None else images.astype(self.cfg.dtype))
        b, gh, gw, w = x.shape
        x = x.reshape(b, gh * gw, w).astype(jnp.float32)  # row-major, as torch's NCHW reshape
        cls = jnp.broadcast_to(self.class_embedding[...], (b, 1, w))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...]
        x = self.ln_pre(x)
        if self.cfg.dtype is not None:
            x = x.astype(self.cfg.dtype)
        x = self.transformer(x, causal=False)
        x = self.ln_post(x[:, 0, :].astype(jnp.float32))
        return x @ self.proj[...]


class CLIP(nnx.Module):
    """OpenAI's CLIP with a ViT image tower. Attributes carry OpenAI's state-dict
    names: visual, token_embedding, positional_embedding, transformer, ln_final,
    text_projection, logit_scale (log of the logit scale; exp gives 100 for the
    released models)."""

    def __init__(self, cfg: CLIPConfig = CLIPConfig(), *, rngs: nnx.Rngs):
        self.cfg = cfg
        tw = cfg.text_width
        self.visual = VisionTransformer(cfg, rngs=rngs)
        self.token_embedding = nnx.Embed(cfg.vocab_size, tw, rngs=rngs)
        self.positional_embedding = nnx.Param(
            0.01 * jax.random.normal(rngs.params(), (cfg.context_length, tw)))
        self.transformer = Transformer(tw, cfg.text_layers, cfg.text_heads, rngs=rngs,
                                       dtype=cfg.dtype)
        self.ln_final = _layer_norm(tw, rngs)
        self.text_projection = nnx.Param(
            tw ** -0.5 * jax.random.normal(rngs.params(), (tw, cfg.embed_dim)))
        self.logit_scale = nnx.Param(jnp.asarray(jnp.log(1 / 0.07), jnp.float32))

    def encode_image(self, images: jax.Array) -> jax.Array:
        """images: (B, S, S, 3) float32, already CLIP-normalised (`clip_preprocess`),
        S = cfg.image_size -> image embeddings (B, embed_dim) float32, not normalised."""
        s = self.cfg.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"CLIP.encode_image expects images (B, {s}, {s}, 3), "
                             f"got {tuple(images.shape)}")
        return self.visual(images).astype(jnp.float32)

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        """tokens: (B, L) int32 token ids (nets.clip_tokenizer), L = cfg.context_length,
        each row holding one <end_of_text> (the largest id) -> text embeddings
        (B, embed_dim) float32, not normalised."""
        if tokens.ndim != 2 or tokens.shape[1] != self.cfg.context_length:
            raise ValueError(f"CLIP.encode_text expects tokens (B, {self.cfg.context_length}), "
                             f"got {tuple(tokens.shape)}")
        x = self.token_embedding(tokens).astype(jnp.float32) + self.positional_embedding[...]
        if self.cfg.dtype is not None:
            x = x.astype(self.cfg.dtype)
        x = self.ln_final(self.transformer(x, causal=True).astype(jnp.float32))
        # OpenAI takes the features at the end-of-text token, found as the argmax id.
        eot = jnp.argmax(tokens, axis=-1)
        x = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        return (x @ self.text_projection[...]).astype(jnp.float32)

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Logits as OpenAI's forward: images (B, S, S, 3), tokens (T, L) ->
        (logits_per_image (B, T), logits_per_text (T, B)) float32."""
        img = self.encode_image(images)
        txt = self.encode_text(tokens)
        img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
        txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
        logits = jnp.exp(self.logit_scale[...]) * img @ txt.T
        return logits, logits.T

    def preprocess(self, images: jax.Array) -> jax.Array:
        """`clip_preprocess` at this model's image size."""
        return clip_preprocess(images, self.cfg.image_size)


def clip_preprocess(images: jax.Array, size: int = 224) -> jax.Array:
    """CLIP's image preprocessing in JAX (differentiable in float inputs).

    images: (B, H, W, 3) RGB, uint8 in [0, 255] or float in [0, 1] -> (B, size,
    size, 3) float32, normalised with CLIP_MEAN / CLIP_STD.

    Steps as CLIP's torchvision transform: resize so the shorter side is `size`
    (the longer one int(size * long / short), torchvision's rule), bicubic;
    centre crop (top/left offsets round((n - size) / 2)); scale to [0, 1];
    normalise. Differences from PIL's bicubic that OpenAI's pipeline runs on a
    uint8 PIL image: jax.image.resize is Keys' cubic with a = -0.5 and, when
    shrinking, a kernel widened by the scale factor (antialiasing), as PIL, but
    PIL quantises the resized image to uint8 and clips to [0, 255] while this
    keeps floats (no rounding, slight overshoot at edges is kept). Expect
    differences of about one grey level (1/255) on smooth images, more on sharp
    edges; the crop is exact.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"clip_preprocess expects images (B, H, W, 3), got {tuple(images.shape)}")
    if jnp.issubdtype(images.dtype, jnp.integer):
        x = images.astype(jnp.float32) / 255.0
    else:
        x = images.astype(jnp.float32)
    b, h, w, _ = x.shape
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    if (nh, nw) != (h, w):
        x = jax.image.resize(x, (b, nh, nw, 3), method="bicubic", antialias=True)
    top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)
    x = x[:, top:top + size, left:left + size, :]
    mean = jnp.asarray(CLIP_MEAN, jnp.float32)
    std = jnp.asarray(CLIP_STD, jnp.float32)
    return (x - mean) / std
