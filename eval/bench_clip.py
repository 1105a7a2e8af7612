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
  StyleCLIP step        one whole step of StyleCLIP's latent optimisation
                        (`run_optimization.py`, "edit" mode, batch 1, as it
                        runs), below.

StyleCLIP step. Both sides optimise w+ (1, n_latent, 512) through the same
StyleGAN2 generator: the PyTorch twin (eval/torch_reference/stylegan2.py,
rosinality's layout, the generator StyleCLIP optimises) with random weights,
and ours converted from its checkpoint (`convert_rosinality`) and opened as
`face3d edit --text` opens a StyleGAN2 run's generator (`StyleGAN2Source`).
One step: image = G(w) with the constant noise buffers -> StyleCLIP's resize
to CLIP's 224 (`CLIPLoss`: nearest `Upsample(scale_factor=7)` then
`AvgPool2d(R // 32)`) -> CLIP's image tower -> 1 - exp(logit_scale)
cos(image, text) / 100 with a fixed text feature -> + 0.008 ||w - w0||^2 ->
backward to w -> Adam at StyleCLIP's ramped lr (`get_lr`, 300 steps).
  ours   `styleclip_step`, the step `edit --text` runs (train/text_edit.py: `clip_loss`, which
         resizes with `styleclip_resize`, and optax's Adam), driven with that
         source; the generator's weights enter it as its image function's
         constants, as in `face3d edit --text`.
  peer   the twin and OpenAI's CLIP in eager PyTorch, StyleCLIP's loop body
         (Upsample + AvgPool2d, torch.optim.Adam with the lr set per step).
Left out of both: the identity term (ours uses the run's identity network,
which has no PyTorch twin; StyleCLIP's own default id_lambda is 0) and the
text tower (StyleCLIP re-encodes the prompt every step; ours encodes it once,
so both sides take one fixed text feature). The peer's parameters are frozen
(requires_grad False), so both sides differentiate w only; StyleCLIP's script
leaves them trainable and so also computes (and accumulates) every
generator and CLIP weight's gradient: that variant is timed too, in the
row's details (torch_ms_as_styleclip).

Agreement: both sides run StyleCLIP's first 3 steps from the same w0 before
the timing (the first at lr 0, as get_lr gives, so the first two losses are
w0's and the third follows one real update). The details hold the losses,
their largest relative difference (loss_rel_diff), the gradient's relative
difference (grad_rel_diff: Adam's first moment after the first step, 0.1 x
the gradient, on both sides) and the check: clip_cos_diff, the first step's
D_CLIP difference in units of the cosine (|d loss| x 100 / exp(logit_scale):
D_CLIP is 1 - 0.14 cos at CLIP's logit scale, so a relative figure on a loss
near 1 would hide a wrong input), against cos_tolerance (COS_TOLERANCE).

    face3d bench clip [--size smallest|default|gpu]
"""

from __future__ import annotations

import importlib.util
import math
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from face3d_eval.harness import Options, PeerUnavailable, Row, torch_module
from face3d_eval.timing import device_peak_mib, interleaved_medians, xla_plan_mib

SIZES = {
    # A small ViT: seconds on 2 cores. The StyleCLIP step: a 32^2 generator with its
    # channels capped at 32 and a small ViT taking 224^2 (StyleCLIP's resize needs a
    # multiple of 32 in, gives 224 out).
    "smallest": {"model": "small", "batches": (1,), "repeats": 2, "warmup": 1, "budget": 5.0,
                 "styleclip": {"resolution": 32, "channel_max": 32, "n_mlp": 2,
                               "clip": "small-224", "repeats": 2, "warmup": 1,
                               "budget": 5.0}},
    # The step: a 256^2 generator at config F's channels (StyleCLIP's default is the
    # 1024^2 FFHQ one: 16x the pixels of the last layers; 256^2 is StyleCLIP's other
    # StyleGAN size, e.g. its AFHQ and LSUN models) and ViT-B/32, as StyleCLIP.
    "default": {"model": "ViT-B/32", "batches": (1, 8), "repeats": 10, "warmup": 2,
                "budget": 30.0,
                "styleclip": {"resolution": 256, "channel_max": None, "n_mlp": 8,
                              "clip": "ViT-B/32", "repeats": 7, "warmup": 1,
                              "budget": 60.0}},
    "gpu": {"model": "ViT-B/32", "batches": (8, 32), "repeats": 5, "warmup": 1, "budget": 15.0,
            "styleclip": {"resolution": 256, "channel_max": None, "n_mlp": 8,
                          "clip": "ViT-B/32", "repeats": 5, "warmup": 1, "budget": 10.0}},
}
SMALL = {"embed_dim": 64, "image_resolution": 64, "vision_layers": 2, "vision_width": 128,
         "vision_patch_size": 16, "context_length": 77, "vocab_size": 49408,
         "transformer_width": 128, "transformer_heads": 2, "transformer_layers": 2}
VIT_B32 = {"embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
           "vision_patch_size": 32, "context_length": 77, "vocab_size": 49408,
           "transformer_width": 512, "transformer_heads": 8, "transformer_layers": 12}
CLIP_SIZES = {"small": SMALL, "ViT-B/32": VIT_B32,
              "small-224": {**SMALL, "image_resolution": 224, "vision_patch_size": 32}}
# StyleCLIP's run_optimization.py defaults (edit mode; id_lambda: its argparse's 0).
STYLECLIP_STEPS, STYLECLIP_LR, STYLECLIP_L2 = 300, 0.1, 0.008
CHECK_STEPS = 3  # steps compared before the timing (the first at lr 0)
# Largest first-step D_CLIP difference in cosine units, {on the CPU: ..., else: ...}.
# CPU: float32 resolves D_CLIP ~ 1 to 1.2e-7, 8e-7 in cosine units, and the two
# sides' rounding (generator and ViT in float32, summed in other orders) stays near
# that; a wrong CLIP input moves it 10x the tolerance or more (2026-12-08, smallest size:
# a bilinear resize instead of StyleCLIP's 7e-5, CLIP's mean/std instead of [-1, 1]
# 1.3e-3, w0 + 0.01 noise 1.4e-4). Elsewhere: GPUs may run float32 convolutions and
# matmuls in TF32 (10-bit mantissa), so only a gross mismatch is caught there.
COS_TOLERANCE = {True: 1e-5, False: 1e-3}


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


def _clip_pair(torch, ref_mod, name: str, cache: dict):
    """(OpenAI's CLIP with random weights, ours converted from it) of a CLIP_SIZES
    name, built once per run."""
    from face3d_jax.convert.clip import convert_clip

    if name not in cache:
        torch.manual_seed(0)
        ref = ref_mod.CLIP(**CLIP_SIZES[name]).float().eval()
        cache[name] = (ref, convert_clip({k: v.detach().numpy()
                                          for k, v in ref.state_dict().items()}))
    return cache[name]


def run(options: Options, model, batches, repeats, warmup, budget,
        styleclip=None) -> list[Row]:
    """One row per (batch, case): ms per call, ours vs OpenAI's PyTorch CLIP; then
    one row for the StyleCLIP step when `styleclip` (its size) is given."""
    torch = torch_module(options)  # ours is converted from the peer's weights: both need it
    ref_mod = openai_clip_model_module()
    pairs: dict = {}
    ref, ours = _clip_pair(torch, ref_mod, model, pairs)
    sizes = CLIP_SIZES[model]
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
    if styleclip is not None:
        rows.append(styleclip_step_row(torch, ref_mod, pairs, **styleclip))
    return rows


def _get_lr(t, initial_lr, rampdown=0.25, rampup=0.05):
    """StyleCLIP's run_optimization.get_lr, for the peer's loop."""
    lr_ramp = min(1, (1 - t) / rampdown)
    lr_ramp = 0.5 - 0.5 * math.cos(lr_ramp * math.pi)
    return initial_lr * lr_ramp * min(1, t / rampup)


def _our_source(torch, twin, folder: Path):
    """The twin's weights as `face3d edit --text` opens a StyleGAN2 run's
    generator: a rosinality checkpoint, `convert_rosinality`, `StyleGAN2Source`."""
    from face3d_jax.convert.stylegan2 import convert_rosinality
    from face3d_jax.data.dataset import GenerateConfig
    from face3d_jax.data.dataset_sources import StyleGAN2Source

    ckpt = folder / "twin.pt"
    torch.save({"g_ema": twin.state_dict(), "latent_avg": torch.zeros(twin.style_dim)}, ckpt)
    convert_rosinality(ckpt, folder / "converted")
    return StyleGAN2Source(GenerateConfig(source="stylegan2",
                                          checkpoint=str(folder / "converted")))


def styleclip_step_row(torch, ref_mod, pairs: dict, resolution: int, channel_max, n_mlp: int,
                       clip: str, repeats: int, warmup: int, budget: float) -> Row:
    """ms per StyleCLIP step (module docstring), ours vs eager PyTorch, batch 1."""
    from face3d_eval.torch_reference.stylegan2 import Generator as TorchGenerator
    from face3d_train.text_edit import styleclip_lr, styleclip_optimizer, styleclip_step

    if resolution % 32 or CLIP_SIZES[clip]["image_resolution"] != 224:
        raise ValueError("StyleCLIP's resize takes a multiple of 32 to CLIP's 224")
    ref, ours_clip = _clip_pair(torch, ref_mod, clip, pairs)
    torch.manual_seed(0)
    twin = TorchGenerator(resolution, 512, n_mlp, channel_max=channel_max).eval()
    with tempfile.TemporaryDirectory() as tmp:
        source = _our_source(torch, twin, Path(tmp))
    rng = np.random.default_rng(0)
    w0 = source.mapping(rng.standard_normal((1, 512)).astype(np.float32))  # (1, L, 512)
    with torch.no_grad():
        text = ref.encode_text(torch.from_numpy(_tokens(1))).float().numpy()  # fixed: (1, D)

    # Ours: the step `edit --text` runs (no identity term, StyleCLIP's input).
    adam = styleclip_optimizer()
    clip_graph, clip_state = nnx.split(ours_clip)
    step = styleclip_step(source.image_fn(), clip_graph, None, False, adam)
    w0j, textj = jnp.asarray(w0), jnp.asarray(text)
    weights = jnp.asarray([STYLECLIP_L2, 0.0], jnp.float32)
    fixed = (weights, w0j, textj, jnp.zeros((1, 1), jnp.float32), jnp.eye(3)[None],
             clip_state, None)
    start = time.perf_counter()
    compiled = step.lower(w0j, adam.init(w0j), jnp.float32(0.0), *fixed).compile()
    compile_s = time.perf_counter() - start
    mine = {"w": w0j, "opt": adam.init(w0j), "i": 0}

    def ours_step():
        i = mine["i"]
        lr = styleclip_lr(i / STYLECLIP_STEPS, STYLECLIP_LR)
        mine["w"], mine["opt"], parts = compiled(mine["w"], mine["opt"], jnp.float32(lr), *fixed)
        jax.block_until_ready((mine["w"], mine["opt"]))
        mine["i"] = (i + 1) % STYLECLIP_STEPS
        return parts

    # The peer: StyleCLIP's loop body (CLIPLoss with the text encoded once), on the
    # GPU where ours runs on one.
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    twin, ref = twin.to(device), ref.to(device)
    frozen = [p for m in (twin, ref) for p in m.parameters()]
    trainable = [p.requires_grad for p in frozen]
    upsample = torch.nn.Upsample(scale_factor=7)
    avg_pool = torch.nn.AvgPool2d(kernel_size=resolution // 32)
    text_t = torch.from_numpy(text).to(device)
    text_t = text_t / text_t.norm(dim=1, keepdim=True)
    w0_t = torch.from_numpy(np.array(w0)).to(device)
    latent = w0_t.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=STYLECLIP_LR)
    theirs = {"i": 0}

    def peer_step():
        i = theirs["i"]
        optimizer.param_groups[0]["lr"] = _get_lr(i / STYLECLIP_STEPS, STYLECLIP_LR)
        img, _ = twin([latent], input_is_latent=True, randomize_noise=False)
        feat = ref.encode_image(avg_pool(upsample(img)))
        feat = feat / feat.norm(dim=1, keepdim=True)
        logits = ref.logit_scale.exp() * feat @ text_t.t()
        c_loss = 1 - logits / 100
        loss = c_loss + STYLECLIP_L2 * ((w0_t - latent) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        theirs["i"] = (i + 1) % STYLECLIP_STEPS
        return loss.item(), c_loss.item(), logits.item()  # .item() waits for the step

    def peer_as_styleclip():  # its script leaves G's and CLIP's weights trainable
        for p in frozen:
            p.requires_grad_(True)
        try:
            return peer_step()
        finally:
            for p in frozen:
                p.requires_grad_(False)

    try:
        for p in frozen:
            p.requires_grad_(False)
        # Agreement: StyleCLIP's first steps from the same w0 on both sides.
        agree, grad_rel = [], None
        for _ in range(CHECK_STEPS):
            parts = np.asarray(ours_step(), np.float64)
            agree.append((parts[0], parts[1], *peer_step()))
            if grad_rel is None:  # both first moments are 0.1 x the first gradient
                m_o = np.asarray(mine["opt"].mu, np.float64)
                m_p = optimizer.state[latent]["exp_avg"].double().cpu().numpy()
                grad_rel = float(np.linalg.norm(m_o - m_p) / np.linalg.norm(m_p))
        agree = np.asarray(agree)  # ours total, ours D_CLIP, peer total, peer D_CLIP, logit
        loss_rel = float(np.max(np.abs(agree[:, 0] - agree[:, 2]) / np.abs(agree[:, 2])))
        cos_diff = float(abs(agree[0, 1] - agree[0, 3]) * 100 / ref.logit_scale.exp().item())
        tolerance = COS_TOLERANCE[jax.default_backend() == "cpu"]
        times = interleaved_medians([ours_step, peer_step, peer_as_styleclip], repeats, warmup,
                                    budget)
    finally:
        for p, flag in zip(frozen, trainable):
            p.requires_grad_(flag)
            p.grad = None
        ref.to("cpu")  # shared with the CLIP cases
    peak = device_peak_mib()
    memory = "device peak"
    if peak is None:
        peak, memory = xla_plan_mib(compiled, parts=("temp", "output")), "XLA plan, temp + out"
    gpu_mem = {"torch_peak_mib": torch.cuda.max_memory_allocated() / 2**20} if on_gpu else {}
    n_latent = w0.shape[1]
    return Row("clip", f"StyleCLIP step: {resolution}^2 G (w+ {n_latent}x512) + {clip}, B=1",
               times[0] * 1e3, f"StyleCLIP loop, twin + OpenAI clip/model.py, torch "
               f"{torch.__version__} ({device.type})", times[1] * 1e3, peak_mib=peak, memory=memory,
               details={"resolution": resolution, "channel_max": channel_max, "clip": clip,
                        "batch": 1, "n_latent": n_latent, "ours_compile_s": compile_s,
                        "torch_ms_as_styleclip": times[2] * 1e3,
                        "as_styleclip_over_ours": times[2] / times[0],
                        "first_losses_ours": agree[:, 0].tolist(),
                        "first_losses_torch": agree[:, 2].tolist(),
                        "loss_rel_diff": loss_rel, "grad_rel_diff": grad_rel,
                        "clip_cos_diff": cos_diff, "cos_tolerance": tolerance,
                        "loss_agrees": cos_diff <= tolerance,
                        "generator_params": sum(p.numel() for p in twin.parameters()),
                        **gpu_mem})
