"""mdistiller's feature distillers: each loss against a hand transcription of its published equation (loops and
numpy in float64, written here, not our modules' helpers), connector sizes against mdistiller's for
resnet32x4 -> resnet8x4, and the combination with a logit distiller.

Tolerance: both sides are evaluated in float64 on O(1) inputs, so they agree to ~1e-12; 1e-5 (the issue's bar)
leaves room for the float64 reduction-order differences of BLAS on any CPU kind.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from richkd.config import load_config
from richkd.data.batch import Batch
from richkd.distill import KD
from richkd.distill.features import FEATURE_TERMS, FeatureOptions, WithFeature, build_feature_term
from richkd.errors import RichKDError
from richkd.models import FeatureShapes, ModelOutput, create_model, feature_shapes
from richkd.targets import TeacherTargets

TOL = 1e-5
B = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _maps(seed: int, shapes: list[tuple[int, int, int]], positive: bool = True) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(B, *s, generator=g, dtype=torch.float64) for s in shapes]
    return tuple(m.abs() if positive else m for m in maps)


def _outputs(s_maps: tuple[torch.Tensor, ...], t_maps: tuple[torch.Tensor, ...], seed: int = 9) -> tuple[
    ModelOutput, TeacherTargets
]:
    g = torch.Generator().manual_seed(seed)
    s_pooled = torch.randn(B, 6, generator=g, dtype=torch.float64)
    t_pooled = torch.randn(B, 4, generator=g, dtype=torch.float64)
    logits = torch.randn(B, 3, generator=g, dtype=torch.float64)
    return ModelOutput(logits, s_pooled, s_maps), TeacherTargets(logits, t_pooled, None, t_maps)


def _term(name: str, s: list[tuple[int, int, int]], t: list[tuple[int, int, int]], **opts: Any) -> Any:
    shapes_s = FeatureShapes(image_size=8, stages=tuple(s), pooled=6)
    shapes_t = FeatureShapes(image_size=8, stages=tuple(t), pooled=4)
    return build_feature_term(name, shapes_s, shapes_t, FeatureOptions(**opts)).double()


STAGES_S = [(2, 8, 8), (3, 8, 8), (4, 4, 4), (5, 2, 2)]
STAGES_T = [(2, 8, 8), (6, 8, 8), (7, 4, 4), (8, 4, 4)]  # last stage larger: the student-side pooling rule


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().astype(np.float64)


def _pool_to(x: np.ndarray, h: int) -> np.ndarray:
    """Average pooling of [B, C, H, H] to h x h when H is a multiple of h (what adaptive pooling does then)."""
    k = x.shape[2] // h
    return x.reshape(x.shape[0], x.shape[1], h, k, h, k).mean(axis=(3, 5))


def _match(fs: np.ndarray, ft: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hs, ht = fs.shape[2], ft.shape[2]
    return (_pool_to(fs, ht), ft) if hs > ht else (fs, _pool_to(ft, hs)) if hs < ht else (fs, ft)


def test_at_equals_attention_transfer_equation() -> None:
    """Zagoruyko & Komodakis eq. 2 with mdistiller's normalisation: Q = mean_c |A_c|^p, L2-normalised per
    sample, mean squared difference per stage, summed over stages 1..n."""
    s, t = _maps(0, STAGES_S), _maps(1, STAGES_T)
    got = _term("at", STAGES_S, STAGES_T, at_p=2.0)(*_outputs(s, t)).item()
    want = 0.0
    for fs, ft in zip(s[1:], t[1:], strict=True):
        a, b = _match(_np(fs), _np(ft))
        diffs = []
        for i in range(B):
            qa = (np.abs(a[i]) ** 2).mean(0).ravel()
            qb = (np.abs(b[i]) ** 2).mean(0).ravel()
            diffs.append(qa / np.linalg.norm(qa) - qb / np.linalg.norm(qb))
        want += float(np.mean(np.square(diffs)))
    assert math.isclose(got, want, rel_tol=TOL, abs_tol=TOL)


def test_nst_equals_squared_mmd_with_polynomial_kernel() -> None:
    s, t = _maps(2, STAGES_S), _maps(3, STAGES_T)
    got = _term("nst", STAGES_S, STAGES_T)(*_outputs(s, t)).item()
    want = 0.0
    for fs, ft in zip(s[1:], t[1:], strict=True):
        a, b = _match(_np(fs), _np(ft))
        for x, y, sign in ((b, b, 1.0), (a, a, 1.0), (a, b, -2.0)):
            values = []
            for i in range(B):
                xs = x[i].reshape(x.shape[1], -1)
                ys = y[i].reshape(y.shape[1], -1)
                xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)
                ys = ys / np.linalg.norm(ys, axis=1, keepdims=True)
                values += [float(xs[p] @ ys[q]) ** 2 for p in range(len(xs)) for q in range(len(ys))]
            want += sign * float(np.mean(values))
    assert math.isclose(got, want, rel_tol=TOL, abs_tol=TOL)


def test_pkt_equals_kl_of_cosine_conditionals() -> None:
    s, t = _maps(4, STAGES_S), _maps(5, STAGES_T)
    student, teacher = _outputs(s, t)
    got = _term("pkt", STAGES_S, STAGES_T)(student, teacher).item()
    eps = 1e-7

    def conditional(f: np.ndarray) -> np.ndarray:
        f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
        k = np.array([[(f[i] @ f[j] + 1) / 2 for j in range(B)] for i in range(B)])
        return k / k.sum(1, keepdims=True)

    p, q = conditional(_np(teacher.pooled)), conditional(_np(student.pooled))  # type: ignore[arg-type]
    want = float(np.mean(p * np.log((p + eps) / (q + eps))))
    assert math.isclose(got, want, rel_tol=TOL, abs_tol=TOL)


def test_sp_equals_gram_difference() -> None:
    s, t = _maps(6, STAGES_S, positive=False), _maps(7, STAGES_T, positive=False)
    got = _term("sp", STAGES_S, STAGES_T)(*_outputs(s, t)).item()

    def gram(f: np.ndarray) -> np.ndarray:
        flat = f.reshape(B, -1)
        g = flat @ flat.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    want = float(np.sum((gram(_np(t[-1])) - gram(_np(s[-1]))) ** 2) / B**2)
    assert math.isclose(got, want, rel_tol=TOL, abs_tol=TOL)


def _smooth_l1(x: np.ndarray, y: np.ndarray) -> float:
    d = np.abs(x - y)
    return float(np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5)))


def test_rkd_equals_distance_and_angle_potentials() -> None:
    s, t = _maps(8, STAGES_S), _maps(9, STAGES_T)
    student, teacher = _outputs(s, t)
    got = _term("rkd", STAGES_S, STAGES_T, rkd_distance_weight=25.0, rkd_angle_weight=50.0)(student, teacher).item()

    def distances(e: np.ndarray) -> np.ndarray:
        d = np.array([[np.linalg.norm(e[i] - e[j]) if i != j else 0.0 for j in range(B)] for i in range(B)])
        return d / d[d > 0].mean()

    def angles(e: np.ndarray) -> np.ndarray:
        out = []
        for i in range(B):
            for j in range(B):
                for k in range(B):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = max(np.linalg.norm(u), 1e-12), max(np.linalg.norm(v), 1e-12)
                    out.append(float(u @ v) / (nu * nv))
        return np.array(out)

    es, et = _np(student.pooled), _np(teacher.pooled)  # type: ignore[arg-type]
    want = 25 * _smooth_l1(distances(es), distances(et)) + 50 * _smooth_l1(angles(es), angles(et))
    assert math.isclose(got, want, rel_tol=TOL, abs_tol=TOL)


def _bn_train(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)  # biased, as BatchNorm normalises in training
    return gamma.reshape(1, -1, 1, 1) * (x - mean) / np.sqrt(var + eps) + beta.reshape(1, -1, 1, 1)


def test_fitnet_equals_mse_of_the_regressed_hint() -> None:
    """Same-size hint (1x1 conv + BN + ReLU), written out as an einsum."""
    s, t = _maps(10, STAGES_S), _maps(11, STAGES_T)
    term = _term("fitnet", STAGES_S, STAGES_T, hint_layer=1)
    got = term(*_outputs(s, t)).item()
    conv = term.regressor.conv
    w, bias = _np(conv.weight)[:, :, 0, 0], _np(conv.bias)
    y = np.einsum("oc,bchw->bohw", w, _np(s[1])) + bias.reshape(1, -1, 1, 1)
    y = np.maximum(_bn_train(y, _np(term.regressor.bn.weight), _np(term.regressor.bn.bias), term.regressor.bn.eps), 0)
    want = float(np.mean((y - _np(t[1])) ** 2))
    assert math.isclose(got, want, rel_tol=TOL, abs_tol=TOL)


def test_vid_equals_gaussian_negative_log_likelihood() -> None:
    """Ahn et al. eq. 5 up to the constant: ½[(t − μ)²/σ² + log σ²], σ² = softplus(α) + ε, α from init σ² = 5."""
    s, t = _maps(12, STAGES_S), _maps(13, STAGES_T)
    term = _term("vid", STAGES_S, STAGES_T, vid_init_pred_var=5.0)
    got = term(*_outputs(s, t)).item()
    want = 0.0
    for regressor, log_scale, fs, ft in zip(term.regressors, term.log_scales, s[1:], t[1:], strict=True):
        a, b = _match(_np(fs), _np(ft))
        w1, w2, w3 = (_np(regressor[i].weight)[:, :, 0, 0] for i in (0, 2, 4))
        mu = np.einsum("oc,bchw->bohw", w1, a)
        mu = np.einsum("oc,bchw->bohw", w2, np.maximum(mu, 0))
        mu = np.einsum("oc,bchw->bohw", w3, np.maximum(mu, 0))
        var = np.log1p(np.exp(_np(log_scale))) + 1e-5
        assert np.allclose(var, 5.0)  # the initial predicted variance
        var = var.reshape(1, -1, 1, 1)
        want += float(np.mean(0.5 * ((mu - b) ** 2 / var + np.log(var))))
    assert math.isclose(got, want, rel_tol=TOL, abs_tol=TOL)


def test_kdsvd_equals_its_rbf_matching_on_svd_vectors() -> None:
    """Lee et al. with mdistiller's choices (k = 1 teacher vector, k+3 student vectors sign-aligned to it); the
    SVD itself is the primitive both sides share (torch.linalg.svd), everything around it written out here."""
    shapes = [(2, 8, 8), (3, 4, 4), (2, 4, 4), (2, 2, 2)]
    s, t = _maps(14, shapes, positive=False), _maps(15, shapes, positive=False)
    got = _term("kdsvd", shapes, shapes, kdsvd_k=1)(*_outputs(s, t)).item()

    def svd(f: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
        b, c, h, w = f.shape
        _, sv, vh = torch.linalg.svd(f.reshape(b, c * h, w), full_matrices=False)
        sv, v = _np(sv)[:, :n], _np(vh.transpose(-2, -1))[:, :, :n]
        return sv / np.linalg.norm(sv, axis=1, keepdims=True), v / np.linalg.norm(v, axis=1, keepdims=True)

    total, prev = 0.0, None
    for fs, ft in zip(s[1:], t[1:], strict=True):
        st, vt = svd(ft, 1)
        _, vs = svd(fs, 4)
        aligned = np.zeros_like(vt)
        for i in range(B):
            cos = vs[i].T @ vt[i]  # [4, 1]
            best = int(np.argmax(np.abs(cos[:, 0])))
            aligned[i, :, 0] = vs[i][:, best] * np.sign(cos[best, 0])
        vt, vs = vt * st[:, None, :], aligned * st[:, None, :]
        if prev is not None:
            ps, pt = prev
            rs = np.exp(-((vs[:, :, None, :] - ps[:, None, :, :]) ** 2) / 8)
            rt = np.exp(-((vt[:, :, None, :] - pt[:, None, :, :]) ** 2) / 8)
            total += float(np.sum((rs - rt) ** 2))
        prev = (vs, vt)
    assert math.isclose(got, total / B, rel_tol=TOL, abs_tol=TOL)


def test_connector_parameters_match_mdistiller_for_resnet32x4_resnet8x4() -> None:
    """mdistiller's get_extra_parameters(): FitNet ConvReg(128->128, 1x1 + bias) + BN = 16,512 + 256; VID's three
    regressors 3 * (64² + 128² + 256²) = 258,048 (plus our trained per-channel variances, 64 + 128 + 256)."""
    student, teacher = create_model("resnet8x4", 100), create_model("resnet32x4", 100)
    s, t = feature_shapes(student, 32), feature_shapes(teacher, 32)
    assert s.stages == ((32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)) == t.stages
    count = {name: sum(p.numel() for p in build_feature_term(name, s, t, FeatureOptions()).parameters())
             for name in FEATURE_TERMS.names()}
    assert count["fitnet"] == 16_768
    vid = build_feature_term("vid", s, t, FeatureOptions())
    assert sum(p.numel() for p in vid.regressors.parameters()) == 258_048
    assert count["vid"] == 258_048 + 448
    assert all(count[name] == 0 for name in ("at", "nst", "pkt", "sp", "rkd", "kdsvd"))


def test_shape_table_does_not_touch_batchnorm_statistics() -> None:
    model = create_model("resnet8", 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = feature_shapes(model, 32)
    assert model.training and shapes.pooled == 64 and len(shapes.stages) == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_feature_term_adds_to_any_logit_distiller_with_its_own_weight() -> None:
    cfg = load_config(None, ["feature.method=at", "feature.weight=7"], dataset="cifar100",
                      pair="resnet32x4-resnet8x4", method="kd")
    from richkd.build import build_distiller

    shapes = (FeatureShapes(32, tuple(STAGES_S), 6), FeatureShapes(32, tuple(STAGES_T), 4))
    train = None
    d = build_distiller(cfg, student_dim=6, teacher_dim=4, clip_dim=None, train=train, shapes=shapes)  # type: ignore[arg-type]
    assert isinstance(d, WithFeature) and isinstance(d.base, KD)
    assert d.describe() == "Loss = 0.1*CE + 0.9*KD(T=4.0) + 7*AT(p=2)"
    s, t = _maps(16, STAGES_S), _maps(17, STAGES_T)
    student, teacher = _outputs(s, t)
    batch = Batch(torch.zeros(B, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1]), torch.arange(B), torch.zeros(B).long())
    terms = d(student, teacher, batch, 0.5)
    assert set(terms) == {"ce", "kd", "at"}
    alone = build_feature_term("at", *shapes, FeatureOptions())(student, teacher)
    assert torch.allclose(terms["at"], 7 * alone)
    preset = load_config(None, [], dataset="cifar100", pair="resnet32x4-resnet8x4", method="at")
    assert preset.distill.method == "vanilla" and preset.feature.method == "at" and preset.feature.weight is None
    assert preset.model.teacher == "resnet32x4"


def test_feature_methods_refuse_a_teacher_cache_and_bad_values_in_one_line() -> None:
    with pytest.raises(RichKDError, match="teacher cache"):
        load_config(None, ["feature.method=at", "model.teacher_cache=somewhere"], dataset="cifar100",
                    pair="resnet32x4-resnet8x4", method="kd")
    with pytest.raises(RichKDError, match="feature.weight"):
        load_config(None, ["feature.method=at", "feature.weight=-1"], dataset="cifar100",
                    pair="resnet32x4-resnet8x4", method="kd")
    with pytest.raises(RichKDError, match="hint_layer"):
        _term("fitnet", STAGES_S, STAGES_T, hint_layer=9)


def test_a_feature_term_composes_with_a_two_view_distiller() -> None:
    """MLKD + SP: the strong view reaches MLKD, the feature term reads the weak view, CTKD-style log values pass."""
    from richkd.build import build_distiller
    from richkd.distill.base import StrongView

    cfg = load_config(None, ["feature.method=sp"], dataset="cifar100", pair="resnet32x4-resnet8x4", method="mlkd")
    shapes = (FeatureShapes(32, tuple(STAGES_S), 6), FeatureShapes(32, tuple(STAGES_T), 4))
    d = build_distiller(cfg, student_dim=6, teacher_dim=4, clip_dim=None, train=None, shapes=shapes)  # type: ignore[arg-type]
    assert isinstance(d, WithFeature) and d.needs_strong_view and d.log_values() == {}
    s, t = _maps(18, STAGES_S), _maps(19, STAGES_T)
    student, teacher = _outputs(s, t)
    batch = Batch(torch.zeros(B, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1]), torch.arange(B), torch.zeros(B).long())
    terms = d(student, teacher, batch, 0.5, strong=StrongView(student, teacher))
    assert "sp" in terms and "ce" in terms and all(torch.isfinite(v) for v in terms.values())
    assert d.describe().endswith(" + 3000*SP")
