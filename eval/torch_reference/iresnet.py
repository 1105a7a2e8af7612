"""PyTorch twin of face3d_jax.nets.arcface: insightface's arcface_torch iresnet
(`recognition/arcface_torch/backbones/iresnet.py`), written here with the same
module names, hence the same state-dict keys as insightface's released
backbones and MICA's `arcface` entry:

    conv1.weight, bn1.{weight,bias,running_mean,running_var,num_batches_tracked},
    prelu.weight, layer{1..4}.{i}.{bn1,conv1,bn2,prelu,conv2,bn3}.*,
    layer{1..4}.0.downsample.{0 (conv1x1), 1 (BN)}.*, bn2.*, fc.{weight,bias},
    features.{weight,bias,running_mean,running_var,num_batches_tracked}

One addition for cheap tests: `widths` (channels per stage, insightface's are
(64, 128, 256, 512)). Input: (B, 3, 112, 112) NCHW RGB in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
FC_SCALE = 7 * 7


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, + shortcut."""

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """insightface iresnet: (B, 3, 112, 112) -> (B, num_features)."""

    def __init__(self, layers=ARCHITECTURES["iresnet100"], widths=(64, 128, 256, 512),
                 num_features: int = 512, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        cin = widths[0]
        stages = []
        for n_blocks, planes in zip(layers, widths):
            downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride=2, bias=False),
                                       nn.BatchNorm2d(planes, eps=1e-5))
            blocks = [IBasicBlock(cin, planes, 2, downsample)]
            blocks += [IBasicBlock(planes, planes) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(cin * FC_SCALE, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


def iresnet(arch: str = "iresnet100", **kwargs) -> IResNet:
    """An IResNet of a named insightface architecture ("iresnet18" ... "iresnet200")."""
    return IResNet(ARCHITECTURES[arch], **kwargs)


@torch.no_grad()
def randomize_(model: IResNet, seed: int = 0) -> IResNet:
    """Fill every parameter and BN buffer with random values of a plausible range
    (fresh init leaves BN at identity, which would hide layout mistakes). In place."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("num_batches_tracked") or name == "features.weight":
            continue
        if name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen))
        elif name.endswith(("running_mean", "bias")):
            t.copy_(0.1 * torch.randn(t.shape, generator=gen))
        elif t.ndim == 1:  # BN scale, PReLU slope
            t.copy_(0.75 + 0.5 * torch.rand(t.shape, generator=gen))
        else:  # conv / fc weights: He-like scale so activations stay O(1)
            fan_in = t[0].numel()
            t.copy_(torch.randn(t.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
    return model
