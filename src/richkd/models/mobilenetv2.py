"""MobileNetV2 of the CRD / mdistiller zoo (their `mobile_half`; Sandler et al., 2018): width 0.5,
expansion 6, and a full 1280-wide final 1x1 conv, so the pooled feature is 1280-d.

CIFAR quirks kept for parameter and accuracy parity: the stem has stride 2 (32 -> 16 px), and the first
block keeps its expand-1 pointwise conv. Module names follow the reference (`conv1.0`, `blocks.i.j.conv.k`,
`conv2.0`, `classifier.0`), so its checkpoints load with `strict=True`.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from richkd.models.base import MODELS, BNStats, ZooModel, bn_stats, global_avg_pool, init_conv_kaiming
from richkd.models.output import ModelOutput

# (expansion, output channels at width 1, blocks, first stride); expansion None means "the model's T"
_SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
_STAGE_BLOCKS = (1, 2, 4, 6)  # indices of `blocks` whose outputs mdistiller exposes as feats 1..4


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1); residual when the shape is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(ZooModel):
    """Stages: stem output, then the outputs of blocks 1, 2, 4 and 6 (16, 8, 4, 2 px), as mdistiller.

    Pre-activations: mdistiller gives none (its OFD/ReviewKD cannot use a MobileNetV2 teacher). Its stage maps are
    the linear bottlenecks' outputs, which no ReLU follows, so they are their own pre-activations; the BN before
    "ReLU" is each stage's last block's projection BN (`conv[-1]`, mdistiller's `get_bn_before_relu`), which, as
    for a ResNet's last bn2, ignores the residual added after it.
    """

    def __init__(self, num_classes: int, *, expansion: int = 6, width_mult: float = 0.5) -> None:
        in_channels = int(32 * width_mult)
        widths = [int(c * width_mult) for _, c, _, _ in _SETTINGS]
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        stage_channels = (in_channels, *(widths[i] for i in _STAGE_BLOCKS))
        super().__init__(feature_dim=last_channels, num_classes=num_classes, stage_channels=stage_channels)
        self.conv1 = _conv_bn_relu(3, in_channels, kernel_size=3, stride=2)
        self.blocks = nn.ModuleList()
        for (t, _, n, s), width in zip(_SETTINGS, widths, strict=True):
            expand = expansion if t is None else t
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(in_channels, width, s if i == 0 else 1, expand))
                in_channels = width
            self.blocks.append(nn.Sequential(*layers))
        self.conv2 = _conv_bn_relu(in_channels, last_channels, kernel_size=1, stride=1)
        head = nn.Linear(last_channels, num_classes)
        self.classifier = nn.Sequential(head)  # a Sequential only for the reference's `classifier.0` keys
        init_conv_kaiming(self)
        nn.init.normal_(head.weight, 0.0, 0.01)
        nn.init.zeros_(head.bias)

    def forward(self, x: Tensor) -> ModelOutput:
        out = self.conv1(x)
        stages = [out]
        for i, block in enumerate(self.blocks):
            out = block(out)
            if i in _STAGE_BLOCKS:
                stages.append(out)
        pooled = global_avg_pool(self.conv2(out))  # [B, D]
        return ModelOutput(self.classifier(pooled), pooled, tuple(stages), tuple(stages))

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        return tuple(bn_stats(cast(nn.BatchNorm2d, self._last_block(i).conv[-1])) for i in _STAGE_BLOCKS)

    def _last_block(self, i: int) -> InvertedResidual:
        block = self.blocks[i]
        assert isinstance(block, nn.Sequential)
        last = block[-1]
        assert isinstance(last, InvertedResidual)
        return last


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes: int) -> MobileNetV2:
    """CRD's `mobile_half` (mdistiller's "MobileNetV2")."""
    return MobileNetV2(num_classes, expansion=6, width_mult=0.5)
