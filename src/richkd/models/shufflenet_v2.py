"""ShuffleNetV2 1.0x of the CRD / mdistiller zoo ("ShuffleV2"; Ma et al., 2018): stage widths 116-232-464,
3-7-3 units after each downsampling unit, a 1x1 stem with no downsampling (CIFAR), a 1024-wide final 1x1
conv, PyTorch default init as the reference.

Module names follow the reference (`layerN.0` is the downsampling unit, `conv2`/`bn2` the final conv,
`linear`), so its checkpoints load with `strict=True`.
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
from richkd.models.shufflenet_v1 import channel_shuffle

_STEM_CHANNELS = 24


class SplitUnit(nn.Module):
    """Keep half the channels as they are; run the other half through 1x1 -> depthwise 3x3 -> 1x1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pre(x)[0]

    def forward_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the same shuffled concatenation with bn3's output before its ReLU)."""
        half = x.shape[1] // 2
        kept, branch = x[:, :half], x[:, half:]
        branch = F.relu(self.bn1(self.conv1(branch)))
        branch = self.bn2(self.conv2(branch))
        pre_branch = self.bn3(self.conv3(branch))
        branch = F.relu(pre_branch)
        return channel_shuffle(torch.cat([kept, branch], 1), 2), channel_shuffle(torch.cat([kept, pre_branch], 1), 2)

    def preact_stats(self) -> BNStats:
        """The kept half is already a ReLU output (non-negative); the other half is bn3's; shuffled as the map."""
        stats = bn_stats(self.bn3)
        both = concat_stats(nonnegative_stats(self.bn3.num_features, stats.mean), stats)
        return BNStats(_shuffle_channels(both.mean), _shuffle_channels(both.std))


def _shuffle_channels(v: Tensor) -> Tensor:
    """channel_shuffle(·, 2) applied to a per-channel vector."""
    return channel_shuffle(v.view(1, -1, 1, 1), 2).view(-1)


class DownUnit(nn.Module):
    """Two stride-2 branches over the whole input (depthwise-first left, pointwise-first right), each
    producing half of the output channels, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(ZooModel):
    """Stages: stem output, then each stage's output (16, 8, 4 px), as mdistiller's feats.

    Pre-activations: the stem output, then each stage's last unit with its branch taken before the ReLU, shuffled
    like the output (mdistiller concatenates without the shuffle, so its preact channels do not line up with its
    feats). mdistiller has no BN before ReLU for ShuffleNets; here it is bn3 on the branch half and the point mass
    N(0, 0) on the kept half, which is already a ReLU output.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        stage_widths: tuple[int, int, int] = (116, 232, 464),
        stage_blocks: tuple[int, int, int] = (3, 7, 3),
        last_channels: int = 1024,
    ) -> None:
        super().__init__(
            feature_dim=last_channels,
            num_classes=num_classes,
            stage_channels=(_STEM_CHANNELS, *stage_widths),
        )
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        in_channels = _STEM_CHANNELS
        stages = []
        for width, blocks in zip(stage_widths, stage_blocks, strict=True):
            units = [DownUnit(in_channels, width), *(SplitUnit(width) for _ in range(blocks))]
            stages.append(nn.Sequential(*units))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_channels, last_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(last_channels)
        self.linear = nn.Linear(last_channels, num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = stage_with_preact(self.layer1, f0)
        f2, p2 = stage_with_preact(self.layer2, f1)
        f3, p3 = stage_with_preact(self.layer3, f2)
        pooled = global_avg_pool(F.relu(self.bn2(self.conv2(f3))))  # [B, D]
        return ModelOutput(self.linear(pooled), pooled, (f0, f1, f2, f3), (f0, p1, p2, p3))

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        units = (self.layer1[-1], self.layer2[-1], self.layer3[-1])
        return tuple(u.preact_stats() for u in units if isinstance(u, SplitUnit))


@MODELS.register("shufflev2")
def shufflev2(num_classes: int) -> ShuffleNetV2:
    """mdistiller's "ShuffleV2" (net size 1.0)."""
    return ShuffleNetV2(num_classes)
