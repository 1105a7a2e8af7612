"""VGG16 (Simonyan & Zisserman 2015, configuration D) up to relu3_3, in Flax NNX, NHWC:
the perceptual network of the paper (Sec. 4.1: "We use the output of relu3_3 as
the image features").

    vgg = VGG16Relu33(rngs=nnx.Rngs(0))          # or convert_vgg16(path) for real weights
    feats = vgg(images01)                        # (B, H, W, 3) RGB in [0, 1] -> (B, H/4, W/4, 256)

Layers (torchvision `vgg16().features` indices in brackets): conv1_1 [0] relu
conv1_2 [2] relu maxpool [4], conv2_1 [5] relu conv2_2 [7] relu maxpool [9],
conv3_1 [10] relu conv3_2 [12] relu conv3_3 [14] relu3_3 [15]. Convs are 3x3,
stride 1, zero padding 1, with bias; max pools 2x2 stride 2 (odd sizes floor,
as torch).

Input normalisation, as torchvision's ImageNet models expect: the input is RGB
in [0, 1]; the network subtracts mean (0.485, 0.456, 0.406) and divides by std
(0.229, 0.224, 0.225) per channel before conv1_1 (`imagenet_normalize`). Pass
`normalize=False` to feed already normalised images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (our name, torchvision features index, in channels, out channels); a max pool
# follows conv1_2 and conv2_2.
VGG16_RELU33_LAYERS = (
    ("conv1_1", 0, 3, 64), ("conv1_2", 2, 64, 64),
    ("conv2_1", 5, 64, 128), ("conv2_2", 7, 128, 128),
    ("conv3_1", 10, 128, 256), ("conv3_2", 12, 256, 256), ("conv3_3", 14, 256, 256),
)
_POOL_AFTER = ("conv1_2", "conv2_2")


def imagenet_normalize(images: jax.Array) -> jax.Array:
    """(images - mean) / std per RGB channel; images (..., 3) in [0, 1], same shape out."""
    mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
    std = jnp.asarray(IMAGENET_STD, images.dtype)
    return (images - mean) / std


def _max_pool_2x2(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class VGG16Relu33(nnx.Module):
    """VGG16 features up to relu3_3 (1,735,488 parameters). Attributes conv1_1 ...
    conv3_3 (nnx.Conv, HWIO kernels). dtype: computation dtype (params float32)."""

    def __init__(self, *, rngs: nnx.Rngs, dtype=None):
        self.dtype = dtype
        for name, _, cin, cout in VGG16_RELU33_LAYERS:
            setattr(self, name, nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)),
                                         dtype=dtype, rngs=rngs))

    def __call__(self, images: jax.Array, normalize: bool = True) -> jax.Array:
        """images: (B, H, W, 3) float RGB in [0, 1] (or ImageNet-normalised if
        normalize=False) -> relu3_3 features (B, H//4, W//4, 256) float32."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"VGG16 expects images (B, H, W, 3), got {tuple(images.shape)}")
        x = imagenet_normalize(images) if normalize else images
        if self.dtype is not None:
            x = x.astype(self.dtype)
        for name, *_ in VGG16_RELU33_LAYERS:
            x = jax.nn.relu(getattr(self, name)(x))
            if name in _POOL_AFTER:
                x = _max_pool_2x2(x)
        return x.astype(jnp.float32)
