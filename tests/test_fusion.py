"""Logit and feature fusion (METHOD.md §3-§4)."""

from __future__ import annotations

import math

import pytest
import torch

from richkd.fusion import FeatureFusion, fuse_logits

TEACHER = torch.tensor([[2.0, -1.0, 0.5], [0.0, 4.0, 1.0]])
COSINES = torch.tensor([[0.3, 0.1, -0.2], [0.25, 0.05, 0.4]])


def test_fuse_logits_alpha_one_is_the_teacher() -> None:
    assert torch.equal(fuse_logits(TEACHER, COSINES, alpha=1.0, vlm_scale=100.0), TEACHER)


def test_fuse_logits_alpha_one_ignores_a_non_finite_vlm_term() -> None:
    nan = torch.full_like(COSINES, float("nan"))
    assert torch.equal(fuse_logits(TEACHER, nan, alpha=1.0), TEACHER)


def test_fuse_logits_alpha_zero_is_scaled_cosines() -> None:
    torch.testing.assert_close(fuse_logits(TEACHER, COSINES, alpha=0.0, vlm_scale=100.0), 100.0 * COSINES)


def test_fuse_logits_mixed_value_by_hand() -> None:
    # 0.7 * 2.0 + 0.3 * 10 * 0.3 = 1.4 + 0.9 = 2.3;  0.7 * 4.0 + 0.3 * 10 * 0.05 = 2.8 + 0.15 = 2.95
    fused = fuse_logits(TEACHER, COSINES, alpha=0.7, vlm_scale=10.0)
    assert fused[0, 0].item() == pytest.approx(2.3, rel=1e-6)
    assert fused[1, 1].item() == pytest.approx(2.95, rel=1e-6)
    # default scale 1 (reference): 0.7 * -1.0 + 0.3 * 0.1 = -0.67
    assert fuse_logits(TEACHER, COSINES, alpha=0.7)[0, 1].item() == pytest.approx(-0.67, rel=1e-6)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_fuse_logits_rejects_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        fuse_logits(TEACHER, COSINES, alpha=alpha)


def test_fuse_logits_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        fuse_logits(TEACHER, COSINES[:, :2], alpha=0.5)


def identity_fusion(feature_lambda: float) -> FeatureFusion:
    fusion = FeatureFusion(teacher_dim=2, clip_dim=2, embed_dim=2, feature_lambda=feature_lambda)
    with torch.no_grad():
        for proj in (fusion.teacher_proj, fusion.clip_proj):
            proj.weight.copy_(torch.eye(2))
            proj.bias.zero_()
    return fusion


def test_feature_fusion_mixed_value_by_hand() -> None:
    # normalize([3, 4]) = [0.6, 0.8]; normalize([2, 0]) = [1, 0];
    # 0.5 * [0.6, 0.8] + 0.5 * [1, 0] = [0.8, 0.4] -> normalize = [2, 1] / sqrt(5)
    fused = identity_fusion(0.5)(torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0, 0.0]]))
    torch.testing.assert_close(fused, torch.tensor([[2 / math.sqrt(5), 1 / math.sqrt(5)]]))


def test_feature_fusion_has_unit_norm() -> None:
    torch.manual_seed(0)
    fusion = FeatureFusion(teacher_dim=7, clip_dim=5, embed_dim=4, feature_lambda=0.7)
    fused = fusion(torch.randn(6, 7), torch.randn(6, 5))
    assert fused.shape == (6, 4)
    torch.testing.assert_close(fused.norm(dim=1), torch.ones(6))


def test_feature_fusion_lambda_one_is_normalized_teacher_projection_and_skips_clip() -> None:
    torch.manual_seed(0)
    fusion = FeatureFusion(teacher_dim=7, clip_dim=5, embed_dim=4, feature_lambda=1.0)
    calls: list[int] = []
    fusion.clip_proj.register_forward_hook(lambda *_: calls.append(1))
    teacher_pooled = torch.randn(3, 7)
    fused = fusion(teacher_pooled, torch.full((3, 5), float("nan")))
    expected = torch.nn.functional.normalize(fusion.teacher_proj(teacher_pooled), dim=1)
    torch.testing.assert_close(fused, expected)
    assert calls == []


def test_feature_fusion_lambda_zero_is_normalized_clip_projection() -> None:
    fused = identity_fusion(0.0)(torch.full((1, 2), float("nan")), torch.tensor([[0.0, 5.0]]))
    torch.testing.assert_close(fused, torch.tensor([[0.0, 1.0]]))


def test_feature_fusion_validates_lambda_and_trains_both_projections() -> None:
    with pytest.raises(ValueError, match="feature_lambda"):
        FeatureFusion(teacher_dim=2, clip_dim=2, feature_lambda=1.2)
    fusion = FeatureFusion(teacher_dim=3, clip_dim=2, embed_dim=4, feature_lambda=0.7)
    fusion(torch.randn(2, 3), torch.randn(2, 2).half()).sum().backward()
    assert fusion.teacher_proj.weight.grad is not None and fusion.clip_proj.weight.grad is not None
