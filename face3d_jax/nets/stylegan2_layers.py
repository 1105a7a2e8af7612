"""StyleGAN2 building blocks (Karras et al. 2020, config F) in Flax NNX, NHWC.

The layers follow rosinality's stylegan2-pytorch (`model.py`), which the paper's
code builds on; attribute names mirror its module names (``conv``,
``modulation``, ``noise``, ``activate``...) so that the converter maps
state-dict keys one to one. Facts of that source kept here:

- Equalised learning rate: weights are stored N(0, 1) (divided by ``lr_mul``
  for linear layers) and scaled at run time by ``lr_mul / sqrt(fan_in)``;
  biases by ``lr_mul``.
- Fused leaky ReLU: ``leaky_relu(x + bias, 0.2) * sqrt(2)``; no clamping (the
  official TF/PyTorch code clamps activations to +-256 only in fp16 layers; we
  follow rosinality and never clamp).
- ``upfirdn2d``: zero-insertion upsampling, padding (negative crops), true
  convolution with the FIR kernel, then subsampling, with rosinality's pads.
  The kernel [1,3,3,1] is separable: it runs as two 1-D passes of shifted sums.
- Modulated convolution with demodulation (eps 1e-8); ToRGB without
  demodulation; upsampling by a stride-2 transposed conv followed by the blur,
  downsampling by the blur followed by a stride-2 conv.
- Noise injection strength initialised to 0.

Layout: weights are HWIO (kh, kw, in, out), linear weights (in, out), all
float32 `nnx.Param`; computation runs in the `dtype` given (float32 or
bfloat16), demodulation coefficients in float32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
SQRT2 = math.sqrt(2.0)


def fir_taps(blur_kernel: Sequence[float], gain: float = 1.0) -> np.ndarray:
    """1-D taps t with outer(t, t) == rosinality's make_kernel(blur_kernel) * gain.

    Args: blur_kernel: (K,) numbers, e.g. (1, 3, 3, 1); gain: overall 2-D gain.
    Returns: (K,) float64 numpy array.
    """
    taps = np.asarray(blur_kernel, dtype=np.float64)
    if taps.ndim != 1:
        raise ValueError(f"blur kernel must be 1-D (separable), got shape {taps.shape}")
    return taps / taps.sum() * math.sqrt(gain)


def upfirdn2d(x: jax.Array, taps: np.ndarray, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> jax.Array:
    """Upsample (zero insertion), pad, FIR-filter (separable, true convolution), subsample.

    Args:
      x: (B, H, W, C) any float dtype.
      taps: (K,) 1-D taps; the 2-D kernel is outer(taps, taps).
      up, down: integer factors; pad: (before, after) on both axes (after
        zero insertion), negative values crop.
    Returns:
      (B, H', W', C) in x.dtype, H' = (H * up + pad[0] + pad[1] - K) // down + 1.
    """
    for axis in (1, 2):
        x = _upfirdn1d(x, taps, up, down, pad, axis)
    return x


def _upfirdn1d(x, taps, up, down, pad, axis):
    # Written as shifted, strided slices times scalar taps rather than a
    # depthwise convolution: XLA fuses these into one loop, which ran ~15x
    # faster than feature_group_count=C convs on CPU (eval/bench_stylegan2.py).
    # upfirdn2d's zero insertion leaves up - 1 zeros after the last sample too;
    # lax.pad's interior padding does not, so they join the trailing pad.
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (pad[0], pad[1] + up - 1, up - 1)
    x = lax.pad(x, jnp.zeros((), x.dtype), config)
    k = np.flip(np.asarray(taps, np.float64))  # flipped: convolution, as upfirdn2d
    n_out = (x.shape[axis] - len(k)) // down + 1
    out = None
    for i, tap in enumerate(k):
        term = lax.slice_in_dim(x, i, i + down * (n_out - 1) + 1, stride=down, axis=axis)
        term = term * jnp.asarray(tap, x.dtype)
        out = term if out is None else out + term
    return out


def upsample2x(x: jax.Array, blur_kernel: Sequence[float]) -> jax.Array:
    """rosinality's Upsample (factor 2): (B, H, W, C) -> (B, 2H, 2W, C)."""
    taps = fir_taps(blur_kernel, gain=4.0)
    p = len(taps) - 2
    return upfirdn2d(x, taps, up=2, pad=((p + 1) // 2 + 1, p // 2))


def fused_leaky_relu(x: jax.Array, bias: jax.Array) -> jax.Array:
    """leaky_relu(x + bias, 0.2) * sqrt(2); x (..., C), bias (C,) -> x.dtype."""
    y = x + bias.astype(x.dtype)
    return jnp.where(y >= 0, y, 0.2 * y) * jnp.asarray(SQRT2, x.dtype)


class FusedLeakyReLU(nnx.Module):
    """The bias + leaky ReLU + gain of rosinality's FusedLeakyReLU; `bias` (C,)."""

    def __init__(self, channels: int):
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return fused_leaky_relu(x, self.bias[...])


class EqualLinear(nnx.Module):
    """Linear layer with equalised lr: y = x @ (W * lr_mul/sqrt(in)) + b * lr_mul.

    Params: weight (in, out) ~ N(0, 1) / lr_mul, bias (out,) = bias_init.
    Call: x (B, in) -> (B, out) in `dtype` (default: x.dtype); activation
    "lrelu" applies the fused leaky ReLU with the bias.
    """

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, bias: bool = True,
                 bias_init: float = 0.0, lr_mul: float = 1.0, activation: str | None = None):
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (in_dim, out_dim)) / lr_mul)
        self.bias = nnx.Param(jnp.full((out_dim,), bias_init, jnp.float32)) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def __call__(self, x: jax.Array, dtype: Any = None) -> jax.Array:
        dtype = dtype or x.dtype
        y = x.astype(dtype) @ (self.weight[...] * self.scale).astype(dtype)
        if self.bias is None:
            return y
        bias = self.bias[...] * self.lr_mul
        return fused_leaky_relu(y, bias) if self.activation == "lrelu" else y + bias.astype(dtype)


class EqualConv2d(nnx.Module):
    """Conv with equalised lr; weight (k, k, in, out) ~ N(0, 1) scaled by 1/sqrt(in*k*k).

    Call: x (B, H, W, in) -> (B, H', W', out) in x.dtype (stride, symmetric padding).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, rngs: nnx.Rngs,
                 stride: int = 1, padding: int = 0, bias: bool = True):
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (kernel, kernel, in_ch, out_ch)))
        self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.stride, self.padding = stride, padding

    def __call__(self, x: jax.Array) -> jax.Array:
        w = (self.weight[...] * self.scale).astype(x.dtype)
        p = self.padding
        y = lax.conv_general_dilated(x, w, (self.stride,) * 2, [(p, p), (p, p)],
                                     dimension_numbers=_DN)
        return y if self.bias is None else y + self.bias[...].astype(x.dtype)


class ModulatedConv2d(nnx.Module):
    """StyleGAN2's modulated convolution (paper Sec. 2.2, Eqs. 1-3).

    Params: weight (k, k, in, out) ~ N(0, 1); modulation EqualLinear(style_dim -> in,
    bias_init 1). Call: x (B, H, W, in), w (B, style_dim) -> (B, H', W', out) in
    x.dtype; H' = 2H with upsample (transposed conv, stride 2, then blur), else H.

    fused=False modulates the activations and demodulates the output (one conv
    with shared weights: the official code's `fused_modconv=False`);
    fused=True builds per-sample weights and runs one grouped conv
    (feature_group_count=B), as rosinality. Both compute the same function.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, style_dim: int, *,
                 rngs: nnx.Rngs, demodulate: bool = True, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), fused: bool = False):
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (kernel, kernel, in_ch, out_ch)))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0, rngs=rngs)
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.kernel, self.demodulate = kernel, demodulate
        self.upsample, self.fused = upsample, fused
        self.blur_taps = tuple(fir_taps(blur_kernel, gain=4.0)) if upsample else None

    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        dtype = x.dtype
        style = self.modulation(w.astype(jnp.float32), jnp.float32)  # (B, in)
        weight = self.weight[...] * self.scale  # (k, k, in, out) float32
        demod = None
        if self.demodulate:
            demod = lax.rsqrt(jnp.einsum("hwio,bi->bo", weight * weight, style * style) + 1e-8)
        if self.fused:
            y = self._grouped(x, weight, style, demod)
        else:
            y = self._conv(x * style[:, None, None, :].astype(dtype), weight.astype(dtype))
            if demod is not None:
                y = y * demod[:, None, None, :].astype(dtype)
        if self.upsample:
            p = len(self.blur_taps) - 2 - (self.kernel - 1)
            y = upfirdn2d(y, np.asarray(self.blur_taps), pad=((p + 1) // 2 + 1, p // 2 + 1))
        return y

    def _conv(self, x, weight, groups: int = 1):
        k = self.kernel
        if self.upsample:
            # conv_transpose2d(stride 2, padding 0) == correlation of the
            # 2x-dilated input, padded k-1, with the spatially flipped kernel.
            return lax.conv_general_dilated(x, jnp.flip(weight, (0, 1)), (1, 1),
                                            [(k - 1, k - 1)] * 2, lhs_dilation=(2, 2),
                                            dimension_numbers=_DN, feature_group_count=groups)
        return lax.conv_general_dilated(x, weight, (1, 1), [(k // 2, k // 2)] * 2,
                                        dimension_numbers=_DN, feature_group_count=groups)

    def _grouped(self, x, weight, style, demod):
        b, h, w_, c = x.shape
        per = weight[None] * style[:, None, None, :, None]  # (B, k, k, in, out)
        if demod is not None:
            per = per * demod[:, None, None, None, :]
        k, out = self.kernel, per.shape[-1]
        kernel = per.transpose(1, 2, 3, 0, 4).reshape(k, k, c, b * out).astype(x.dtype)
        xg = x.transpose(1, 2, 0, 3).reshape(1, h, w_, b * c)
        y = self._conv(xg, kernel, groups=b)  # (1, H', W', B*out)
        return y.reshape(y.shape[1], y.shape[2], b, out).transpose(2, 0, 1, 3)


class NoiseInjection(nnx.Module):
    """x + weight * noise; weight (1,) initialised to 0. noise (B or 1, H, W, 1)."""

    def __init__(self):
        self.weight = nnx.Param(jnp.zeros((1,), jnp.float32))

    def __call__(self, x: jax.Array, noise: jax.Array | None) -> jax.Array:
        if noise is None:
            return x
        return x + (self.weight[...] * noise).astype(x.dtype)


class StyledConv(nnx.Module):
    """ModulatedConv2d (demodulated) -> noise injection -> fused leaky ReLU.

    Call: x (B, H, W, in), w (B, style_dim), noise (B|1, H', W', 1) or None ->
    (B, H', W', out), H' = 2H with upsample.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, style_dim: int, *,
                 rngs: nnx.Rngs, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), fused: bool = False):
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel, fused=fused, rngs=rngs)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def __call__(self, x, w, noise=None):
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nnx.Module):
    """1x1 modulated conv without demodulation + bias, plus the upsampled skip image.

    Call: x (B, H, W, in), w (B, style_dim), skip (B, H/2, W/2, C) or None ->
    (B, H, W, C) with C = out_channels.
    """

    def __init__(self, in_ch: int, style_dim: int, out_channels: int, *, rngs: nnx.Rngs,
                 upsample: bool = True, blur_kernel: Sequence[float] = (1, 3, 3, 1),
                 fused: bool = False):
        self.conv = ModulatedConv2d(in_ch, out_channels, 1, style_dim, demodulate=False,
                                    fused=fused, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))
        self.upsample = upsample
        self.blur_kernel = tuple(blur_kernel)

    def __call__(self, x, w, skip=None):
        y = self.conv(x, w) + self.bias[...].astype(x.dtype)
        if skip is not None:
            y = y + upsample2x(skip, self.blur_kernel)
        return y


class ConvLayer(nnx.Module):
    """The discriminator's conv: [blur if downsample] -> EqualConv2d -> [fused lrelu].

    Call: x (B, H, W, in) -> (B, H/2 if downsample else H, ..., out).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, rngs: nnx.Rngs,
                 downsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1),
                 bias: bool = True, activate: bool = True):
        self.downsample = downsample
        if downsample:
            p = len(blur_kernel) - 2 + (kernel - 1)
            self.blur_pad = ((p + 1) // 2, p // 2)
            self.blur_taps = tuple(fir_taps(blur_kernel))
        self.conv = EqualConv2d(in_ch, out_ch, kernel, stride=2 if downsample else 1,
                                padding=0 if downsample else kernel // 2,
                                bias=bias and not activate, rngs=rngs)
        self.activate = FusedLeakyReLU(out_ch) if activate and bias else None
        self.plain_lrelu = activate and not bias

    def __call__(self, x):
        if self.downsample:
            x = upfirdn2d(x, np.asarray(self.blur_taps), pad=self.blur_pad)
        y = self.conv(x)
        if self.activate is not None:
            return self.activate(y)
        if self.plain_lrelu:
            return jnp.where(y >= 0, y, 0.2 * y) * jnp.asarray(SQRT2, y.dtype)
        return y


class ResBlock(nnx.Module):
    """Residual discriminator block: (conv3x3, conv3x3 down) + 1x1 down skip, / sqrt(2).

    Call: x (B, H, W, in) -> (B, H/2, W/2, out).
    """

    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        self.conv1 = ConvLayer(in_ch, in_ch, 3, rngs=rngs)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_kernel=blur_kernel,
                               rngs=rngs)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, blur_kernel=blur_kernel,
                              bias=False, activate=False, rngs=rngs)

    def __call__(self, x):
        y = self.conv2(self.conv1(x))
        return (y + self.skip(x)) * jnp.asarray(1 / SQRT2, x.dtype)
