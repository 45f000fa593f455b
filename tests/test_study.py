"""`richkd study`: the seed statistics against hand-computed values, the spec's one-line errors, the argv the runner
composes, and end to end on real CIFAR-10 images: a 2 arms x 2 seeds grid with a teacher in `prepare`, the runner
SIGKILLed once a run has finished, then rerun: finished runs are not trained again and the results are complete."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from proctree import assert_all_gone, descendants
from richkd.cli import build_parser, main
from richkd.errors import RichKDError
from richkd.study import stats
from richkd.study.grid import arm_jobs, check_arm_records, run_dir
from richkd.study.spec import parse_spec, split_argv

# ---------------------------------------------------------------- statistics


def test_mean_and_sample_std_match_hand_values() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert stats.mean(values) == 2.5
    # sum of squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3
    assert stats.sample_std(values) == pytest.approx(math.sqrt(5 / 3))
    assert stats.sample_std([7.0]) is None


@pytest.mark.parametrize(("df", "quantile"), [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (30, 2.0423)])
def test_t_quantiles_match_the_table(df: int, quantile: float) -> None:
    assert stats.t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-4)


def test_t_interval_and_verdict() -> None:
    # [1, 2, 3, 4]: 2.5 ± 3.1824 * sqrt(5/3) / 2 = 2.5 ± 2.0542
    interval = stats.t_interval([1.0, 2.0, 3.0, 4.0])
    assert interval is not None
    assert (interval.low, interval.high) == (pytest.approx(0.44575, abs=1e-4), pytest.approx(4.55425, abs=1e-4))
    assert stats.verdict(interval) == stats.BEYOND
    # two seeds, differences 1 and 3: 2 ± 12.7062 * sqrt(2) / sqrt(2) = [-10.706, 14.706]
    wide = stats.t_interval([1.0, 3.0])
    assert wide is not None and wide.low == pytest.approx(-10.7062, abs=1e-4)
    assert stats.verdict(wide) == stats.WITHIN
    assert stats.t_interval([0.5]) is None and stats.verdict(None) == stats.TOO_FEW
    negative = stats.t_interval([-2.0, -2.2, -1.8])
    assert negative is not None and negative.high < 0 and stats.verdict(negative) == stats.BEYOND


def test_paired_differences_use_shared_seeds_only() -> None:
    arm = {0: 71.0, 1: 70.0, 2: None, 3: 69.5}
    ref = {0: 70.0, 1: 70.5, 2: 69.0}
    assert stats.paired_differences(arm, ref) == {0: 1.0, 1: -0.5}


def test_paired_t_test_matches_students_sleep_data() -> None:
    """Student's (1908) sleep data, Cushny & Peebles: extra hours of sleep under two drugs, same 10 patients. R's
    `t.test(extra ~ group, data = sleep, paired = TRUE)` gives t = -4.0621, df = 9, p-value = 0.002833 and the
    95 % interval [-2.4598858, -0.7001142] of the mean difference -1.58."""
    drug1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    drug2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    diffs = [a - b for a, b in zip(drug1, drug2, strict=True)]
    test = stats.paired_t_test(diffs)
    assert test is not None and test.df == 9
    assert test.t == pytest.approx(-4.0621, abs=1e-4) and test.p == pytest.approx(0.002833, abs=1e-6)
    interval = stats.t_interval(diffs)
    assert interval is not None
    assert (interval.low, interval.high) == (pytest.approx(-2.4598858, abs=1e-6), pytest.approx(-0.7001142, abs=1e-6))


def test_paired_t_test_with_one_degree_of_freedom_is_cauchy() -> None:
    """n = 2: t has 1 df, i.e. Cauchy, whose cdf is 1/2 + atan(t)/π, so p = 1 − 2·atan(|t|)/π by hand.
    Differences [1, 2]: mean 1.5, s = √0.5, t = 1.5 / (√0.5/√2) = 3."""
    test = stats.paired_t_test([1.0, 2.0])
    assert test is not None and test.t == pytest.approx(3.0)
    assert test.p == pytest.approx(1.0 - 2.0 * math.atan(3.0) / math.pi, rel=1e-12)
    assert stats.paired_t_test([0.3]) is None
    flat = stats.paired_t_test([0.5, 0.5, 0.5])
    assert flat is not None and flat.p is None and flat.t is None  # no spread: t undefined, never p = 0


def _holm_by_the_book(pvalues: list[float], alpha: float) -> list[bool]:
    """Holm (1979) as stated: order p ascending; for k = 1.. reject H(k) while p(k) <= α / (m − k + 1); at the
    first k where that fails, stop and accept H(k) and every later one."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    rejected = [False] * m
    for k, i in enumerate(order, start=1):
        if pvalues[i] > alpha / (m - k + 1):
            break
        rejected[i] = True
    return rejected


def test_holm_adjusted_p_values_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1; an untested comparison (None) counts in m as p = 1 and stays None
    assert stats.holm([0.2, 0.6]) == pytest.approx([0.4, 0.6])
    adjusted = stats.holm([0.01, None, 0.02])
    assert adjusted[1] is None and adjusted[0] == pytest.approx(0.03) and adjusted[2] == pytest.approx(0.04)
    assert stats.holm([]) == []


@pytest.mark.parametrize("seed", range(20))
def test_holm_rejects_what_the_step_down_rule_rejects(seed: int) -> None:
    import random

    rng = random.Random(seed)
    pvalues = [rng.choice([rng.random(), rng.random() * 0.05, rng.random() * 0.01]) for _ in range(rng.randint(1, 9))]
    adjusted = stats.holm(pvalues)
    assert [a is not None and a <= 0.05 for a in adjusted] == _holm_by_the_book(pvalues, 0.05)


def test_cohens_dz_and_its_interval() -> None:
    # d_z = mean / s: [1, 2, 3, 4] -> 2.5 / sqrt(5/3)
    dz = stats.cohens_dz_interval([1.0, 2.0, 3.0, 4.0])
    assert dz is not None and dz.mean == pytest.approx(2.5 / math.sqrt(5 / 3))
    assert dz.low < dz.mean < dz.high and dz.low > 0  # t = 3.87 on 3 df is beyond the 95 % quantile 3.18
    assert stats.cohens_dz_interval([1.0]) is None and stats.cohens_dz_interval([2.0, 2.0]) is None
    # large n: the exact interval approaches d ± z(0.975)·sqrt(1/n + d²/(2n)) (Hedges & Olkin 1985); the exact one
    # differs by O(1/n) (measured 3e-4 at n = 400, d = 0.5), so 1e-3
    n, d = 400, 0.5
    base = [(-1.0) ** i * (1 + (i % 7) / 10) for i in range(n)]
    m, s = sum(base) / n, math.sqrt(sum((b - sum(base) / n) ** 2 for b in base) / (n - 1))
    diffs = [(b - m) / s + d for b in base]  # sample mean d, sample sd 1: d_z = d exactly
    wide = stats.cohens_dz_interval(diffs)
    half = 1.959964 * math.sqrt(1 / n + d * d / (2 * n))
    assert wide is not None and wide.mean == pytest.approx(d)
    assert (wide.low, wide.high) == (pytest.approx(d - half, abs=1e-3), pytest.approx(d + half, abs=1e-3))


def test_cohens_dz_interval_covers_the_true_effect_95_percent_of_the_time() -> None:
    """By its definition: over repeated samples of n = 3 normal differences with d_z = 1, the 95 % interval holds
    1 in 95 % of them. 600 draws: binomial s.e. sqrt(0.95·0.05/600) = 0.0089, so ±0.035 (4 s.e.)."""
    import random

    rng = random.Random(7)
    hits = 0
    for _ in range(600):
        interval = stats.cohens_dz_interval([rng.gauss(1.0, 1.0) for _ in range(3)])
        assert interval is not None
        hits += interval.low <= 1.0 <= interval.high
    assert abs(hits / 600 - 0.95) <= 0.035


def test_noncentral_t_cdf_where_scipy_returns_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quadrature path agrees with scipy's noncentral t where scipy is finite (forced by a NaN stub), and
    is finite and tiny at a point of our studies where scipy gives NaN (t = −9.2, nc = 9.2, df = 2)."""
    from scipy.stats import nct

    points = [(10.02, 2, 10.02), (10.0, 2, 30.0), (2.0, 1, 1.0), (-3.0, 4, 0.5), (1.5, 5, 0.3), (3.4, 2, 20.0)]
    truth = [float(nct.cdf(t, df, nc)) for t, df, nc in points]
    assert math.isnan(nct.cdf(-9.2, 2, 9.2))  # why the path exists
    monkeypatch.setattr(stats.nct, "cdf", lambda *args: math.nan)
    for (t, df, nc), want in zip(points, truth, strict=True):
        assert stats.noncentral_t_cdf(t, df, nc) == pytest.approx(want, rel=1e-6, abs=1e-15)
    deep = stats.noncentral_t_cdf(-9.2, 2, 9.2)
    assert 0.0 < deep < 1e-12


# ---------------------------------------------------------------- spec and argv


def _spec_dict(out: Path) -> dict[str, object]:
    return {
        "name": "t", "out": str(out), "seeds": [0, 1], "common": ["train.epochs=1"],
        "arms": {"vanilla": {"argv": ["distill.method=vanilla"]},
                 "kd": {"title": "KD", "argv": ["distill.method=kd", "-c", "x.yaml"]}},
        "compare": ["kd"],
    }


@pytest.mark.parametrize(("change", "needle"), [
    (lambda d: d.update(parralel=2), "unknown key 'parralel'"),
    (lambda d: d["arms"]["kd"].pop("argv"), "arms.kd has no argv"),
    (lambda d: d.update(compare=["dkd"]), "compare names 'dkd'"),
    (lambda d: d.update(analysis={"robustness": {"limt": 10}}), "unknown key 'analysis.robustness.limt'"),
    (lambda d: d["arms"]["kd"].update(argv=["seed=3"]), "the runner sets seed"),
    (lambda d: d.update(seeds=[0, 0]), "repeat a seed"),
    (lambda d: d.update(common=["-c", "x.yaml"]), "only key=value overrides"),
    (lambda d: d["arms"]["kd"].update(argv=["{outdir}/x=1"]), "neither an option"),
    (lambda d: d.update(analysis={"flows": ["kd:teacher"]}), "'teacher' is neither"),
    (lambda d: d.update(headline=[["vanilla", "dkd"]]), "headline[0] names 'dkd', which is not an arm"),
    (lambda d: d.update(headline=[["kd", "kd"]]), "compares 'kd' with itself"),
    (lambda d: d.update(headline=[["vanilla", "kd", "top1"]]), "unknown metric 'top1'"),
    (lambda d: d.update(headline=[["vanilla", "kd"], ["vanilla", "kd", "last_top1"]]), "headline[1] repeats"),
    (lambda d: d.update(headline=["vanilla:kd"]), "headline[0] is 'vanilla:kd'"),
    (lambda d: d.update(headline={"vanilla": "kd"}), "headline must be a list"),
    (lambda d: d.update(alpha=1.5), "alpha must be in (0, 1)"),
])
def test_bad_spec_is_one_line_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: object,
                                             needle: str) -> None:
    raw = _spec_dict(tmp_path / "out")
    change(raw)  # type: ignore[operator]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["study", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("richkd: error: study spec") and needle in err[0], err


def test_runner_argv_puts_options_first_and_resumes_a_checkpointed_run(tmp_path: Path) -> None:
    assert split_argv(["model.x=1", "-c", "cfg.yaml", "--method", "kd", "--flag", "a.b=2"]) == (
        ["-c", "cfg.yaml", "--method", "kd", "--flag"], ["model.x=1", "a.b=2"], [])
    spec = parse_spec(_spec_dict(tmp_path / "out"), "test")
    folder = run_dir(spec.out_path, "kd", 1)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"")  # an epoch finished, no summary: resume
    jobs = {job.key: job for job in arm_jobs(spec, threads=3)}
    assert [job.key for job in jobs.values()] == ["vanilla_s0", "kd_s0", "vanilla_s1", "kd_s1"]  # seed by seed
    kd1 = jobs["kd_s1"]
    assert kd1.state == "resume" and kd1.argv[-1] == "--resume" and jobs["kd_s0"].state == "new"
    args = build_parser().parse_args(list(kd1.argv))  # the real `richkd train` parser takes it as one block
    assert args.config == "x.yaml" and args.resume
    assert args.overrides == ["train.threads=3", "train.epochs=1", "distill.method=kd", "seed=1", f"out_dir={folder}"]


def test_changed_arm_is_refused_once_it_has_runs(tmp_path: Path) -> None:
    raw = _spec_dict(tmp_path / "out")
    check_arm_records(parse_spec(raw, "test"))  # records each arm's argv
    raw["arms"]["kd"]["argv"] = ["distill.method=kd", "distill.temperature=2"]  # type: ignore[index]
    check_arm_records(parse_spec(raw, "test"))  # no runs yet: the new argv is recorded
    folder = run_dir(tmp_path / "out", "kd", 0)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    raw["arms"]["kd"]["argv"] = ["distill.method=kd"]  # type: ignore[index]
    with pytest.raises(RichKDError, match="arm kd: its argv changed"):
        check_arm_records(parse_spec(raw, "test"))


def test_report_groups_study_run_directories_by_arm() -> None:
    from richkd.report.tables import group_name, run_label

    assert group_name(Path("out/runs/kd/s0")) == "kd" and run_label(Path("out/runs/kd/s0")) == "kd_s0"
    assert group_name(Path("runs/kd_s1")) == "kd" and run_label(Path("runs/kd_s1")) == "kd_s1"


def _fake_run(folder: Path, last_top1: float) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "best_top1": last_top1 + 0.5, "best_top5": 99.0, "best_epoch": 1, "last_top1": last_top1, "last_top5": 99.0,
        "last_nll": 1.0, "last_ece": 0.05, "epochs": 1, "train_wall_s": 10.0, "loss": "Loss = 1.0*CE"}))


def test_report_only_tables_from_finished_runs_match_hand_values(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    raw = {**_spec_dict(tmp_path / "out"), "seeds": [0, 1, 2]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    for seed, (kd, vanilla) in enumerate([(69.0, 70.0), (70.0, 72.0), (70.0, 71.0)]):
        _fake_run(tmp_path / "out" / "runs" / "kd" / f"s{seed}", kd)
        if seed < 2:
            _fake_run(tmp_path / "out" / "runs" / "vanilla" / f"s{seed}", vanilla)
    assert main(["study", str(path), "--report-only"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith(("runs:", "["))]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    kd = results["arms"]["kd"]["summary"]["last_top1"]
    assert kd["n"] == 3 and kd["mean"] == pytest.approx(209 / 3) and kd["std"] == pytest.approx(math.sqrt(1 / 3))
    [cmp] = [c for c in results["comparisons"] if c["metric"] == "last_top1"]
    # vanilla − kd on seeds 0 and 1: [1, 2]; mean 1.5, s = sqrt(0.5), half width 12.7062 * sqrt(0.5) / sqrt(2)
    assert (cmp["arm"], cmp["against"], cmp["seeds"], cmp["differences"]) == ("vanilla", "kd", [0, 1], [1.0, 2.0])
    assert cmp["low"] == pytest.approx(1.5 - 6.3531, abs=1e-3) and cmp["high"] == pytest.approx(1.5 + 6.3531, abs=1e-3)
    # no headline declared: every comparison is exploratory, uncorrected, and says so
    assert cmp["family"] == "exploratory" and cmp["verdict"] == stats.EXPLORATORY_INCLUDES
    assert results["correction"]["method"] == "none" and not results["headline"]
    # t = 3 on 1 df (Cauchy): p = 1 − 2·atan(3)/π; d_z = 1.5 / sqrt(0.5)
    assert cmp["p"] == pytest.approx(1 - 2 * math.atan(3) / math.pi) and cmp["dz"] == pytest.approx(1.5 / 0.5 ** 0.5)
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "exploratory, uncorrected for multiple comparisons" in markdown and "Correction: none" in markdown
    assert "| vanilla | vanilla | 2/3 * | 71.50 ± 1.41 | 71.00 ± 1.41 |" in markdown  # fewer seeds: marked
    assert "| kd | KD | 3/3 | 70.17 ± 0.58 | 69.67 ± 0.58 |" in markdown
    assert "Study results: t" in (tmp_path / "out" / "report" / "report.html").read_text()


def test_headline_family_gets_holm_and_the_rest_is_exploratory(tmp_path: Path) -> None:
    """Three arms × 3 seeds with last top-1 chosen so the paired t-tests are worked by hand:
    a − ref = [1, 2, 3] (mean 2, s 1, t = 2√3, 2 df), b − ref = [2, 2.1, 1.9] (mean 2, s 0.1, t = 20√3). For 2 df the
    t cdf has the closed form 1/2 + t / (2·sqrt(2 + t²)), so p = 1 − |t| / sqrt(2 + t²): p_a = 1 − 2√3/√14 = 0.0742,
    p_b = 1 − 20√3/√1202 = 0.000833. Holm over the declared pair (m = 2): b first, 2·p_b = 0.00167 <= 0.05 (beyond),
    then a, max(2·p_b, p_a) = 0.0742 > 0.05 (within). Uncorrected, a's 95 % interval 2 ± 4.3027/√3 = [-0.48, 4.48]."""
    from richkd.study.results import compare_arms

    def arm(tops: list[float]) -> dict[str, object]:
        return {"per_seed": {str(s): {"last_top1": t, "best_top1": t, **{k: None for k in ("nll", "ece",
                "confident_correct", "confident_wrong", "mean_corruption_accuracy")}} for s, t in enumerate(tops)}}

    arms = {"ref": arm([50.0, 50.0, 50.0]), "a": arm([51.0, 52.0, 53.0]), "b": arm([52.0, 52.1, 51.9])}
    raw = {"name": "h", "out": str(tmp_path), "seeds": [0, 1, 2],
           "arms": {k: {"argv": ["train.epochs=1"]} for k in arms}, "compare": ["ref"],
           "headline": [["a", "ref"], ["b", "ref", "last_top1"]]}
    comparisons, correction = compare_arms(arms, parse_spec(raw, "test"))
    a, b = comparisons[:2]
    p_a, p_b = 1 - 2 * math.sqrt(3) / math.sqrt(14), 1 - 20 * math.sqrt(3) / math.sqrt(1202)
    assert (a["family"], b["family"]) == ("headline", "headline") and (a["arm"], b["arm"]) == ("a", "b")
    assert a["p"] == pytest.approx(p_a, rel=1e-9) and b["p"] == pytest.approx(p_b, rel=1e-9)
    assert b["p_holm"] == pytest.approx(2 * p_b) and a["p_holm"] == pytest.approx(p_a)
    assert b["verdict"] == stats.BEYOND_HOLM and a["verdict"] == stats.WITHIN_HOLM
    assert a["low"] == pytest.approx(2 - 4.3027 / math.sqrt(3), abs=1e-4)  # uncorrected interval, still reported
    # the family interval is Bonferroni's at 1 − 0.05/2: t(0.9875, 2) = 6.2053 (t table)
    assert a["fw_high"] == pytest.approx(2 + 6.2053 / math.sqrt(3), abs=1e-3) and a["fw_confidence"] == 0.975
    assert correction["method"] == "holm" and correction["family_size"] == 2 and "Holm" in correction["rule"]
    rest = comparisons[2:]
    assert all(c["family"] == "exploratory" for c in rest)
    # best top-1 = last top-1 here: the same differences, but undeclared, so only labelled (uncorrected)
    labels = {c["arm"]: c["verdict"] for c in rest if c["metric"] == "best_top1"}
    assert labels == {"a": stats.EXPLORATORY_INCLUDES, "b": stats.EXPLORATORY_EXCLUDES}
    assert {c["verdict"] for c in rest if c["metric"] not in ("best_top1", "last_top1")} == {stats.NO_PAIRS}
    # the declared (arm, ref, metric) pairs are not repeated among the exploratory ones
    assert not [c for c in rest if c["metric"] == "last_top1" and c["arm"] in ("a", "b")]


@pytest.mark.parametrize(("study", "tested", "uncorrected"), [("cifar10_1k", 70, 27), ("cifar10_t5k", 210, 90)])
def test_committed_study_tables_are_the_corrected_ones(study: str, tested: int, uncorrected: int) -> None:
    """docs/results/ holds the tables recomputed from the per-run numbers under the spec's headline family (not a
    stale uncorrected version), and issue 27's counts hold: 90 of 210 (t5k) and 27 of 70 (1k) comparisons against
    the compare arms have an uncorrected 95 % interval excluding 0, and none survives Holm over all of them."""
    from richkd.study.results import recompute_results
    from richkd.study.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "benchmarks" / "study" / f"{study}.yaml")
    committed = json.loads((root / "docs" / "results" / f"{study}_results.json").read_text())
    fresh = recompute_results(committed, spec)
    assert committed["version"] == 2 and committed["headline"] == fresh["headline"]
    assert committed["correction"] == fresh["correction"]
    assert json.dumps(committed["comparisons"]) == json.dumps(fresh["comparisons"])
    against = [c for c in fresh["comparisons"] if c["against"] in spec.compare and c["p"] is not None]
    assert len(against) == tested
    assert sum(c["low"] > 0 or c["high"] < 0 for c in against) == uncorrected
    assert not [p for p in stats.holm([c["p"] for c in against]) if p is not None and p <= 0.05]
    headline = [c for c in fresh["comparisons"] if c["family"] == "headline"]
    assert headline and all(c["verdict"] == stats.WITHIN_HOLM for c in headline)


def test_committed_feature_study_is_its_recomputation_under_the_declared_headline() -> None:
    """docs/results/cifar10_feature_results.json (issue 21): its comparisons are what the per-run numbers give under
    the spec's headline family, the three pairs declared in the spec before any run, each on last-epoch top-1, and
    every arm has all 3 seeds."""
    from richkd.study.results import recompute_results
    from richkd.study.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "benchmarks" / "study" / "cifar10_feature.yaml")
    committed = json.loads((root / "docs" / "results" / "cifar10_feature_results.json").read_text())
    fresh = recompute_results(committed, spec)
    assert json.dumps(committed["comparisons"]) == json.dumps(fresh["comparisons"])
    declared = [("richkd_l_at", "richkd_l"), ("richkd_l_at", "control_l_at"), ("kd_at", "kd")]
    headline = [c for c in fresh["comparisons"] if c["family"] == "headline"]
    assert [(c["arm"], c["against"], c["metric"]) for c in headline] == [(a, b, "last_top1") for a, b in declared]
    assert len(committed["arms"]) == 15
    assert all(arm["seeds_done"] == [0, 1, 2] for arm in committed["arms"].values())


# ---------------------------------------------------------------- end to end


def _write_spec(tmp_path: Path, archive: Path) -> Path:
    train = ["data.name=imagefolder", f"data.root={archive}", "model.student=resnet8", "train.epochs=1",
             "train.batch_size=16", "train.max_steps_per_epoch=2", "train.progress=false", "optim.lr=0.05"]
    spec = {
        "name": "tiny", "out": str(tmp_path / "study"), "seeds": [0, 1], "parallel": 2, "threads": 1,
        "common": train,
        "prepare": [{"name": "teacher", "argv": ["train", "distill.method=vanilla", "out_dir={out}/teacher"],
                     "creates": "{out}/teacher/summary.json"}],
        "arms": {
            "vanilla": {"title": "vanilla", "argv": ["distill.method=vanilla"]},
            "kd": {"title": "KD (T=4)", "argv": ["distill.method=kd", "model.teacher=resnet8",
                                                 "model.teacher_checkpoint={out}/teacher/model_last.pt"]},
        },
        "compare": ["kd"],
        "analysis": {"threads": 1, "flows": ["teacher:kd"],
                     "predictors": {"teacher": ["--checkpoint", "{out}/teacher/model_last.pt", "--kind", "teacher"]},
                     "robustness": {"limit": 20, "severities": [1], "corruptions": ["contrast", "gaussian_noise"]}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _starts(log: Path) -> int:
    return sum(line.startswith("--- ") and " start (" in line for line in log.read_text().splitlines())


@pytest.mark.shared_data
def test_study_killed_mid_grid_then_rerun_skips_finished_runs(
    tiny_cifar10: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RICHKD_CACHE", str(tmp_path / "home"))
    spec = _write_spec(tmp_path, tiny_cifar10)
    out = tmp_path / "study"
    runs = {f"{arm}_s{seed}": out / "runs" / arm / f"s{seed}" for seed in (0, 1) for arm in ("vanilla", "kd")}

    assert main(["study", str(spec), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert plan.count(": new] richkd train") == 5 and "seed=1 out_dir=" in plan

    # the runner, SIGKILLed once two runs have written their summaries and a third has started (progress, not the
    # clock, sets the kill point; two, not one, so that the run killed in flight is the one with the least to redo)
    proc = subprocess.Popen([sys.executable, "-m", "richkd", "study", str(spec)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    kids: set[int] = set()

    def ready() -> bool:
        """Two runs done and a third one's training process alive (its log is opened before the process starts,
        so the log alone was a race: the kill could find no child)."""
        nonlocal kids
        done = [key for key, r in runs.items() if (r / "summary.json").is_file()]
        started = [key for key in runs if (out / "logs" / f"{key}.log").is_file()]
        if not (len(done) >= 2 and len(started) > len(done)):
            return False
        kids = descendants(proc.pid)
        return bool(kids)

    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.stderr:
        proc.stderr.close()
    assert kids, "no training run was running"
    assert_all_gone(kids, "training runs outlived the SIGKILLed runner")
    finished = {key: (r / "summary.json").stat().st_mtime_ns for key, r in runs.items()
                if (r / "summary.json").is_file()}
    assert 1 <= len(finished) < len(runs), finished
    in_flight = [key for key in runs if key not in finished and (out / "logs" / f"{key}.log").is_file()]
    assert in_flight, "no run was in flight at the kill"

    # --post-only: the finished runs get predictions and tables; nothing is trained or resumed
    starts = {key: _starts(out / "logs" / f"{key}.log") for key in in_flight}
    assert main(["study", str(spec), "--post-only"]) == 0
    said = capsys.readouterr().out
    assert " done before" not in said and f"after the runs: {len(finished)} of 4 finished" in said
    assert {key: _starts(out / "logs" / f"{key}.log") for key in in_flight} == starts
    assert all((out / "predictions" / f"{key}.preds.safetensors").is_file() for key in finished)

    assert main(["study", str(spec)]) == 0
    said = capsys.readouterr().out
    assert "prepare teacher: done before, skipped" in said
    assert f"runs: {len(finished)} of 4 done before" in said
    for key, mtime in finished.items():  # not trained again
        assert (runs[key] / "summary.json").stat().st_mtime_ns == mtime
        assert _starts(out / "logs" / f"{key}.log") == 1, key
        assert f"start  {key.replace('_s', ' s')}" not in said
    for key, run in runs.items():
        assert (run / "summary.json").is_file(), key
    for key in in_flight:  # killed mid-run: started again
        assert _starts(out / "logs" / f"{key}.log") == 2, key

    results = json.loads((out / "results.json").read_text())
    assert results["arms"]["vanilla"]["seeds_done"] == [0, 1] and results["arms"]["kd"]["seeds_done"] == [0, 1]
    assert results["arms"]["kd"]["summary"]["last_top1"]["n"] == 2
    last = {key: json.loads((run / "summary.json").read_text())["last_top1"] for key, run in runs.items()}
    diffs = [last["vanilla_s0"] - last["kd_s0"], last["vanilla_s1"] - last["kd_s1"]]
    [cmp] = [c for c in results["comparisons"] if c["arm"] == "vanilla" and c["metric"] == "last_top1"]
    assert cmp["against"] == "kd" and cmp["n"] == 2 and cmp["seeds"] == [0, 1]
    assert cmp["differences"] == pytest.approx(diffs) and cmp["mean"] == pytest.approx(sum(diffs) / 2)
    half = stats.t_quantile(0.975, 1) * abs(diffs[0] - diffs[1]) / 2  # s / sqrt(2) with s = |d0 - d1| / sqrt(2)
    assert cmp["low"] == pytest.approx(cmp["mean"] - half) and cmp["high"] == pytest.approx(cmp["mean"] + half)
    assert cmp["verdict"] == (stats.EXPLORATORY_EXCLUDES if cmp["low"] > 0 or cmp["high"] < 0
                              else stats.EXPLORATORY_INCLUDES)
    for arm in ("vanilla", "kd"):
        summary = results["arms"][arm]["summary"]
        assert summary["confident_correct"]["n"] == 2 and summary["mean_corruption_accuracy"]["n"] == 2
    markdown = (out / "results.md").read_text()
    assert "| vanilla | vanilla | 2/2 |" in markdown and "Paired differences against kd" in markdown
    html = (out / "report" / "report.html").read_text()
    assert "Study results: tiny" in html and "Confidence quadrants" in html

    assert main(["study", str(spec), "--dry-run"]) == 0
    assert capsys.readouterr().out.count(": done, skipped] richkd train") == 5

    # robustness: the models due were evaluated in one pass (each corrupted chunk made once); a model's numbers are
    # those of a pass of its own (gaussian_noise draws random noise: the same images only if keyed the same way)
    for key in runs:
        assert len(json.loads((out / "robustness" / key / "robustness.json").read_text())["evaluated_with"]) >= 2
    alone = tmp_path / "alone"
    assert main(["robustness", "--checkpoint", f"kd_s1={runs['kd_s1'] / 'model_last.pt'}", "--dataset", "imagefolder",
                 "--root", str(tiny_cifar10), "--split", "test", "--limit", "20", "--severities", "1", "--seed", "0",
                 "--corruptions", "contrast,gaussian_noise", "--threads", "1", "--out", str(alone)]) == 0
    own = json.loads((alone / "robustness.json").read_text())["models"]["kd_s1"]
    shared = json.loads((out / "robustness" / "kd_s1" / "robustness.json").read_text())["models"]["kd_s1"]
    assert own.pop("checkpoint_sha256") == shared.pop("checkpoint_sha256")
    assert {k: v for k, v in own.items() if k != "checkpoint"} == {k: v for k, v in shared.items() if k != "checkpoint"}
    assert "kd_s1" in (out / "robustness" / "kd_s1" / "robustness.md").read_text()
