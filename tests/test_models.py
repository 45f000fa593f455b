"""The model zoo (CIFAR and ImageNet): every registered model honours the ModelOutput contract and matches its
reference size."""

from __future__ import annotations

import pytest
import torch

from richkd.errors import RichKDError
from richkd.models import MODELS, ZooModel, create_model, model_names

# Exact parameter counts at num_classes=100 (CRD / mdistiller zoo; the state dicts load strictly into ours).
EXACT_PARAMS_100 = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,
    "shufflev1": 949_258,
    "shufflev2": 1_355_528,
    "resnet50": 23_705_252,
    # ImageNet models at 100 classes (their 1000-class counts are checked in test_imagenet.py)
    "resnet18_imagenet": 11_227_812,
    "resnet34_imagenet": 21_335_972,
    "resnet50_imagenet": 23_712_932,
    "mobilenetv1_imagenet": 3_309_476,
}

# METHOD.md section 8, in millions: the published sizes the zoo must reproduce within 1 %.
METHOD_PARAMS_M = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "resnet20": 0.28,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "wrn_16_2": 0.70,
    "wrn_40_2": 2.26,
    "vgg8": 3.97,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "shufflev1": 0.95,
    "shufflev2": 1.36,
}

# METHOD.md section 8: pooled penultimate widths.
METHOD_POOLED_WIDTH = {
    **{f"resnet{d}": 64 for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": 256,
    "resnet32x4": 256,
    "wrn_16_1": 64,
    "wrn_40_1": 64,
    "wrn_16_2": 128,
    "wrn_40_2": 128,
    **{f"vgg{d}": 512 for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": 1280,
    "shufflev1": 960,
    "shufflev2": 1024,
    "resnet50": 2048,
    "resnet18_imagenet": 512,
    "resnet34_imagenet": 512,
    "resnet50_imagenet": 2048,
    "mobilenetv1_imagenet": 1024,
}

ALL_NAMES = model_names()
NUM_CLASSES = 7  # deliberately not 100, so a hard-coded head width would show


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_the_whole_zoo() -> None:
    assert set(ALL_NAMES) == set(EXACT_PARAMS_100)
    assert ALL_NAMES == sorted(ALL_NAMES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_forward_backward_contract(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES).train()
    assert isinstance(model, ZooModel)
    assert model.num_classes == NUM_CLASSES

    out = model(torch.randn(2, 3, 32, 32))

    assert out.logits.shape == (2, NUM_CLASSES)
    assert out.pooled.shape == (2, model.feature_dim)
    assert len(out.stages) >= 4
    assert tuple(s.shape[1] for s in out.stages) == model.stage_channels
    assert all(s.shape[0] == 2 and s.dim() == 4 for s in out.stages)
    for t in (out.logits, out.pooled, *out.stages):
        assert torch.isfinite(t).all()

    (out.logits.sum() + out.pooled.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_parameter_count_is_exact(name: str) -> None:
    assert _n_params(create_model(name, 100)) == EXACT_PARAMS_100[name]


@pytest.mark.parametrize("name", sorted(METHOD_PARAMS_M))
def test_parameter_count_matches_method_table(name: str) -> None:
    expected = METHOD_PARAMS_M[name] * 1e6
    assert abs(_n_params(create_model(name, 100)) - expected) <= 0.01 * expected


@pytest.mark.parametrize("name", ALL_NAMES)
def test_pooled_width_matches_method_table(name: str) -> None:
    assert create_model(name, 100).feature_dim == METHOD_POOLED_WIDTH[name]


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if n not in ("resnet34_imagenet", "resnet50_imagenet")])
def test_channels_last_under_bf16_autocast(name: str) -> None:
    """bf16 is ~9x slower than fp32 on CPUs without AMX: the two largest ImageNet nets add no layer type here."""
    model = create_model(name, NUM_CLASSES).eval().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert out.logits.shape == (2, NUM_CLASSES)
    assert out.pooled.shape == (2, model.feature_dim)
    assert torch.isfinite(out.logits.float()).all()


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(RichKDError) as err:
        create_model("resnet9000", 10)
    message = str(err.value)
    assert "resnet9000" in message
    assert all(name in message for name in ("resnet8x4", "wrn_40_2", "mobilenetv2", "shufflev2"))


@pytest.mark.parametrize("num_classes", [0, -3])
def test_non_positive_num_classes_raises(num_classes: int) -> None:
    with pytest.raises(RichKDError, match="num_classes"):
        create_model("resnet8", num_classes)


def test_mdistiller_spellings_resolve() -> None:
    assert isinstance(create_model("ShuffleV1", 10), type(MODELS.get("shufflev1")(10)))
    assert create_model("MobileNetV2", 10).feature_dim == 1280
