"""VGG16 to relu3_3 (face3d_jax.nets.vgg) against a torch nn.Sequential with
torchvision's `vgg16().features` layout (indices 0-15), through our converter;
and the perceptual feature selection (face3d_jax.nets.perceptual)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from torch import nn  # noqa: E402

from face3d_jax.convert.vgg import convert_vgg16  # noqa: E402
from face3d_jax.losses import perceptual_loss  # noqa: E402
from face3d_jax.nets import perceptual  # noqa: E402
from face3d_jax.nets.arcface import count_params  # noqa: E402
from face3d_jax.nets.vgg import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


class TorchVGGFeatures(nn.Module):
    """torchvision vgg16().features[:16] plus the next pool and conv (ignored by us)."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)


@pytest.fixture(scope="module")
def torch_vgg():
    torch.manual_seed(0)
    model = TorchVGGFeatures().eval()
    with torch.no_grad():  # non-zero biases, so a bias mix-up shows
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.normal_(0.0, 0.1)
    return model


def _relu33_reference(model, images01):
    x = torch.from_numpy(np.ascontiguousarray(images01.transpose(0, 3, 1, 2)))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        y = model.features[:16]((x - mean) / std)  # up to relu3_3 (index 15)
    return y.numpy().transpose(0, 2, 3, 1)


def test_relu33_matches_torch_with_odd_sizes(torch_vgg, tmp_path):
    images = np.random.default_rng(0).uniform(0, 1, (2, 18, 22, 3)).astype(np.float32)
    ref = _relu33_reference(torch_vgg, images)
    assert ref.shape == (2, 4, 5, 256)  # pools floor 18 -> 9 -> 4 and 22 -> 11 -> 5
    sd = {**torch_vgg.state_dict(), "classifier.0.weight": torch.zeros(4, 4)}
    torch.save(sd, tmp_path / "vgg16.pth")
    for source, reader in [(sd, "auto"), (tmp_path / "vgg16.pth", "restricted")]:
        vgg = convert_vgg16(source, reader=reader)
        out = np.asarray(nnx.jit(lambda m, x: m(x))(vgg, jnp.asarray(images)))
        np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    assert count_params(vgg) == 1_735_488  # the 7 convs of VGG16 up to conv3_3


def test_converter_errors(torch_vgg, tmp_path):
    sd = dict(torch_vgg.state_dict())
    with pytest.raises(ValueError, match=r"missing key 'features\.12\.bias'"):
        convert_vgg16({k: v for k, v in sd.items() if k != "features.12.bias"})
    with pytest.raises(ValueError, match=r"features\.5\.weight.*\(64, 64, 3, 3\)"):
        convert_vgg16({**sd, "features.5.weight": torch.zeros(64, 64, 3, 3)})
    with pytest.raises(FileNotFoundError, match="vgg.pth"):
        convert_vgg16(tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        convert_vgg16(sd)(jnp.zeros((1, 8, 8)))


def test_perceptual_feature_selection_logs_choice(torch_vgg, caplog, monkeypatch):
    vgg = convert_vgg16(torch_vgg.state_dict())
    with caplog.at_level(logging.INFO, logger="face3d_jax.nets.perceptual"):
        fn = perceptual.perceptual_features(None, vgg=vgg)
    assert "VGG16 relu3_3" in caplog.text
    x = jnp.full((1, 8, 8, 3), 0.5)
    assert fn(x).shape == (1, 2, 2, 256)
    assert float(perceptual_loss(x, x, feature_fn=fn)) == 0.0
    with pytest.raises(ValueError, match="need VGG16 weights"):
        perceptual.perceptual_features("vgg")
    with pytest.raises(ValueError, match="one of"):
        perceptual.perceptual_features("lpips", vgg=vgg)

    # Without VGG weights: the identity network's mid-level maps. The dlib network's
    # numerics are tested with its port; here the wiring: 0..255 input, 150x150 chips.
    from face3d_jax.nets import dlib_resnet

    seen = {}

    def fake_mid_level(model, images):
        seen["model"], seen["shape"] = model, images.shape
        seen["max"] = float(jnp.max(images))
        return {"level4": images[..., :1]}

    monkeypatch.setattr(dlib_resnet, "mid_level_features", fake_mid_level)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="face3d_jax.nets.perceptual"):
        fn = perceptual.perceptual_features(identity_model="the-model")
    assert "identity network" in caplog.text
    feats = fn(jnp.ones((2, 224, 224, 3)))
    assert seen["model"] == "the-model" and seen["shape"] == (2, 150, 150, 3)
    assert seen["max"] == pytest.approx(255.0, rel=1e-5)
    assert feats["level4"].shape == (2, 150, 150, 1)
