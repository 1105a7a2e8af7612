"""CLIP (face3d_jax.nets.clip, convert.clip, nets.clip_tokenizer) against OpenAI's
own `clip/model.py` and `clip/simple_tokenizer.py` and open_clip's
`open_clip/tokenizer.py`, float32 on CPU; and OpenAI's release format (a
traced, mostly float16 TorchScript archive) read without running its code.

The reference files are loaded by path, not imported as packages: the
packages' __init__ import torchvision, which the CPU torch here lacks. Install
them without dependencies so pip leaves torch alone:
    pip install --no-deps "openai-clip==1.0.1" "open-clip-torch==3.3.0"
    pip install ftfy regex
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("regex")
pytest.importorskip("ftfy")

import jax.numpy as jnp
from flax import nnx

from face3d_jax.convert.clip import convert_clip, infer_clip_config
from face3d_jax.formats.torch_file import torchscript_state_dict
from face3d_jax.formats.unpickler import UnsafePickleError
from face3d_jax.nets.arcface import count_params
from face3d_jax.nets.clip import CLIP, CLIP_MEAN, CLIP_STD, clip_config, clip_preprocess
from face3d_jax.nets.clip_tokenizer import CLIPTokenizer, find_bpe_vocab

PROMPTS = [
    "a smiling face",
    "Ünïcödé façade — naïve café",
    "a person with a beard!!",
    "a face 😀 with 👍🏽 emoji, 3 eyes & <b>html</b> &amp; it's   spaced\tout",
    "cafÃ© mojibake, 東京の顔, Привет",
    "",
]
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)


def _load_by_path(package: str, filename: str, alias: str):
    """A module file of an installed package, loaded without its __init__."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"reference package {package!r} not installed "
                    f"(pip install --no-deps openai-clip==1.0.1 open-clip-torch==3.3.0)")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        pytest.skip(f"{path.name} not found in the installed {package}")
    mod_spec = importlib.util.spec_from_file_location(alias, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[alias] = module
    mod_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def openai_model():
    return _load_by_path("clip", "model.py", "_ref_openai_clip_model")


def _randomise(model, seed: int):
    """OpenAI's init leaves biases at 0 and LayerNorms at 1; perturb them so a
    swapped bias or LN parameter shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _small_ref(openai_model, seed=0):
    # width 128 -> heads 2 (= width // 64, what build_model and our converter infer)
    torch.manual_seed(seed)
    model = openai_model.CLIP(embed_dim=64, image_resolution=64, vision_layers=2,
                              vision_width=128, vision_patch_size=16, context_length=77,
                              vocab_size=49408, transformer_width=128, transformer_heads=2,
                              transformer_layers=2)
    return _randomise(model.float(), seed)


def _tokens(rng, batch, n=77):
    """Random token rows with one end-of-text (49407, the largest id) each."""
    tokens = np.zeros((batch, n), np.int64)
    for row, length in enumerate(rng.integers(3, n, size=batch)):
        tokens[row, 0] = 49406
        tokens[row, 1:length - 1] = rng.integers(1, 49406, size=length - 2)
        tokens[row, length - 1] = 49407
    return tokens


def _compare(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    cos = np.sum(ours * ref, -1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1))
    return float(cos.min()), float(np.abs(ours - ref).max())


def _parity(ref, model, images_nchw, tokens, label):
    with torch.no_grad():
        ref_img = ref.encode_image(torch.from_numpy(images_nchw)).numpy()
        ref_txt = ref.encode_text(torch.from_numpy(tokens)).numpy()
    img = model.encode_image(jnp.asarray(images_nchw.transpose(0, 2, 3, 1)))
    txt = model.encode_text(jnp.asarray(tokens, jnp.int32))
    cos_i, diff_i = _compare(img, ref_img)
    cos_t, diff_t = _compare(txt, ref_txt)
    print(f"{label}: image 1-cos {1 - cos_i:.1e} max|d| {diff_i:.2e}; "
          f"text 1-cos {1 - cos_t:.1e} max|d| {diff_t:.2e}")
    assert cos_i >= 0.9999 and cos_t >= 0.9999
    return diff_i, diff_t


@pytest.mark.parametrize("reader", ["torch", "restricted"])
def test_small_vit_matches_openai_through_file(openai_model, tmp_path, reader):
    ref = _small_ref(openai_model)
    path = tmp_path / "clip_small.pt"
    torch.save(ref.state_dict(), path)
    model = convert_clip(path, reader=reader)
    cfg = model.cfg
    assert (cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers,
            cfg.vision_heads, cfg.text_width, cfg.text_heads, cfg.text_layers,
            cfg.embed_dim) == (64, 16, 128, 2, 2, 128, 2, 2, 64)
    assert count_params(model) == sum(p.numel() for p in ref.parameters())
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 3, 64, 64)).astype(np.float32)
    diff_i, diff_t = _parity(ref, model, images, _tokens(rng, 3), f"small ViT ({reader})")
    assert diff_i < 1e-4 and diff_t < 1e-4
    # logits as OpenAI's forward
    tokens = _tokens(rng, 2)
    with torch.no_grad():
        ref_logits = ref(torch.from_numpy(images), torch.from_numpy(tokens))[0].numpy()
    logits, _ = model(jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=2e-3)


def test_vit_b32_matches_openai(openai_model):
    """ViT-B/32 at full size (151M parameters), random weights, converted from the
    in-memory state dict (no 600 MB temp file), with real tokenizer output."""
    start = time.perf_counter()
    torch.manual_seed(1)
    ref = openai_model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12).float()
    ref = _randomise(ref, 1)
    state = ref.state_dict()
    # OpenAI's TorchScript-derived state dicts carry these scalars; build_model drops them.
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77),
                 vocab_size=torch.tensor(49408))
    assert infer_clip_config({k: v.numpy() for k, v in state.items()}) == clip_config("ViT-B/32")
    model = convert_clip(state)
    assert count_params(model) == 151_277_313
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 3, 224, 224)).astype(np.float32)
    tokens = CLIPTokenizer(find_bpe_vocab())(PROMPTS[:2]).astype(np.int64)
    _parity(ref, model, images, tokens, "ViT-B/32")
    print(f"ViT-B/32 test: {time.perf_counter() - start:.1f} s")


def _openai_archive(openai_model, folder: Path, seed: int = 2):
    """A small CLIP released as OpenAI released theirs: build_model's
    convert_weights (Linear, Conv2d, attention projections, proj and
    text_projection in float16; LayerNorms, embeddings, logit_scale float32),
    the scalar buffers their archives carry, torch.jit.trace'd (forward,
    encode_image, encode_text) and torch.jit.save'd. OpenAI's CLIP does not
    script (its LayerNorm calls super().forward), so no scripted variant.
    Returns (the float16 torch model, the archive's path, images, tokens)."""
    torch.manual_seed(seed)
    ref = openai_model.CLIP(embed_dim=64, image_resolution=32, vision_layers=2,
                            vision_width=128, vision_patch_size=16, context_length=16,
                            vocab_size=1000, transformer_width=128, transformer_heads=2,
                            transformer_layers=2)
    ref = _randomise(ref.float(), seed)
    openai_model.convert_weights(ref)
    for name, value in (("input_resolution", 32), ("context_length", 16), ("vocab_size", 1000)):
        if hasattr(ref, name):  # a plain int here (used by __init__ only), a buffer in theirs
            delattr(ref, name)
        ref.register_buffer(name, torch.tensor(value))
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    tokens = np.zeros((2, 16), np.int64)  # start, words, end-of-text (the largest id)
    for row, length in enumerate((5, 16)):
        tokens[row, 0], tokens[row, length - 1] = 998, 999
        tokens[row, 1:length - 1] = rng.integers(1, 998, size=length - 2)
    example = (torch.from_numpy(images), torch.from_numpy(tokens))
    # check_trace off: its re-run compares float16 outputs of two CPU runs exactly
    traced = torch.jit.trace_module(ref, {"forward": example, "encode_image": example[:1],
                                          "encode_text": example[1:]}, check_trace=False)
    path = folder / "ViT-tiny.pt"
    torch.jit.save(traced, path)
    return ref, path, images, tokens


def test_openai_torchscript_archive(openai_model, tmp_path):
    """OpenAI's released format (a traced, mostly float16 TorchScript archive),
    read by the restricted reader: the weights of torch.jit.load(path).state_dict()
    bit for bit, and the same CLIP as from the state dict saved once."""
    from face3d_train.text_edit import load_clip

    start = time.perf_counter()
    ref, path, images, tokens = _openai_archive(openai_model, tmp_path)
    want = torch.jit.load(path).state_dict()
    ours = torchscript_state_dict(path)
    assert list(ours) == list(want)
    for key, tensor in want.items():
        array = ours[key].numpy()
        assert array.dtype == tensor.numpy().dtype and array.shape == tuple(tensor.shape), key
        assert array.tobytes() == tensor.numpy().tobytes(), key
    assert ours["visual.proj"].numpy().dtype == np.float16  # as in OpenAI's files
    assert ours["visual.ln_pre.weight"].numpy().dtype == np.float32
    assert int(ours["input_resolution"].numpy()) == 32

    state_path = tmp_path / "state_dict.pt"
    torch.save(ref.state_dict(), state_path)
    from_state = convert_clip(state_path)
    for reader in ("auto", "restricted"):  # a TorchScript archive: always the restricted reader
        model = convert_clip(path, reader=reader)
        assert model.cfg == from_state.cfg
        for encode, inputs in (("encode_image", jnp.asarray(images.transpose(0, 2, 3, 1))),
                               ("encode_text", jnp.asarray(tokens, jnp.int32))):
            np.testing.assert_array_equal(np.asarray(getattr(model, encode)(inputs)),
                                          np.asarray(getattr(from_state, encode)(inputs)))
    cfg = model.cfg
    assert (cfg.image_size, cfg.context_length, cfg.vocab_size, cfg.vision_heads) == (32, 16, 1000, 2)
    ref32 = copy.deepcopy(ref).float()  # OpenAI's clip.load(jit=False) on a CPU
    _parity(ref32, model, images, tokens, "TorchScript archive")
    clip_model, tokenizer = load_clip(path)  # what `face3d edit --text --clip FILE` calls
    assert clip_model.cfg == cfg and tokenizer.context_length == 16
    print(f"TorchScript archive test: {time.perf_counter() - start:.1f} s")


def test_damaged_or_unsafe_torchscript_archive(openai_model, tmp_path):
    _, path, _, _ = _openai_archive(openai_model, tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"  # a download that stopped early
    cut.write_bytes(data[: len(data) * 2 // 3])
    for reader in ("auto", "restricted"):
        with pytest.raises(ValueError) as info:
            convert_clip(cut, reader=reader)
        assert "\n" not in str(info.value) and str(cut) in str(info.value), str(info.value)
    evil = tmp_path / "evil.pt"  # data.pkl naming a callable outside the allow-list
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            body = src.read(name)
            if name.endswith("/data.pkl"):
                body = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R."
            dst.writestr(name, body)
    with pytest.raises(UnsafePickleError) as info:
        convert_clip(evil)
    message = str(info.value)
    assert "\n" not in message and str(evil) in message and "'os.system'" in message


@pytest.fixture(scope="module")
def tokenizers():
    openai_tok = _load_by_path("clip", "simple_tokenizer.py", "_ref_openai_simple_tokenizer")
    open_clip_tok = _load_by_path("open_clip", "tokenizer.py", "_ref_open_clip_tokenizer")
    vocab = find_bpe_vocab()
    return (CLIPTokenizer(vocab), openai_tok.SimpleTokenizer(str(vocab)),
            open_clip_tok.SimpleTokenizer(str(vocab)))


def test_tokenizer_matches_openai_and_open_clip(tokenizers):
    ours, openai_tok, open_clip_tok = tokenizers
    ids = ours(PROMPTS + [LONG])
    assert ids.shape == (len(PROMPTS) + 1, 77) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids, open_clip_tok(PROMPTS + [LONG]).numpy())
    sot, eot = openai_tok.encoder["<|startoftext|>"], openai_tok.encoder["<|endoftext|>"]
    assert (ours.sot_id, ours.eot_id) == (sot, eot) == (49406, 49407)
    for row, text in enumerate(PROMPTS):  # OpenAI's clip.tokenize, which lives beside torchvision
        want = [sot, *openai_tok.encode(text), eot]
        assert ids[row, :len(want)].tolist() == want and not ids[row, len(want):].any(), text
    # OpenAI's tokenize(truncate=True): first 77 ids, the last replaced by end-of-text
    want = [sot, *openai_tok.encode(LONG), eot][:77]
    want[-1] = eot
    assert ids[-1].tolist() == want
    with pytest.raises(ValueError, match="context length 77"):
        ours(LONG, truncate=False)
    assert ours.decode(ours.encode("a smiling face")) == "a smiling face "


def test_bad_state_dicts_name_file_key_and_shapes(openai_model, tmp_path):
    ref = _small_ref(openai_model)
    state = ref.state_dict()
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "visual.ln_post.bias"},
                    ["missing key 'visual.ln_post.bias'", "(128,)"]),
        "shape": ({**state, "transformer.resblocks.1.mlp.c_fc.bias": torch.zeros(7)},
                  ["'transformer.resblocks.1.mlp.c_fc.bias'", "(7,)", "(512,)"]),
        "extra": ({**state, "visual.attnpool.k_proj.weight": torch.zeros(3, 4)},
                  ["unexpected key 'visual.attnpool.k_proj.weight'", "(3, 4)"]),
    }
    for name, (bad, words) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(bad, path)
        with pytest.raises(ValueError) as info:
            convert_clip(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message, message
        for word in words:
            assert word in message, message
    # a TorchScript archive (code beside data.pkl) whose data.pkl holds no module:
    # one line, and its code is not run
    script = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(script, "w") as archive:
        archive.writestr("ViT-B-32/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("ViT-B-32/code/__torch__/model.py", "raise SystemExit\n")
        archive.writestr("ViT-B-32/constants.pkl", b"\x80\x02).")
    with pytest.raises(ValueError, match="not a TorchScript module archive") as info:
        convert_clip(script)
    assert "\n" not in str(info.value) and str(script) in str(info.value)
    with pytest.raises(FileNotFoundError):
        convert_clip(tmp_path / "absent.pt")


def test_preprocess_matches_pil_pipeline():
    """CLIP's torchvision transform (Resize(224, BICUBIC) on a PIL image,
    CenterCrop, ToTensor, Normalize), written with PIL and numpy."""
    image_mod = pytest.importorskip("PIL.Image")
    yy, xx = np.mgrid[0:300, 0:400]
    rgb = np.stack([128 + 100 * np.sin(xx / 23.0), 128 + 90 * np.cos(yy / 17.0),
                    (xx + yy) % 256 * 0.8], -1).astype(np.uint8)  # smooth, one sawtooth
    pil = image_mod.fromarray(rgb).resize((298, 224), image_mod.BICUBIC)  # int(224*400/300)
    left = round((298 - 224) / 2.0)
    want = (np.asarray(pil, np.float32)[:, left:left + 224] / 255.0 - CLIP_MEAN) / CLIP_STD
    got = np.asarray(clip_preprocess(jnp.asarray(rgb[None])))[0]
    assert got.shape == (224, 224, 3) and got.dtype == np.float32
    err = np.abs(got - want) * np.asarray(CLIP_STD)  # in [0, 1] image units
    print(f"preprocess vs PIL: median {np.median(err) * 255:.2f}, 99th pct "
          f"{np.percentile(err, 99) * 255:.2f}, max {err.max() * 255:.2f} grey levels")
    assert np.median(err) < 1.0 / 255 and np.percentile(err, 99) < 6.0 / 255
    # float input in [0, 1] gives the same, and a 224 square passes through unresized
    same = clip_preprocess(jnp.asarray(rgb[None], jnp.float32) / 255.0)
    np.testing.assert_allclose(np.asarray(same)[0], got, atol=1e-4)
    square = np.asarray(clip_preprocess(jnp.asarray(rgb[None, :224, :224])))[0]
    np.testing.assert_allclose(square * CLIP_STD + CLIP_MEAN, rgb[:224, :224] / 255.0, atol=1e-6)


def test_config_and_shapes():
    cfg = clip_config("ViT-B/32")
    abstract = nnx.eval_shape(lambda: CLIP(cfg, rngs=nnx.Rngs(0)))
    assert count_params(abstract) == 151_277_313  # OpenAI's ViT-B/32
    with pytest.raises(ValueError, match="multiple of patch_size"):
        clip_config("ViT-B/32", image_size=100)
    with pytest.raises(ValueError, match="unknown CLIP model"):
        clip_config("RN50")


def test_jit_and_gradient_through_preprocess():
    """StyleCLIP's path: image -> clip_preprocess -> encode_image, jitted, with a
    finite non-zero gradient with respect to the image."""
    import jax

    cfg = clip_config("ViT-B/32", image_size=64, patch_size=16, vision_width=64,
                      vision_layers=1, vision_heads=1, text_width=64, text_heads=1,
                      text_layers=1, embed_dim=32)
    model = CLIP(cfg, rngs=nnx.Rngs(0))
    target = jnp.ones((32,), jnp.float32)

    def loss(model, images):
        emb = model.encode_image(model.preprocess(images))
        emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
        return 1.0 - jnp.mean(emb @ target) / jnp.sqrt(32.0)

    @nnx.jit
    def image_grad(model, images):  # the model is read, never mutated, under grad
        return jax.grad(lambda x: loss(model, x))(images)

    images = jax.random.uniform(jax.random.key(0), (2, 80, 96, 3))
    grad = image_grad(model, images)
    assert grad.shape == images.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).max()) > 0
    tokens = jnp.asarray(CLIPTokenizer(find_bpe_vocab())(["a face"]))
    assert nnx.jit(lambda m, t: m.encode_text(t))(model, tokens).shape == (1, 32)
