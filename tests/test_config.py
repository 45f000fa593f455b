"""Config loading: every shipped config validates; bad keys/values fail with a one-line message."""

from __future__ import annotations

from pathlib import Path

import pytest

from richkd.config import KDConfig, RichKDConfig, load_config, parse_overrides
from richkd.errors import RichKDError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_configs_exist() -> None:
    assert len(CONFIGS) >= 12


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.train.epochs >= 1


def test_reference_richkd_defaults() -> None:
    cfg = load_config(REPO / "configs/cifar100/richkd/resnet32x4_resnet8x4_lf.yaml")
    assert isinstance(cfg.distill, RichKDConfig)
    d = cfg.distill
    assert (d.ce_weight, d.kd_weight, d.feat_weight, d.temperature) == (1.0, 3.0, 0.8, 3.0)
    assert cfg.fusion.logit_alpha == 0.7 and cfg.feature_lambda == 0.7
    assert cfg.optim.milestones == (150, 180, 210) and cfg.train.batch_size == 64


def test_overrides_are_typed() -> None:
    cfg = load_config(
        REPO / "configs/cifar100/kd/resnet32x4_resnet8x4.yaml",
        ["train.epochs=2", "optim.lr=1e-3", "distill.temperature=2", "optim.milestones=[1]"],
    )
    assert cfg.train.epochs == 2 and cfg.optim.lr == pytest.approx(1e-3)
    assert isinstance(cfg.distill, KDConfig) and cfg.distill.temperature == 2.0
    assert cfg.optim.milestones == (1,)


def test_unknown_key_names_it_and_lists_valid() -> None:
    with pytest.raises(RichKDError, match=r"unknown config key train\.epoch .*valid keys: epochs"):
        load_config(None, ["train.epoch=3"])


def test_unknown_method() -> None:
    with pytest.raises(RichKDError, match="unknown distill.method 'fitnet'"):
        load_config(None, ["distill.method=fitnet"])


def test_key_of_another_method_rejected() -> None:
    with pytest.raises(RichKDError, match="unknown config key distill.beta"):
        load_config(REPO / "configs/cifar100/kd/resnet32x4_resnet8x4.yaml", ["distill.beta=8"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("distill.temperature=-1", "distill.temperature must be > 0"),
        ("fusion.logit_alpha=1.5", "fusion.logit_alpha must be in"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.epochs=two", "expected int"),
        ("train.bf16=3", "expected bool"),
        ("vlm.view_mode=random", "choose one of"),
    ],
)
def test_bad_values(override: str, message: str) -> None:
    with pytest.raises(RichKDError, match=message):
        load_config(REPO / "configs/cifar100/richkd/resnet32x4_resnet8x4_lf.yaml", [override])


def test_method_needs_teacher() -> None:
    with pytest.raises(RichKDError, match="needs model.teacher"):
        load_config(None, ["distill.method=kd"])


def test_richkd_needs_cache_unless_control() -> None:
    base = REPO / "configs/cifar100/richkd/resnet32x4_resnet8x4_lf.yaml"
    with pytest.raises(RichKDError, match="richkd needs vlm.cache"):
        load_config(base, ["vlm.cache=null"])
    assert load_config(base, ["vlm.cache=null", "fusion.use_vlm=false"]).fusion.use_vlm is False


def test_bad_override_syntax() -> None:
    with pytest.raises(RichKDError, match="expected key=value"):
        parse_overrides(["train.epochs"])


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(RichKDError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
