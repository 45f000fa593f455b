"""CRD pieces worked by hand, distiller behaviour, and golden loss values for every distiller."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.data.batch import Batch
from richkd.distill import (
    CRD,
    DISTILLERS,
    DKD,
    KD,
    ContrastMemory,
    CRDLoss,
    Distiller,
    RichKD,
    Vanilla,
    build_crd_loss,
    crd_nce_loss,
)
from richkd.errors import RichKDError
from richkd.fusion import FeatureFusion
from richkd.losses import dkd_loss
from richkd.models.output import ModelOutput
from richkd.targets import ClipTargets, TeacherTargets

GOLDEN = Path(__file__).parent / "golden" / "losses.json"
B, C, N, D_S, D_T, D_CLIP, EMBED = 8, 5, 40, 6, 7, 9, 4
ROW_LABELS = torch.arange(N) % C  # [N]


# ---------------------------------------------------------------- CRD: NCE loss and memory
def test_crd_nce_loss_by_hand() -> None:
    # K = 2 negatives, N = 4 rows -> noise mass K/N = 0.5; eps = 1e-7 as in CRD's ContrastLoss.
    scores = torch.tensor([[0.5, 0.1, 0.2], [1.0, 0.3, 0.05]])
    m, eps = 0.5, 1e-7
    row0 = math.log(0.5 / (0.5 + m + eps)) + math.log(m / (0.1 + m + eps)) + math.log(m / (0.2 + m + eps))
    row1 = math.log(1.0 / (1.0 + m + eps)) + math.log(m / (0.3 + m + eps)) + math.log(m / (0.05 + m + eps))
    assert crd_nce_loss(scores, n_data=4).item() == pytest.approx(-(row0 + row1) / 2, rel=1e-6)


def test_crd_nce_loss_validates_shape() -> None:
    with pytest.raises(ValueError):
        crd_nce_loss(torch.ones(3, 1), n_data=4)


def test_negatives_never_come_from_the_own_class_and_k_is_capped() -> None:
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 2 + [3] * 4)  # unbalanced, unsorted blocks
    labels = labels[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    memory = ContrastMemory(embed_dim=4, n_data=16, labels=labels, nce_k=1000)
    assert memory.nce_k == 16 - 7  # capped at the fewest other-class rows
    indices = torch.arange(16)
    negatives = memory.sample_negatives(indices, torch.Generator().manual_seed(1))  # [16, 9]
    assert negatives.shape == (16, 9)
    assert (labels[negatives] != labels[indices].unsqueeze(1)).all()
    # Over many draws every other-class row is reachable (uniform over the other classes).
    many = memory.sample_negatives(torch.zeros(400, dtype=torch.int64), torch.Generator().manual_seed(2))
    assert set(torch.unique(many).tolist()) == set(torch.nonzero(labels != labels[0]).flatten().tolist())


def tiny_memory() -> ContrastMemory:
    """N = 4 rows, classes [0, 0, 1, 1]; banks set by hand, rows 2 and 3 equal so any negative draw agrees."""
    memory = ContrastMemory(embed_dim=2, n_data=4, labels=torch.tensor([0, 0, 1, 1]), nce_k=50, nce_t=0.5)
    assert memory.nce_k == 2
    with torch.no_grad():
        memory.memory_student.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.6, 0.8]]))
        memory.memory_teacher.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6], [0.8, 0.6]]))
    return memory


def test_memory_scores_and_normalisation_constant_by_hand() -> None:
    memory = tiny_memory()
    student_emb = torch.tensor([[0.6, 0.8]])
    teacher_emb = torch.tensor([[1.0, 0.0]])
    student_scores, teacher_scores = memory(student_emb, teacher_emb, torch.tensor([0]))
    # Student vs teacher bank rows [0, neg, neg]: <[0,1],[.6,.8]> = 0.8, <[.8,.6],[.6,.8]> = 0.96; tau = 0.5.
    raw_s = [math.exp(0.8 / 0.5), math.exp(0.96 / 0.5), math.exp(0.96 / 0.5)]
    z_s = sum(raw_s) / 3 * 4  # mean * N
    # Teacher vs student bank rows [0, neg, neg]: <[1,0],[1,0]> = 1, <[.6,.8],[1,0]> = 0.6.
    raw_t = [math.exp(1.0 / 0.5), math.exp(0.6 / 0.5), math.exp(0.6 / 0.5)]
    z_t = sum(raw_t) / 3 * 4
    assert memory.z_student.item() == pytest.approx(z_s, rel=1e-6)
    assert memory.z_teacher.item() == pytest.approx(z_t, rel=1e-6)
    torch.testing.assert_close(student_scores, torch.tensor([[r / z_s for r in raw_s]]))
    torch.testing.assert_close(teacher_scores, torch.tensor([[r / z_t for r in raw_t]]))


def test_memory_momentum_update_and_renormalisation() -> None:
    memory = tiny_memory()
    before_s, before_t = memory.memory_student.clone(), memory.memory_teacher.clone()
    memory(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.6, 0.8]]), torch.tensor([1]))
    # student row 1: 0.5 * [0, 1] + 0.5 * [0, 1] = [0, 1] (already unit);
    # teacher row 1: 0.5 * [1, 0] + 0.5 * [0.6, 0.8] = [0.8, 0.4] -> [2, 1] / sqrt(5).
    torch.testing.assert_close(memory.memory_student[1], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(memory.memory_teacher[1], torch.tensor([2.0, 1.0]) / math.sqrt(5))
    others = torch.tensor([0, 2, 3])
    assert torch.equal(memory.memory_student[others], before_s[others])
    assert torch.equal(memory.memory_teacher[others], before_t[others])


def test_memory_is_not_updated_in_eval_mode() -> None:
    memory = tiny_memory().eval()
    before = memory.memory_teacher.clone()
    memory(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.6, 0.8]]), torch.tensor([1]))
    assert torch.equal(memory.memory_teacher, before)


def test_normalisation_constants_are_fixed_after_the_first_step() -> None:
    memory = tiny_memory()
    memory(torch.tensor([[0.6, 0.8]]), torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    z_s, z_t = memory.z_student.item(), memory.z_teacher.item()
    memory(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([2]))
    assert (memory.z_student.item(), memory.z_teacher.item()) == (z_s, z_t)


def test_memory_state_is_in_the_state_dict_and_resumes_exactly() -> None:
    torch.manual_seed(0)
    memory = ContrastMemory(embed_dim=EMBED, n_data=N, labels=ROW_LABELS, nce_k=64)
    emb = F.normalize(torch.randn(3, EMBED), dim=1)
    memory(emb, emb.flip(0), torch.tensor([0, 5, 9]))
    state = memory.state_dict()
    assert set(state) == {"memory_student", "memory_teacher", "z_student", "z_teacher"}
    restored = ContrastMemory(embed_dim=EMBED, n_data=N, labels=ROW_LABELS, nce_k=64)
    restored.load_state_dict(state)
    a = memory(emb, emb, torch.tensor([1, 2, 3]), torch.Generator().manual_seed(3))
    b = restored(emb, emb, torch.tensor([1, 2, 3]), torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_memory_validates_inputs() -> None:
    with pytest.raises(ValueError, match="two classes"):
        ContrastMemory(embed_dim=2, n_data=3, labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="n_data"):
        ContrastMemory(embed_dim=2, n_data=5, labels=torch.tensor([0, 1]))


def test_crd_loss_trains_both_embeddings_and_runs_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    crd = make_crd_loss(fused=True)
    student_pooled = torch.randn(B, D_S, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crd(student_pooled, (torch.randn(B, D_T), torch.randn(B, D_CLIP)), torch.arange(B))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert student_pooled.grad is not None
    for name, param in crd.named_parameters():
        assert param.grad is not None, name


# ---------------------------------------------------------------- fixtures for the distillers
def make_crd_loss(*, fused: bool, distinct: bool = False) -> CRDLoss:
    """distinct=False: the with-replacement draw the golden values were first recorded with."""
    return build_crd_loss(
        student_dim=D_S,
        teacher_dim=D_T,
        clip_dim=D_CLIP if fused else None,
        feature_lambda=0.7 if fused else None,
        embed_dim=EMBED,
        n_data=N,
        labels=ROW_LABELS,
        nce_k=16,
        nce_t=0.07,
        momentum=0.5,
        distinct=distinct,
    )


def make_inputs() -> tuple[ModelOutput, TeacherTargets, Batch]:
    g = torch.Generator().manual_seed(0)
    indices = torch.randperm(N, generator=g)[:B]
    batch = Batch(torch.zeros(B, 3, 4, 4), ROW_LABELS[indices], indices, torch.zeros(B, dtype=torch.int64))
    student = ModelOutput(torch.randn(B, C, generator=g), torch.randn(B, D_S, generator=g), ())
    clip = ClipTargets(
        F.normalize(torch.randn(B, C, generator=g), dim=1),
        F.normalize(torch.randn(B, D_CLIP, generator=g), dim=1),
    )
    teacher = TeacherTargets(2 * torch.randn(B, C, generator=g), torch.randn(B, D_T, generator=g), clip)
    return student, teacher, batch


def build_all() -> dict[str, Distiller]:
    """Every registered method, in each of its configurations; module inits seeded per entry."""
    builders: dict[str, Callable[[], Distiller]] = {
        "vanilla": lambda: Vanilla(ce_weight=1.0),
        "kd": lambda: KD(temperature=4.0, kd_weight=0.9, ce_weight=0.1),
        "dkd": lambda: DKD(ce_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0, warmup=0.25),
        "crd": lambda: CRD(ce_weight=1.0, crd_weight=0.8, crd=make_crd_loss(fused=False)),
        "crd_kd": lambda: CRD(ce_weight=1.0, crd_weight=0.8, crd=make_crd_loss(fused=False), kd_weight=1.0),
        "richkd": lambda: RichKD(
            ce_weight=1.0, kd_weight=3.0, feat_weight=0.8, temperature=3.0, crd=make_crd_loss(fused=True)
        ),
        "richkd_l": lambda: RichKD(ce_weight=1.0, kd_weight=3.0, feat_weight=0.0, temperature=3.0, crd=None),
        "richkd_f": lambda: RichKD(
            ce_weight=1.0, kd_weight=0.0, feat_weight=0.8, temperature=3.0, crd=make_crd_loss(fused=True)
        ),
        "richkd_teacher_only": lambda: RichKD(
            ce_weight=1.0, kd_weight=3.0, feat_weight=0.8, temperature=3.0, crd=make_crd_loss(fused=False)
        ),
        "crd_distinct": lambda: CRD(ce_weight=1.0, crd_weight=0.8, crd=make_crd_loss(fused=False, distinct=True)),
    }
    out = {}
    for i, (name, build) in enumerate(builders.items()):
        torch.manual_seed(100 + i)
        out[name] = build()
    return out


# pinned against transcriptions of their reference code instead of golden values: tests/test_logit_distillers.py
LOGIT_METHODS_TESTED_ELSEWHERE = {"mlkd", "dist"}


def test_every_registered_method_is_covered() -> None:
    assert set(DISTILLERS.names()) == {"vanilla", "kd", "dkd", "crd", "richkd", *LOGIT_METHODS_TESTED_ELSEWHERE}
    built = build_all()
    for name in set(DISTILLERS.names()) - LOGIT_METHODS_TESTED_ELSEWHERE:
        assert isinstance(built[name], DISTILLERS.get(name))


def run_two_steps(distiller: Distiller) -> list[dict[str, float]]:
    student, teacher, batch = make_inputs()
    torch.manual_seed(7)  # negative sampling uses the global generator
    steps = []
    for progress in (0.1, 0.5):  # the second step sees updated banks and the fixed Z
        terms = distiller(student, teacher, batch, progress)
        steps.append({key: value.item() for key, value in terms.items()})
    return steps


def test_golden_loss_values(update_golden: bool) -> None:
    got = {name: run_two_steps(d) for name, d in build_all().items()}
    if update_golden:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        pytest.skip("golden values rewritten")
    expected = json.loads(GOLDEN.read_text())
    assert set(got) == set(expected)
    for name, steps in got.items():
        for step, (g, e) in enumerate(zip(steps, expected[name], strict=True)):
            assert set(g) == set(e), (name, step)
            for key in g:
                assert g[key] == pytest.approx(e[key], rel=1e-5), (name, step, key)


# ---------------------------------------------------------------- distiller behaviour
EXPECTED_KEYS = {
    "vanilla": {"ce"},
    "kd": {"ce", "kd"},
    "dkd": {"ce", "dkd"},
    "crd": {"ce", "crd"},
    "crd_kd": {"ce", "kd", "crd"},
    "crd_distinct": {"ce", "crd"},
    "richkd": {"ce", "kd", "feat"},
    "richkd_l": {"ce", "kd"},
    "richkd_f": {"ce", "feat"},
    "richkd_teacher_only": {"ce", "kd", "feat"},
}


def test_zero_weight_terms_are_absent_and_totals_backpropagate() -> None:
    for name, distiller in build_all().items():
        student, teacher, batch = make_inputs()
        logits = student.logits.requires_grad_()
        pooled = student.pooled.requires_grad_()
        terms = distiller(ModelOutput(logits, pooled, ()), teacher, batch, 1.0)
        assert set(terms) == EXPECTED_KEYS[name], name
        sum(terms.values()).backward()
        assert logits.grad is not None, name
        if "crd" in terms or "feat" in terms:
            assert pooled.grad is not None, name
            assert all(p.grad is not None for p in distiller.parameters()), name


def test_kd_without_kd_weight_needs_no_teacher() -> None:
    student, _, batch = make_inputs()
    kd = KD(temperature=4.0, kd_weight=0.0, ce_weight=1.0)
    assert not kd.needs_teacher and set(kd(student, None, batch, 0.0)) == {"ce"}
    assert set(Vanilla()(student, None, batch, 0.0)) == {"ce"}


def test_flags() -> None:
    d = build_all()
    assert not d["vanilla"].needs_teacher and d["kd"].needs_teacher
    assert d["crd"].needs_indices and not d["crd"].needs_clip
    assert d["richkd"].needs_clip and d["richkd"].needs_indices
    assert not d["richkd_l"].needs_clip and not d["richkd_l"].needs_indices
    assert not d["kd"].needs_indices and not d["dkd"].needs_clip
    assert not d["richkd_teacher_only"].needs_clip and d["richkd_teacher_only"].needs_indices


def test_describe_strings() -> None:
    d = build_all()
    assert d["vanilla"].describe() == "Loss = 1.0*CE"
    assert d["kd"].describe() == "Loss = 0.1*CE + 0.9*KD(T=4.0)"
    assert d["dkd"].describe() == "Loss = 1.0*CE + 1.0*DKD(alpha=1.0, beta=8.0, T=4.0, warmup=0.25)"
    assert d["crd"].describe() == (
        "Loss = 1.0*CE + 0.8*CRD(K=16, tau=0.07, momentum=0.5, dim=4, negatives with replacement)"
    )
    assert d["crd_distinct"].describe() == "Loss = 1.0*CE + 0.8*CRD(K=16, tau=0.07, momentum=0.5, dim=4)"
    assert d["richkd_l"].describe() == "Loss = 1.0*CE + 3.0*KD(T=3.0)"
    assert d["richkd"].describe() == (
        "Loss = 1.0*CE + 3.0*KD(T=3.0) + 0.8*CRD(K=16, tau=0.07, momentum=0.5, dim=4, fused lambda=0.7, "
        "negatives with replacement)"
    )


def test_dkd_warmup_ramps_linearly() -> None:
    student, teacher, batch = make_inputs()
    dkd = DKD(ce_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0, warmup=0.2)
    full = dkd_loss(student.logits, teacher.logits, batch.labels, 1.0, 8.0, 4.0).item()
    for progress, factor in [(0.0, 0.0), (0.05, 0.25), (0.1, 0.5), (0.2, 1.0), (0.9, 1.0)]:
        value = dkd(student, teacher, batch, progress)["dkd"].item()
        assert value == pytest.approx(factor * full, rel=1e-6, abs=1e-12), progress
    no_ramp = DKD(ce_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0, warmup=0.0)
    assert no_ramp(student, teacher, batch, 0.0)["dkd"].item() == pytest.approx(full, rel=1e-6)


def test_richkd_feature_term_requires_clip_targets() -> None:
    torch.manual_seed(0)
    student, teacher, batch = make_inputs()
    richkd = RichKD(
        ce_weight=1.0, kd_weight=3.0, feat_weight=0.8, temperature=3.0, crd=make_crd_loss(fused=True)
    )
    with pytest.raises(RichKDError, match="CLIP"):
        richkd(student, teacher._replace(clip=None), batch, 0.0)
    with pytest.raises(RichKDError, match="teacher"):
        richkd(student, None, batch, 0.0)


def test_constructor_validation() -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="crd"):
        RichKD(ce_weight=1.0, kd_weight=3.0, feat_weight=0.8, temperature=3.0, crd=None)
    with pytest.raises(ValueError, match="crd"):
        RichKD(ce_weight=1.0, kd_weight=3.0, feat_weight=0.0, temperature=3.0, crd=make_crd_loss(fused=True))
    with pytest.raises(ValueError, match="crd"):
        CRD(ce_weight=1.0, crd_weight=0.8, crd=None)
    with pytest.raises(ValueError, match="ce_weight"):
        KD(temperature=4.0, kd_weight=1.0, ce_weight=-1.0)
    with pytest.raises(ValueError, match="nothing to train"):
        Vanilla(ce_weight=0.0)
    with pytest.raises(ValueError, match="temperature"):
        KD(temperature=0.0, kd_weight=1.0, ce_weight=1.0)
    with pytest.raises(ValueError, match="feature_lambda"):
        build_crd_loss(
            student_dim=2, teacher_dim=2, clip_dim=3, feature_lambda=None, embed_dim=2,
            n_data=4, labels=torch.tensor([0, 0, 1, 1]), nce_k=2, nce_t=0.07, momentum=0.5,
        )  # fmt: skip


def test_crd_distiller_term_equals_weighted_crd_loss() -> None:
    student, teacher, batch = make_inputs()
    torch.manual_seed(0)
    loss_a = make_crd_loss(fused=False)
    torch.manual_seed(0)
    crd = CRD(ce_weight=1.0, crd_weight=0.8, crd=make_crd_loss(fused=False))
    torch.manual_seed(1)
    assert teacher.pooled is not None
    direct: Tensor = loss_a(student.pooled, (teacher.pooled,), batch.indices)
    torch.manual_seed(1)
    assert crd(student, teacher, batch, 0.0)["crd"].item() == pytest.approx(0.8 * direct.item(), rel=1e-6)


def test_richkd_teacher_only_control_is_crd_on_teacher_features_without_clip() -> None:
    student, teacher, batch = make_inputs()
    torch.manual_seed(0)
    control = RichKD(
        ce_weight=1.0, kd_weight=0.0, feat_weight=0.8, temperature=3.0, crd=make_crd_loss(fused=False)
    )
    torch.manual_seed(0)
    crd = CRD(ce_weight=1.0, crd_weight=0.8, crd=make_crd_loss(fused=False))
    torch.manual_seed(1)
    feat = control(student, teacher._replace(clip=None), batch, 0.0)["feat"]
    torch.manual_seed(1)
    assert feat.item() == pytest.approx(crd(student, teacher, batch, 0.0)["crd"].item(), rel=1e-6)


# ---------------------------------------------------------------- one independent value per distiller
# The golden file above is written by our own code (--update-golden); these values are not. Each is worked out in
# plain Python/numpy from the paper's equation on a tiny case, never through richkd's helpers, and compared with
# what the registered distiller returns. Tolerance rel 1e-5: the distillers compute in float32 (unit roundoff
# 6e-8, a few dozen operations per value), the references in float64; CRD's eps = 1e-7 in its denominators
# (absent from the paper) moves a log by at most 1e-7 / (K/N) = 2e-7 here.
TINY_S = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 1.5]])  # student logits [B=2, C=3]
TINY_T = np.array([[2.0, 1.0, 0.0], [0.5, 0.5, 3.0]])  # teacher logits
TINY_Y = np.array([1, 2])  # labels


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) = sum_i p_i log(p_i / q_i), over the last axis, summed over rows."""
    return float((p * np.log(p / q)).sum())


def _np_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    """-log softmax(z)_y, batch mean."""
    return float(np.mean([-np.log(_np_softmax(z)[y]) for z, y in zip(logits, labels, strict=True)]))


def _tiny_inputs(
    pooled: list[list[float]] | None = None,
    teacher_pooled: list[list[float]] | None = None,
    clip_emb: list[list[float]] | None = None,
    indices: list[int] | None = None,
) -> tuple[ModelOutput, TeacherTargets, Batch]:
    b = len(TINY_Y)
    pooled_t = torch.tensor(pooled if pooled is not None else [[0.0, 0.0]] * b)
    clip = None if clip_emb is None else ClipTargets(torch.zeros(b, 3), torch.tensor(clip_emb))
    t_pooled = None if teacher_pooled is None else torch.tensor(teacher_pooled)
    idx = torch.tensor(indices if indices is not None else list(range(b)))
    batch = Batch(torch.zeros(b, 3, 4, 4), torch.tensor(TINY_Y), idx, torch.zeros(b, dtype=torch.int64))
    student = ModelOutput(torch.tensor(TINY_S, dtype=torch.float32), pooled_t, ())
    return student, TeacherTargets(torch.tensor(TINY_T, dtype=torch.float32), t_pooled, clip), batch


def test_vanilla_independent_value() -> None:
    # Row 0: softmax([1, 2, .5])[1]; row 1: softmax([0, -1, 1.5])[2]; worked with math, halved by the weight.
    row0 = -math.log(math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.5)))
    row1 = -math.log(math.exp(1.5) / (math.exp(0.0) + math.exp(-1.0) + math.exp(1.5)))
    student, _, batch = _tiny_inputs()
    terms = Vanilla(ce_weight=0.5)(student, None, batch, 0.0)
    assert terms["ce"].item() == pytest.approx(0.5 * (row0 + row1) / 2, rel=1e-5)


def test_kd_independent_value() -> None:
    # Hinton et al. 2015: L = w_ce CE + w_kd T^2 KL(softmax(z_T/T) || softmax(z_S/T)), KL averaged over the batch.
    t = 2.0
    kd = t**2 * _np_kl(_np_softmax(TINY_T / t), _np_softmax(TINY_S / t)) / 2
    student, teacher, batch = _tiny_inputs()
    terms = KD(temperature=t, kd_weight=0.9, ce_weight=0.1)(student, teacher, batch, 0.0)
    assert terms["kd"].item() == pytest.approx(0.9 * kd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.1 * _np_ce(TINY_S, TINY_Y), rel=1e-5)


def _dkd_paper(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, t: float) -> tuple[float, float]:
    """Zhao et al. CVPR 2022, eq. (1)-(4): b = [p_t, 1 - p_t] (TCKD = KL(b^T || b^S)) and
    p_hat_i = p_i / (1 - p_t) over the non-target classes (NCKD = KL(p_hat^T || p_hat^S)); per-row sums,
    batch mean, times T^2 as in the authors' mdistiller."""
    tckd = nckd = 0.0
    for zs, zt, y in zip(student, teacher, labels, strict=True):
        ps, pt = _np_softmax(zs / t), _np_softmax(zt / t)
        bs, bt = np.array([ps[y], 1 - ps[y]]), np.array([pt[y], 1 - pt[y]])
        tckd += _np_kl(bt, bs)
        rest = np.arange(len(zs)) != y
        nckd += _np_kl(pt[rest] / (1 - pt[y]), ps[rest] / (1 - ps[y]))
    n = len(labels)
    return t**2 * tckd / n, t**2 * nckd / n


def test_dkd_independent_value() -> None:
    t = 4.0
    tckd, nckd = _dkd_paper(TINY_S, TINY_T, TINY_Y, t)
    # The paper's decomposition (eq. 5), KD = TCKD + (1 - p_t^T) NCKD, checked per row: the transcription is sound.
    for zs, zt, y in zip(TINY_S, TINY_T, TINY_Y, strict=True):
        ps, pt = _np_softmax(zs / t), _np_softmax(zt / t)
        one_t, one_n = _dkd_paper(zs[None], zt[None], np.array([y]), t)
        assert t**2 * _np_kl(pt, ps) == pytest.approx(one_t + (1 - pt[y]) * one_n, rel=1e-12)
    student, teacher, batch = _tiny_inputs()
    dkd = DKD(ce_weight=1.0, alpha=1.0, beta=8.0, temperature=t, warmup=0.5)
    assert dkd(student, teacher, batch, 1.0)["dkd"].item() == pytest.approx(1.0 * tckd + 8.0 * nckd, rel=1e-5)
    assert dkd(student, teacher, batch, 0.25)["dkd"].item() == pytest.approx(0.5 * (tckd + 8.0 * nckd), rel=1e-5)


# CRD on a bank of N = 4 rows, classes [0, 0, 1, 1], K = 2 (all rows of the other class; rows 2 and 3 equal, so
# every draw of negatives gives the same scores), tau = 0.5, momentum 0.5; a batch of rows 0 and 1.
CRD_BANK_S = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.6, 0.8]])  # student-side memory
CRD_BANK_T = np.array([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6], [0.8, 0.6]])  # teacher-side memory
CRD_TAU, CRD_MOMENTUM, CRD_N, CRD_K = 0.5, 0.5, 4, 2


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _crd_paper_two_steps(v_s: np.ndarray, v_t: np.ndarray, rows: list[int]) -> list[float]:
    """Tian et al. ICLR 2020, the NCE critic with memory banks, transcribed: for an embedding v and the other
    side's memory M, x_j = exp(<v, M_j> / tau) / Z; P(D=1 | x) = x / (x + K P_n) with noise P_n = 1/N;
    L = -(log P(D=1 | x_pos) + sum_k log(1 - P(D=1 | x_neg_k))), batch mean, for the student (v_S against
    M_T) and the teacher (v_T against M_S), summed. Z = N * mean of the first batch's exp-scores, then fixed;
    after each step M_i <- normalize(m M_i + (1 - m) v) at the batch rows. Two steps on the same batch."""
    bank_s, bank_t = CRD_BANK_S.copy(), CRD_BANK_T.copy()
    p_n = 1.0 / CRD_N
    negatives = [2, 3]  # the other class's rows (both batch rows are class 0)
    z: list[float] = []
    losses = []
    for _ in range(2):
        total = 0.0
        raw_sides = []
        for v, bank in ((v_s, bank_t), (v_t, bank_s)):
            raw = np.array([[math.exp(v[b] @ bank[j] / CRD_TAU) for j in [i, *negatives]] for b, i in enumerate(rows)])
            raw_sides.append(raw)
        if not z:
            z = [CRD_N * float(raw.mean()) for raw in raw_sides]
        for raw, z_side in zip(raw_sides, z, strict=True):
            x = raw / z_side
            pos, neg = x[:, 0], x[:, 1:]
            log_d1 = np.log(pos / (pos + CRD_K * p_n))
            log_d0 = np.log(1.0 - neg / (neg + CRD_K * p_n))
            total += float(-(log_d1.sum() + log_d0.sum()) / len(rows))
        losses.append(total)
        for b, i in enumerate(rows):
            bank_s[i] = _unit(CRD_MOMENTUM * bank_s[i] + (1 - CRD_MOMENTUM) * v_s[b])
            bank_t[i] = _unit(CRD_MOMENTUM * bank_t[i] + (1 - CRD_MOMENTUM) * v_t[b])
    return losses


def _set_linear(linear: nn.Linear, weight: list[list[float]]) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.zero_()


def _tiny_crd_loss(clip_dim: int | None) -> CRDLoss:
    crd = build_crd_loss(
        student_dim=2, teacher_dim=2, clip_dim=clip_dim, feature_lambda=0.7 if clip_dim else None, embed_dim=2,
        n_data=CRD_N, labels=torch.tensor([0, 0, 1, 1]), nce_k=50, nce_t=CRD_TAU, momentum=CRD_MOMENTUM,
    )  # fmt: skip
    assert crd.memory.nce_k == CRD_K  # capped at the other class's 2 rows
    with torch.no_grad():
        crd.memory.memory_student.copy_(torch.tensor(CRD_BANK_S))
        crd.memory.memory_teacher.copy_(torch.tensor(CRD_BANK_T))
    _set_linear(crd.student_embed.linear, [[1.0, 0.0], [0.0, 1.0]])  # identity: v_S = normalize(f_S)
    return crd


TINY_F_S = [[3.0, 4.0], [1.0, 1.0]]  # student pooled features
TINY_F_T = [[1.0, 0.0], [0.0, 2.0]]  # teacher pooled features


def test_crd_independent_value_two_steps() -> None:
    crd_loss = _tiny_crd_loss(None)
    _set_linear(crd_loss.teacher_embed.linear, [[1.0, 0.0], [0.0, 1.0]])  # type: ignore[union-attr]
    expected = _crd_paper_two_steps(_unit(np.array(TINY_F_S)), _unit(np.array(TINY_F_T)), [0, 1])
    crd = CRD(ce_weight=1.0, crd_weight=0.8, crd=crd_loss)
    student, teacher, batch = _tiny_inputs(TINY_F_S, TINY_F_T)
    got = [crd(student, teacher, batch, p)["crd"].item() for p in (0.1, 0.5)]  # step 2: moved banks, fixed Z
    assert got == pytest.approx([0.8 * e for e in expected], rel=1e-5)
    assert expected[0] != pytest.approx(expected[1], rel=1e-3)  # the second step does see the moved banks


def test_richkd_independent_value() -> None:
    # Mansourian et al. 2025: L = w_ce CE + w_kd T^2 KL(softmax(z_F/T) || softmax(z_S/T)) + w_feat L_CRD(f_S, f_F),
    # f_F = normalize(lam normalize(P_T f_T) + (1 - lam) normalize(P_C f_C)), lam = 0.7; z_F arrives fused.
    lam, t = 0.7, 3.0
    p_c = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]])  # P_C: 3-d CLIP embedding -> 2-d
    clip = [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]
    f_f = _unit(lam * _unit(np.array(TINY_F_T)) + (1 - lam) * _unit(np.array(clip) @ p_c.T))
    crd_expected = _crd_paper_two_steps(_unit(np.array(TINY_F_S)), f_f, [0, 1])
    kd_expected = t**2 * _np_kl(_np_softmax(TINY_T / t), _np_softmax(TINY_S / t)) / 2
    crd_loss = _tiny_crd_loss(3)
    fusion = crd_loss.teacher_embed
    assert isinstance(fusion, FeatureFusion)
    _set_linear(fusion.teacher_proj, [[1.0, 0.0], [0.0, 1.0]])
    _set_linear(fusion.clip_proj, p_c.tolist())
    richkd = RichKD(ce_weight=1.0, kd_weight=3.0, feat_weight=0.8, temperature=t, crd=crd_loss)
    student, teacher, batch = _tiny_inputs(TINY_F_S, TINY_F_T, clip)
    steps = [richkd(student, teacher, batch, p) for p in (0.1, 0.5)]
    assert [s["feat"].item() for s in steps] == pytest.approx([0.8 * e for e in crd_expected], rel=1e-5)
    assert steps[0]["kd"].item() == pytest.approx(3.0 * kd_expected, rel=1e-5)
    assert steps[0]["ce"].item() == pytest.approx(_np_ce(TINY_S, TINY_Y), rel=1e-5)
