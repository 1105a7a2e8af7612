"""Feature functions for the perceptual loss (Sec. 4.1): VGG16 relu3_3 as the paper
uses, or, when no VGG16 weights are given (they are not shipped), the mid-level
feature maps of the identity network shipped with the project (dlib's
face-recognition ResNet, `face3d_jax.nets.dlib_resnet.mid_level_features`).

    fn = perceptual_features("vgg", vgg=convert_vgg16("vgg16.pth"))
    fn = perceptual_features("identity")             # loads dlib's network from its package
    fn = perceptual_features(None, vgg=maybe_vgg)    # VGG if given, else identity
    loss = perceptual_loss(rendered, target, feature_fn=fn, mask=mask)

A feature function maps images (B, H, W, 3) float32 RGB in [0, 1] to a feature
map or a dict of them; it closes over the network (an NNX module), so jit the
loss around it or pass the module through nnx.jit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jax

from face3d_jax.nets.vgg import VGG16Relu33

log = logging.getLogger(__name__)
PERCEPTUAL_KINDS = ("vgg", "identity")


def vgg_features(vgg: VGG16Relu33) -> Callable[[jax.Array], jax.Array]:
    """images (B, H, W, 3) in [0, 1] -> VGG16 relu3_3 (B, H/4, W/4, 256) float32."""
    return lambda images: vgg(images)


def identity_features(model: Any, chip_size: int | None = None
                      ) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """images (B, H, W, 3) in [0, 1] -> dlib ResNet mid-level maps {level4, level3, level2}.

    model: a `face3d_jax.nets.dlib_resnet.DlibFaceResNet`. dlib's network takes RGB
    in 0..255 and was trained on 150x150 chips: images are scaled by 255 and, when
    chip_size is given (default: dlib's 150) and differs from theirs, resized
    bilinearly to chip_size x chip_size first.
    """
    from face3d_jax.nets import dlib_resnet

    size = dlib_resnet.CHIP_SIZE if chip_size is None else int(chip_size)

    def features(images: jax.Array) -> dict[str, jax.Array]:
        if images.shape[1:3] != (size, size):
            images = jax.image.resize(images, (images.shape[0], size, size, images.shape[3]),
                                      "bilinear")
        return dlib_resnet.mid_level_features(model, images * 255.0)

    return features


def perceptual_features(kind: str | None = None, *, vgg: VGG16Relu33 | None = None,
                        identity_model: Any = None,
                        chip_size: int | None = None) -> Callable[[jax.Array], Any]:
    """The feature function of the perceptual loss, logging which network it uses.

    kind: "vgg" (needs `vgg`, a VGG16Relu33 with real weights, e.g. from
      `face3d_jax.convert.vgg.convert_vgg16`), "identity" (dlib's face-recognition
      ResNet: `identity_model`, or loaded from the installed
      face-recognition-models package when None), or None: "vgg" when `vgg` is
      given, else "identity".
    Raises ValueError for an unknown kind or "vgg" without a network.
    """
    if kind is None:
        kind = "vgg" if vgg is not None else "identity"
    if kind not in PERCEPTUAL_KINDS:
        raise ValueError(f"perceptual features must be one of {PERCEPTUAL_KINDS}, got {kind!r}")
    if kind == "vgg":
        if vgg is None:
            raise ValueError("perceptual features 'vgg' need VGG16 weights: convert a "
                             "torchvision VGG16 state dict with convert_vgg16(path)")
        log.info("perceptual loss features: VGG16 relu3_3 (Sec. 4.1)")
        return vgg_features(vgg)
    if identity_model is None:
        from face3d_jax.nets.dlib_resnet import load_dlib_resnet

        identity_model = load_dlib_resnet()
    log.info("perceptual loss features: identity network (dlib face-recognition ResNet "
             "level4/3/2 maps), no VGG16 weights given")
    return identity_features(identity_model, chip_size)
