"""A PyTorch StyleGAN2 (config F) with rosinality's stylegan2-pytorch state-dict layout.

Written from the paper (Karras et al. 2020) and the facts of rosinality's
`model.py`: the same module tree, so `state_dict()` keys and shapes are those
of rosinality's checkpoints (`style.1..8.weight/bias`, `input.input`,
`conv1.conv.weight` (1, out, in, k, k), `conv1.conv.modulation.weight/bias`,
`conv1.noise.weight`, `conv1.activate.bias`, `to_rgb1.conv...`, `to_rgb1.bias`
(1, 3, 1, 1), `convs.{i}.conv.blur.kernel`, `to_rgbs.{i}.upsample.kernel`,
`noises.noise_{i}` (1, 1, r, r); D: `convs.0.0.weight`, `convs.0.1.bias`,
`convs.{i}.conv1.0.weight`, `convs.{i}.conv2.{0.kernel,1.weight,2.bias}`,
`convs.{i}.skip.{0.kernel,1.weight}`, `final_conv.0.weight`,
`final_conv.1.bias`, `final_linear.{0,1}.{weight,bias}`). Everything runs in
plain PyTorch ops (no CUDA extensions), NCHW, on any device.

Additions over rosinality, for tests: `channel_max` caps every layer's
channels; `out_channels` sets the image channels. With the defaults the module
tree is rosinality's config F.

    g = Generator(1024, 512, 8)                   # size, style_dim, n_mlp
    img, _ = g([z])                               # z (B, 512) -> (B, 3, 1024, 1024)
    img, _ = g([w_plus], input_is_latent=True, noise=[...])
    d = Discriminator(1024); logits = d(img)      # (B, 1)
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def make_kernel(taps) -> torch.Tensor:
    """(K,) taps -> (K, K) normalised 2-D FIR kernel (outer product / sum)."""
    k = torch.tensor(taps, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Zero-insertion upsample, pad (negative crops), convolve with `kernel`, subsample.

    x (B, C, H, W); kernel (kh, kw) -> (B, C, (H*up + pad0 + pad1 - kh)//down + 1, ...).
    """
    b, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(b, c, h, up, w, up)
        z[:, :, :, 0, :, 0] = x
        x = z.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    x = x[:, :, max(-p0, 0):x.shape[2] - max(-p1, 0), max(-p0, 0):x.shape[3] - max(-p1, 0)]
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down]


def fused_leaky_relu(x, bias, negative_slope=0.2, scale=SQRT2):
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel, bias=True):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None

    def forward(self, x):
        return fused_leaky_relu(x, self.bias)


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Upsample(nn.Module):
    def __init__(self, taps, factor=2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor ** 2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    def __init__(self, taps, pad, upsample_factor=1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor ** 2)
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class EqualConv2d(nn.Module):
    def __init__(self, in_ch, out_ch, kernel, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel ** 2)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale, self.lr_mul, self.activation = lr_mul / math.sqrt(in_dim), lr_mul, activation

    def forward(self, x):
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)


class ModulatedConv2d(nn.Module):
    """Per-sample weights, one grouped conv (transposed + blur when upsampling)."""

    def __init__(self, in_ch, out_ch, kernel, style_dim, demodulate=True, upsample=False,
                 blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.in_ch, self.out_ch, self.k = in_ch, out_ch, kernel
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            p = (len(blur_kernel) - 2) - (kernel - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.scale = 1 / math.sqrt(in_ch * kernel ** 2)
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel, kernel))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1)

    def forward(self, x, style):
        b, c, h, w = x.shape
        s = self.modulation(style).view(b, 1, c, 1, 1)
        weight = self.scale * self.weight * s  # (B, out, in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(
                b, self.out_ch, 1, 1, 1)
        x = x.reshape(1, b * c, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * c, self.out_ch, self.k, self.k)
            out = F.conv_transpose2d(x, weight, stride=2, padding=0, groups=b)
            out = self.blur(out.view(b, self.out_ch, *out.shape[2:]))
        else:
            weight = weight.reshape(b * self.out_ch, c, self.k, self.k)
            out = F.conv2d(x, weight, padding=self.k // 2, groups=b)
            out = out.view(b, self.out_ch, *out.shape[2:])
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise=None):
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, *x.shape[2:]).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch):
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    def __init__(self, in_ch, out_ch, kernel, style_dim, upsample=False,
                 blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x, style, noise=None):
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    def __init__(self, in_ch, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1),
                 out_channels=3):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_ch, out_channels, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


def channel_table(channel_multiplier: int, channel_max: int | None) -> dict[int, int]:
    cm = channel_multiplier
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm,
             512: 32 * cm, 1024: 16 * cm}
    return {r: c if channel_max is None else min(c, channel_max) for r, c in table.items()}


class Generator(nn.Module):
    def __init__(self, size, style_dim=512, n_mlp=8, channel_multiplier=2,
                 blur_kernel=(1, 3, 3, 1), lr_mlp=0.01, channel_max=None, out_channels=3):
        super().__init__()
        self.size, self.style_dim = size, style_dim
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu")
            for _ in range(n_mlp)])
        ch = self.channels = channel_table(channel_multiplier, channel_max)
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False, out_channels=out_channels)
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        in_ch = ch[4]
        for i in range(3, self.log_size + 1):
            out_ch = ch[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel,
                                      out_channels=out_channels))
            in_ch = out_ch
        self.n_latent = self.log_size * 2 - 2

    def mean_latent(self, n):
        z = torch.randn(n, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def forward(self, styles, return_latents=False, inject_index=None, truncation=1.0,
                truncation_latent=None, input_is_latent=False, noise=None,
                randomize_noise=True):
        """styles: list of 1 or 2 tensors (B, style_dim) z (or w, w+ (B, n_latent, D) with
        input_is_latent). Returns (image (B, C, size, size), latent or None)."""
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            noise = ([None] * self.num_layers if randomize_noise else
                     [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)])
        if truncation < 1:
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        if len(styles) < 2:
            s = styles[0]
            latent = s if s.ndim == 3 else s.unsqueeze(1).repeat(1, self.n_latent, 1)
        else:
            if inject_index is None:
                inject_index = random.randint(1, self.n_latent - 1)
            latent = torch.cat([styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                                styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index,
                                                              1)], 1)
        out = self.input(latent.shape[0])
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv_up, conv, n1, n2, to_rgb in zip(self.convs[::2], self.convs[1::2],
                                                 noise[1::2], noise[2::2], self.to_rgbs):
            out = conv_up(out, latent[:, i], noise=n1)
            out = conv(out, latent[:, i + 1], noise=n2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip, (latent if return_latents else None)


class ConvLayer(nn.Sequential):
    def __init__(self, in_ch, out_ch, kernel, downsample=False, blur_kernel=(1, 3, 3, 1),
                 bias=True, activate=True):
        layers = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
        layers.append(EqualConv2d(in_ch, out_ch, kernel, stride=2 if downsample else 1,
                                  padding=0 if downsample else kernel // 2,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, blur_kernel=blur_kernel,
                              activate=False, bias=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class Discriminator(nn.Module):
    def __init__(self, size, channel_multiplier=2, blur_kernel=(1, 3, 3, 1), channel_max=None,
                 in_channels=3):
        super().__init__()
        ch = channel_table(channel_multiplier, channel_max)
        log_size = int(math.log2(size))
        convs, in_ch = [ConvLayer(in_channels, ch[size], 1)], ch[size]
        for i in range(log_size, 2, -1):
            convs.append(ResBlock(in_ch, ch[2 ** (i - 1)], blur_kernel))
            in_ch = ch[2 ** (i - 1)]
        self.convs = nn.Sequential(*convs)
        self.stddev_group, self.stddev_feat = 4, 1
        self.final_conv = ConvLayer(in_ch + 1, ch[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[4] * 16, ch[4], activation="fused_lrelu"), EqualLinear(ch[4], 1))

    def forward(self, x):
        out = self.convs(x)
        b, c, h, w = out.shape
        group = min(b, self.stddev_group)
        std = out.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        std = torch.sqrt(std.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True)
        std = std.squeeze(2).repeat(group, 1, h, w)
        out = self.final_conv(torch.cat([out, std], 1))
        return self.final_linear(out.view(b, -1))
