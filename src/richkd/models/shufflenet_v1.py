"""ShuffleNetV1 of the CRD / mdistiller zoo ("ShuffleV1"; Zhang et al., 2018): groups 3, stage widths
240-480-960, 4-8-4 blocks, a 1x1 stem with no downsampling (CIFAR), PyTorch default init as the reference.

Module names follow the reference (`conv1`, `layerN.i.convK`/`bnK`, `linear`), so its checkpoints load
with `strict=True`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.models.base import (
    MODELS,
    BNStats,
    ZooModel,
    bn_stats,
    concat_stats,
    global_avg_pool,
    nonnegative_stats,
    stage_with_preact,
)
from richkd.models.output import ModelOutput

_STEM_CHANNELS = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[B, g*k, H, W] -> interleave the g groups, so the next grouped conv mixes information across them."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1. With stride 2 the branch output is
    concatenated with an avg-pooled shortcut (so the branch only produces out - in channels)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        self.stride = stride
        self.first_groups = first_groups
        mid_planes = out_planes // 4
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pre(x)[0]

    def forward_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the concatenation or sum before the final ReLU: mdistiller's preact)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        pre = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return F.relu(pre), pre

    def preact_stats(self) -> BNStats:
        """bn3 (as a ResNet's last BN, the shortcut sum ignored); with stride 2 the concatenated pooled shortcut
        is a ReLU output, non-negative (mdistiller defines no BN before ReLU for ShuffleNets)."""
        stats = bn_stats(self.bn3)
        if self.stride != 2:
            return stats
        return concat_stats(stats, nonnegative_stats(self.conv1.in_channels, stats.mean))


class ShuffleNetV1(ZooModel):
    """Stages: stem output, then each stage's post-ReLU output (16, 8, 4 px), as mdistiller's feats.
    Pre-activations: the stem output, then each stage's last unit before its ReLU (mdistiller's preact_feats)."""

    def __init__(
        self,
        num_classes: int,
        *,
        stage_widths: tuple[int, int, int] = (240, 480, 960),
        stage_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__(
            feature_dim=stage_widths[-1],
            num_classes=num_classes,
            stage_channels=(_STEM_CHANNELS, *stage_widths),
        )
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        in_planes = _STEM_CHANNELS
        stages = []
        for width, blocks in zip(stage_widths, stage_blocks, strict=True):
            # The first unit of each stage downsamples and concatenates its input, so it adds width - in.
            units = [ShuffleUnit(in_planes, width - in_planes, 2, groups, _first_groups(in_planes, groups))]
            units += [ShuffleUnit(width, width, 1, groups, groups) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*units))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(stage_widths[-1], num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = stage_with_preact(self.layer1, f0)
        f2, p2 = stage_with_preact(self.layer2, f1)
        f3, p3 = stage_with_preact(self.layer3, f2)
        pooled = global_avg_pool(f3)  # [B, D]
        return ModelOutput(self.linear(pooled), pooled, (f0, f1, f2, f3), (f0, p1, p2, p3))

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        units = (self.layer1[-1], self.layer2[-1], self.layer3[-1])
        return tuple(u.preact_stats() for u in units if isinstance(u, ShuffleUnit))


def _first_groups(in_planes: int, groups: int) -> int:
    # The stem's 24 channels are too few to split, so the reference leaves the first 1x1 conv ungrouped.
    return 1 if in_planes == _STEM_CHANNELS else groups


@MODELS.register("shufflev1")
def shufflev1(num_classes: int) -> ShuffleNetV1:
    """mdistiller's "ShuffleV1"."""
    return ShuffleNetV1(num_classes)
