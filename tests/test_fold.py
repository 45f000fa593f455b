"""Folding a frozen teacher's BatchNorm into its convolutions keeps the function, for every zoo model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from numerics import assert_within_roundoff
from richkd.engine.fold import fold_batchnorm
from richkd.models import create_model, model_names


def _randomise_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial statistics and affine terms, so a wrong fold cannot hide behind mean 0 / var 1."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


# the largest models add seconds each and no new layer type (resnet18_imagenet covers the ImageNet family)
SLOW = {"resnet50", "resnet34_imagenet", "resnet50_imagenet"}


@pytest.mark.parametrize("name", [n for n in model_names() if n not in SLOW])
def test_fold_keeps_outputs_and_attributes(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model(name, 10)
    _randomise_bn(model, g)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=g)
    folded = fold_batchnorm(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) < n_bn
    assert not folded.training and folded.feature_dim == model.feature_dim
    with torch.no_grad():
        want, got = model(x), folded(x)
        exact = copy.deepcopy(model).double()(x.double())  # the same function in float64
    for a, b, e in zip(want, got, exact, strict=True):
        if isinstance(a, torch.Tensor):
            assert_within_roundoff(b, e, a, name)  # the fold is exact algebra: only round-off may differ


def test_untraceable_model_folds_its_sequential_blocks() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
            self.bn = nn.BatchNorm2d(4)
            self.feature_dim = 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.block(x)
            return self.bn(y) if y.shape[-1] > 1 else y  # shape-dependent branch: fx cannot trace it

    g = torch.Generator().manual_seed(0)
    model = Dynamic()
    _randomise_bn(model, g)
    model.eval()
    folded = fold_batchnorm(model)
    assert isinstance(folded.block[1], nn.Identity) and isinstance(folded.bn, nn.BatchNorm2d)
    assert isinstance(model.block[1], nn.BatchNorm2d), "the original is left alone"
    x = torch.randn(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        assert_within_roundoff(folded(x), copy.deepcopy(model).double()(x.double()), model(x), "Dynamic")
