"""CIFAR ResNets of the CRD / mdistiller zoo: a 3x3 stem and three stages of BasicBlocks (He et al., 2016).

Depth 6n+2 gives n blocks per stage. Plain variants use widths 16-16-32-64, the "x4" ones 32-64-128-256.
Module names follow the reference, so its checkpoints load with `strict=True` and no key remap.
"""

from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from richkd.models.base import (
    MODELS,
    BNStats,
    ModelFactory,
    ZooModel,
    bn_stats,
    global_avg_pool,
    init_conv_kaiming,
    stage_with_preact,
)
from richkd.models.output import ModelOutput

Widths = tuple[int, int, int, int]  # stem, stage 1, stage 2, stage 3
_PLAIN: Widths = (16, 16, 32, 64)
_X4: Widths = (32, 64, 128, 256)

# name -> (depth, widths)
RESNET_CONFIGS: dict[str, tuple[int, Widths]] = {
    "resnet8": (8, _PLAIN),
    "resnet14": (14, _PLAIN),
    "resnet20": (20, _PLAIN),
    "resnet32": (32, _PLAIN),
    "resnet44": (44, _PLAIN),
    "resnet56": (56, _PLAIN),
    "resnet110": (110, _PLAIN),
    "resnet8x4": (8, _X4),
    "resnet32x4": (32, _X4),
}


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut; a 1x1 projection only where shape changes (option B)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pre(x)[0]

    def forward_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the sum before the final ReLU)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        pre = out + shortcut
        return F.relu(pre), pre


def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarResNet(ZooModel):
    """Stages: stem output, then each stage's post-ReLU output (32, 32, 16, 8 px), as mdistiller's feats.
    Pre-activations: the stem output, then each stage's last residual sum; BN before ReLU: that block's bn2."""

    def __init__(self, depth: int, widths: Widths, num_classes: int) -> None:
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        super().__init__(feature_dim=widths[3], num_classes=num_classes, stage_channels=widths)
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = _make_stage(widths[0], widths[1], blocks, stride=1)
        self.layer2 = _make_stage(widths[1], widths[2], blocks, stride=2)
        self.layer3 = _make_stage(widths[2], widths[3], blocks, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_kaiming(self)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = stage_with_preact(self.layer1, f0)
        f2, p2 = stage_with_preact(self.layer2, f1)
        f3, p3 = stage_with_preact(self.layer3, f2)
        pooled = global_avg_pool(f3)  # [B, D]
        return ModelOutput(self.fc(pooled), pooled, (f0, f1, f2, f3), (f0, p1, p2, p3))

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        return tuple(bn_stats(cast(BasicBlock, stage[-1]).bn2) for stage in (self.layer1, self.layer2, self.layer3))


def _factory(depth: int, widths: Widths) -> ModelFactory:
    def build(num_classes: int) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes)

    return build


for _name, (_depth, _widths) in RESNET_CONFIGS.items():
    MODELS.register(_name)(_factory(_depth, _widths))
