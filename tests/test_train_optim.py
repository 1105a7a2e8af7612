"""The shape side's optimizer (train/state.py `shape_optimizer`) on a real
E_shape parameter tree: the backbone's learning-rate scale and MICA's frozen
ArcFace stages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from face3d_train.models import CodeLayout, ShapeEncoder
from face3d_train.state import shape_optimizer


@pytest.fixture(scope="module")
def params():
    enc = ShapeEncoder("iresnet18", CodeLayout(4, 3), input_size=112, widths=(4, 4, 8, 8),
                       shape_head="mica", mica_hidden=8, rngs=nnx.Rngs(0))
    return {"encoder": nnx.state(enc, nnx.Param), "displacement": {"w": jnp.ones((3,))}}


def _first_update(params, **cfg):
    cfg = ml_collections.ConfigDict(dict(lr=1e-4, b1=0.9, b2=0.999, **cfg))
    tx = shape_optimizer(cfg)
    # Gradients of one sign and size 1: Adam's first step moves every entry by lr.
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def _step_size(tree) -> set[float]:
    """The distinct |update| sizes of a subtree, to float32 Adam's precision."""
    sizes = np.concatenate([np.abs(np.asarray(x)).ravel() for x in jax.tree.leaves(tree)])
    return {float(f"{v:.3g}") for v in np.unique(sizes)}


def test_backbone_scale_and_micas_frozen_stages(params):
    up = _first_update(params, backbone_lr_scale=0.1, frozen_backbone_stages=3)
    enc, bb = up["encoder"], up["encoder"]["backbone"]
    for name in ("conv1", "bn1", "prelu", "layer1", "layer2", "layer3"):
        assert _step_size(bb[name]) == {0.0}, name
    for name in ("layer4", "bn2", "fc", "features_bias"):
        assert _step_size(bb[name]) == {1e-5}, name
    for part in (enc["head"], enc["mica"], up["displacement"]):
        assert _step_size(part) == {1e-4}


def test_a_zero_backbone_scale_freezes_the_whole_backbone(params):
    up = _first_update(params, backbone_lr_scale=0.0)
    assert _step_size(up["encoder"]["backbone"]) == {0.0}
    for part in (up["encoder"]["head"], up["encoder"]["mica"], up["displacement"]):
        assert _step_size(part) == {1e-4}


def test_defaults_move_everything_at_lr(params):
    assert _step_size(_first_update(params)) == {1e-4}
    up = _first_update(params, frozen_backbone_stages=1)
    assert _step_size(up["encoder"]["backbone"]["layer1"]) == {0.0}
    assert _step_size(up["encoder"]["backbone"]["layer2"]) == {1e-4}
    with pytest.raises(ValueError, match="frozen_backbone_stages must be 0..4, got 5"):
        _first_update(params, frozen_backbone_stages=5)


def test_frozen_stages_need_an_iresnet():
    from face3d_train.configs import load
    from face3d_train.state import make_setup

    config = load("tiny")  # dlib's network
    config.optim.shape.frozen_backbone_stages = 3
    with pytest.raises(ValueError, match="freezes an iresnet's stages.*'dlib'"):
        make_setup(config, None, jax.random.key(0))
