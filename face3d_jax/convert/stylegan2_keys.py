"""rosinality stylegan2-pytorch state-dict layout: every tensor's key, shape and the
transform into our layout, for a given StyleGAN2Config, and the config implied by
a state dict's shapes (used by `face3d_jax.convert.stylegan2`).

Rows are (torch key, our '/'-joined variable path, torch shape, torch -> ours):
conv weights (1,)out,in,kh,kw -> kh,kw,in,out; linear weights (out, in) -> (in,
out); `input.input` and noise buffers NCHW -> NHWC; D's final_linear.0 input rows
from torch's (C, 4, 4) flattening to our (4, 4, C). Blur kernels are buffers in
rosinality's files: they are checked against the configured taps, not loaded.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from face3d_jax.nets.stylegan2 import StyleGAN2Config
from face3d_jax.nets.stylegan2_layers import fir_taps

_BASE = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
Row = tuple[str, str, tuple, Callable[[np.ndarray], np.ndarray]]


def shape_of(x) -> tuple[int, ...]:
    """The shape of an np.ndarray, torch tensor or DeferredTensor as ints."""
    return tuple(int(n) for n in getattr(x, "shape", np.shape(x)))


def _conv(w):  # (1,)out,in,kh,kw -> kh,kw,in,out
    return np.transpose(w.reshape(w.shape[-4:]), (2, 3, 1, 0))


def _same(x):
    return x


def generator_table(cfg: StyleGAN2Config) -> list[Row]:
    """(torch key, our path, torch shape, torch->ours) for every generator tensor."""
    sd, oc = cfg.style_dim, cfg.out_channels
    rows = []
    for i in range(cfg.n_mlp):
        rows += [(f"style.{i + 1}.weight", f"style/{i}/weight", (sd, sd), np.transpose),
                 (f"style.{i + 1}.bias", f"style/{i}/bias", (sd,), _same)]
    c4 = cfg.channels(4)
    rows.append(("input.input", "input", (1, c4, 4, 4), lambda x: x.transpose(0, 2, 3, 1)))

    def modconv(tk, ok, cin, cout, k):
        return [(f"{tk}.conv.weight", f"{ok}/conv/weight", (1, cout, cin, k, k), _conv),
                (f"{tk}.conv.modulation.weight", f"{ok}/conv/modulation/weight", (cin, sd),
                 np.transpose),
                (f"{tk}.conv.modulation.bias", f"{ok}/conv/modulation/bias", (cin,), _same)]

    def styled(tk, ok, cin, cout):
        return modconv(tk, ok, cin, cout, 3) + [
            (f"{tk}.noise.weight", f"{ok}/noise/weight", (1,), _same),
            (f"{tk}.activate.bias", f"{ok}/activate/bias", (cout,), _same)]

    def to_rgb(tk, ok, cin):
        return modconv(tk, ok, cin, oc, 1) + [
            (f"{tk}.bias", f"{ok}/bias", (1, oc, 1, 1), lambda x: x.reshape(-1))]

    rows += styled("conv1", "conv1", c4, c4) + to_rgb("to_rgb1", "to_rgb1", c4)
    cin = c4
    for j, res_log in enumerate(range(3, cfg.log_size + 1)):
        cout = cfg.channels(2 ** res_log)
        rows += styled(f"convs.{2 * j}", f"convs/{2 * j}", cin, cout)
        rows += styled(f"convs.{2 * j + 1}", f"convs/{2 * j + 1}", cout, cout)
        rows += to_rgb(f"to_rgbs.{j}", f"to_rgbs/{j}", cout)
        cin = cout
    for i in range(cfg.num_noise_layers):
        r = 2 ** ((i + 5) // 2)
        rows.append((f"noises.noise_{i}", f"noises/{i}", (1, 1, r, r),
                     lambda x: x.transpose(0, 2, 3, 1)))
    return rows


def generator_buffers(cfg: StyleGAN2Config) -> dict[str, np.ndarray]:
    """The blur kernels rosinality stores as buffers, as our config implies them."""
    kernel = np.outer(*(2 * [fir_taps(cfg.blur_kernel, gain=4.0)]))
    out = {}
    for j in range(cfg.log_size - 2):
        out[f"convs.{2 * j}.conv.blur.kernel"] = kernel
        out[f"to_rgbs.{j}.upsample.kernel"] = kernel
    return out


def discriminator_table(cfg: StyleGAN2Config) -> list[Row]:
    ic = cfg.out_channels
    c = cfg.channels(cfg.resolution)
    rows = [("convs.0.0.weight", "convs/0/conv/weight", (c, ic, 1, 1), _conv),
            ("convs.0.1.bias", "convs/0/activate/bias", (c,), _same)]
    for n, i in enumerate(range(cfg.log_size, 2, -1), start=1):
        cout = cfg.channels(2 ** (i - 1))
        rows += [(f"convs.{n}.conv1.0.weight", f"convs/{n}/conv1/conv/weight", (c, c, 3, 3),
                  _conv),
                 (f"convs.{n}.conv1.1.bias", f"convs/{n}/conv1/activate/bias", (c,), _same),
                 (f"convs.{n}.conv2.1.weight", f"convs/{n}/conv2/conv/weight",
                  (cout, c, 3, 3), _conv),
                 (f"convs.{n}.conv2.2.bias", f"convs/{n}/conv2/activate/bias", (cout,), _same),
                 (f"convs.{n}.skip.1.weight", f"convs/{n}/skip/conv/weight", (cout, c, 1, 1),
                  _conv)]
        c = cout
    c4 = cfg.channels(4)

    def final_rows(w):  # rows ordered (C, 4, 4) in torch's NCHW flatten -> (4, 4, C)
        return w.reshape(c4, c4, 4, 4).transpose(2, 3, 1, 0).reshape(16 * c4, c4)

    rows += [("final_conv.0.weight", "final_conv/conv/weight", (c4, c + 1, 3, 3), _conv),
             ("final_conv.1.bias", "final_conv/activate/bias", (c4,), _same),
             ("final_linear.0.weight", "final_linear/0/weight", (c4, 16 * c4), final_rows),
             ("final_linear.0.bias", "final_linear/0/bias", (c4,), _same),
             ("final_linear.1.weight", "final_linear/1/weight", (1, c4), np.transpose),
             ("final_linear.1.bias", "final_linear/1/bias", (1,), _same)]
    return rows


def discriminator_buffers(cfg: StyleGAN2Config) -> dict[str, np.ndarray]:
    kernel = np.outer(*(2 * [fir_taps(cfg.blur_kernel)]))
    out = {}
    for n in range(1, cfg.log_size - 1):
        out[f"convs.{n}.conv2.0.kernel"] = kernel
        out[f"convs.{n}.skip.0.kernel"] = kernel
    return out


def infer_config(g_sd: dict, origin: str, lr_mlp: float = 0.01) -> StyleGAN2Config:
    """The StyleGAN2Config whose rosinality generator has g_sd's shapes."""
    def get(key):
        if key not in g_sd:
            raise ValueError(f"{origin} has no '{key}': not a rosinality StyleGAN2 generator")
        return shape_of(g_sd[key])

    style_dim = get("style.1.weight")[-1]
    n_mlp = len([k for k in g_sd if re.fullmatch(r"style\.\d+\.weight", k)])
    out_channels = get("to_rgb1.bias")[1]
    n_blocks = len([k for k in g_sd if re.fullmatch(r"to_rgbs\.\d+\.bias", k)])
    resolution = 2 ** (2 + n_blocks)
    if resolution not in _BASE or resolution < 8:
        raise ValueError(f"{origin}: {n_blocks} ToRGB blocks imply resolution {resolution}, "
                         "outside 8..1024")
    found = {4: get("conv1.conv.weight")[1]}
    for j in range(n_blocks):
        found[2 ** (j + 3)] = get(f"convs.{2 * j}.conv.weight")[1]
    for cm in (2, 1, 4, 8):
        for cap in (None, found[4]):
            try:
                cfg = StyleGAN2Config(resolution=resolution, style_dim=style_dim, n_mlp=n_mlp,
                                      channel_multiplier=cm, lr_mlp=lr_mlp,
                                      out_channels=out_channels, channel_max=cap)
            except ValueError as exc:
                raise ValueError(f"{origin}: {exc}") from None
            if all(cfg.channels(r) == c for r, c in found.items()):
                return cfg
    raise ValueError(f"{origin}: channels per resolution {found} match no channel "
                     "multiplier/cap of rosinality's table")
