"""MICA's shape regressor (face3d_jax.nets.mica), its converter and E_shape's
MICA head, against a PyTorch twin with MICA's module names
(face3d_eval.torch_reference.mica) saved as mica.tar is saved."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from face3d_eval.torch_reference.iresnet import iresnet, randomize_  # noqa: E402
from face3d_eval.torch_reference.mica import Generator, mica_checkpoint, mica_shape  # noqa: E402
from face3d_jax.convert.mica import convert_mica, convert_mica_mapping  # noqa: E402
from face3d_jax.nets.mica import MicaConfig, normalize  # noqa: E402

WIDTHS, FEATURES, SHAPE = (8, 16, 32, 64), 32, 12


def _generator(layers: int, seed: int) -> Generator:
    torch.manual_seed(seed)
    g = Generator(z_dim=FEATURES, hidden=20, out=SHAPE, layers=layers).eval()
    with torch.no_grad():  # MICA's trained output is not 0.25-scaled noise: make it O(1)
        g.regressor.output.weight.mul_(4.0)
    return g


@pytest.fixture(scope="module")
def arcface():
    torch.manual_seed(0)
    return randomize_(iresnet("iresnet18", widths=WIDTHS, num_features=FEATURES), seed=1).eval()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 1, (3, 112, 112, 3)).astype(np.float32)


def _nchw01(x):  # [0, 1] NHWC -> ArcFace's [-1, 1] NCHW
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) * 2 - 1


@pytest.mark.parametrize("layers", [3, 6])  # MICA's 3, and a depth with its skip
def test_mapping_matches_twin(layers, tmp_path):
    g = _generator(layers, seed=layers)
    torch.save(mica_checkpoint(iresnet("iresnet18", widths=WIDTHS, num_features=FEATURES), g),
               tmp_path / "mica.tar")
    z = np.random.default_rng(1).normal(size=(4, FEATURES)).astype(np.float32)
    with torch.no_grad():
        ref = g(torch.nn.functional.normalize(torch.from_numpy(z))).numpy()
    for reader in ("torch", "restricted"):
        ours = convert_mica_mapping(tmp_path / "mica.tar", reader=reader)
        assert ours.config == MicaConfig(z_dim=FEATURES, hidden_dim=20, out_dim=SHAPE,
                                         layers=layers)
        np.testing.assert_allclose(np.asarray(ours(normalize(jnp.asarray(z)))), ref,
                                   rtol=1e-5, atol=1e-5)


def test_encoder_mica_head_gives_micas_shape(arcface, images, tmp_path):
    """E_shape with shape_head 'mica' and mica.tar: its shape codes are MICA's
    (the backbone's embedding, normalised, through the mapping), its other codes
    start at zero."""
    from face3d_train.models import CodeLayout, ShapeEncoder

    g = _generator(3, seed=0)
    torch.save(mica_checkpoint(arcface, g), tmp_path / "mica.tar")
    layout = CodeLayout(SHAPE, 5)
    enc = ShapeEncoder("iresnet18", layout, input_size=112, weights=str(tmp_path / "mica.tar"),
                       shape_head="mica", rngs=nnx.Rngs(0))
    out = np.asarray(nnx.jit(lambda e, x: e(x))(enc, jnp.asarray(images)))
    with torch.no_grad():
        ref = mica_shape(arcface, g, _nchw01(images)).numpy()
    assert out.shape == (3, layout.size)
    np.testing.assert_allclose(out[:, :SHAPE], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert np.all(out[:, SHAPE:] == 0.0)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(arcface(_nchw01(images))).numpy()
    feats = np.asarray(nnx.jit(lambda e, x: e.shape_features(x))(enc, jnp.asarray(images)))
    np.testing.assert_allclose(feats, emb, atol=1e-4)  # what MICA's mapping reads

    backbone, mapping = convert_mica(tmp_path / "mica.tar")
    assert backbone.config.widths == WIDTHS and mapping.config.out_dim == SHAPE


def test_untrained_mica_head_starts_at_the_mean_face_and_learns():
    from face3d_train.models import CodeLayout, ShapeEncoder

    layout = CodeLayout(SHAPE, 5)
    enc = ShapeEncoder("iresnet18", layout, input_size=112, widths=WIDTHS, shape_head="mica",
                       mica_hidden=16, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (2, 112, 112, 3)), jnp.float32)
    graph, params, rest = nnx.split(enc, nnx.Param, ...)

    def loss(p):
        out = nnx.merge(graph, p, rest)(x)
        return jnp.sum(jnp.square(out[:, :SHAPE] - 1.0)), out

    grads, out = jax.grad(loss, has_aux=True)(params)
    assert np.all(np.asarray(out) == 0.0)
    g_out = np.asarray(grads["mica"]["output"]["kernel"][...])
    assert np.abs(g_out).max() > 0  # the shape comes through the mapping, which trains


def test_errors_name_the_problem(arcface, tmp_path):
    from face3d_train.models import CodeLayout, ShapeEncoder

    torch.save({"arcface": arcface.state_dict()}, tmp_path / "backbone_only.pth")
    with pytest.raises(ValueError, match="backbone_only.pth.*not MICA's mica.tar"):
        convert_mica(tmp_path / "backbone_only.pth")
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        convert_mica(tmp_path / "missing.tar")
    torch.save(mica_checkpoint(arcface, _generator(3, seed=0)), tmp_path / "mica.tar")
    with pytest.raises(ValueError, match="predicts 12 shape coefficients, model.num_shape is 7"):
        ShapeEncoder("iresnet18", CodeLayout(7, 5), input_size=112,
                     weights=str(tmp_path / "mica.tar"), shape_head="mica", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="iresnet backbone at input_size 112"):
        ShapeEncoder("dlib", CodeLayout(7, 5), input_size=112, shape_head="mica",
                     rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown E_shape shape_head 'mlp'"):
        ShapeEncoder("iresnet18", CodeLayout(7, 5), input_size=112, shape_head="mlp",
                     rngs=nnx.Rngs(0))
    bad = mica_checkpoint(arcface, _generator(3, seed=0))
    bad["flameModel"]["regressor.output.weight"] = torch.zeros(SHAPE, 21)
    with pytest.raises(ValueError, match="regressor|output.weight"):
        convert_mica_mapping(bad)
