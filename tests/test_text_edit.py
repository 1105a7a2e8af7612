"""StyleCLIP's latent optimisation on a micro trained run (train/text_edit.py),
with a random-weight small CLIP: the mechanics (the loss falls, the L2 term
holds w near w0, the schedule, the files), not CLIP's semantics, which need
OpenAI's weights (`load_clip`)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("regex")

from train_fixtures import micro_run

from face3d_jax.nets.clip import CLIP, CLIPConfig
from face3d_jax.nets.clip_tokenizer import CLIPTokenizer, find_bpe_vocab
from face3d_train import text_edit as te
from face3d_train.trained import load_run

PROMPT = "a smiling face with a beard"
# A few tens of steps at a peak lr of 0.5: a random CLIP's cosine moves
# little per unit of w, but Adam's steps are ~lr per coordinate whatever the
# gradient's size, so the lr (not the random weights) sets how far w goes;
# 0.5 over ~20 full-rate steps moves it clearly within the teacher's range.
STEPS, LR = 24, 0.5
SMALL_CLIP = CLIPConfig(embed_dim=32, image_size=32, patch_size=16, vision_width=32,
                        vision_layers=1, vision_heads=2, text_width=32, text_heads=2,
                        text_layers=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(micro_run(tmp_path_factory.mktemp("text_edit")))


@pytest.fixture(scope="module")
def clip_parts():
    try:
        vocab = find_bpe_vocab()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return CLIP(SMALL_CLIP, rngs=nnx.Rngs(0)), CLIPTokenizer(vocab)


@pytest.fixture(scope="module")
def editor(run, clip_parts):
    # One editor: its compiled steps serve every edit of the module.
    return te.TextEditor(run, *clip_parts)


def _edit(editor, **overrides):
    config = te.StyleClipConfig(**{"steps": STEPS, "lr": LR, "l2_lambda": 0.0,
                                   "id_lambda": 0.0, **overrides})
    return editor.edit(editor.run.w_from_seeds([3]), PROMPT, config, progress=False)


@pytest.fixture(scope="module")
def free_edit(editor):
    return _edit(editor)


def _distance(result) -> float:
    return float(np.sqrt(np.sum((result.w - result.w0) ** 2)))


def test_edit_lowers_clip_loss(run, clip_parts, free_edit):
    r = free_edit
    assert r.w.shape == r.w0.shape == (1, run.n_latent, run.style_dim)
    assert r.w.dtype == np.float32
    assert r.losses.shape == r.clip_losses.shape == r.l2.shape == (STEPS,)
    np.testing.assert_allclose(r.losses, r.clip_losses, rtol=1e-6)  # l2, id weights 0
    assert r.l2[0] == 0.0 and r.id_losses.max() == 0.0
    model, tok = clip_parts
    text = te.text_features(model, tok, PROMPT)
    before = float(te.clip_loss(model, jnp.asarray(r.image_before), text)[0])
    after = float(te.clip_loss(model, jnp.asarray(r.image_after), text)[0])
    assert before == pytest.approx(float(r.clip_losses[0]), abs=1e-4)
    assert after < before - 1e-3, (before, after)
    assert np.abs(r.image_after - r.image_before).max() > 1e-3


def test_l2_keeps_w_near_w0(editor, free_edit):
    mid = _edit(editor, l2_lambda=0.05, id_lambda=0.005)
    strong = _edit(editor, l2_lambda=50.0)
    d = [_distance(free_edit), _distance(mid), _distance(strong)]
    # Adam moves each coordinate by about the learning rate whatever the
    # gradient's size, so once the l2 term dominates w hovers around w0 at a
    # floor of ~lr x sqrt(L x 512) set by the last steps' lr (~7 here), the
    # same for any larger lambda: the l2 weights order the distances down to
    # that floor, not below it.
    assert d[0] > d[1] and d[0] > d[2], d
    assert max(d[1], d[2]) < d[0] / 10, d
    # The identity term: 0 at w0 (same image, same chip), then positive.
    assert mid.id_losses[0] == pytest.approx(0.0, abs=1e-5)
    assert np.isfinite(mid.id_losses).all() and mid.id_losses.max() > 0.0


@pytest.mark.parametrize("t,expected", [
    # lr * (0.5 - 0.5 cos(pi min(1, (1 - t) / 0.25))) * min(1, t / 0.05), lr = 0.1
    (0.0, 0.0),                                  # min(1, 0 / 0.05) = 0
    (0.025, 0.05),                               # ramp-up half way: 0.1 * 1 * 0.5
    (0.5, 0.1),                                  # plateau: cos(pi) = -1 -> 1
    (0.875, 0.05),                               # (1 - t) / 0.25 = 0.5: 0.5 - 0.5 cos(pi/2) = 0.5
    (0.9, 0.1 * (0.5 - 0.5 * math.cos(0.4 * math.pi))),  # 0.1 * 0.345491...
    (1.0, 0.0),                                  # cos(0) = 1 -> 0
])
def test_schedule_is_styleclips(t, expected):
    assert float(te.styleclip_lr(t, 0.1)) == pytest.approx(expected, abs=1e-7)


def test_schedule_value_at_0_9_by_hand():
    # 0.5 - 0.5 cos(0.4 pi) = 0.5 - 0.5 * 0.309017 = 0.3454915
    assert float(te.styleclip_lr(0.9, 0.1)) == pytest.approx(0.03454915, abs=1e-7)


def test_resize_matches_upsample_then_pool():
    rng = np.random.default_rng(0)
    for res, up, pool in ((32, 7, 1), (256, 7, 8), (48, 14, 3), (100, 56, 25)):
        images = rng.uniform(size=(2, res, res, 3)).astype(np.float32)
        big = images.repeat(up, 1).repeat(up, 2)  # torch's nearest Upsample
        want = big.reshape(2, 224, pool, 224, pool, 3).mean((2, 4))  # AvgPool2d(pool)
        got = np.asarray(te.styleclip_resize(images, 224))
        np.testing.assert_allclose(got, want, atol=1e-4)  # float32 sums' order
    # StyleCLIP's own sizes: 1024 -> x7, pool 32.
    mat = te.styleclip_resize_matrix(1024)
    assert mat.shape == (224, 1024) and np.allclose(mat.sum(1), 1.0)
    assert np.allclose(mat[0, :5], [7 / 32, 7 / 32, 7 / 32, 7 / 32, 4 / 32])


def test_write_text_edit(run, free_edit, tmp_path):
    paths = te.write_text_edit(run, free_edit, tmp_path, "beard")
    assert all(p.exists() for p in paths)
    for stem in ("beard_original", "beard_edited"):
        for ext in (".glb", ".obj", "_views.png", ".npz"):
            assert (tmp_path / f"{stem}{ext}").stat().st_size > 0
    np.testing.assert_array_equal(np.load(tmp_path / "beard_w_edit.npy"), free_edit.w)
    np.testing.assert_array_equal(np.load(tmp_path / "beard_w.npy"), free_edit.w0)
    saved = np.load(tmp_path / "beard_edited.npz")
    assert str(saved["prompt"]) == PROMPT
    np.testing.assert_array_equal(saved["w"], free_edit.w[0])
    import cv2

    strip = cv2.imread(str(tmp_path / "beard_strip.png"))
    assert strip.shape[:2] == (2 * te.VIEW_SIZE, 2 * te.VIEW_SIZE)  # 2 x 2 tiles
    assert cv2.imread(str(tmp_path / "beard_loss.png")) is not None


def test_bad_inputs(run, clip_parts, tmp_path):
    for given in (None, ""):
        with pytest.raises(ValueError, match="supply --clip FILE") as err:
            te.load_clip(given)
        assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.pt: no such CLIP file"):
        te.load_clip(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="one latent"):
        te.edit_text(run, run.w_from_seeds([0, 1]), PROMPT, *clip_parts, progress=False)
    with pytest.raises(ValueError, match="prompt"):
        te.edit_text(run, run.w_from_seeds([0]), "  ", *clip_parts, progress=False)
    with pytest.raises(ValueError, match="steps"):
        te.StyleClipConfig(steps=0)
    with pytest.raises(ValueError, match="mode"):
        te.StyleClipConfig(mode="other")


def test_cli_text_edit(run, tmp_path, capsys):
    """`face3d edit --text` end to end: a CLIP state dict in OpenAI's layout
    saved by torch.save (random weights of SMALL_CLIP's shapes), two steps,
    the edited face and both latents written."""
    torch = pytest.importorskip("torch")
    from face3d_jax import cli
    from face3d_jax.convert.clip import clip_torch_shapes

    # Widths of 128: the converter infers heads = width // 64, as OpenAI's build_model.
    cfg = CLIPConfig(embed_dim=32, image_size=32, patch_size=16, vision_width=128,
                     vision_layers=1, vision_heads=2, text_width=128, text_heads=2,
                     text_layers=1)
    rng = np.random.default_rng(0)
    state = {k: torch.from_numpy(rng.normal(0, 0.02, s).astype(np.float32))
             for k, s in clip_torch_shapes(cfg).items()}
    torch.save(state, tmp_path / "clip.pt")
    argv = ["edit", "--workdir", str(run.workdir), "--seed", "3", "--text", "a smiling face",
            "--clip", str(tmp_path / "clip.pt"), "--steps", "2", "--id-lambda", "0",
            "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    assert "CLIP loss" in capsys.readouterr().out
    w0 = np.load(tmp_path / "out" / "seed0003_w.npy")
    w = np.load(tmp_path / "out" / "seed0003_w_edit.npy")
    np.testing.assert_allclose(w0, run.w_from_seeds([3]), atol=1e-6)
    assert w.shape == w0.shape and np.all(np.isfinite(w))
    assert (tmp_path / "out" / "seed0003_edited.glb").is_file()
    # A boundary edit's arguments with --text are one line.
    assert cli.main(argv + ["--alpha", "1"]) == 2
    assert "--attribute, --alpha and --video" in capsys.readouterr().err
