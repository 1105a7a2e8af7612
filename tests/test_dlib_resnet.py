"""dlib's face-recognition ResNet: our reader of dlib's file and our Flax port, checked
against dlib itself on a real photograph (skimage's astronaut)."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

if importlib.util.find_spec("face_recognition_models") is None:
    pytest.skip("face-recognition-models is not installed (it ships dlib's network file)",
                allow_module_level=True)

from face3d_jax.convert.dlib_dnn import face_recognition_models_file, parse_dlib_net, read_dlib_net  # noqa: E402
from face3d_jax.nets.dlib_resnet import (  # noqa: E402
    MODEL_FILE,
    dlib_wrappers,
    load_dlib_resnet,
    mid_level_features,
)


@pytest.fixture(scope="module")
def model_path():
    return face_recognition_models_file(MODEL_FILE)


@pytest.fixture(scope="module")
def model(model_path):
    return load_dlib_resnet(model_path)


@pytest.fixture(scope="module")
def forward(model):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)), state


def test_reader_reads_dlib_file(model_path):
    net = read_dlib_net(model_path, dlib_wrappers())
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29
    assert kinds.count("add_prev") == 14 and kinds.count("relu") == 29
    # dlib's face-recognition example trains with loss_metric margin 0.04, threshold 0.6.
    assert net.loss["margin"] == pytest.approx(0.04)
    assert net.loss["dist_thresh"] == pytest.approx(0.6)
    inp = net.layers[0].config
    np.testing.assert_allclose(inp["mean_rgb"], (122.782, 117.001, 104.298), atol=1e-4)
    assert inp["size"] == (150, 150)
    stem = net.layers[1]
    assert stem.params["filters"].shape == (32, 3, 7, 7) and stem.config["stride"] == (2, 2)
    assert net.layers[-1].params["weights"].shape == (256, 128)
    assert all(np.isfinite(p).all() for layer in net.layers for p in layer.params.values())


def test_reader_rejects_truncated_and_corrupt(model_path, tmp_path):
    data = model_path.read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as err:
        load_dlib_resnet(truncated)
    assert "\n" not in str(err.value) and "truncated.dat" in str(err.value)

    corrupt = bytearray(data)
    corrupt[4:17] = b"not_a_loss!!!"  # the loss layer's name, same length
    path = tmp_path / "corrupt.dat"
    path.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="unsupported loss layer") as err:
        read_dlib_net(path, dlib_wrappers())
    assert "\n" not in str(err.value)
    # A wrong template (one wrapper missing) must not be read silently.
    with pytest.raises(ValueError):
        parse_dlib_net(data, dlib_wrappers()[1:])
    with pytest.raises(FileNotFoundError):
        load_dlib_resnet(tmp_path / "missing.dat")
    # Another real dlib network (the CNN face detector) is refused by name.
    with pytest.raises(ValueError, match="unsupported loss layer 'loss_mmod"):
        load_dlib_resnet(face_recognition_models_file("mmod_human_face_detector.dat"))


def test_reader_reads_bz2(model_path, tmp_path):
    """dlib distributes its models as .dat.bz2; the reader decompresses those. (A
    compressed head of the real file: the error must speak of the decompressed bytes.)"""
    import bz2

    packed = tmp_path / "model.dat.bz2"
    packed.write_bytes(bz2.compress(model_path.read_bytes()[:4000]))
    with pytest.raises(ValueError, match="of 4000; not a dlib network file, or truncated"):
        read_dlib_net(packed, dlib_wrappers())
    packed.write_bytes(b"BZh9 broken")
    with pytest.raises(ValueError, match="broken bz2 stream"):
        read_dlib_net(packed, dlib_wrappers())


def _astronaut_views():
    """The astronaut photo and two re-framed copies (scaled down, shifted and scaled up)."""
    from skimage import data, transform

    img = data.astronaut()
    small = (transform.rescale(img, 0.7, channel_axis=-1, anti_aliasing=True) * 255)
    shifted = transform.resize(img[40:300, 100:360], (390, 390), anti_aliasing=False) * 255
    return [img, np.round(small).astype(np.uint8), np.round(shifted).astype(np.uint8)]


def test_descriptor_matches_dlib_on_real_faces(model_path, forward):
    dlib = pytest.importorskip("dlib", reason="dlib (pip install dlib-bin) is the reference")
    from face3d_jax.faces.detect import FaceTools, face_chip

    tools = FaceTools.load()
    rec = dlib.face_recognition_model_v1(str(model_path))
    chips, refs = [], []
    for img in _astronaut_views():
        face = tools.detect(img)[0]
        chip = face_chip(img, face)
        chips.append(chip)
        refs.append(np.array(rec.compute_face_descriptor(chip)))
    fn, state = forward
    ours = np.asarray(fn(state, jnp.asarray(np.stack(chips), jnp.float32)))
    refs = np.stack(refs)
    cos = np.sum(ours * refs, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(refs, axis=1)
    assert cos.min() >= 0.999, cos
    np.testing.assert_allclose(ours, refs, atol=1e-4)
    # Same person in all three views: dlib's own same-identity threshold is 0.6.
    assert np.linalg.norm(refs[0] - refs[1]) < 0.6 and np.linalg.norm(refs[0] - refs[2]) < 0.6


def test_gradient_matches_finite_differences(model):
    """The identity loss is differentiable: jax.grad agrees with a float64 central
    difference along a random direction, on a real face (a plain crop, no dlib)."""
    from skimage import data

    graphdef, state = nnx.split(model)
    with jax.enable_x64(True):
        # Sub-pixel noise breaks ties: a flat patch of a uint8 photo gives equal
        # convolution outputs, and max-pooling is not differentiable at a tie.
        image = (jnp.asarray(data.astronaut()[50:200, 145:295][None], jnp.float64)
                 + jax.random.uniform(jax.random.key(3), (1, 150, 150, 3), jnp.float64))
        target = jax.random.normal(jax.random.key(1), (128,), jnp.float64)
        direction = jax.random.normal(jax.random.key(2), image.shape, jnp.float64)

        def loss(x):  # float32 weights run in the input's dtype (float64 here)
            return jnp.dot(nnx.merge(graphdef, state)(x)[0], target)

        value_and_grad = jax.jit(jax.value_and_grad(loss))
        _, grad = value_and_grad(image)
        eps = 1e-4
        fd = (value_and_grad(image + eps * direction)[0]
              - value_and_grad(image - eps * direction)[0]) / (2 * eps)
        analytic = float(jnp.sum(grad * direction))
    assert np.isfinite(np.asarray(grad)).all() and abs(analytic) > 0
    np.testing.assert_allclose(analytic, float(fd), rtol=1e-3)


def test_mid_level_features_shapes(model):
    feats = mid_level_features(model, jnp.full((2, 150, 150, 3), 128.0))
    assert {k: v.shape for k, v in feats.items()} == {
        "level4": (2, 35, 35, 32), "level3": (2, 17, 17, 64), "level2": (2, 8, 8, 128)}
    assert all(float(v.min()) >= 0 for v in feats.values())  # post-ReLU
