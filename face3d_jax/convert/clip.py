"""Convert an OpenAI CLIP (ViT) state dict into face3d_jax.nets.clip.CLIP.

Reads OpenAI's key layout, which open_clip's `openai` pretrained models share:
visual.conv1.weight, visual.class_embedding, visual.positional_embedding,
visual.ln_pre.*, visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, visual.ln_post.*,
visual.proj, token_embedding.weight, positional_embedding,
transformer.resblocks.N..., ln_final.*, text_projection, logit_scale. The
sizes are inferred from the shapes as OpenAI's `build_model` does (heads =
width // 64); pass `config` to override. The scalars input_resolution,
context_length and vocab_size that OpenAI's TorchScript state dicts carry are
ignored, as build_model does; a "module." (or other) prefix is removed.

Accepts a path to a torch.save'd state dict (torch.load weights_only=True, or
the project's torch-free restricted reader), a path to one of OpenAI's released
TorchScript archives (ViT-B-32.pt, what clip.load downloads), or a loaded
mapping. A TorchScript archive is always read by the restricted reader
(`formats.torch_file.torchscript_state_dict`: the weights under the keys of
torch.jit.load(path).state_dict(), which clip.load(jit=False) hands to
build_model), never by torch.jit.load, which would compile the archive's code.
OpenAI's archives hold float16 weights (build_model's convert_weights: the
Linear, Conv2d and attention projections, proj, text_projection) beside
float32 ones (LayerNorms, embeddings, logit_scale); `convert_clip` upcasts
everything to float32.

    model = convert_clip("ViT-B-32.pt")                   # or a state dict's .pt
    emb = model.encode_image(clip_preprocess(images))     # (B, 512)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from face3d_jax.convert.torch_state import (
    fill_module,
    read_torch_file,
    strip_prefix,
    to_numpy_dict,
)
from face3d_jax.formats.torch_file import is_torchscript_archive, torchscript_state_dict
from face3d_jax.nets.clip import CLIP, CLIPConfig

_WHAT = "CLIP weights"
_IGNORED = ("input_resolution", "context_length", "vocab_size")  # scalars of OpenAI's archives


def _block_shapes(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.ln_1.weight": (width,), f"{prefix}.ln_1.bias": (width,),
        f"{prefix}.attn.in_proj_weight": (3 * width, width),
        f"{prefix}.attn.in_proj_bias": (3 * width,),
        f"{prefix}.attn.out_proj.weight": (width, width), f"{prefix}.attn.out_proj.bias": (width,),
        f"{prefix}.ln_2.weight": (width,), f"{prefix}.ln_2.bias": (width,),
        f"{prefix}.mlp.c_fc.weight": (4 * width, width), f"{prefix}.mlp.c_fc.bias": (4 * width,),
        f"{prefix}.mlp.c_proj.weight": (width, 4 * width), f"{prefix}.mlp.c_proj.bias": (width,),
    }


def clip_torch_shapes(cfg: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """Every key of OpenAI's CLIP state dict for `cfg` with its torch shape."""
    vw, tw, p = cfg.vision_width, cfg.text_width, cfg.patch_size
    shapes = {
        "visual.conv1.weight": (vw, 3, p, p),
        "visual.class_embedding": (vw,),
        "visual.positional_embedding": (cfg.grid ** 2 + 1, vw),
        "visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,),
        "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
        "visual.proj": (vw, cfg.embed_dim),
        "token_embedding.weight": (cfg.vocab_size, tw),
        "positional_embedding": (cfg.context_length, tw),
        "ln_final.weight": (tw,), "ln_final.bias": (tw,),
        "text_projection": (tw, cfg.embed_dim),
        "logit_scale": (),
    }
    for i in range(cfg.vision_layers):
        shapes.update(_block_shapes(f"visual.transformer.resblocks.{i}", vw))
    for i in range(cfg.text_layers):
        shapes.update(_block_shapes(f"transformer.resblocks.{i}", tw))
    return shapes


def _need(state: Mapping[str, np.ndarray], key: str, ndim: int, origin: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"{_WHAT}: {origin}: missing key {key!r} (needed to infer the model size)")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ValueError(f"{_WHAT}: {origin}: key {key!r} has shape {shape}, expected {ndim} dims")
    return shape


def infer_clip_config(state: Mapping[str, Any], origin: str = "state dict") -> CLIPConfig:
    """The CLIPConfig of an OpenAI-layout state dict, read from its shapes as
    OpenAI's build_model does (heads = width // 64)."""
    if "visual.proj" not in state and any(k.startswith("visual.layer1.") for k in state):
        raise ValueError(f"{_WHAT}: {origin} holds a ResNet CLIP (visual.layer1...); "
                         "only ViT CLIPs are supported")
    conv = _need(state, "visual.conv1.weight", 4, origin)
    vpos = _need(state, "visual.positional_embedding", 2, origin)
    tproj = _need(state, "text_projection", 2, origin)
    tpos = _need(state, "positional_embedding", 2, origin)
    vocab = _need(state, "token_embedding.weight", 2, origin)
    tw = _need(state, "ln_final.weight", 1, origin)[0]
    grid = round((vpos[0] - 1) ** 0.5)
    vision_layers = len({k.split(".")[3] for k in state
                         if k.startswith("visual.transformer.resblocks.")})
    text_layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    try:
        return CLIPConfig(
            embed_dim=tproj[1], image_size=conv[-1] * grid, patch_size=conv[-1],
            vision_width=conv[0], vision_layers=vision_layers,
            vision_heads=max(conv[0] // 64, 1), context_length=tpos[0], vocab_size=vocab[0],
            text_width=tw, text_heads=max(tw // 64, 1), text_layers=text_layers)
    except ValueError as exc:
        raise ValueError(f"{_WHAT}: {origin}: inconsistent sizes ({exc})") from None


def clip_state_dict(source: str | os.PathLike | Mapping[str, Any],
                    reader: str = "auto") -> dict[str, np.ndarray]:
    """OpenAI-layout CLIP weights as {key: np.ndarray} in the file's dtypes
    (float16 and float32 for OpenAI's archives), prefix removed, OpenAI's scalar
    entries dropped.

    source: a torch.save'd state dict or a TorchScript archive (path), or a
    mapping. reader: "torch", "restricted" or "auto", for torch.save files; a
    TorchScript archive is always read by the restricted reader.
    """
    is_path = isinstance(source, (str, os.PathLike))
    origin = str(source) if is_path else "state dict"
    if is_path and os.path.isfile(source) and is_torchscript_archive(source):
        try:
            obj = torchscript_state_dict(source)
        except ValueError as exc:  # same class (UnsafePickleError stays one), named as ours
            raise type(exc)(f"{_WHAT}: {exc}") from None
    else:
        obj = read_torch_file(source, _WHAT, reader) if is_path else source
    if not isinstance(obj, Mapping):  # a bad file, not a bad argument: ValueError as elsewhere
        raise ValueError(  # noqa: TRY004
            f"{_WHAT}: {origin} holds a {type(obj).__name__}, expected a state dict")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    state = to_numpy_dict({k: v for k, v in obj.items() if not isinstance(v, Mapping)}, origin)
    state = strip_prefix(state, "visual.conv1.weight", origin,
                         anchor_ok=lambda a: a.ndim == 4 and a.shape[1] == 3)
    return {k: v for k, v in state.items() if k not in _IGNORED}


def _check_keys(state: Mapping[str, np.ndarray], cfg: CLIPConfig, origin: str) -> None:
    want = clip_torch_shapes(cfg)
    for key, shape in want.items():
        if key not in state:
            raise ValueError(f"{_WHAT}: {origin}: missing key {key!r} (expected shape {shape})")
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{_WHAT}: {origin}: key {key!r} has shape "
                             f"{tuple(state[key].shape)}, expected {shape}")
    extra = sorted(k for k in state if k not in want)
    if extra:
        raise ValueError(f"{_WHAT}: {origin}: unexpected key {extra[0]!r} (shape "
                         f"{tuple(state[extra[0]].shape)}) and {len(extra) - 1} more "
                         "(a different architecture?)")


_RENAME = {"in_proj.kernel": "in_proj_weight", "in_proj.bias": "in_proj_bias"}


def _torch_key(path: tuple) -> str:
    key = ".".join(str(p) for p in path)
    for ours, theirs in _RENAME.items():
        if key.endswith(ours):
            return key[: -len(ours)] + theirs
    head, _, leaf = key.rpartition(".")
    if leaf in ("kernel", "scale", "embedding"):
        return f"{head}.weight"
    return key


def _to_ours(path: tuple, value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if path[-1] == "kernel":
        return value.T  # torch Linear (out, in) -> flax (in, out)
    return value


def convert_clip(source: str | os.PathLike | Mapping[str, Any], *,
                 config: CLIPConfig | None = None, dtype=None, reader: str = "auto") -> CLIP:
    """A CLIP holding OpenAI-layout weights.

    source: a torch.save'd state dict or OpenAI's TorchScript archive (path),
      or a mapping of arrays/tensors (float16/float32/bfloat16; OpenAI's
      (out, in) Linear and (O, I, H, W) Conv2d layouts).
    config: the sizes (default: inferred from the shapes, heads = width // 64).
    dtype: computation dtype (parameters stay float32; fp16 weights are upcast).
    Raises ValueError with one line naming the file, the key and the shapes for
    a missing, mis-shaped or unknown key; FileNotFoundError for a missing file.
    """
    origin = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = clip_state_dict(source, reader)
    cfg = config if config is not None else infer_clip_config(state, origin)
    if dtype is not None:
        cfg = dataclasses.replace(cfg, dtype=dtype)
    _check_keys(state, cfg, origin)
    state = {k: v.astype(np.float32) for k, v in state.items()}
    abstract = nnx.eval_shape(lambda: CLIP(cfg, rngs=nnx.Rngs(0)))
    return fill_module(abstract, _torch_key, _to_ours, state, f"{_WHAT}: {origin}")
