"""CLIP speed: our Flax ViT against OpenAI's PyTorch model, CPU.

Both run the same weights: OpenAI's `clip/model.py` (the `openai-clip`
package's file, loaded by path: its package `__init__` imports torchvision,
which does not import beside the CPU torch here; open_clip's package does the
same, and its ViT is the same code) builds a CLIP with random weights, and
ours is converted from its state dict (`face3d_jax.convert.clip`).

Cases (ms per call of a batch, compile excluded, medians of interleaved calls):
  image forward         encode_image on (B, 224, 224, 3) normalised images.
  text forward          encode_text on (B, 77) tokens.
  CLIP loss fwd+bwd     StyleCLIP's loss 1 - logit_scale cos(image, text) / 100
                        and its gradient w.r.t. the images: what the CLIP term
                        costs each step of the latent optimisation (the
                        generator's part is not CLIP's and is left out).

    face3d bench clip [--size smallest|default]
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from face3d_eval.harness import Options, PeerUnavailable, Row, torch_module
from face3d_eval.timing import interleaved_medians

SIZES = {
    # A small ViT: seconds on 2 cores.
    "smallest": {"model": "small", "batches": (1,), "repeats": 2, "warmup": 1, "budget": 5.0},
    "default": {"model": "ViT-B/32", "batches": (1, 8), "repeats": 10, "warmup": 2,
                "budget": 30.0},
    "gpu": {"model": "ViT-B/32", "batches": (8, 32), "repeats": 5, "warmup": 1, "budget": 15.0},
}
SMALL = {"embed_dim": 64, "image_resolution": 64, "vision_layers": 2, "vision_width": 128,
         "vision_patch_size": 16, "context_length": 77, "vocab_size": 49408,
         "transformer_width": 128, "transformer_heads": 2, "transformer_layers": 2}
VIT_B32 = {"embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
           "vision_patch_size": 32, "context_length": 77, "vocab_size": 49408,
           "transformer_width": 512, "transformer_heads": 8, "transformer_layers": 12}


def openai_clip_model_module():
    """OpenAI's clip/model.py as a module, loaded without its package."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise PeerUnavailable("openai-clip not installed (pip install --no-deps "
                              "openai-clip==1.0.1)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.py"
    if "_bench_openai_clip_model" not in sys.modules:
        mod_spec = importlib.util.spec_from_file_location("_bench_openai_clip_model", path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules["_bench_openai_clip_model"] = module
        mod_spec.loader.exec_module(module)
    return sys.modules["_bench_openai_clip_model"]


def _tokens(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = np.zeros((batch, 77), np.int64)
    tokens[:, 0] = 49406
    tokens[:, 1:9] = rng.integers(1, 49406, (batch, 8))
    tokens[:, 9] = 49407
    return tokens


def run(options: Options, model, batches, repeats, warmup, budget) -> list[Row]:
    """One row per (batch, case): ms per call, ours vs OpenAI's PyTorch CLIP."""
    from face3d_jax.convert.clip import convert_clip

    torch = torch_module(options)  # ours is converted from the peer's weights: both need it
    ref_mod = openai_clip_model_module()
    torch.manual_seed(0)
    sizes = SMALL if model == "small" else VIT_B32
    ref = ref_mod.CLIP(**sizes).float().eval()
    ours = convert_clip({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    graph, state = nnx.split(ours)
    res = sizes["image_resolution"]
    peer = f"OpenAI clip/model.py, torch {torch.__version__}"

    def ours_fns(images, tokens):
        def image(s, x):
            return nnx.merge(graph, s).encode_image(x)

        def text(s, t):
            return nnx.merge(graph, s).encode_text(t)

        def loss(s, x, t):
            m = nnx.merge(graph, s)
            a, b = m.encode_image(x), m.encode_text(t)
            cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))
            return jnp.mean(1.0 - jnp.exp(m.logit_scale[...]) * cos / 100.0)

        grad = jax.grad(loss, argnums=1)
        out = {}
        for case, fn, args in (("image forward", image, (state, images)),
                               ("text forward", text, (state, tokens)),
                               ("CLIP loss fwd+bwd", grad, (state, images, tokens))):
            start = time.perf_counter()
            compiled = jax.jit(fn).lower(*args).compile()
            out[case] = ((lambda c=compiled, a=args: jax.block_until_ready(c(*a))),
                         time.perf_counter() - start)
        return out

    def peer_fns(images_nchw, tokens):
        x, t = torch.from_numpy(images_nchw), torch.from_numpy(tokens)

        def image():
            with torch.no_grad():
                ref.encode_image(x)

        def text():
            with torch.no_grad():
                ref.encode_text(t)

        def loss():
            xi = x.clone().requires_grad_(True)
            logits = ref(xi, t)[0]
            (1.0 - logits.diagonal() / 100.0).mean().backward()

        return {"image forward": image, "text forward": text, "CLIP loss fwd+bwd": loss}

    rows = []
    for batch in batches:
        rng = np.random.default_rng(batch)
        images = rng.normal(size=(batch, res, res, 3)).astype(np.float32)
        tokens = _tokens(batch)
        mine = ours_fns(jnp.asarray(images), jnp.asarray(tokens, jnp.int32))
        theirs = peer_fns(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), tokens)
        for case, (fn, compile_s) in mine.items():
            times = interleaved_medians([fn, theirs[case]], repeats, warmup, budget)
            rows.append(Row("clip", f"{model} B={batch} {case}", times[0] * 1e3, peer,
                            times[1] * 1e3, details={"batch": batch, "model": model,
                                                     "ours_compile_s": compile_s}))
    return rows
