"""Composed configs (dataset x pair x method), fusion on every distiller, logit standardisation, CRD negatives.

The pair x method grid resolves every standard pair with every method preset, builds its models and losses and
takes one optimizer step on a tiny synthetic batch; the hand-computed cases pin the formulas.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from richkd.build import build_distiller, describe_targets
from richkd.caches.target import TargetCache, write_random_cache
from richkd.config import RunConfig, load_config, load_config_with_layers
from richkd.data.arrays import ArrayDataset
from richkd.data.augment import apply_strong_augment, sample_strong_augment
from richkd.data.batch import Batch
from richkd.distill import DKD, KD, ContrastMemory, StrongView
from richkd.errors import RichKDError
from richkd.losses import dkd_loss, kd_loss, standardize_logits
from richkd.models import create_model, feature_shapes
from richkd.recipes import PAIRS, method_names
from richkd.recipes.compose import _HERE as RECIPES
from richkd.teachers.frozen import FusedTargets, OnlineTeacher, TargetSource

REPO = Path(__file__).resolve().parents[1]
N_ROWS, N_CLASSES, BATCH = 200, 100, 2
# the list: vanilla, KD, DKD, CRD, RichKD-L, RichKD-F, RichKD-L+F, control, DKD+fusion (+ the rest)
REQUIRED_METHODS = {"vanilla", "kd", "dkd", "crd", "richkd-l", "richkd-f", "richkd-lf", "control", "dkd-fusion"}
# issue 22: MLKD, DIST and CTKD, each with its fusion and control arms
REQUIRED_METHODS |= {f"{m}{arm}" for m in ("mlkd", "dist", "ctkd") for arm in ("", "-fusion", "-control")}
REQUIRED_METHODS |= {"mlkd-ls", "mlkd-reference", "dkd-ctkd", "richkd-l-ctkd"}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_required_method_has_a_preset() -> None:
    assert REQUIRED_METHODS <= set(method_names())
    assert len(PAIRS) == 14  # METHOD.md §8: 7 same-family + 7 cross-family CIFAR-100 pairs


@functools.cache
def _cache(tmp: str) -> TargetCache:
    path = Path(tmp) / "cache"
    if not (path / "meta.json").exists():
        classes = [f"c{i}" for i in range(N_CLASSES)]
        write_random_cache(path, dataset="cifar100", split="train", n_rows=N_ROWS, class_names=classes)
    return TargetCache.open(path)


@functools.cache
def _model(arch: str, role: str = "teacher") -> torch.nn.Module:
    """One model per (architecture, role): teachers get frozen, students trained (see _student)."""
    torch.manual_seed(0)
    return create_model(arch, N_CLASSES)


@functools.cache
def _initial_state(arch: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _model(arch, "student").state_dict().items()}


def _student(arch: str) -> torch.nn.Module:
    """The cached student reset to its initial weights: every step starts from the same fresh model."""
    model = _model(arch, "student")
    model.load_state_dict(_initial_state(arch))
    return model.train()


def _train_set() -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    return ArrayDataset(
        images=torch.randint(0, 255, (N_ROWS, 3, 32, 32), dtype=torch.uint8, generator=g),
        labels=torch.arange(N_ROWS) % N_CLASSES,
        classes=tuple(f"c{i}" for i in range(N_CLASSES)),
        name="cifar100",
        split="train",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        source="synthetic",
    )


def _one_step(cfg: RunConfig, cache: TargetCache) -> dict[str, float]:
    """Models, target source and loss as build.py wires them; one SGD step on a synthetic batch."""
    train = _train_set()
    student = _student(cfg.model.student)
    teacher = None if cfg.model.teacher is None else _model(cfg.model.teacher)
    mode = cfg.fusion.mode
    shapes = None if teacher is None else (feature_shapes(student, 32), feature_shapes(teacher, 32))
    distiller = build_distiller(
        cfg,
        student_dim=int(student.feature_dim),
        teacher_dim=int(getattr(teacher, "feature_dim", 0)),
        clip_dim=cache.meta.embed_dim if mode == "vlm" else None,
        train=train,
        shapes=shapes,
    )
    targets: TargetSource | None = None
    if teacher is not None:
        online = OnlineTeacher(teacher)
        targets = online if mode == "off" else FusedTargets(
            online,
            cache if mode == "vlm" else None,
            logit_alpha=cfg.fusion.logit_alpha,
            vlm_logit_scale=cfg.vlm.logit_scale,
            use_vlm=mode == "vlm",
        )
    indices = torch.tensor([57, 199])
    batch = Batch(train.images[indices].float() / 255, train.labels[indices], indices, torch.zeros(BATCH).long())
    params = [p for p in [*student.parameters(), *distiller.parameters()] if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.optim.lr)
    teacher_targets = None if targets is None else targets(batch)
    if distiller.needs_strong_view:  # MLKD: the strong view through the student and the teacher side, as trainer.py
        drawn = sample_strong_augment(BATCH, generator=torch.Generator().manual_seed(0))
        strong = batch._replace(images=apply_strong_augment(train.images[indices], drawn).float() / 255)
        view = StrongView(student(strong.images), None if targets is None else targets(strong))
        terms = distiller(student(batch.images), teacher_targets, batch, 0.5, strong=view)
    else:
        terms = distiller(student(batch.images), teacher_targets, batch, 0.5)
    loss = sum(terms.values())
    assert isinstance(loss, torch.Tensor) and torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {key: value.item() for key, value in terms.items()}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_every_pair_with_every_method_resolves_builds_and_steps(pair: str, tmp_path_factory: Any) -> None:
    cache = _cache(str(tmp_path_factory.getbasetemp()))
    spec = PAIRS[pair]
    for method in method_names():
        cfg = load_config(None, [f"vlm.cache={cache.path}"], dataset="cifar100", pair=pair, method=method)
        trained = spec.teacher if method == "teacher" else spec.student
        assert cfg.model.student == trained, method
        expected_lr = spec.lr if spec.lr is not None and method != "teacher" else 0.05
        if method == "mlkd-reference" and spec.lr is None:
            expected_lr = 0.025  # MLKD's reference lr (configs/cifar100/mlkd/resnet32x4_resnet8x4.yaml)
        assert cfg.optim.lr == expected_lr, (method, cfg.optim.lr)
        if cfg.distill.method == "dkd":
            assert isinstance(cfg.distill, _dkd_config()) and cfg.distill.beta == spec.dkd_beta, method
        if method not in ("teacher", "vanilla"):
            assert cfg.model.teacher == spec.teacher
            assert cfg.model.teacher_checkpoint == f"runs/cifar100/teacher_{spec.teacher}/model_last.pt"
            assert cfg.out_dir == f"runs/cifar100/{method}_{spec.teacher}_{spec.student}"
        terms = _one_step(cfg, cache)
        assert "ce" in terms, (method, terms)
        if cfg.feature.method is not None:  # the feature presets: CE + the feature term, nothing else
            assert set(terms) == {"ce", cfg.feature.method}, (method, terms)
    assert int(_model(spec.teacher).feature_dim) == spec.teacher_dim
    assert int(_model(spec.student).feature_dim) == spec.student_dim


def _dkd_config() -> type:
    from richkd.config import DKDConfig

    return DKDConfig


def test_table_values_from_mdistiller() -> None:
    """Spot checks against mdistiller's per-pair configs (configs/cifar100/dkd/*.yaml)."""
    assert (PAIRS["resnet56-resnet20"].dkd_beta, PAIRS["resnet110-resnet32"].dkd_beta) == (2.0, 2.0)
    assert PAIRS["vgg13-mobilenetv2"].dkd_beta == 6.0 and PAIRS["vgg13-mobilenetv2"].lr == 0.01
    assert PAIRS["resnet32x4-resnet8x4"].dkd_beta == 8.0 and PAIRS["resnet32x4-resnet8x4"].lr is None
    assert {p.student for p in PAIRS.values() if p.lr == 0.01} == {"mobilenetv2", "shufflev1", "shufflev2"}


def test_layers_compose_in_any_order_and_are_recorded(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("base: [pair:vgg13-vgg8, method:dkd, dataset:cifar10-reduced]\ntrain: {epochs: 3}\n")
    cfg, layers = load_config_with_layers(a, ["seed=2"])
    assert isinstance(cfg.distill, _dkd_config()) and cfg.distill.beta == 6.0  # pair applied after the method
    assert (cfg.train.epochs, cfg.data.train_limit, cfg.optim.schedule, cfg.seed) == (3, 10000, "cosine", 2)
    assert cfg.out_dir == "runs/cifar10-reduced/dkd_vgg13_vgg8"
    assert layers == [
        "method:dkd",
        "reduced-cpu.yaml",
        "dataset:cifar10-reduced",
        "pair:vgg13-vgg8",
        str(a),
        "overrides: seed=2",
    ]
    teacher = load_config(None, dataset="cifar10-reduced", pair="resnet56-resnet20", method="teacher")
    assert (teacher.model.student, teacher.model.teacher, teacher.train.epochs) == ("resnet56", None, 40)
    assert teacher.out_dir == "runs/cifar10-reduced/teacher_resnet56"
    single = load_config(None, dataset="cifar100", pair="wrn_40_2", method="teacher")
    assert single.model.student == "wrn_40_2" and single.distill.method == "vanilla"


def test_a_later_method_layer_replaces_the_distill_section() -> None:
    cfg = load_config(None, ["distill.method=kd"], pair="resnet32x4-resnet8x4", method="dkd")
    assert cfg.distill.method == "kd"
    ls = load_config(None, pair="resnet32x4-resnet8x4", method="kd-ls")
    assert isinstance(ls.distill, type(load_config(None, pair="resnet32x4-resnet8x4", method="kd").distill))
    assert (ls.distill.ce_weight, ls.distill.kd_weight, ls.distill.temperature) == (0.1, 9.0, 2.0)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pair": "resnet32x4-resnet9", "method": "kd"}, "unknown pair 'resnet32x4-resnet9'"),
        ({"method": "no-such-method"}, "unknown method 'no-such-method'"),
        ({"dataset": "cifar1000", "method": "kd"}, "unknown dataset 'cifar1000'"),
        ({"pair": "vgg13-vgg8"}, "--pair needs --method"),
    ],
)
def test_bad_layer_names_fail_in_one_line(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(RichKDError, match=message):
        load_config(None, **kwargs)


def test_circular_bases_fail(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(RichKDError, match="in a circle"):
        load_config(tmp_path / "a.yaml")


def _sections(path: Path) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def test_no_config_file_repeats_a_recipe_block() -> None:
    """Any two YAML files (built-in layers and repo configs) share at most one key=value per section."""
    files = sorted(RECIPES.rglob("*.yaml")) + sorted((REPO / "configs").rglob("*.yaml"))
    assert len(files) >= 15
    for a, b in itertools.combinations(files, 2):
        sa, sb = _sections(a), _sections(b)
        for section in sa.keys() & sb.keys():
            shared = {k for k in sa[section].keys() & sb[section].keys() if sa[section][k] == sb[section][k]}
            assert len(shared) <= 1, f"{a.name} and {b.name} both set {section}.{sorted(shared)}"


# ---------------------------------------------------------------- formulas, by hand
def _zscore(row: list[float]) -> list[float]:
    mean = sum(row) / len(row)
    std = math.sqrt(sum((x - mean) ** 2 for x in row) / (len(row) - 1))
    return [(x - mean) / (1e-7 + std) for x in row]


def test_logit_standardised_kd_matches_hand_computation() -> None:
    student, teacher, temperature = [1.0, 2.0, 4.0], [3.0, 0.0, -1.0], 2.0
    # z-scores: student mean 7/3, std sqrt(7/3); teacher mean 2/3, std sqrt(13/3)
    s, t = _zscore(student), _zscore(teacher)
    assert s[0] == pytest.approx((1 - 7 / 3) / math.sqrt(7 / 3), rel=1e-6)
    p_t = [math.exp(x / temperature) for x in t]
    p_t = [x / sum(p_t) for x in p_t]
    log_z_s = math.log(sum(math.exp(x / temperature) for x in s))
    log_p_s = [x / temperature - log_z_s for x in s]
    expected = temperature**2 * sum(p * (math.log(p) - q) for p, q in zip(p_t, log_p_s, strict=True))
    got = kd_loss(torch.tensor([student]), torch.tensor([teacher]), temperature, standardize=True)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() != pytest.approx(kd_loss(torch.tensor([student]), torch.tensor([teacher]), 2.0).item())
    # scale-invariant: under LS the alpha*z_T control is the plain teacher
    z = torch.tensor([student, teacher])
    assert torch.allclose(standardize_logits(0.7 * z), standardize_logits(z), atol=1e-6)


def test_logit_standardised_dkd_is_dkd_on_zscores() -> None:
    g = torch.Generator().manual_seed(1)
    s, t, y = torch.randn(5, 7, generator=g), 3 * torch.randn(5, 7, generator=g), torch.tensor([0, 3, 6, 2, 2])
    zs, zt = torch.tensor([_zscore(r) for r in s.tolist()]), torch.tensor([_zscore(r) for r in t.tolist()])
    got = dkd_loss(s, t, y, 1.0, 8.0, 4.0, standardize=True)
    assert got.item() == pytest.approx(dkd_loss(zs, zt, y, 1.0, 8.0, 4.0).item(), rel=1e-5)


def _fused_batch(tmp_path: Path) -> tuple[TargetCache, Batch, torch.nn.Module, torch.Tensor, torch.Tensor]:
    classes = [f"c{i}" for i in range(10)]
    write_random_cache(tmp_path / "c", dataset="d", split="train", n_rows=40, class_names=classes, seed=3)
    cache = TargetCache.open(tmp_path / "c")
    torch.manual_seed(0)
    teacher = create_model("resnet8", 10).eval()
    g = torch.Generator().manual_seed(2)
    indices = torch.tensor([3, 17, 22, 39])
    batch = Batch(torch.randn(4, 3, 32, 32, generator=g), indices % 10, indices, torch.zeros(4).long())
    with torch.no_grad():
        z_t = teacher(batch.images).logits.float()
    cosines = torch.from_numpy(np.load(tmp_path / "c" / "cosines.npy"))[indices, 0]  # [B, C] by hand
    return cache, batch, teacher, z_t, cosines


def test_dkd_on_fused_logits_equals_dkd_on_hand_fused_logits(tmp_path: Path) -> None:
    cache, batch, teacher, z_t, cosines = _fused_batch(tmp_path)
    alpha, scale = 0.6, 20.0
    dkd = DKD(ce_weight=0.0, alpha=1.0, beta=6.0, temperature=4.0, warmup=0.0)
    student = create_model("resnet8", 10)(batch.images)
    fused = FusedTargets(OnlineTeacher(teacher), cache, logit_alpha=alpha, vlm_logit_scale=scale, use_vlm=True)
    by_hand = alpha * z_t + (1 - alpha) * scale * cosines
    got = dkd(student, fused(batch), batch, 1.0)["dkd"]
    assert got.item() == pytest.approx(dkd_loss(student.logits, by_hand, batch.labels, 1.0, 6.0, 4.0).item(), rel=1e-5)
    control = FusedTargets(OnlineTeacher(teacher), None, logit_alpha=alpha, vlm_logit_scale=scale, use_vlm=False)
    got_control = dkd(student, control(batch), batch, 1.0)["dkd"]
    expected = dkd_loss(student.logits, alpha * z_t, batch.labels, 1.0, 6.0, 4.0)
    assert got_control.item() == pytest.approx(expected.item(), rel=1e-5)
    ls_kd = KD(temperature=2.0, kd_weight=1.0, ce_weight=0.0, standardize=True)
    got_ls = ls_kd(student, fused(batch), batch, 1.0)["kd"]
    assert got_ls.item() == pytest.approx(kd_loss(student.logits, by_hand, 2.0, standardize=True).item(), rel=1e-5)


def test_run_provenance_names_what_was_fused() -> None:
    common = dict(pair="resnet32x4-resnet8x4")
    fused = load_config(None, method="dkd-fusion", **common)
    dkd = build_distiller(fused, student_dim=256, teacher_dim=256, clip_dim=None, train=_train_set())
    assert describe_targets(fused, dkd) == (
        "logits: z_F = 0.7*z_T + 0.3*1.0*z_C (cache caches/cifar100_train_vit-l-14, views plain)"
    )
    crd_cfg = load_config(None, ["fusion.mode=vlm", "distill.nce_k=16"], method="crd", **common)
    crd = build_distiller(crd_cfg, student_dim=256, teacher_dim=256, clip_dim=8, train=_train_set())
    assert "features: f_F = normalize(0.7*P_T f_T + 0.3*P_C f_C)" in str(describe_targets(crd_cfg, crd))
    assert crd.needs_clip and "fused lambda=0.7" in crd.describe()
    control = load_config(None, ["distill.nce_k=16"], method="control", **common)
    ctrl = build_distiller(control, student_dim=256, teacher_dim=256, clip_dim=None, train=_train_set())
    expected = "logits: 0.7*z_T (control: no vision-language term); features: f_T (control)"
    assert describe_targets(control, ctrl) == expected
    assert not ctrl.needs_clip


# ---------------------------------------------------------------- CRD negatives
def test_crd_negatives_are_distinct_and_never_of_the_sample_class() -> None:
    labels = torch.tensor([0] * 30 + [1] * 50 + [2] * 20)  # imbalanced: other-class rows 70, 50, 80
    memory = ContrastMemory(embed_dim=4, n_data=100, labels=labels, nce_k=50, distinct=True)
    indices = torch.tensor([0, 29, 30, 79, 80, 99, 5, 55])
    seen: set[int] = set()
    for seed in range(20):
        neg = memory.sample_negatives(indices, torch.Generator().manual_seed(seed))
        assert neg.shape == (8, 50)
        for row, sample in zip(neg.tolist(), indices.tolist(), strict=True):
            assert len(set(row)) == 50, "a negative drawn twice"
            assert all(labels[j] != labels[sample] for j in row), "a negative of the sample's own class"
            seen.update(row)
    assert seen == set(range(100))  # every row can be drawn
    # K = all other-class rows of class 1: then the draw is exactly that set
    one = ContrastMemory(embed_dim=4, n_data=100, labels=labels, nce_k=50, distinct=True)
    neg = one.sample_negatives(torch.tensor([40]), torch.Generator().manual_seed(0))
    assert sorted(neg[0].tolist()) == [*range(30), *range(80, 100)]
    with_replacement = ContrastMemory(embed_dim=4, n_data=100, labels=labels, nce_k=50, distinct=False)
    drawn = with_replacement.sample_negatives(torch.tensor([40]), torch.Generator().manual_seed(0))
    assert len(set(drawn[0].tolist())) < 50  # the old draw repeats rows (birthday bound ~ certain here)
