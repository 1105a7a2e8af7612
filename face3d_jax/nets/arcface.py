"""ArcFace backbone: the improved ResNet ("iresnet", Duta et al. 2020) of
insightface's arcface_torch, in Flax NNX, NHWC.

This is the network MICA fine-tunes and the paper initialises E_shape from
(Sec. 4.2, 5): iresnet-100 trained with the ArcFace loss, a 512-d embedding of a
112x112 aligned face crop.

Interface:

    cfg = iresnet_config("iresnet100")                 # or "iresnet18"/"34"/"50"/"200"
    net = IResNet(cfg, rngs=nnx.Rngs(0))               # inference mode (running BN stats)
    emb = net(arcface_preprocess(images01))            # (B, 112, 112, 3) in [0, 1] -> (B, 512)
    net.train(); emb = net(x)                          # batch statistics, running stats updated
    emb = net(x, use_running_average=False)            # the same switch per call
    count_params(nnx.eval_shape(lambda: IResNet(cfg, rngs=nnx.Rngs(0))))  # no allocation

Architecture (arcface_torch `backbones/iresnet.py`, followed exactly):
stem conv3x3(3->64) - BN - PReLU; four stages of IBasicBlocks (64, 128, 256,
512 channels; the first block of each stage has stride 2 and a 1x1 conv + BN
shortcut); a block is BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus
the shortcut, with no activation after the sum. Then BN, flatten, dropout
(p = 0 in the released models), fc (512*7*7 -> 512) and a BatchNorm1d
`features` whose scale insightface fixes to 1 and never trains: it is a
`FrozenScale` variable here, not an nnx.Param, so optimisers over nnx.Param
leave it alone. Convolutions pad 1 on every side as torch does (flax "SAME"
with stride 2 would pad (0, 1) and shift the grid). fc's input is the
(7, 7, C) map flattened in H, W, C order (torch flattens C, H, W; the
converter permutes fc's weight accordingly).

Batch norm: momentum 0.9 in flax's convention (torch 0.1), eps 1e-5. In
training mode flax updates the running variance with the biased batch
variance, torch with the unbiased one (factor n/(n-1)); the normalisation
itself is the same.

Input: RGB, NHWC, float, scaled to [-1, 1] as insightface and MICA feed it
((x/255 - 0.5)/0.5; `arcface_preprocess` maps [0, 1] images to it), 112x112
(the fc layer fixes the 7x7 final map, so H = W = 16 * 7 = 112).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
FC_SPATIAL = 7  # arcface_torch's fc_scale = 7 * 7
INPUT_SIZE = 16 * FC_SPATIAL  # four stride-2 stages down to 7x7
_PAD1 = ((1, 1), (1, 1))


@dataclasses.dataclass(frozen=True)
class IResNetConfig:
    """Sizes of an iresnet.

    layers: blocks per stage (4 ints). widths: channels per stage (4 ints; the
    stem has widths[0]); insightface uses (64, 128, 256, 512), smaller widths
    give cheap test variants. num_features: embedding size. dropout: before fc.
    dtype: computation dtype (parameters stay float32; the embedding comes out
    float32).
    """

    layers: tuple[int, ...] = ARCHITECTURES["iresnet100"]
    widths: tuple[int, ...] = (64, 128, 256, 512)
    num_features: int = 512
    dropout: float = 0.0
    dtype: Any = None

    def __post_init__(self):
        if len(self.layers) != 4 or len(self.widths) != 4:
            raise ValueError(f"iresnet needs 4 stages, got layers={self.layers} "
                             f"widths={self.widths}")
        if min(self.layers) < 1 or min(self.widths) < 1 or self.num_features < 1:
            raise ValueError(f"iresnet sizes must be positive: {self}")


def iresnet_config(arch: str = "iresnet100", **overrides) -> IResNetConfig:
    """The config of a named insightface iresnet ("iresnet18" ... "iresnet200"),
    with optional field overrides (e.g. widths=(16, 32, 64, 128) for tests)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown iresnet architecture {arch!r}; "
                         f"expected one of {sorted(ARCHITECTURES)}")
    return IResNetConfig(layers=ARCHITECTURES[arch], **overrides)


class FrozenScale(nnx.Variable):
    """A scale insightface keeps fixed (BatchNorm1d `features.weight` = 1, no grad)."""


def count_params(module_or_state) -> int:
    """Scalar entries of the nnx.Param variables of a module or nnx.State (works on
    nnx.eval_shape results). FrozenScale and BatchStat entries are not counted."""
    state = module_or_state
    if isinstance(state, nnx.Module):
        state = nnx.state(state, nnx.Param)
    else:
        state = state.filter(nnx.Param)
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state)))


def arcface_preprocess(images: jax.Array) -> jax.Array:
    """RGB images in [0, 1] -> the network's input range [-1, 1].

    images: (B, 112, 112, 3) float. Returns the same shape and dtype.
    """
    return images * 2.0 - 1.0


def _bn(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, use_running_average=True, momentum=0.9, epsilon=1e-5,
                         rngs=rngs)


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs, dtype) -> nnx.Conv:
    # insightface initialises every conv with N(0, 0.1).
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=_PAD1 if k == 3 else 0,
                    use_bias=False, kernel_init=nnx.initializers.normal(0.1), dtype=dtype,
                    rngs=rngs)


class PReLU(nnx.Module):
    """Per-channel PReLU as torch.nn.PReLU(C): max(0, x) + a * min(0, x), a init 0.25."""

    def __init__(self, channels: int):
        self.weight = nnx.Param(jnp.full((channels,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.weight[...].astype(x.dtype)
        return jnp.where(x >= 0, x, a * x)


class IBasicBlock(nnx.Module):
    """BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, + shortcut (no final activation)."""

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs, dtype=None):
        self.bn1 = _bn(cin, rngs)
        self.conv1 = _conv(cin, planes, 3, 1, rngs, dtype)
        self.bn2 = _bn(planes, rngs)
        self.prelu = PReLU(planes)
        self.conv2 = _conv(planes, planes, 3, stride, rngs, dtype)
        self.bn3 = _bn(planes, rngs)
        # [conv1x1, BN] as torch's downsample Sequential (keys downsample.0 / .1).
        self.downsample = (nnx.List([_conv(cin, planes, 1, stride, rngs, dtype), _bn(planes, rngs)])
                           if stride != 1 or cin != planes else None)

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        ura = use_running_average
        out = self.bn1(x, use_running_average=ura)
        out = self.conv1(out)
        out = self.bn2(out, use_running_average=ura)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out, use_running_average=ura)
        identity = x
        if self.downsample is not None:
            identity = self.downsample[1](self.downsample[0](x), use_running_average=ura)
        return out + identity


class IResNet(nnx.Module):
    """insightface's iresnet: (B, 112, 112, 3) in [-1, 1] -> (B, num_features) float32.

    Built in inference mode (every BatchNorm uses its running statistics);
    `.train()` / `.eval()` switch all of them, and `use_running_average=` on a
    call overrides the mode for that call. In training mode the running stats
    are updated in place (nnx BatchStat variables), as torch does.
    """

    def __init__(self, config: IResNetConfig, *, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        w0 = cfg.widths[0]
        self.conv1 = _conv(3, w0, 3, 1, rngs, cfg.dtype)
        self.bn1 = _bn(w0, rngs)
        self.prelu = PReLU(w0)
        cin = w0
        stages = []
        for n_blocks, planes in zip(cfg.layers, cfg.widths):
            blocks = [IBasicBlock(cin, planes, 2, rngs=rngs, dtype=cfg.dtype)]
            blocks += [IBasicBlock(planes, planes, 1, rngs=rngs, dtype=cfg.dtype)
                       for _ in range(n_blocks - 1)]
            stages.append(nnx.List(blocks))
            cin = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = _bn(cin, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, deterministic=True)  # rngs passed per call
        self.fc = nnx.Linear(cin * FC_SPATIAL * FC_SPATIAL, cfg.num_features, dtype=cfg.dtype,
                             rngs=rngs)
        # BatchNorm1d `features`: the normalisation (running stats) here, its
        # fixed scale and trained bias as separate variables (see module doc).
        self.features = nnx.BatchNorm(cfg.num_features, use_running_average=True, momentum=0.9,
                                      epsilon=1e-5, use_scale=False, use_bias=False, rngs=rngs)
        self.features_scale = FrozenScale(jnp.ones((cfg.num_features,), jnp.float32))
        self.features_bias = nnx.Param(jnp.zeros((cfg.num_features,), jnp.float32))

    def stem_and_stages(self, x: jax.Array, use_running_average: bool | None = None,
                        num_stages: int = 4) -> jax.Array:
        """The feature map after `num_stages` stages (0-4), before bn2.

        x: (B, H, W, 3) float in [-1, 1]. Returns (B, H/2^n, W/2^n, widths[n-1])
        in the computation dtype (stem output for n = 0).
        """
        ura = use_running_average
        if self.config.dtype is not None:
            x = x.astype(self.config.dtype)
        x = self.prelu(self.bn1(self.conv1(x), use_running_average=ura))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4)[:num_stages]:
            for block in stage:
                x = block(x, use_running_average=ura)
        return x

    def stage_maps(self, x: jax.Array, use_running_average: bool | None = None
                   ) -> tuple[jax.Array, ...]:
        """The feature maps after stages 1, 2, 3 and 4 (before bn2), from one pass.

        x: (B, H, W, 3) float in [-1, 1]. Returns four (B, H/2^n, W/2^n,
        widths[n-1]) arrays in the computation dtype, n = 1..4.
        """
        ura = use_running_average
        x = self.stem_and_stages(x, ura, num_stages=0)
        maps = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, use_running_average=ura)
            maps.append(x)
        return tuple(maps)

    def embed_map(self, x: jax.Array, use_running_average: bool | None = None, *,
                  rngs: nnx.Rngs | None = None) -> jax.Array:
        """The head on the last stage's map (B, 7, 7, widths[3]) of a 112^2 input:
        bn2, flatten, dropout, fc, feature BatchNorm -> (B, num_features) float32."""
        ura = use_running_average
        x = self.bn2(x, use_running_average=ura)
        x = x.reshape(x.shape[0], -1)
        deterministic = None if ura is None else bool(ura)
        if self.config.dropout > 0:
            x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        x = self.fc(x)
        x = self.features(x.astype(jnp.float32), use_running_average=ura)
        return x * self.features_scale[...] + self.features_bias[...]

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """x: (B, 112, 112, 3) float RGB in [-1, 1] -> embedding (B, num_features) float32.

        rngs: only needed in training mode with dropout > 0.
        """
        if x.ndim != 4 or x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"iresnet expects images of shape (B, {INPUT_SIZE}, {INPUT_SIZE}, 3), "
                             f"got {tuple(x.shape)}")
        ura = use_running_average
        return self.embed_map(self.stem_and_stages(x, ura), ura, rngs=rngs)
