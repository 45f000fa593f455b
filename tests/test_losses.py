"""Logit losses against values worked out by hand (math module, not the code under test)."""

from __future__ import annotations

import math

import pytest
import torch

from richkd.losses import dkd_loss, dkd_terms, kd_loss


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(x / temperature) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum_i p_i log(p_i / q_i)."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


STUDENT = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
TEACHER = [[3.0, 2.0, 1.0], [2.0, 0.0, -1.0]]
TARGET = [2, 0]


def test_kd_loss_matches_hand_computation_with_temperature_and_t_squared() -> None:
    temperature = 2.0
    # Row 0: teacher softmax([1.5, 1.0, 0.5]) vs student softmax([0.5, 1.0, 1.5]) (mirror images).
    p_t0 = softmax([1.5, 1.0, 0.5])
    p_s0 = softmax([0.5, 1.0, 1.5])
    p_t1 = softmax([1.0, 0.0, -0.5])
    p_s1 = softmax([0.25, -0.5, 0.0])
    expected = (kl(p_t0, p_s0) + kl(p_t1, p_s1)) / 2 * temperature**2  # batch mean, times T^2
    got = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_one_row_exact_numbers() -> None:
    # softmax([0, ln 3]) = [1/4, 3/4]; softmax([0, 0]) = [1/2, 1/2] at T = 1.
    # KL([1/4, 3/4] || [1/2, 1/2]) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.1308121...
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    got = kd_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]]), 1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # At T = 2 the teacher logits are halved: softmax([0, ln3/2]) = [1/(1+√3), √3/(1+√3)], times 4.
    a = 1 / (1 + math.sqrt(3))
    expected_t2 = 4 * (a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5))
    got_t2 = kd_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]]), 2.0)
    assert got_t2.item() == pytest.approx(expected_t2, rel=1e-6)


def test_kd_loss_is_a_batch_mean() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    rows = [kd_loss(s[i : i + 1], t[i : i + 1], 3.0).item() for i in range(2)]
    assert kd_loss(s, t, 3.0).item() == pytest.approx(sum(rows) / 2, rel=1e-6)


def test_kd_of_identical_logits_is_zero() -> None:
    z = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    assert kd_loss(z, z.clone(), 4.0).item() == 0.0


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_kd_rejects_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(1, 3), torch.zeros(1, 3), temperature)


def test_losses_are_float32_under_bf16_autocast() -> None:
    s = torch.tensor(STUDENT, dtype=torch.bfloat16)
    t = torch.tensor(TEACHER, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kd_loss(s, t, 4.0).dtype == torch.float32
        assert dkd_loss(s, t, torch.tensor(TARGET), 1.0, 8.0, 4.0).dtype == torch.float32


def hand_dkd(
    student: list[float], teacher: list[float], target: int, temperature: float
) -> tuple[float, float]:
    """TCKD and NCKD of one row, times T^2, by the definitions in Zhao et al. (CVPR 2022)."""
    p_s = softmax(student, temperature)
    p_t = softmax(teacher, temperature)
    tckd = kl([p_t[target], 1 - p_t[target]], [p_s[target], 1 - p_s[target]])
    others = [i for i in range(len(student)) if i != target]
    q_s = softmax([student[i] for i in others], temperature)
    q_t = softmax([teacher[i] for i in others], temperature)
    nckd = kl(q_t, q_s)
    return tckd * temperature**2, nckd * temperature**2


def test_dkd_terms_split_target_and_non_target_on_three_classes() -> None:
    # Row 0, T = 1, target 2: p_s = softmax([1,2,3]) = [0.0900, 0.2447, 0.6652],
    # p_t = softmax([3,2,1]) = [0.6652, 0.2447, 0.0900].
    # TCKD = KL([0.0900, 0.9100] || [0.6652, 0.3348]);
    # NCKD = KL(softmax([3,2]) || softmax([1,2])) = KL([0.7311, 0.2689] || [0.2689, 0.7311]).
    e1, e2, e3 = math.exp(1), math.exp(2), math.exp(3)
    z = e1 + e2 + e3
    p_s_target, p_t_target = e3 / z, e1 / z
    tckd0 = p_t_target * math.log(p_t_target / p_s_target) + (1 - p_t_target) * math.log(
        (1 - p_t_target) / (1 - p_s_target)
    )
    sig = 1 / (1 + math.exp(-1))  # softmax([3, 2])[0] = softmax([2, 1])[0]
    nckd0 = sig * math.log(sig / (1 - sig)) + (1 - sig) * math.log((1 - sig) / sig)
    tckd1, nckd1 = hand_dkd(STUDENT[1], TEACHER[1], TARGET[1], 1.0)
    tckd, nckd = dkd_terms(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGET), 1.0)
    assert tckd.item() == pytest.approx((tckd0 + tckd1) / 2, rel=1e-6)  # sum / B
    assert nckd.item() == pytest.approx((nckd0 + nckd1) / 2, rel=1e-6)


def test_dkd_loss_weights_the_terms_and_scales_by_t_squared() -> None:
    temperature, alpha, beta = 4.0, 1.0, 8.0
    rows = [hand_dkd(STUDENT[i], TEACHER[i], TARGET[i], temperature) for i in range(2)]
    expected = sum(alpha * t + beta * n for t, n in rows) / 2
    got = dkd_loss(
        torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGET), alpha, beta, temperature
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dkd_decomposition_recovers_kd() -> None:
    # Zhao et al. eq. (7): KD = TCKD + (1 - p_t^target) * NCKD, per sample.
    s, t, y = torch.tensor([STUDENT[0]]), torch.tensor([TEACHER[0]]), torch.tensor([TARGET[0]])
    tckd, nckd = dkd_terms(s, t, y, 2.0)
    p_t_target = softmax(TEACHER[0], 2.0)[TARGET[0]]
    assert (tckd + (1 - p_t_target) * nckd).item() == pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-5)


def test_dkd_of_identical_logits_is_zero_and_validates() -> None:
    z = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 4, 2])
    tckd, nckd = dkd_terms(z, z.clone(), y, 4.0)
    # NCKD compares log(softmax) with log_softmax: equal up to float32 rounding, times T^2 = 16.
    assert abs(tckd.item()) < 1e-5 and abs(nckd.item()) < 1e-5
    with pytest.raises(ValueError, match="temperature"):
        dkd_loss(z, z, y, 1.0, 8.0, 0.0)
    with pytest.raises(ValueError, match="target"):
        dkd_terms(z, z, y[:2], 4.0)
