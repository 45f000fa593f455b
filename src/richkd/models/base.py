"""What every zoo CNN shares: the `ZooModel` surface, the `MODELS` registry and two small layer helpers.

Families import `MODELS` from here (not from the package) so registration has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.models.output import ModelOutput
from richkd.registry import Registry


class ZooModel(nn.Module):
    """A CIFAR classifier any distiller can use as teacher or student (timm's one-surface idea).

    `feature_dim` is the width of `ModelOutput.pooled`; `stage_channels` gives the channel count of each
    map in `ModelOutput.stages`, so feature losses can size their projections without a dry forward.
    """

    feature_dim: int
    num_classes: int
    stage_channels: tuple[int, ...]

    def __init__(self, *, feature_dim: int, num_classes: int, stage_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.stage_channels = stage_channels

    def forward(self, x: Tensor) -> ModelOutput:
        raise NotImplementedError

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        """The BatchNorm affine parameters before the ReLU of each map in `ModelOutput.preact_stages[1:]`
        (mdistiller's `get_bn_before_relu()`), as plain detached tensors: OFD sizes its margin from them."""
        raise NotImplementedError

    if TYPE_CHECKING:
        # nn.Module.__call__ is typed as Any; this lets `model(x).logits` type-check downstream.
        def __call__(self, x: Tensor) -> ModelOutput: ...


class BNStats(NamedTuple):
    """Per-channel statistics of a pre-ReLU map as its BatchNorm models it: y ~ N(mean, std²) with mean = the BN's
    bias (β) and std = its weight (γ), as mdistiller reads them for OFD's margin."""

    mean: Tensor  # [C]
    std: Tensor  # [C]; may be negative (a BN weight); OFD uses |std|


def bn_stats(bn: nn.BatchNorm2d) -> BNStats:
    """A detached copy of one BatchNorm's (bias, weight), so a consumer can never change the model."""
    assert bn.weight is not None and bn.bias is not None, "affine BatchNorm expected"
    return BNStats(mean=bn.bias.detach().clone(), std=bn.weight.detach().clone())


def nonnegative_stats(channels: int, like: Tensor) -> BNStats:
    """Channels that reach a pre-ReLU map already non-negative (a ReLU output passed through: ShuffleNet's kept
    half or pooled shortcut): modelled as the point mass N(0, 0), whose OFD margin is the limit 0."""
    zeros = like.new_zeros(channels)
    return BNStats(mean=zeros, std=zeros.clone())


def concat_stats(*parts: BNStats) -> BNStats:
    return BNStats(torch.cat([p.mean for p in parts]), torch.cat([p.std for p in parts]))


def stage_with_preact(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a stage of blocks; the last block's `forward_pre` returns (output, its pre-ReLU map)."""
    *head, last = stage
    for block in head:
        x = block(x)
    out, pre = cast(Any, last).forward_pre(x)
    return out, pre


ModelFactory = Callable[[int], ZooModel]  # num_classes -> fresh, randomly initialised model

MODELS: Registry[ModelFactory] = Registry("model")


@dataclass(frozen=True)
class FeatureShapes:
    """The shape table feature connectors are sized from: no distiller reaches into a model's modules.

    `stages[i]` is (channels, height, width) of `ModelOutput.stages[i]` at the given input size; `pooled` is the
    width of `ModelOutput.pooled`.
    """

    image_size: int
    stages: tuple[tuple[int, int, int], ...]
    pooled: int
    # The model's `bn_before_relu()` (one per `preact_stages[1:]` map), read once when the table is measured,
    # i.e. after a teacher's checkpoint is loaded; empty for a model without one.
    bn_before_relu: tuple[BNStats, ...] = field(default=(), compare=False)


BN_STATS_ATTR = "bn_before_relu_stats"  # where a wrapped or BN-folded zoo model keeps its `bn_before_relu()`


def keep_bn_statistics(source: ZooModel, target: nn.Module) -> None:
    """Give `target` (e.g. `source` with its BatchNorms folded into the convs) `source`'s BN statistics before each
    ReLU, which folding removes from the modules but OFD's margin still needs."""
    setattr(target, BN_STATS_ATTR, source.bn_before_relu())


def feature_shapes(model: nn.Module, image_size: int) -> FeatureShapes:
    """Measure a model's stage shapes with one dry forward of a zero image (as mdistiller's get_feat_shapes).

    Runs in eval mode without gradients and restores the model's mode, so BatchNorm statistics are untouched.
    """
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    stages = tuple((int(f.shape[1]), int(f.shape[2]), int(f.shape[3])) for f in out.stages)
    bns: tuple[BNStats, ...] = getattr(model, BN_STATS_ATTR, ())  # kept through BN folding (keep_bn_statistics)
    if not bns and isinstance(model, ZooModel):
        bns = model.bn_before_relu()
    return FeatureShapes(image_size=image_size, stages=stages, pooled=int(out.pooled.shape[1]), bn_before_relu=bns)


def global_avg_pool(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C]. Adaptive, so it equals the reference's fixed AvgPool2d at 32x32 input."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def init_conv_kaiming(model: nn.Module) -> None:
    """He init, fan-out: CRD's `normal_(0, sqrt(2 / (k*k*out)))`; BN starts as identity, conv bias at 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
