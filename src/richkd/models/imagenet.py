"""ImageNet models of the KD papers' ImageNet rows: ResNet18/34/50 (torchvision's architecture, ResNet v1.5:
the bottleneck's stride sits on its 3x3 conv) and the MobileNetV1 that CRD / mdistiller use as a student.

Module names are exactly torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, `fc`) and
mdistiller's for MobileNetV1 (`model.<i>.<j>`, `fc`), so their ImageNet checkpoints load with strict=True
through `richkd.engine.checkpoint.load_model_file`, with no key remapping. torchvision is never imported.

Registered as `resnet18_imagenet`, `resnet34_imagenet`, `resnet50_imagenet` and `mobilenetv1_imagenet`; the
plain `resnet50` stays the CIFAR model.
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


class BasicBlock(nn.Module):
    """Two 3x3 convs (the first carries the stride) plus the identity or a 1x1 projection (`downsample`)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _projection(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pre(x)[0]

    def forward_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the sum before the final ReLU)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        pre = out + identity
        return F.relu(pre), pre

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride: v1.5, as torchvision) -> 1x1 expand x4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = _projection(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pre(x)[0]

    def forward_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the sum before the final ReLU)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        pre = out + identity
        return F.relu(pre), pre

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    """torchvision's `downsample`: 1x1 conv + BN when the shape changes, else None (no state-dict keys)."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class ImageNetResNet(ZooModel):
    """7x7/2 stem + 3x3/2 max-pool, four stages, global average pool, `fc`.

    Stages: the post-ReLU stem (before the max-pool, 112 px at 224 input, as mdistiller's `feats[0]`), then
    each stage's output (56, 28, 14, 7 px). Pre-activations: the stem output, then each stage's last residual
    sum; BN before ReLU: that block's bn2 (basic) or bn3 (bottleneck), for layer1 too (mdistiller lists only
    layer2-4, and aligns the last ones, so the maps OFD pairs get the same BNs).
    """

    def __init__(
        self, block: type[BasicBlock] | type[Bottleneck], stage_blocks: tuple[int, int, int, int], num_classes: int
    ) -> None:
        planes = (64, 128, 256, 512)
        widths = tuple(p * block.expansion for p in planes)
        super().__init__(feature_dim=widths[-1], num_classes=num_classes, stage_channels=(64, *widths))
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = 64
        stages = []
        for i, (p, blocks) in enumerate(zip(planes, stage_blocks, strict=True)):
            units: list[nn.Module] = [block(in_planes, p, 1 if i == 0 else 2)]
            in_planes = p * block.expansion
            units += [block(in_planes, p) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(widths[-1], num_classes)
        init_conv_kaiming(self)  # torchvision's init; nn.Linear keeps PyTorch's default, as torchvision

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = stage_with_preact(self.layer1, self.maxpool(f0))
        f2, p2 = stage_with_preact(self.layer2, f1)
        f3, p3 = stage_with_preact(self.layer3, f2)
        f4, p4 = stage_with_preact(self.layer4, f3)
        pooled = global_avg_pool(f4)  # [B, D]
        return ModelOutput(self.fc(pooled), pooled, (f0, f1, f2, f3, f4), (f0, p1, p2, p3, p4))

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        return tuple(bn_stats(cast(BasicBlock | Bottleneck, s[-1]).last_bn()) for s in stages)


# (out_channels, stride) of MobileNetV1's 13 depthwise-separable blocks (Howard et al. 2017, Table 1).
_MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip
_MOBILENET_V1_STAGE_ENDS = (3, 5, 11, 13)  # indices in `model` whose outputs are the 56/28/14/7 px stages


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


def _depthwise_separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """3x3 depthwise (carries the stride) + BN + ReLU, then 1x1 pointwise + BN + ReLU: indices 0,1 and 3,4."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(ZooModel):
    """MobileNetV1 (width 1.0) as in CRD / mdistiller's ImageNet students: a 3x3/2 stem and 13 depthwise-
    separable blocks in one `model` Sequential, global average pool, `fc` (4,231,976 parameters at 1000
    classes). The reference pools with a fixed AvgPool2d(7), i.e. 224 px input only; ours pools adaptively,
    which is the same at 224 px and also runs at other sizes.

    Stages: the outputs of blocks 3, 5, 11 and 13 (128/256/512/1024 channels), as mdistiller's `feats`;
    pre-activations: the same blocks' pointwise BN outputs, before their last ReLU (mdistiller's `preact_feats`,
    which has no stem entry either); BN before ReLU: those BNs of blocks 5, 11, 13 (for `preact_stages[1:]`).
    """

    def __init__(self, num_classes: int) -> None:
        widths = tuple(_MOBILENET_V1_BLOCKS[i - 1][0] for i in _MOBILENET_V1_STAGE_ENDS)
        super().__init__(feature_dim=1024, num_classes=num_classes, stage_channels=widths)
        layers = [_conv_bn_relu(3, 32, 2)]
        in_ch = 32
        for out_ch, stride in _MOBILENET_V1_BLOCKS:
            layers.append(_depthwise_separable(in_ch, out_ch, stride))
            in_ch = out_ch
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)
        init_conv_kaiming(self)

    def forward(self, x: Tensor) -> ModelOutput:
        stages, preacts = [], []
        for i, layer in enumerate(self.model):
            if i in _MOBILENET_V1_STAGE_ENDS:
                pre = x
                for sub in list(cast(nn.Sequential, layer))[:-1]:  # not a slice: fx (BN folding) traces submodules
                    pre = sub(pre)
                x = F.relu(pre)  # not the in-place ReLU module: `pre` is kept
                stages.append(x)
                preacts.append(pre)
            else:
                x = layer(x)
        pooled = global_avg_pool(x)  # [B, 1024]
        return ModelOutput(self.fc(pooled), pooled, tuple(stages), tuple(preacts))

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        blocks = (cast(nn.Sequential, self.model[i]) for i in _MOBILENET_V1_STAGE_ENDS[1:])
        return tuple(bn_stats(cast(nn.BatchNorm2d, b[4])) for b in blocks)


@MODELS.register("resnet18_imagenet")
def resnet18_imagenet(num_classes: int) -> ImageNetResNet:
    """torchvision's resnet18 (11,689,512 parameters at 1000 classes)."""
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes)


@MODELS.register("resnet34_imagenet")
def resnet34_imagenet(num_classes: int) -> ImageNetResNet:
    """torchvision's resnet34 (21,797,672 parameters at 1000 classes): the paper's ImageNet teacher."""
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), num_classes)


@MODELS.register("resnet50_imagenet")
def resnet50_imagenet(num_classes: int) -> ImageNetResNet:
    """torchvision's resnet50, v1.5 (25,557,032 parameters at 1000 classes)."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes)


@MODELS.register("mobilenetv1_imagenet")
def mobilenetv1_imagenet(num_classes: int) -> MobileNetV1:
    """CRD / mdistiller's ImageNet MobileNetV1 student."""
    return MobileNetV1(num_classes)
