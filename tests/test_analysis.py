"""Analysis metrics against small cases worked by hand (the expected numbers are written out, not recomputed)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from richkd.analysis.agreement import mean_kl, top1_agreement
from richkd.analysis.analyze import analyze, render_summary, resolve_flows
from richkd.analysis.calibration import adaptive_ece, classwise_ece, ece, reliability_bins
from richkd.analysis.consistency import (
    class_difference,
    mean_class_logits,
    non_target_matrix,
    reference_spearman,
    semantic_similarity,
    semantic_spearman,
    spearman,
)
from richkd.analysis.metrics import confidence_quadrants, expected_calibration_error
from richkd.analysis.predictions import Predictions
from richkd.analysis.quadrants import STATES, flow_counts, quadrant_fractions, sample_states
from richkd.errors import RichKDError


def probs_to_logits(rows: list[list[float]]) -> torch.Tensor:
    """log p, so softmax gives back p."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


# Four samples, two classes. Confidences 0.9 (right), 0.9 (wrong), 0.7 (right), 0.55 (wrong); none on a bin edge.
BINARY_LOGITS = probs_to_logits([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.55, 0.45]])
BINARY_LABELS = torch.tensor([0, 1, 1, 1])


def test_ece_by_hand() -> None:
    # 15 bins: 0.9 -> bin 13 (2 samples, acc 0.5, conf 0.9, gap 0.4); 0.7 -> bin 10 (gap 0.3); 0.55 -> bin 8 (0.55)
    # ECE = (2·0.4 + 0.3 + 0.55) / 4 = 0.4125
    assert ece(BINARY_LOGITS, BINARY_LABELS) == pytest.approx(0.4125, abs=1e-6)
    assert expected_calibration_error(BINARY_LOGITS, BINARY_LABELS) == pytest.approx(0.4125, abs=1e-6)


def test_reliability_bins_by_hand() -> None:
    bins = reliability_bins(BINARY_LOGITS, BINARY_LABELS, n_bins=15)
    assert len(bins.bin_edges) == 16 and bins.bin_edges[0] == 0.0 and bins.bin_edges[-1] == 1.0
    assert bins.count == [0] * 8 + [1, 0, 1, 0, 0, 2, 0]
    assert bins.accuracy[8] == 0.0 and bins.accuracy[10] == 1.0 and bins.accuracy[13] == 0.5
    assert bins.confidence[8] == pytest.approx(0.55) and bins.confidence[13] == pytest.approx(0.9)
    assert [i for i, a in enumerate(bins.accuracy) if a is None] == [0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 14]
    assert bins.ece() == pytest.approx(0.4125, abs=1e-6)


def test_adaptive_ece_by_hand() -> None:
    # 2 equal-mass bins over sorted confidences 0.55(w) 0.7(r) | 0.9(r) 0.9(w):
    # |0.5 − 0.625| · 2/4 + |0.5 − 0.9| · 2/4 = 0.0625 + 0.2 = 0.2625
    assert adaptive_ece(BINARY_LOGITS, BINARY_LABELS, n_bins=2) == pytest.approx(0.2625, abs=1e-6)
    # 3 bins of sizes 2, 1, 1: {0.55 w, 0.7 r} gap 0.125 · 2/4; {0.9}: gap 0.1 and 0.9 → (0.25 + 0.1 + 0.9)/4
    # (the stable sort keeps the right 0.9 (row 0) before the wrong one (row 1))
    assert adaptive_ece(BINARY_LOGITS, BINARY_LABELS, n_bins=3) == pytest.approx(0.3125, abs=1e-6)


def test_classwise_ece_by_hand() -> None:
    logits = probs_to_logits([[0.7, 0.25, 0.05], [0.15, 0.5, 0.35]])
    labels = torch.tensor([0, 2])
    # class 0: p 0.7 (is 0) gap 0.3, p 0.15 (not) gap 0.15 -> 0.45 / 2 = 0.225
    # class 1: 0.25, 0.5 (neither is 1) -> 0.75 / 2 = 0.375; class 2: 0.05 (not), 0.35 (is) gap 0.65 -> 0.35
    # mean over the 3 classes = 0.95 / 3
    assert classwise_ece(logits, labels) == pytest.approx(0.95 / 3, abs=1e-6)


def test_calibration_rejects_empty_and_bad_bins() -> None:
    with pytest.raises(ValueError):
        ece(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError):
        adaptive_ece(BINARY_LOGITS, BINARY_LABELS, n_bins=0)


def test_quadrant_states_fractions_and_flows_by_hand() -> None:
    # at τ = 0.75: 0.9 right -> CC, 0.9 wrong -> CW, 0.7 right -> UC, 0.55 wrong -> UW
    states = sample_states(BINARY_LOGITS, BINARY_LABELS, tau=0.75)
    assert [STATES[i] for i in states] == ["confident_correct", "confident_wrong", "unconfident_correct",
                                           "unconfident_wrong"]
    assert quadrant_fractions(states) == {s: 0.25 for s in STATES}
    # at τ = 0.5 every sample is confident: two CC, two CW
    half = quadrant_fractions(sample_states(BINARY_LOGITS, BINARY_LABELS, tau=0.5))
    assert half == {"confident_correct": 0.5, "unconfident_correct": 0.0, "unconfident_wrong": 0.0,
                    "confident_wrong": 0.5}
    assert half == confidence_quadrants(BINARY_LOGITS, BINARY_LABELS, 0.5)
    # B: CC, CC, UW, UW. Flows A -> B: CC->CC, CW->CC, UC->UW, UW->UW (order CC, UC, UW, CW)
    other = probs_to_logits([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4]])
    assert flow_counts(states, sample_states(other, BINARY_LABELS, tau=0.75)) == [
        [1, 0, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 1, 0],
        [1, 0, 0, 0],
    ]


def test_agreement_by_hand() -> None:
    ref = probs_to_logits([[0.6, 0.4], [0.9, 0.1]])
    other = probs_to_logits([[0.3, 0.7], [0.9, 0.1]])
    assert top1_agreement(ref, other) == pytest.approx(50.0)
    # KL row 0 = 0.6 ln(0.6/0.3) + 0.4 ln(0.4/0.7) = 0.415888 − 0.223846 = 0.192042; row 1 = 0
    assert mean_kl(ref, other) == pytest.approx(0.096021, abs=1e-6)
    assert mean_kl(ref, ref) == pytest.approx(0.0, abs=1e-9)


# Three classes. Non-target distributions: class 0 samples [_, .75, .25] and [_, .5, .5]; class 1 [.8, _, .2];
# class 2 [.1, .9, _].
CONSISTENCY_LOGITS = torch.tensor(
    [[9.0, math.log(3), 0.0], [0.0, 0.0, 0.0], [math.log(4), 7.0, 0.0], [0.0, math.log(9), 2.0]]
)
CONSISTENCY_LABELS = torch.tensor([0, 0, 1, 2])


def test_non_target_matrix_by_hand() -> None:
    m = non_target_matrix(CONSISTENCY_LOGITS, CONSISTENCY_LABELS)
    expected = torch.tensor([[0.0, 0.625, 0.375], [0.8, 0.0, 0.2], [0.1, 0.9, 0.0]], dtype=torch.float64)
    assert torch.allclose(m, expected, atol=1e-6)
    # a class without samples gets a NaN row; a confident sample (p_target ≈ 1 in float32) stays exact
    m4 = non_target_matrix(torch.tensor([[80.0, math.log(3), 0.0, -20.0]]), torch.tensor([0]))
    assert torch.isnan(m4[1:]).all()
    assert torch.allclose(m4[0], torch.tensor([0.0, 0.75, 0.25, 0.0], dtype=torch.float64), atol=1e-3)


def test_spearman_by_hand() -> None:
    # ranks x [1, 2.5, 2.5, 4], y [1, 2, 3, 4] -> ρ = 4.5 / sqrt(4.5 · 5) = sqrt(0.9)
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(
        math.sqrt(0.9), abs=1e-9
    )
    assert spearman(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([10.0, 20.0, 30.0])) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 2.0, 3.0])) is None


def test_semantic_and_reference_spearman_by_hand() -> None:
    m = non_target_matrix(CONSISTENCY_LOGITS, CONSISTENCY_LABELS)
    # class embeddings with cosines S01 = 0.6, S02 = 0, S12 = 0.8
    sim = semantic_similarity(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    assert sim[0, 1] == pytest.approx(0.6) and sim[1, 2] == pytest.approx(0.8) and sim[0, 2] == pytest.approx(0.0)
    # symmetrised pairs (0,1) .7125, (0,2) .2375, (1,2) .55 -> ranks 3, 1, 2; S ranks 2, 1, 3; Σd² = 2
    # ρ = 1 − 6·2 / (3·8) = 0.5
    assert semantic_spearman(m, sim) == pytest.approx(0.5, abs=1e-9)
    # ordered off-diagonal entries of m: .625 .375 .8 .2 .1 .9; against the reference 6..1 (reversed ranks
    # 4 3 5 2 1 6 vs 6 5 4 3 2 1): d = −2 −2 1 −1 −1 5, Σd² = 36, ρ = 1 − 6·36/(6·35) = −1/35
    ref = torch.tensor([[0.0, 6.0, 5.0], [4.0, 0.0, 3.0], [2.0, 1.0, 0.0]])
    assert reference_spearman(m, ref) == pytest.approx(-1 / 35, abs=1e-9)
    assert reference_spearman(m, m) == pytest.approx(1.0)


def test_mdistiller_difference_by_hand() -> None:
    means = mean_class_logits(torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 5.0]]), torch.tensor([0, 0, 1]))
    assert torch.equal(means, torch.tensor([[2.0, 3.0], [0.0, 5.0]], dtype=torch.float64))
    diff = class_difference(means, torch.tensor([[9.0, 1.0], [1.5, 9.0]]))
    assert torch.equal(diff, torch.tensor([[0.0, 2.0], [1.5, 0.0]], dtype=torch.float64))


def _pred(name: str, logits: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> Predictions:
    prov = {"name": name, "kind": "checkpoint", "arch": "x", "checkpoint_sha256": None, "dataset": "d",
            "split": "test", "view": "plain", "classes": list(classes), "n_rows_split": 10}
    return Predictions(logits=logits, labels=labels, rows=torch.arange(len(labels)) + 3, features=None,
                       provenance=prov)


def test_analyze_builds_the_documented_object() -> None:
    teacher = _pred("t", BINARY_LOGITS, BINARY_LABELS, ("a", "b"))
    fused = _pred("f", probs_to_logits([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4]]), BINARY_LABELS, ("a", "b"))
    out = analyze([teacher, fused], ["teacher", "fused"], tau=0.75, agreements=[("teacher", "fused")],
                  semantic=("unit test", torch.tensor([[1.0, 0.0], [0.6, 0.8]])))
    assert out["version"] == 1 and out["n"] == 4 and out["classes"] == ["a", "b"] and out["reference"] == "teacher"
    t = out["predictors"]["teacher"]
    assert t["top1"] == pytest.approx(50.0) and t["ece"] == pytest.approx(0.4125, abs=1e-6)
    assert t["quadrants"] == {s: 0.25 for s in STATES}
    assert out["predictors"]["fused"]["top1"] == pytest.approx(50.0)  # rows 0 and 1 right: 2 of 4
    assert t["consistency"]["semantic_spearman"] is None  # two classes: one pair, ρ undefined
    assert out["semantic_similarity"]["matrix"] == [[1.0, 0.6], [0.6, 1.0]]
    assert len(t["reliability"]["count"]) == 15
    # teacher -> fused added automatically
    assert out["flows"] == [{"from": "teacher", "to": "fused", "states": list(STATES),
                             "counts": [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]}]
    agreement = out["agreement"][0]
    assert agreement["top1_agreement"] == pytest.approx(50.0)  # rows 0, 3 agree
    assert "## Flow teacher → fused" in render_summary(out)


def test_resolve_flows_and_bad_names() -> None:
    assert resolve_flows(["teacher", "fused"], []) == [("teacher", "fused")]
    assert resolve_flows(["teacher", "student"], [("teacher", "student")]) == [("teacher", "student")]
    a = _pred("a", BINARY_LOGITS, BINARY_LABELS, ("a", "b"))
    with pytest.raises(RichKDError, match="not a predictor"):
        analyze([a], ["a"], flows=[("a", "zz")])
    with pytest.raises(RichKDError, match="repeat"):
        analyze([a, a], ["a", "a"])
    with pytest.raises(RichKDError, match="names for"):
        analyze([a], ["a", "b"])


def test_analyze_is_fast_on_cifar100_sized_predictions() -> None:
    """4 predictors × 10,000 rows × 100 classes must take seconds (issue: analysis of real test sets)."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 100, (10_000,), generator=gen)
    preds = [_pred(f"p{i}", torch.randn(10_000, 100, generator=gen) * 3, labels, tuple(f"c{j}" for j in range(100)))
             for i in range(4)]
    preds = [Predictions(p.logits, p.labels, torch.arange(10_000), None, {**p.provenance, "n_rows_split": 10_000})
             for p in preds]
    # CPU seconds of this process (all its threads), not wall-clock: other processes on a shared or loaded
    # machine do not count, so the bound tests the algorithm (a per-row Python loop takes minutes), not the load
    start = time.process_time()
    out = analyze(preds, ["teacher", "fused", "s1", "s2"], agreements=[("teacher", "s1")],
                  semantic=("random", torch.randn(100, 16, generator=gen)))
    used = time.process_time() - start
    assert used < 20.0, f"{used:.1f} CPU s"
    print(f"analyze: {used:.2f} CPU s")
    assert len(out["predictors"]["s1"]["class_correlation"]) == 100
