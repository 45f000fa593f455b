"""CIFAR VGGs with batch norm, as in the CRD / mdistiller zoo (its `vggN_bn`; Simonyan & Zisserman, 2015).

Five conv blocks, max-pool between the first four, global average pool and a single 512 -> C linear layer
(no 4096-wide head). Module names follow the reference (`blockN.i`, `classifier`), so its checkpoints load
with `strict=True`: each block is conv-BN-ReLU repeated, without the last ReLU, keeping indices aligned.
"""

from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from richkd.models.base import MODELS, BNStats, ModelFactory, ZooModel, bn_stats, global_avg_pool, init_conv_kaiming
from richkd.models.output import ModelOutput

BlockWidths = tuple[tuple[int, ...], ...]  # five blocks, the conv widths within each

VGG_CONFIGS: dict[str, BlockWidths] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _make_block(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers[:-1])  # the caller applies the last ReLU, so it can keep the pre-ReLU map


class CifarVGG(ZooModel):
    """Stages: the post-ReLU output of each of the five blocks, as mdistiller's feats. Pre-activations: block 0's
    output (as mdistiller), then blocks 1-4 before their last ReLU; BN before ReLU: those blocks' last BN."""

    def __init__(self, block_widths: BlockWidths, num_classes: int) -> None:
        if len(block_widths) != 5:
            raise ValueError(f"VGG needs 5 blocks, got {len(block_widths)}")
        stage_channels = tuple(widths[-1] for widths in block_widths)
        super().__init__(
            feature_dim=stage_channels[-1], num_classes=num_classes, stage_channels=stage_channels
        )
        in_channels = (3, *stage_channels[:-1])
        self.block0 = _make_block(in_channels[0], block_widths[0])
        self.block1 = _make_block(in_channels[1], block_widths[1])
        self.block2 = _make_block(in_channels[2], block_widths[2])
        self.block3 = _make_block(in_channels[3], block_widths[3])
        self.block4 = _make_block(in_channels[4], block_widths[4])
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.classifier = nn.Linear(stage_channels[-1], num_classes)
        init_conv_kaiming(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.block0(x))
        p1 = self.block1(self.pool(f0))
        f1 = F.relu(p1)
        p2 = self.block2(self.pool(f1))
        f2 = F.relu(p2)
        p3 = self.block3(self.pool(f2))
        f3 = F.relu(p3)
        # The reference pools before block4 only for 64 px inputs (Tiny-ImageNet), so that block4 always
        # sees 4x4 maps; at 32 px block3's output is already 4x4.
        p4 = self.block4(self.pool(f3) if f3.shape[-2] >= 8 else f3)
        f4 = F.relu(p4)
        pooled = global_avg_pool(f4)  # [B, D]
        return ModelOutput(self.classifier(pooled), pooled, (f0, f1, f2, f3, f4), (f0, p1, p2, p3, p4))

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        blocks = (self.block1, self.block2, self.block3, self.block4)
        return tuple(bn_stats(cast(nn.BatchNorm2d, b[-1])) for b in blocks)


def _factory(block_widths: BlockWidths) -> ModelFactory:
    def build(num_classes: int) -> CifarVGG:
        return CifarVGG(block_widths, num_classes)

    return build


for _name, _block_widths in VGG_CONFIGS.items():
    MODELS.register(_name)(_factory(_block_widths))
