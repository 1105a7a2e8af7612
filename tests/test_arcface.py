"""ArcFace iresnet (face3d_jax.nets.arcface) against its PyTorch twin
(face3d_eval.torch_reference.iresnet, insightface's module layout): the same
weights through our converter must give the same embedding, gradients and
batch-norm updates. A narrow iresnet18 keeps it cheap; iresnet50/100 are only
counted (nnx.eval_shape, torch on the meta device: nothing allocated)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from face3d_eval.torch_reference.iresnet import iresnet, randomize_  # noqa: E402
from face3d_jax.convert.arcface import (  # noqa: E402
    arcface_state_dict, convert_arcface, infer_iresnet_config,
)
from face3d_jax.nets.arcface import (  # noqa: E402
    FrozenScale, IResNet, arcface_preprocess, count_params, iresnet_config,
)

WIDTHS = (8, 16, 32, 64)
FEATURES = 32
# Gradient tests compile a backward pass: a shallower net (still with a plain and a
# downsampling block) keeps that cheap.
SHALLOW = dict(layers=(1, 2, 1, 1), widths=(4, 8, 8, 16), num_features=8)


@pytest.fixture(scope="module")
def twin():
    torch.manual_seed(0)
    return randomize_(iresnet("iresnet18", widths=WIDTHS, num_features=FEATURES), seed=1).eval()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (4, 112, 112, 3)).astype(np.float32)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@nnx.jit
def _embed(net, x):
    return net(x)


def _assert_same_embedding(ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    # to 1e-4 relative to the embedding's scale, and to 1e-4 as unit vectors (what
    # the identity loss and MICA use).
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    np.testing.assert_allclose(_unit(ours), _unit(ref), atol=1e-4, rtol=0)


def test_embedding_matches_twin_eval_mode(twin, images):
    net = convert_arcface(twin.state_dict())
    with torch.no_grad():
        ref = twin(_nchw(images[:2])).numpy()
    _assert_same_embedding(_embed(net, jnp.asarray(images[:2])), ref)
    assert net.config.layers == (2, 2, 2, 2) and net.config.widths == WIDTHS


def test_mica_and_prefixed_checkpoints_load_from_files(twin, images, tmp_path):
    sd = twin.state_dict()
    with torch.no_grad():
        ref = twin(_nchw(images[:2])).numpy()
    # MICA's mica.tar: {"arcface": backbone, "flameModel": ...}; the state dict of a
    # wrapper holding the backbone under "arcface." (read without torch).
    mica = {"arcface": sd, "flameModel": {"mapping.0.weight": torch.zeros(4, 4)}}
    torch.save(mica, tmp_path / "mica.tar")
    torch.save({**{f"arcface.{k}": v for k, v in sd.items()}, "flameModel.w": torch.ones(3)},
               tmp_path / "wrapped.pth")
    for source, reader in [(tmp_path / "mica.tar", "torch"), (tmp_path / "wrapped.pth",
                                                              "restricted")]:
        net = convert_arcface(source, reader=reader)
        _assert_same_embedding(_embed(net, jnp.asarray(images[:2])), ref)


def test_training_mode_batch_stats_and_gradients_match_twin(images):
    from face3d_eval.torch_reference.iresnet import IResNet as TorchIResNet

    twin = randomize_(TorchIResNet(**SHALLOW), seed=2)
    net = convert_arcface(twin.state_dict())
    old_var = twin.layer3[0].bn2.running_var.numpy().copy()
    probe = np.random.default_rng(1).normal(size=(4, SHALLOW["num_features"])).astype(np.float32)

    twin.train()
    out_t = twin(_nchw(images))
    (out_t * torch.from_numpy(probe)).sum().backward()

    def loss_fn(model, x):
        emb = model(x, use_running_average=False)
        return jnp.sum(emb * probe), emb

    @nnx.jit
    def step(model, x):
        return nnx.grad(loss_fn, has_aux=True)(model, x)

    grads, emb = step(net, jnp.asarray(images))
    _assert_same_embedding(emb, out_t.detach().numpy())
    # Gradients reach the stem through every block (kernel HWIO vs torch OIHW).
    for ours, theirs in [(grads.conv1.kernel[...], twin.conv1.weight.grad),
                         (grads.layer2[0].conv2.kernel[...], twin.layer2[0].conv2.weight.grad),
                         (grads.bn2.scale[...], twin.bn2.weight.grad),
                         (grads.features_bias[...], twin.features.bias.grad)]:
        theirs = theirs.numpy()
        if theirs.ndim == 4:
            theirs = theirs.transpose(2, 3, 1, 0)
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4 * np.abs(theirs).max(),
                                   rtol=0)
    # The frozen BatchNorm1d scale is not a parameter: no gradient, as insightface.
    assert not any(isinstance(v, FrozenScale) for _, v in nnx.to_flat_state(grads))
    # Running means follow torch (momentum 0.1).
    np.testing.assert_allclose(np.asarray(net.layer3[0].bn2.mean[...]),
                               twin.layer3[0].bn2.running_mean.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(net.features.mean[...]),
                               twin.features.running_mean.numpy(),
                               atol=1e-4 * np.abs(twin.features.running_mean.numpy()).max())
    # Running variances: flax averages in the biased batch variance, torch the
    # unbiased one (factor n/(n-1), n = B*H*W): undo that factor on torch's update.
    n = 4 * 28 * 28  # layer3[0].bn2 follows its stride-1 conv1 on layer2's 28x28 output
    torch_batch_var = (twin.layer3[0].bn2.running_var.numpy() - 0.9 * old_var) / 0.1
    np.testing.assert_allclose(np.asarray(net.layer3[0].bn2.var[...]),
                               0.9 * old_var + 0.1 * torch_batch_var * (n - 1) / n,
                               rtol=1e-4, atol=1e-6)


def test_train_switch_and_input_gradient(images):
    from face3d_eval.torch_reference.iresnet import IResNet as TorchIResNet

    twin = randomize_(TorchIResNet(**SHALLOW), seed=3).eval()
    net = convert_arcface(twin.state_dict())
    x = jnp.asarray(images[:2])
    net.train()
    assert net.bn1.use_running_average is False and net.layer1[0].bn3.use_running_average is False
    net.eval()
    assert net.features.use_running_average is True
    # d/dx of a projection of the embedding: the twin's autograd as reference.
    probe = np.random.default_rng(2).normal(size=(2, SHALLOW["num_features"])).astype(np.float32)
    xt = _nchw(images[:2]).requires_grad_(True)
    (twin(xt) * torch.from_numpy(probe)).sum().backward()
    g = nnx.jit(lambda m, x: jax.grad(lambda x: jnp.sum(m(x) * probe))(x))(net, x)
    ref = xt.grad.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(g), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_parameter_counts_match_insightface():
    for arch, published_m in [("iresnet50", 43.6), ("iresnet100", 65.2)]:
        abstract = nnx.eval_shape(lambda a=arch: IResNet(iresnet_config(a), rngs=nnx.Rngs(0)))
        ours = count_params(abstract)
        frozen_state = nnx.state(abstract, FrozenScale)
        frozen = sum(v.get_value().size for _, v in nnx.to_flat_state(frozen_state))
        with torch.device("meta"):
            t = iresnet(arch)
        total = sum(p.numel() for p in t.parameters())
        trainable = sum(p.numel() for p in t.parameters() if p.requires_grad)
        assert ours == trainable and ours + frozen == total
        assert round(total / 1e6, 1) == published_m  # insightface's model-zoo figures
    assert count_params(abstract) == 65_155_648  # iresnet100: 65,156,160 with features.weight


def test_inferred_config_and_arcface_preprocess(twin):
    sd = arcface_state_dict({f"backbone.{k}": v for k, v in twin.state_dict().items()})
    cfg = infer_iresnet_config(sd)
    assert (cfg.layers, cfg.widths, cfg.num_features) == ((2, 2, 2, 2), WIDTHS, FEATURES)
    x = jnp.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(np.asarray(arcface_preprocess(x)), [-1.0, 0.0, 1.0])


def test_errors_name_the_problem(twin, tmp_path):
    sd = dict(twin.state_dict())
    bad = dict(sd)
    bad["layer2.1.conv1.weight"] = torch.zeros(16, 16, 3, 1)
    with pytest.raises(ValueError, match=r"layer2\.1\.conv1\.weight.*\(16, 16, 3, 1\)"):
        convert_arcface(bad)
    missing = {k: v for k, v in sd.items() if k != "layer3.0.downsample.1.running_var"}
    with pytest.raises(ValueError, match=r"missing key 'layer3\.0\.downsample\.1\.running_var'"):
        convert_arcface(missing)
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_arcface({**sd, "layer1.0.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="conv1.weight"):
        convert_arcface({"something": torch.zeros(2)})
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        convert_arcface(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth"):
        convert_arcface(tmp_path / "junk.pth")
    with pytest.raises(ValueError, match=r"\(B, 112, 112, 3\)"):
        convert_arcface(sd)(jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="unknown iresnet"):
        iresnet_config("iresnet101")


def test_trainer_identity_pass_matches_twin_embedding_and_stage_maps(twin, images):
    # The trainer's F (face3d_jax.nets.identity) takes [0, 1] chips and gets
    # the embedding and the perceptual maps of stages 1-3 from one pass.
    from face3d_jax.nets.identity import IdentityNetwork

    net = IdentityNetwork(convert_arcface(twin.state_dict()))
    maps_ref = {}
    hooks = [getattr(twin, f"layer{n}").register_forward_hook(
        lambda _m, _i, out, n=n: maps_ref.__setitem__(n, out.numpy())) for n in (1, 2, 3)]
    with torch.no_grad():
        ref = twin(_nchw(images[:2])).numpy()
    for h in hooks:
        h.remove()
    emb, maps = nnx.jit(lambda f, x: f.embed_chips(x))(net, jnp.asarray((images[:2] + 1.0) / 2.0))
    _assert_same_embedding(emb, ref)
    assert sorted(maps) == ["stage1", "stage2", "stage3"]
    for n in (1, 2, 3):
        got, want = np.asarray(maps[f"stage{n}"]), maps_ref[n].transpose(0, 2, 3, 1)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)
