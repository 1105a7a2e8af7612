"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1) in Flax NNX.

The network of dlib's examples/dnn_face_recognition_ex.cpp (`anet_type`), read
from dlib's own file by `face3d_jax.convert.dlib_dnn`:

  input_rgb_image_sized<150>: x = (rgb - mean_rgb) / 256, mean (122.782, 117.001, 104.298)
  con 32 7x7 /2 (no padding) -> affine -> relu -> max_pool 3x3 /2 (no padding)
  level4: 3 x ares<32>                      35x35
  level3: ares_down<64>,  3 x ares<64>      17x17
  level2: ares_down<128>, 2 x ares<128>     8x8
  level1: ares_down<256>, 2 x ares<256>     4x4
  level0: ares_down<256>                    2x2
  avg_pool_everything -> fc_no_bias 128     (loss_metric: the output is used as is)

  ares<N>(x)      = relu(block(x) + x)
  ares_down<N>(x) = relu(block_stride2(x) + avg_pool_2x2/2(x))
  block(x)        = affine(con3x3/1(relu(affine(con3x3/s(x)))))

Facts from dlib's source (dlib/dnn/layers.h, dlib/cuda/cpu_dlib.cpp) that shape
the numbers: a layer with stride != 1 has no padding by default (so the strided
3x3 convolutions and 2x2 pools are "valid"; stride-1 3x3 convolutions pad 1);
convolution is cross-correlation with OIHW filters; `affine` is the frozen
batch-norm (per-channel gamma * x + beta); add_prev of tensors of different
shapes zero-pads both to the larger size anchored at the top-left corner (this
happens twice: 32->64 channels, and at level1 where the strided block gives 3x3
but the pooled shortcut 4x4).

`mid_level_features` gives the outputs of level4, level3 and level2 (35x35x32,
17x17x64, 8x8x128 at 150x150 input) for a perceptual loss: these are ordinary
image-structure features of a face-trained backbone; level1/level0 (4x4, 2x2)
are identity-specific and too coarse to localise errors.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from face3d_jax.convert.dlib_dnn import DlibNet, face_recognition_models_file, read_dlib_net

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
DESCRIPTOR_DIM = 128
MEAN_RGB = (122.782, 117.001, 104.298)
# (channels, residual blocks, stride of the first block), in execution order:
# dlib's alevel4, alevel3, alevel2, alevel1, alevel0.
STAGES = ((32, 3, 1), (64, 4, 2), (128, 3, 2), (256, 3, 2), (256, 1, 2))
STEM_CHANNELS = 32
MID_LEVEL_NAMES = ("level4", "level3", "level2")


class Conv(nnx.Module):
    """dlib's con_: cross-correlation with bias; padding k//2 only when stride is 1.

    kernel: (k, k, in, out) float32 Param; bias: (out,) float32 Param.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *, rngs: nnx.Rngs):
        fan_in = in_ch * kernel * kernel
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (kernel, kernel, in_ch, out_ch))
                                * np.sqrt(2.0 / fan_in))
        self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32))
        self.stride = stride
        self.padding = 0 if stride != 1 else kernel // 2

    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...].astype(x.dtype), (self.stride, self.stride), ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...].astype(x.dtype)


class Affine(nnx.Module):
    """dlib's affine_ (inference batch-norm): gamma * x + beta per channel."""

    def __init__(self, channels: int):
        self.gamma = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...].astype(x.dtype) + self.beta[...].astype(x.dtype)


def _pool(x: jax.Array, window: int, stride: int, kind: str) -> jax.Array:
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    if kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, "VALID")
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "VALID") / (window * window)


def _add_zero_padded(a: jax.Array, b: jax.Array) -> jax.Array:
    """a + b after zero-padding both (NHWC) to the larger H, W, C at the far side."""
    shape = [max(sa, sb) for sa, sb in zip(a.shape, b.shape)]

    def pad(t):
        return jnp.pad(t, [(0, s - d) for s, d in zip(shape, t.shape)])

    return pad(a) + pad(b)


class ResidualBlock(nnx.Module):
    """dlib's ares<N> (stride 1) or ares_down<N> (stride 2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv(in_ch, out_ch, 3, stride, rngs=rngs)
        self.affine1 = Affine(out_ch)
        self.conv2 = Conv(out_ch, out_ch, 3, 1, rngs=rngs)
        self.affine2 = Affine(out_ch)
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.affine2(self.conv2(jax.nn.relu(self.affine1(self.conv1(x)))))
        shortcut = _pool(x, 2, 2, "avg") if self.stride == 2 else x
        return jax.nn.relu(_add_zero_padded(y, shortcut))


class DlibFaceResNet(nnx.Module):
    """dlib's 29-convolution face-recognition ResNet; 128-d descriptors.

    Call with images (B, H, W, 3) float, RGB in dlib's 0..255 range (aligned
    150x150 chips as `dlib.get_face_chip` makes them; other sizes from 120 up run
    but are not what the weights were trained on). Returns (B, 128) in the input's
    dtype, not normalised, exactly as dlib returns it (dlib compares faces by
    Euclidean distance, same person below 0.6).
    """

    def __init__(self, *, rngs: nnx.Rngs, mean_rgb: tuple[float, float, float] = MEAN_RGB):
        self.mean_rgb = tuple(float(m) for m in mean_rgb)
        self.stem_conv = Conv(3, STEM_CHANNELS, 7, 2, rngs=rngs)
        self.stem_affine = Affine(STEM_CHANNELS)
        stages, in_ch = [], STEM_CHANNELS
        for ch, n, stride in STAGES:
            blocks = []
            for j in range(n):
                blocks.append(ResidualBlock(in_ch, ch, stride if j == 0 else 1, rngs=rngs))
                in_ch = ch
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.fc = nnx.Param(jax.random.normal(rngs.params(), (in_ch, DESCRIPTOR_DIM))
                            / np.sqrt(in_ch))

    def features(self, images: jax.Array, upto: int = len(STAGES)) -> list[jax.Array]:
        """Stage outputs [level4, level3, ...] (NHWC), the first `upto` of them."""
        mean = jnp.asarray(self.mean_rgb, images.dtype)
        x = (images - mean) / 256.0
        x = _pool(jax.nn.relu(self.stem_affine(self.stem_conv(x))), 3, 2, "max")
        outs = []
        for stage in list(self.stages)[:upto]:
            for block in stage:
                x = block(x)
            outs.append(x)
        return outs

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.features(images)[-1]
        return jnp.mean(x, axis=(1, 2)) @ self.fc[...].astype(x.dtype)


def mid_level_features(model: DlibFaceResNet, images: jax.Array) -> dict[str, jax.Array]:
    """Mid-level feature maps of the face backbone, for perceptual losses.

    Args:
      model: a loaded `DlibFaceResNet`.
      images: (B, H, W, 3) float32, RGB in 0..255 (150x150 face chips ideally).
    Returns:
      {"level4": (B, h4, w4, 32), "level3": (B, h3, w3, 64), "level2": (B, h2, w2, 128)}
      post-ReLU activations in the images' dtype; at 150x150 h4=35, h3=17, h2=8.
      See the module docstring for why these three levels.
    """
    return dict(zip(MID_LEVEL_NAMES, model.features(images, upto=len(MID_LEVEL_NAMES))))


# ------------------------------------------------------------------ loading dlib's file


def dlib_wrappers() -> list[str]:
    """The template nest of dlib's anet_type below its loss layer, outermost first."""
    block = ["layer"] * 5 + ["tag"]  # affine, con, relu, affine, con, tag1
    w = ["layer", "layer"]  # fc_no_bias, avg_pool_everything
    for _, n, stride in reversed(STAGES):
        for j in reversed(range(n)):
            if j == 0 and stride == 2:  # relu, add_prev2, avg_pool, skip1, tag2, block
                w += ["layer", "layer", "layer", "skip", "tag"] + block
            else:  # relu, add_prev1, block
                w += ["layer", "layer"] + block
    return w + ["layer", "layer", "layer"]  # max_pool, relu, affine over the stem con


def _expected_kinds() -> list[str]:
    kinds = ["input", "con", "affine", "relu", "max_pool"]
    for _, n, stride in STAGES:
        for j in range(n):
            kinds += ["tag", "con", "affine", "relu", "con", "affine"]
            if j == 0 and stride == 2:
                kinds += ["tag", "skip", "avg_pool"]
            kinds += ["add_prev", "relu"]
    return kinds + ["avg_pool", "fc"]


def _set(param: nnx.Param, value: np.ndarray, name: str, origin: str) -> None:
    if tuple(param.shape) != value.shape:
        raise ValueError(f"{origin}: {name} has shape {value.shape}, expected "
                         f"{tuple(param.shape)}")
    value = jnp.asarray(value, jnp.float32)
    if hasattr(param, "set_value"):  # flax >= 0.12; `.value =` is deprecated there
        param.set_value(value)
    else:
        param.value = value


def load_dlib_resnet(path: str | Path | None = None) -> DlibFaceResNet:
    """dlib's face-recognition ResNet with the weights of its .dat file.

    Args:
      path: dlib_face_recognition_resnet_model_v1.dat (or .dat.bz2); default: the
        copy inside the installed face-recognition-models package.
    Returns:
      a `DlibFaceResNet` (float32 parameters).
    Raises:
      FileNotFoundError (missing file or package), ValueError (a file that is not
      this network: one line naming the file and the first mismatch).
    """
    path = Path(path) if path is not None else face_recognition_models_file(MODEL_FILE)
    net: DlibNet = read_dlib_net(path, dlib_wrappers())
    origin = str(path)
    kinds = [layer.kind for layer in net.layers]
    want = _expected_kinds()
    if kinds != want:
        i = next((i for i, (a, b) in enumerate(zip(kinds, want)) if a != b), len(kinds))
        found = kinds[i] if i < len(kinds) else "missing"
        wanted = want[i] if i < len(want) else "none"
        raise ValueError(f"{origin}: layer {i} is {found}, dlib's face-recognition ResNet "
                         f"has {wanted}")
    mean_rgb = net.layers[0].config["mean_rgb"]
    # Shapes only: every parameter is overwritten below, and a random init would
    # compile one sampler per shape (tens of seconds on a small CPU).
    pools = [(la.kind, la.config) for la in net.layers if la.kind in ("max_pool", "avg_pool")]
    want_pools = [("max_pool", (3, 3), (2, 2))] + [("avg_pool", (2, 2), (2, 2))] * 4 + [
        ("avg_pool", (0, 0), (1, 1))]
    for i, ((kind, cfg), (wkind, window, stride)) in enumerate(zip(pools, want_pools)):
        if (kind, tuple(cfg["window"]), tuple(cfg["stride"]), tuple(cfg["padding"])) != \
                (wkind, window, stride, (0, 0)):
            raise ValueError(f"{origin}: {kind} {i} has window {cfg['window']} stride "
                             f"{cfg['stride']} padding {cfg['padding']}, expected {window} "
                             f"{stride} (0, 0) for a {wkind}")
    model = nnx.eval_shape(lambda: DlibFaceResNet(rngs=nnx.Rngs(0), mean_rgb=mean_rgb))
    convs = [model.stem_conv] + [c for st in model.stages for b in st for c in (b.conv1, b.conv2)]
    affines = [model.stem_affine] + [a for st in model.stages for b in st
                                     for a in (b.affine1, b.affine2)]
    file_convs = [la for la in net.layers if la.kind == "con"]
    file_affines = [la for la in net.layers if la.kind == "affine"]
    for i, (conv, layer) in enumerate(zip(convs, file_convs)):
        if tuple(layer.config["stride"]) != (conv.stride, conv.stride) or \
                tuple(layer.config["padding"]) != (conv.padding, conv.padding):
            raise ValueError(f"{origin}: convolution {i} has stride {layer.config['stride']} "
                             f"padding {layer.config['padding']}, expected {conv.stride}, "
                             f"{conv.padding}")
        # dlib filters are (out, in, kh, kw); ours are HWIO.
        _set(conv.kernel, layer.params["filters"].transpose(2, 3, 1, 0), f"con {i} filters", origin)
        _set(conv.bias, layer.params["biases"], f"con {i} biases", origin)
    for i, (aff, layer) in enumerate(zip(affines, file_affines)):
        if layer.config["disabled"]:
            raise ValueError(f"{origin}: affine layer {i} is disabled; not supported")
        _set(aff.gamma, layer.params["gamma"], f"affine {i} gamma", origin)
        _set(aff.beta, layer.params["beta"], f"affine {i} beta", origin)
    _set(model.fc, net.layers[-1].params["weights"], "fc weights", origin)
    if "biases" in net.layers[-1].params:
        raise ValueError(f"{origin}: the final fc layer has biases; dlib's network has none")
    return model
