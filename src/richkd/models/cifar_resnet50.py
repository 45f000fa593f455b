"""ResNet50 for CIFAR, as in the CRD / mdistiller zoo ("ResNet50"; their resnetv2.py): ImageNet ResNet50's
bottleneck stages (3-4-6-3, 2048-d output) behind a 3x3 stride-1 stem with no max-pool, for 32 px inputs.

Module names follow the reference (`layerN.i.shortcut`, `linear`), so its checkpoints load with
`strict=True`.
"""

from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from richkd.models.base import (
    MODELS,
    BNStats,
    ZooModel,
    bn_stats,
    global_avg_pool,
    init_conv_kaiming,
    stage_with_preact,
)
from richkd.models.output import ModelOutput

_EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand x4, plus a projected shortcut on shape change."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * _EXPANSION
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = (
            nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
            if stride != 1 or in_planes != out_planes
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pre(x)[0]

    def forward_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the sum before the final ReLU)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        pre = out + self.shortcut(x)
        return F.relu(pre), pre


class CifarBottleneckResNet(ZooModel):
    """Stages: stem output, then each stage's post-ReLU output (32, 32, 16, 8, 4 px), as mdistiller.
    Pre-activations: the stem output, then each stage's last residual sum; BN before ReLU: that block's bn3."""

    def __init__(self, stage_blocks: tuple[int, int, int, int], num_classes: int) -> None:
        planes = (64, 128, 256, 512)
        widths = tuple(p * _EXPANSION for p in planes)
        super().__init__(feature_dim=widths[-1], num_classes=num_classes, stage_channels=(64, *widths))
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, (p, blocks) in enumerate(zip(planes, stage_blocks, strict=True)):
            stride = 1 if i == 0 else 2
            units = [Bottleneck(in_planes, p, stride)]
            units += [Bottleneck(p * _EXPANSION, p) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*units))
            in_planes = p * _EXPANSION
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(widths[-1], num_classes)
        init_conv_kaiming(self)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = stage_with_preact(self.layer1, f0)
        f2, p2 = stage_with_preact(self.layer2, f1)
        f3, p3 = stage_with_preact(self.layer3, f2)
        f4, p4 = stage_with_preact(self.layer4, f3)
        pooled = global_avg_pool(f4)  # [B, D]
        return ModelOutput(self.linear(pooled), pooled, (f0, f1, f2, f3, f4), (f0, p1, p2, p3, p4))

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        return tuple(bn_stats(cast(Bottleneck, s[-1]).bn3) for s in stages)


@MODELS.register("resnet50")
def resnet50(num_classes: int) -> CifarBottleneckResNet:
    """mdistiller's CIFAR "ResNet50" (not the ImageNet one: no 7x7 stem, no max-pool)."""
    return CifarBottleneckResNet((3, 4, 6, 3), num_classes)
