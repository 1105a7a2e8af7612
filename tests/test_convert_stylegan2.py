"""rosinality checkpoint conversion, checked against the PyTorch twin
(eval/torch_reference/stylegan2.py, rosinality's state-dict layout): the same
weights, w and noise give the same image, the same logits and the same
gradients; both readers (restricted, torch.load) agree; bad files end with one
line naming the key or the file."""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from face3d_eval.torch_reference import stylegan2 as tref  # noqa: E402
from face3d_jax.cli import main  # noqa: E402
from face3d_jax.convert.stylegan2 import (  # noqa: E402
    convert_rosinality,
    load_discriminator,
    load_generator,
)
from face3d_jax.formats.torch_file import load_torch_file, materialize  # noqa: E402
from face3d_jax.nets.stylegan2_sample import to_uint8  # noqa: E402

RES, STYLE, N_MLP, CAP = 16, 32, 2, 16


def _perturbed(module, seed):
    """Non-zero biases and noise strengths, so every parameter shows in the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return module.eval()


@pytest.fixture(scope="module")
def twins():
    torch.manual_seed(0)
    g_ema = _perturbed(tref.Generator(RES, STYLE, N_MLP, channel_max=CAP), 1)
    g = _perturbed(tref.Generator(RES, STYLE, N_MLP, channel_max=CAP), 2)
    d = _perturbed(tref.Discriminator(RES, channel_max=CAP), 3)
    return g_ema, g, d


@pytest.fixture(scope="module")
def checkpoint(twins, tmp_path_factory):
    """A training checkpoint as rosinality's train.py writes it (plus latent_avg)."""
    g_ema, g, d = twins
    tmp = tmp_path_factory.mktemp("sg2")
    with torch.no_grad():
        latent_avg = g_ema.mean_latent(256)[0]
    opt = torch.optim.Adam(d.parameters())
    d(torch.randn(4, 3, RES, RES)).sum().backward()
    opt.step()
    opt.zero_grad()
    ckpt = {"g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict(),
            "d_optim": opt.state_dict(), "latent_avg": latent_avg,
            "args": argparse.Namespace(size=RES, channel_multiplier=2)}
    path = tmp / "ckpt.pt"
    torch.save(ckpt, path)
    out = tmp / "converted"
    result = convert_rosinality(path, out)
    return path, out, result, latent_avg


def test_counts_match_the_twin(twins, checkpoint):
    g_ema, _, d = twins
    _, out, result, _ = checkpoint
    assert result.generator_params == sum(p.numel() for p in g_ema.parameters())
    assert result.discriminator_params == sum(p.numel() for p in d.parameters())
    meta = json.loads((out / "stylegan2.json").read_text())
    assert meta["config"]["channel_max"] == CAP and meta["config"]["resolution"] == RES
    assert sorted(p.name for p in out.iterdir()) == ["d.npz", "g.npz", "g_ema.npz",
                                                     "stylegan2.json"]


def test_generator_matches_twin(twins, checkpoint):
    """(Our fused_modconv=True path equals this one: test_stylegan2.py.)"""
    g_ema = twins[0]
    g = load_generator(checkpoint[1])
    w = torch.randn(2, g.config.n_latent, STYLE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref, _ = g_ema([w], input_is_latent=True, randomize_noise=False)
    ours = jax.jit(lambda w: g.synthesis(w, noise_mode="const"))(jnp.asarray(w.numpy()))
    ref = ref.permute(0, 2, 3, 1).numpy()
    assert ours.shape == (2, RES, RES, 3) and ours.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4 * max(1, np.abs(ref).max()))


def test_z_path_with_truncation_matches_twin(twins, checkpoint):
    g_ema = twins[0]
    latent_avg = checkpoint[3]
    g = load_generator(checkpoint[1])
    np.testing.assert_allclose(np.asarray(g.latent_avg[...]), latent_avg.numpy(), atol=1e-6)
    z = torch.randn(2, STYLE, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref, _ = g_ema([z], truncation=0.6, truncation_latent=latent_avg,
                       randomize_noise=False)
    ours = jax.jit(lambda z: g(z, truncation=0.6, noise_mode="const"))(jnp.asarray(z.numpy()))
    np.testing.assert_allclose(np.asarray(ours), ref.permute(0, 2, 3, 1).numpy(), atol=2e-4)


def test_generator_gradient_matches_twin(twins, checkpoint):
    """d <G(w+), R> / d w+ through every layer (modulation, demodulation, blur)."""
    g_ema = twins[0]
    g = load_generator(checkpoint[1])
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(2, g.config.n_latent, STYLE, generator=gen, requires_grad=True)
    r = torch.randn(2, 3, RES, RES, generator=gen)
    img, _ = g_ema([w], input_is_latent=True, randomize_noise=False)
    (img * r).sum().backward()
    r_nhwc = jnp.asarray(r.permute(0, 2, 3, 1).numpy())
    ours = jax.jit(jax.grad(lambda w: jnp.sum(g.synthesis(w, noise_mode="const") * r_nhwc)))(
        jnp.asarray(w.detach().numpy()))
    ref = w.grad.numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4 * np.abs(ref).max())


def test_discriminator_matches_twin(twins, checkpoint):
    d_ref = twins[2]
    d = load_discriminator(checkpoint[1])
    img = torch.randn(8, 3, RES, RES, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = d_ref(img).numpy()
    ours = jax.jit(d)(jnp.asarray(img.permute(0, 2, 3, 1).numpy()))
    assert ours.shape == (8, 1) and ours.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4 * max(1, np.abs(ref).max()))


def test_export_without_d_or_latent_avg(twins, tmp_path, capsys):
    """convert_weight.py-style file: g_ema only; latent_avg = mean w of 4096 z (key 0)."""
    g_ema = twins[0]
    path = tmp_path / "g_only.pt"
    torch.save({"g_ema": g_ema.state_dict()}, path)
    assert main(["convert", "stylegan2", str(path), "--out", str(tmp_path / "c")]) == 0
    assert "D none parameters" in capsys.readouterr().out
    assert not (tmp_path / "c" / "d.npz").exists()
    z = np.asarray(jax.random.normal(jax.random.key(0), (4096, STYLE)))
    with torch.no_grad():
        expect = g_ema.style(torch.from_numpy(z.copy())).mean(0).numpy()
    got = load_generator(tmp_path / "c").latent_avg[...]
    np.testing.assert_allclose(np.asarray(got), expect, atol=1e-4 * np.abs(expect).max())


def test_restricted_reader_matches_torch_load(checkpoint, tmp_path):
    path = checkpoint[0]
    ref = torch.load(path, weights_only=False)  # our own file, written above
    ours = materialize(load_torch_file(path))
    for name in ("g_ema", "d"):
        assert set(ours[name]) == set(ref[name])
        for key, tensor in ref[name].items():
            np.testing.assert_array_equal(ours[name][key], tensor.numpy(), err_msg=key)
    assert ours["args"].state == {"size": RES, "channel_multiplier": 2}
    legacy = tmp_path / "legacy.pt"
    torch.save({"g_ema": ref["g_ema"]}, legacy, _use_new_zipfile_serialization=False)
    old = materialize(load_torch_file(legacy))["g_ema"]
    for key, tensor in ref["g_ema"].items():
        np.testing.assert_array_equal(old[key], tensor.numpy(), err_msg=key)


def test_torch_reader_converts_the_same(checkpoint, tmp_path):
    convert_rosinality(checkpoint[0], tmp_path, reader="torch")
    for name in ("g_ema.npz", "d.npz"):
        with np.load(tmp_path / name) as a, np.load(checkpoint[1] / name) as b:
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])


def test_cli_convert_and_sample(twins, checkpoint, tmp_path, capsys):
    g_ema = twins[0]
    assert main(["convert", "stylegan2", str(checkpoint[0]), "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    assert f"G {sum(p.numel() for p in g_ema.parameters()):,} parameters" in printed
    assert f"D {sum(p.numel() for p in twins[2].parameters()):,} parameters" in printed
    z = np.random.default_rng(0).standard_normal((1, STYLE)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    png = tmp_path / "img.png"
    assert main(["sample", str(tmp_path / "c"), "--z", str(tmp_path / "z.npy"),
                 "--noise", "const", "--out", str(png)]) == 0
    from PIL import Image

    with torch.no_grad():
        ref, _ = g_ema([torch.from_numpy(z)], randomize_noise=False)
    expect = to_uint8(jnp.asarray(ref.permute(0, 2, 3, 1).numpy()))[0]
    got = np.asarray(Image.open(png))
    assert got.shape == (RES, RES, 3)
    assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("face3d: error: ")
    return err


def test_bad_checkpoints_end_with_one_line(checkpoint, twins, tmp_path, capsys):
    path = checkpoint[0]
    out = str(tmp_path / "o")
    err = _one_line_error(capsys, ["convert", "stylegan2", str(tmp_path / "none.pt"),
                                   "--out", out])
    assert "no such file" in err
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "cut.pt" in _one_line_error(capsys, ["convert", "stylegan2", str(cut), "--out", out])
    sd = twins[0].state_dict()
    wrong = dict(sd, **{"convs.1.conv.weight": torch.zeros(1, 16, 16, 1, 1)})
    torch.save({"g_ema": wrong}, tmp_path / "wrong.pt")
    err = _one_line_error(capsys, ["convert", "stylegan2", str(tmp_path / "wrong.pt"),
                                   "--out", out])
    assert "convs.1.conv.weight" in err
    assert "(1, 16, 16, 1, 1)" in err and "(1, 16, 16, 3, 3)" in err
    missing = {k: v for k, v in sd.items() if k != "to_rgbs.0.conv.modulation.bias"}
    torch.save({"g_ema": missing}, tmp_path / "missing.pt")
    err = _one_line_error(capsys, ["convert", "stylegan2", str(tmp_path / "missing.pt"),
                                   "--out", out])
    assert "to_rgbs.0.conv.modulation.bias" in err
    torch.save({"model": sd}, tmp_path / "foreign.pt")
    err = _one_line_error(capsys, ["convert", "stylegan2", str(tmp_path / "foreign.pt"),
                                   "--out", out])
    assert "no 'g_ema' or 'g'" in err


def test_pickle_code_is_refused(tmp_path, capsys):
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"g_ema": Evil()}, protocol=2))
    err = _one_line_error(capsys, ["convert", "stylegan2", str(path), "--out",
                                   str(tmp_path / "o")])
    assert "refusing" in err and "pwned" not in capsys.readouterr().out
