"""Config loading: every shipped config validates; bad keys/values fail with a one-line message."""

from __future__ import annotations

from pathlib import Path

import pytest

from richkd.config import KDConfig, RichKDConfig, load_config, parse_overrides
from richkd.errors import RichKDError

REPO = Path(__file__).resolve().parents[1]
LF = {"pair": "resnet32x4-resnet8x4", "method": "richkd-lf"}
KD = {"pair": "resnet32x4-resnet8x4", "method": "kd"}


def test_reference_richkd_defaults() -> None:
    cfg = load_config(None, **LF)
    assert isinstance(cfg.distill, RichKDConfig)
    d = cfg.distill
    assert (d.ce_weight, d.kd_weight, d.feat_weight, d.temperature) == (1.0, 3.0, 0.8, 3.0)
    assert cfg.fusion.logit_alpha == 0.7 and cfg.feature_lambda == 0.7 and cfg.fusion.mode == "vlm"
    assert cfg.optim.milestones == (150, 180, 210) and cfg.train.batch_size == 64


def test_overrides_are_typed() -> None:
    cfg = load_config(
        None, ["train.epochs=2", "optim.lr=1e-3", "distill.temperature=2", "optim.milestones=[1]"], **KD
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
        load_config(None, ["distill.beta=8"], **KD)


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
        load_config(None, [override], **LF)


def test_method_needs_teacher() -> None:
    with pytest.raises(RichKDError, match="needs model.teacher"):
        load_config(None, ["distill.method=kd"])


def test_fusion_needs_cache_unless_control() -> None:
    with pytest.raises(RichKDError, match="fusion.mode=vlm needs vlm.cache"):
        load_config(None, ["vlm.cache=null"], **LF)
    assert load_config(None, ["vlm.cache=null", "fusion.mode=control"], **LF).fusion.mode == "control"
    with pytest.raises(RichKDError, match="fusion.mode=vlm needs vlm.cache"):
        load_config(None, ["vlm.cache=null", "fusion.mode=vlm"], **KD)


def test_richkd_without_fusion_is_refused() -> None:
    """RichKD with the plain teacher would silently be KD+CRD: the config must say which targets it fuses."""
    with pytest.raises(RichKDError, match="richkd distils fused targets"):
        load_config(None, ["fusion.mode=off"], **LF)
    with pytest.raises(RichKDError, match="needs a teacher"):
        load_config(None, ["fusion.mode=control"], method="vanilla")


def test_old_use_vlm_key_names_its_replacement() -> None:
    with pytest.raises(RichKDError, match="fusion.use_vlm was replaced by fusion.mode"):
        load_config(None, ["fusion.use_vlm=false"], **LF)


def test_bad_override_syntax() -> None:
    with pytest.raises(RichKDError, match="expected key=value"):
        parse_overrides(["train.epochs"])


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(RichKDError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["1e3", "010", "1:20", "0x10", "1_000", "true", "2026-01-01", "5.0"])
def test_string_override_stays_the_text(text: str) -> None:
    """Issue 27 item 6: YAML-then-float parsing wrote `out_dir=1e3` to `1000.0/` (and `010` to `8/`)."""
    cfg = load_config(None, [f"out_dir={text}", f"data.root={text}"])
    assert cfg.out_dir == text and cfg.data.root == text


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs=1e3", "int"),
        ("train.epochs=2.0", "int"),
        ("seed=0x10", "int"),
        ("data.train_limit=none", "int or null"),
        ("optim.lr=fast", "float"),
        ("optim.lr=nan", "float"),
        ("train.compile=1", "bool"),
        ("optim.milestones=[1, 2.5]", "a list of int"),
    ],
)
def test_override_of_wrong_type_names_key_value_and_type(override: str, expected: str) -> None:
    with pytest.raises(RichKDError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert "\n" not in message and override in message and f"expected {expected}" in message


def test_overrides_typed_by_field() -> None:
    cfg = load_config(None, ["seed=12", "optim.lr=.5", "train.bf16=auto", "train.compile=yes",
                             "data.test_limit=null", "optim.milestones=3,4", "data.name=cifar10"])
    assert (cfg.seed, cfg.optim.lr, cfg.train.bf16, cfg.train.compile) == (12, 0.5, "auto", True)
    assert cfg.data.test_limit is None and cfg.optim.milestones == (3, 4) and cfg.data.name == "cifar10"
    assert type(cfg.optim.lr) is float and type(cfg.seed) is int
