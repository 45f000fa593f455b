"""OFD and ReviewKD (issue 21): each loss against a hand transcription of its published equation in float64
(numpy loops / einsums written here, not our modules' helpers), OFD's margin against the closed form and a
numerical integral, connector sizes against mdistiller's module definitions for resnet32x4 -> resnet8x4.

Tolerance: both sides are float64 on O(1) inputs and agree to ~1e-12; 1e-5 (the issue's bar) leaves room for
BLAS reduction order. OFD's margin is stored in float32 (as mdistiller's FloatTensor), so the hand side rounds
its margin to float32 too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from conftest import randomise_bn_affine
from richkd.config import load_config
from richkd.data.batch import Batch
from richkd.distill.features import FeatureOptions, WithFeature, build_feature_term
from richkd.distill.features.ofd import ofd_margin
from richkd.distill.features.reviewkd import hcl_loss
from richkd.errors import RichKDError
from richkd.models import FeatureShapes, ModelOutput, create_model, feature_shapes
from richkd.models.base import BNStats
from richkd.targets import TeacherTargets

TOL = 1e-5
B = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().astype(np.float64)


def _pool_to(x: np.ndarray, h: int) -> np.ndarray:
    """Average pooling of [B, C, H, H] to h x h when H is a multiple of h (what adaptive pooling does then)."""
    k = x.shape[2] // h
    return x.reshape(x.shape[0], x.shape[1], h, k, h, k).mean(axis=(3, 5))


def _upsample(x: np.ndarray, h: int) -> np.ndarray:
    """Nearest upsampling of [B, C, H, H] to h x h (h a multiple of H)."""
    k = h // x.shape[2]
    return x.repeat(k, axis=2).repeat(k, axis=3)


def _bn_train(x: np.ndarray, bn: torch.nn.BatchNorm2d) -> np.ndarray:
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)  # biased, as BatchNorm normalises in training
    return _np(bn.weight).reshape(1, -1, 1, 1) * (x - mean) / np.sqrt(var + bn.eps) + _np(bn.bias).reshape(1, -1, 1, 1)


def _conv1x1(x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
    y = np.einsum("oc,bchw->bohw", _np(conv.weight)[:, :, 0, 0], x)
    return y if conv.bias is None else y + _np(conv.bias).reshape(1, -1, 1, 1)


def _conv3x3(x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
    w, (h, wd) = _np(conv.weight), x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    return sum(np.einsum("oc,bchw->bohw", w[:, :, i, j], xp[:, :, i : i + h, j : j + wd])
               for i in range(3) for j in range(3))


def _hand_margin(mean: float, std: float) -> float:
    """Heo et al. eq. 4 (E[x | x < 0] of N(m, s²)) with mdistiller's tail rule; s = 0 is the point mass."""
    s = abs(std)
    if s == 0:
        return min(mean, 0.0)
    if norm.cdf(-mean / s) > 0.001:
        return mean - s * norm.pdf(mean / s) / norm.cdf(-mean / s)
    return -3 * s


def test_ofd_margin_equals_the_closed_form_from_bn_statistics() -> None:
    mean = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 2.5, 3.5, 4.0, 0.0, -1.0, 0.7])
    std = torch.tensor([1.0, 0.5, 1.0, -2.0, 0.25, 1.0, 1.0, 1.0, 0.0, 0.0, 3.0])  # 3.5, 4: the −3σ tail rule
    got = ofd_margin(BNStats(mean, std))
    want = [_hand_margin(float(m), float(s)) for m, s in zip(mean, std, strict=True)]
    assert np.allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert want[6] == -3.0 and want[7] == -3.0 and want[8] == 0.0 and want[9] == -1.0
    for m, s, w in zip(mean.tolist(), std.tolist(), want, strict=True):  # and the integral it stands for
        s = abs(s)
        if s > 0 and norm.cdf(-m / s) > 0.001:
            num = integrate.quad(lambda x, m=m, s=s: x * norm.pdf(x, m, s), -np.inf, 0)[0]
            assert math.isclose(num / norm.cdf(0, m, s), w, rel_tol=1e-7, abs_tol=1e-9)


S_STAGES = ((2, 8, 8), (3, 8, 8), (4, 4, 4), (5, 2, 2))
T_STAGES = ((2, 16, 16), (3, 16, 16), (6, 8, 8), (7, 4, 4), (8, 4, 4))  # one stage more; the last one larger


def _bns(seed: int, stages: tuple[tuple[int, int, int], ...]) -> tuple[BNStats, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(BNStats(torch.randn(c, generator=g), torch.randn(c, generator=g)) for c, _, _ in stages[1:])


def _pair(seed: int) -> tuple[ModelOutput, TeacherTargets]:
    g = torch.Generator().manual_seed(seed)
    s_pre = tuple(torch.randn(B, *s, generator=g, dtype=torch.float64) for s in S_STAGES)
    t_pre = tuple(torch.randn(B, *t, generator=g, dtype=torch.float64) for t in T_STAGES)
    s_pooled = torch.randn(B, 6, generator=g, dtype=torch.float64)
    t_pooled = torch.randn(B, 9, generator=g, dtype=torch.float64)
    logits = torch.randn(B, 3, generator=g, dtype=torch.float64)
    student = ModelOutput(logits, s_pooled, tuple(p.relu() for p in s_pre), s_pre)
    return student, TeacherTargets(logits, t_pooled, None, tuple(p.relu() for p in t_pre), t_pre)


def _tables() -> tuple[FeatureShapes, FeatureShapes]:
    return FeatureShapes(8, S_STAGES, 6), FeatureShapes(16, T_STAGES, 9, bn_before_relu=_bns(3, T_STAGES))


def test_ofd_loss_equals_the_partial_l2_of_the_paper() -> None:
    """Heo et al. eq. 5-6: T̂ = max(t, m); d = 0 where s ≤ T̂ ≤ 0, else (T̂ − s)²; summed over C, H, W, averaged over
    the batch, stage j of n weighted 1/2^(n−j−1); the last min(n_S, n_T) = 3 pre-ReLU maps after the stem."""
    s_shapes, t_shapes = _tables()
    term = build_feature_term("ofd", s_shapes, t_shapes, FeatureOptions()).double()
    student, teacher = _pair(4)
    got = term(student, teacher).item()
    want = 0.0
    stats = t_shapes.bn_before_relu[-3:]
    pairs = zip(term.connectors, student.preact_stages[1:], teacher.preact_stages[2:], stats, strict=True)
    for j, (connector, fs, ft, st) in enumerate(pairs):
        source = _bn_train(_conv1x1(_np(fs), connector[0]), connector[1])
        target = _pool_to(_np(ft), source.shape[2])
        margin = np.array([_hand_margin(float(m), float(s)) for m, s in zip(st.mean, st.std, strict=True)])
        t_hat = np.maximum(target, np.float32(margin).astype(np.float64).reshape(1, -1, 1, 1))
        d = np.where((source <= t_hat) & (t_hat <= 0), 0.0, (t_hat - source) ** 2)
        want += d.sum() / B / 2 ** (3 - j - 1)
    assert math.isclose(got, want, rel_tol=TOL, abs_tol=TOL)


def test_ofd_needs_the_teachers_bn_statistics() -> None:
    with pytest.raises(RichKDError, match="BN statistics"):
        build_feature_term("ofd", FeatureShapes(8, S_STAGES, 6), FeatureShapes(16, T_STAGES, 9), FeatureOptions())


def _hand_hcl(fs: np.ndarray, ft: np.ndarray) -> float:
    """Chen et al. sec. 3.3: MSE at full size plus the 4x4, 2x2, 1x1 pooled levels smaller than the map, level k
    weighted 2^-k, normalised by the weights' sum."""
    levels = [size for size in (4, 2, 1) if size < fs.shape[2]]
    weights = [2.0 ** -(k + 1) for k in range(len(levels))]
    loss = np.mean((fs - ft) ** 2)
    for w, size in zip(weights, levels, strict=True):
        loss += w * np.mean((_pool_to(fs, size) - _pool_to(ft, size)) ** 2)
    return float(loss / (1 + sum(weights)))


def test_hcl_equals_the_hierarchical_context_loss() -> None:
    g = torch.Generator().manual_seed(5)
    shapes = [(3, 8, 8), (2, 4, 4), (4, 2, 2), (5, 1, 1)]
    fs = [torch.randn(B, *s, generator=g, dtype=torch.float64) for s in shapes]
    ft = [torch.randn(B, *s, generator=g, dtype=torch.float64) for s in shapes]
    want = sum(_hand_hcl(_np(a), _np(b)) for a, b in zip(fs, ft, strict=True))
    assert math.isclose(hcl_loss(fs, ft).item(), want, rel_tol=TOL, abs_tol=TOL)


def test_reviewkd_equals_abf_review_then_hcl() -> None:
    """ABF written out (1x1 conv + BN, sigmoid attention over [x, upsampled residual], nearest resize to the
    teacher's size, 3x3 conv + BN), deepest level first, HCL against the teacher's pre-ReLU maps + pooled."""
    s_shapes, t_shapes = _tables()
    term = build_feature_term("reviewkd", s_shapes, t_shapes, FeatureOptions()).double()
    student, teacher = _pair(6)
    got = term(student, teacher).item()
    levels_s = [_np(f) for f in student.stages[1:]] + [_np(student.pooled)[:, :, None, None]]
    levels_t = [_np(f) for f in teacher.preact_stages[2:]] + [_np(teacher.pooled)[:, :, None, None]]
    assert [a.in_channels for a in (abf.conv1[0] for abf in term.abfs)] == [6, 5, 4, 3]  # deepest first
    outputs, residual = [], None
    for abf, x, t in zip(term.abfs, levels_s[::-1], levels_t[::-1], strict=True):
        x = _bn_train(_conv1x1(x, abf.conv1[0]), abf.conv1[1])
        if residual is not None:
            residual = _upsample(residual, x.shape[2])
            z = 1 / (1 + np.exp(-_conv1x1(np.concatenate([x, residual], 1), abf.att_conv[0])))
            x = x * z[:, :1] + residual * z[:, 1:2]
        else:
            assert abf.att_conv is None
        x = _upsample(x, t.shape[2]) if x.shape[2] != t.shape[2] else x
        outputs.insert(0, _bn_train(_conv3x3(x, abf.conv2[0]), abf.conv2[1]))
        residual = x
    want = sum(_hand_hcl(a, b) for a, b in zip(outputs, levels_t, strict=True))
    assert math.isclose(got, want, rel_tol=TOL, abs_tol=TOL)


@pytest.mark.parametrize(("size", "residual_size"), [((8, 8), (4, 4)), ((8, 6), (1, 1)), ((7, 5), (3, 4))])
def test_abf_attention_equals_the_concatenated_form_at_any_resize(
    size: tuple[int, int], residual_size: tuple[int, int]
) -> None:
    """mdistiller's ABF fusion, z = sigmoid(att_conv(cat[x, nearest(r)])), x*z0 + nearest(r)*z1, in float64, for a
    whole-multiple resize (the broadcast path), a 1x1 residual and a ragged one (7x5 from 3x4: the fallback); the
    gradients of both inputs and of att_conv's weights agree too."""
    from richkd.distill.features.reviewkd import ABF

    gen = torch.Generator().manual_seed(3)
    abf = ABF(4, 5, 3, fuse=True).double()
    x = torch.randn(2, 5, *size, generator=gen, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 5, *residual_size, generator=gen, dtype=torch.float64, requires_grad=True)
    got = abf._fuse(x, r)
    up = torch.nn.functional.interpolate(r, size, mode="nearest")
    z = abf.att_conv(torch.cat([x, up], dim=1))  # type: ignore[misc]
    want = x * z[:, :1] + up * z[:, 1:]
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    probe = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    grads = [torch.autograd.grad((out * probe).sum(), (x, r, abf.att_conv[0].weight)) for out in (got, want)]
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_connector_parameters_match_mdistiller_for_resnet32x4_resnet8x4() -> None:
    """mdistiller's get_extra_parameters(), counted from its module definitions.
    OFD ConnectorConvBN over stage channels [64, 128, 256]: 1x1 conv (no bias) c·c + BN 2c each.
    ReviewKD ABF(in, mid=256, out, fuse) over in = out = [64, 128, 256, 256]: conv1 in·mid + BN 2·mid, conv2
    9·mid·out + BN 2·out, att_conv (2·mid)·2 + 2 for all but the deepest."""
    student, teacher = create_model("resnet8x4", 100), create_model("resnet32x4", 100)
    s, t = feature_shapes(student, 32), feature_shapes(teacher, 32)
    ofd = sum(c * c + 2 * c for c in (64, 128, 256))
    mid = 256
    abf = [c * mid + 2 * mid + 9 * mid * c + 2 * c + (4 * mid + 2 if fuse else 0)
           for c, fuse in ((64, True), (128, True), (256, True), (256, False))]
    count = {m: sum(p.numel() for p in build_feature_term(m, s, t, FeatureOptions()).parameters())
             for m in ("ofd", "reviewkd")}
    assert count == {"ofd": ofd, "reviewkd": sum(abf)} == {"ofd": 86_912, "reviewkd": 1_808_774}


def test_reviewkd_ramps_over_its_warmup_epochs_and_presets_name_both_methods() -> None:
    cfg = load_config(None, ["train.epochs=240"], dataset="cifar100", pair="resnet32x4-resnet8x4",
                      method="reviewkd")
    assert cfg.feature.method == "reviewkd" and cfg.feature.reviewkd_warmup_epochs == 20
    from richkd.build import build_distiller

    d = build_distiller(cfg, student_dim=6, teacher_dim=9, clip_dim=None, train=None,  # type: ignore[arg-type]
                        shapes=_tables())
    assert isinstance(d, WithFeature) and d.weight == 5.0
    d = d.double()
    student, teacher = _pair(7)
    batch = Batch(torch.zeros(B, 3, 8, 8), torch.tensor([0, 1, 2, 0]), torch.arange(B), torch.zeros(B).long())
    full = d(student, teacher, batch, 0.5)["reviewkd"]
    epoch1 = d(student, teacher, batch, 1 / 240)["reviewkd"]  # mdistiller: min(epoch / 20, 1) at epoch 1
    assert torch.allclose(epoch1, full / 20, rtol=1e-12)
    assert torch.allclose(full, 5 * d.term(student, teacher), rtol=1e-12)
    ofd = load_config(None, [], dataset="cifar100", pair="resnet32x4-resnet8x4", method="ofd")
    assert ofd.distill.method == "vanilla" and ofd.feature.method == "ofd"
    with pytest.raises(RichKDError, match="reviewkd_warmup_epochs"):
        load_config(None, ["feature.reviewkd_warmup_epochs=-1"], dataset="cifar100", pair="resnet32x4-resnet8x4",
                    method="reviewkd")


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflev2", "mobilenetv1_imagenet"])
def test_a_bn_folded_teacher_keeps_its_preacts_and_bn_statistics(name: str) -> None:
    """build.py folds the frozen teacher's BNs into its convs; the pre-ReLU maps must survive (same function) and
    the BN statistics OFD's margin reads must be those of the unfolded model (the CLI run found this)."""
    from richkd.engine.fold import fold_batchnorm
    from richkd.models.base import keep_bn_statistics

    torch.manual_seed(0)
    model = create_model(name, 10)
    g = torch.Generator().manual_seed(1)
    randomise_bn_affine(model, g, running_var=True)
    folded = fold_batchnorm(model)
    keep_bn_statistics(model, folded)
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        want, got = model.eval()(x), folded(x)
    for a, b in zip(want.preact_stages, got.preact_stages, strict=True):  # float32 re-association of folded convs
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    table = feature_shapes(folded, 32)
    expected = model.bn_before_relu()
    assert len(table.bn_before_relu) == len(expected) == len(table.stages) - 1
    for a, b in zip(table.bn_before_relu, expected, strict=True):
        assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    ofd = build_feature_term("ofd", feature_shapes(model, 32), table, FeatureOptions())
    assert len(ofd.margins()) == len(expected)
