"""Classification metrics on hand-built examples."""

from __future__ import annotations

import math

import pytest
import torch

from richkd.analysis.metrics import confidence_quadrants, expected_calibration_error, nll, topk_accuracy

# Logits = log(probabilities), so softmax gives these probabilities back.
PROBS = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.65, 0.35], [0.3, 0.7]])
LOGITS = PROBS.log()
LABELS = torch.tensor([0, 1, 0, 1])  # correct, wrong (conf 0.9), correct (0.65), correct (0.7)


def test_topk_accuracy_in_percent_with_k_capped_at_num_classes() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2, 3])  # top-1 hit, top-2 hit, rank-4 only
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc[1] == pytest.approx(100 / 3)
    assert acc[2] == pytest.approx(200 / 3)
    assert acc[5] == pytest.approx(100.0)  # k = 5 > 4 classes: capped at 4


def test_nll_by_hand() -> None:
    expected = -(math.log(0.9) + math.log(0.1) + math.log(0.65) + math.log(0.7)) / 4
    assert nll(LOGITS, LABELS) == pytest.approx(expected, rel=1e-6)


def test_ece_on_hand_built_example() -> None:
    # 15 bins of width 1/15. 0.9 -> (0.867, 0.933]: two samples, accuracy 1/2, confidence 0.9;
    # 0.65 -> (0.6, 0.667]: accuracy 1; 0.7 -> (0.667, 0.733]: accuracy 1.
    # ECE = 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.65| + 1/4 * |1 - 0.7| = 0.2 + 0.0875 + 0.075 = 0.3625
    assert expected_calibration_error(LOGITS, LABELS) == pytest.approx(0.3625, rel=1e-5)
    # One bin: |mean accuracy - mean confidence| = |0.75 - 0.7875| = 0.0375
    assert expected_calibration_error(LOGITS, LABELS, n_bins=1) == pytest.approx(0.0375, rel=1e-4)


def test_ece_is_zero_when_calibrated() -> None:
    # Confidence 0.75 in one bin with accuracy 3/4.
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs.log(), torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-6)


def test_confidence_quadrants() -> None:
    q = confidence_quadrants(LOGITS, LABELS, threshold=0.8)
    assert q == pytest.approx(
        {
            "confident_correct": 0.25,
            "unconfident_correct": 0.5,
            "confident_wrong": 0.25,
            "unconfident_wrong": 0.0,
        }
    )
    q = confidence_quadrants(LOGITS, LABELS)  # threshold 0.5: every max-prob is >= 0.5
    assert q["confident_correct"] == pytest.approx(0.75) and q["confident_wrong"] == pytest.approx(0.25)
    assert sum(q.values()) == pytest.approx(1.0)


def test_metrics_reject_bad_shapes() -> None:
    with pytest.raises(ValueError):
        nll(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError):
        topk_accuracy(LOGITS, LABELS[:2])
