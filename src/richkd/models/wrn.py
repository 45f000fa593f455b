"""Wide ResNets of the CRD / mdistiller zoo (Zagoruyko & Komodakis, 2016): wrn_<depth>_<widen factor>.

Pre-activation blocks, depth 6n+4, stage widths 16k-32k-64k; no dropout, as in the reference runs.
Module names (including `convShortcut` and the `blockN.layer` nesting) follow the reference, so its
checkpoints load with `strict=True` and no key remap.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from richkd.models.base import MODELS, BNStats, ModelFactory, ZooModel, bn_stats, global_avg_pool, init_conv_kaiming
from richkd.models.output import ModelOutput

# name -> (depth, widen factor)
WRN_CONFIGS: dict[str, tuple[int, int]] = {
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv twice. When the shape changes, the 1x1 shortcut reads the *activated* input
    (the reference's behaviour); otherwise the identity shortcut reads the raw input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        needs_projection = in_planes != out_planes or stride != 1
        self.convShortcut = (
            nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)
            if needs_projection
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from(x, self.bn1(x))

    def forward_from(self, x: Tensor, pre: Tensor) -> Tensor:
        """The block given `pre` = bn1(x), computed once by the caller that also keeps it as a pre-activation."""
        act = F.relu(pre)
        out: Tensor = self.conv2(F.relu(self.bn2(self.conv1(act))))
        shortcut: Tensor = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage; exists only to reproduce the reference's `blockN.layer.i` parameter names."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            WideBasicBlock(in_planes, out_planes, stride),
            *(WideBasicBlock(out_planes, out_planes, 1) for _ in range(blocks - 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer(x)
        return out

    def first_bn(self) -> nn.BatchNorm2d:
        first = self.layer[0]
        assert isinstance(first, WideBasicBlock)
        return first.bn1

    def forward_from(self, x: Tensor, pre: Tensor) -> Tensor:
        """The stage given `pre` = first_bn()(x)."""
        first = self.layer[0]
        assert isinstance(first, WideBasicBlock)
        out: Tensor = first.forward_from(x, pre)
        for block in list(self.layer)[1:]:  # not a slice: fx (BN folding) traces installed submodules only
            out = block(out)
        return out


class WideResNet(ZooModel):
    """Stages: stem conv output, then each stage's output (pre-activation by construction), as mdistiller.

    Pre-activations (mdistiller): the stem output, then each stage's output through the BN that the next
    pre-activation block (or the head's `bn1`) applies before its ReLU; those BNs are the BN before ReLU. Each is
    computed once and fed on, so BatchNorm statistics update exactly as without the seam.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int) -> None:
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        super().__init__(feature_dim=widths[3], num_classes=num_classes, stage_channels=widths)
        blocks = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks, widths[0], widths[1], stride=1)
        self.block2 = NetworkBlock(blocks, widths[1], widths[2], stride=2)
        self.block3 = NetworkBlock(blocks, widths[2], widths[3], stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])  # the final pre-activation's BN
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_kaiming(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        p1 = self.block2.first_bn()(f1)
        f2 = self.block2.forward_from(f1, p1)
        p2 = self.block3.first_bn()(f2)
        f3 = self.block3.forward_from(f2, p2)
        p3 = self.bn1(f3)
        pooled = global_avg_pool(F.relu(p3))  # [B, D]
        return ModelOutput(self.fc(pooled), pooled, (f0, f1, f2, f3), (f0, p1, p2, p3))

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        return (bn_stats(self.block2.first_bn()), bn_stats(self.block3.first_bn()), bn_stats(self.bn1))


def _factory(depth: int, widen_factor: int) -> ModelFactory:
    def build(num_classes: int) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes)

    return build


for _name, (_depth, _widen) in WRN_CONFIGS.items():
    MODELS.register(_name)(_factory(_depth, _widen))
