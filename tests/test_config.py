"""Config loading: every shipped config validates; bad keys/values fail with a one-line message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from richkd.build import describe_schedule
from richkd.config import KDConfig, RichKDConfig, load_config, parse_overrides
from richkd.engine.optim import lr_at, resolve_milestones
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
    assert cfg.optim.milestones == (0.625, 0.75, 0.875) and cfg.train.batch_size == 64
    # the reference decays after epochs 150, 180 and 210 of 240 (mdistiller configs/cifar100)
    assert resolve_milestones(cfg.optim.milestones, cfg.train.epochs) == (150, 180, 210)


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
        ("optim.milestones=[1, soon]", "a list of float"),
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


def test_milestones_are_fractions_of_the_run_or_whole_epochs(caplog: pytest.LogCaptureFixture) -> None:
    """Worked by hand: 0.625/0.75/0.875 of 30 epochs = 18.75/22.5/26.25, rounded half up = 19/23/26; of 240 =
    150/180/210. A whole epoch stays as given; 2.5 is neither and is refused in one line."""
    assert resolve_milestones((0.625, 0.75, 0.875), 30) == (19, 23, 26)
    assert resolve_milestones((0.625, 0.75, 0.875), 240) == (150, 180, 210)
    assert resolve_milestones((150, 0.5), 240) == (150, 120)
    assert resolve_milestones((0.01,), 10) == (1,)  # never epoch 0: the first epoch keeps the base rate
    cfg = load_config(None, ["train.epochs=30"], dataset="cifar100", pair="resnet56-resnet20", method="kd")
    lrs = [lr_at(e, base_lr=0.05, epochs=30, schedule="step", gamma=0.1, warmup_epochs=0,
                 milestones=resolve_milestones(cfg.optim.milestones, 30)) for e in range(30)]
    assert lrs[18] == 0.05 and lrs[19] == pytest.approx(0.005) and lrs[29] == pytest.approx(0.05e-3)
    with pytest.raises(RichKDError, match=r"optim.milestones must be fractions .*got \[1.0, 2.5\]"):
        load_config(None, ["optim.milestones=[1, 2.5]"])
    with caplog.at_level(logging.WARNING, logger="richkd.build"):
        note = describe_schedule("step", (150, 180, 210), 30)
    assert "150, 180, 210 lie beyond the run" in note and note in caplog.text
    assert "beyond" not in describe_schedule("step", (19, 23, 26), 30)
    mlkd = load_config(None, dataset="cifar100", pair="resnet32x4-resnet8x4", method="mlkd-reference")
    assert resolve_milestones(mlkd.optim.milestones, mlkd.train.epochs) == (150, 180, 210)  # MLKD's config, of 480
