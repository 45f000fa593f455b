"""A study's numbers: every finished run's metrics gathered from its run directory, the all-runs analysis and its
robustness file; mean ± std per arm; paired comparisons against the `compare` arms. Written as results.json and
results.md (atomically); the report shows the same tables (`richkd.report.sections.study`).

Sources: best/last top-1, NLL and ECE from each run's summary.json (the trainer's evaluation of the test split
every epoch); confident-correct and confidently-wrong fractions from `richkd analyze` of the run's model_last.pt
predictions (τ as in the analyses); mean corruption accuracy from `richkd robustness` of the same file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from richkd.engine.io import write_json_atomic, write_text_atomic
from richkd.errors import RichKDError
from richkd.study import stats
from richkd.study.grid import DONE, run_dir, run_state
from richkd.study.metrics import METRICS
from richkd.study.spec import StudySpec

__all__ = ["METRICS", "collect_results", "compare_arms", "recompute_results", "render_results_markdown",
           "write_results"]



def run_key(arm: str, seed: int) -> str:
    """The name of a run among predictions, analyses and robustness files."""
    return f"{arm}_s{seed}"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _run_metrics(spec: StudySpec, arm: str, seed: int, analysis: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metrics of one finished run; None where its analysis or robustness file is missing."""
    folder = run_dir(spec.out_path, arm, seed)
    summary = _read_json(folder / "summary.json") or {}
    key = run_key(arm, seed)
    quadrants = ((analysis or {}).get("predictors", {}).get(key) or {}).get("quadrants") or {}
    robustness = (_read_json(spec.out_path / "robustness" / key / "robustness.json") or {}
                  if spec.analysis.robustness is not None else {})
    mca = (robustness.get("models", {}).get(key) or {}).get("mean_corruption_accuracy")

    def scaled(value: Any, factor: float = 1.0) -> float | None:
        return None if value is None else float(value) * factor

    return {
        "best_top1": scaled(summary.get("best_top1")),
        "last_top1": scaled(summary.get("last_top1")),
        "nll": scaled(summary.get("last_nll")),
        "ece": scaled(summary.get("last_ece"), 100.0),
        "confident_correct": scaled(quadrants.get("confident_correct"), 100.0),
        "confident_wrong": scaled(quadrants.get("confident_wrong"), 100.0),
        "mean_corruption_accuracy": scaled(mca),
        "train_wall_s": scaled(summary.get("train_wall_s")),
        "epochs": summary.get("epochs"),
        "best_selected_on": summary.get("best_selected_on", "test"),
        "run_dir": str(folder),
    }


def _summarise(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "std": None}
    return {"n": len(values), "mean": stats.mean(values), "std": stats.sample_std(values)}


def collect_results(spec: StudySpec, analysis_path: Path | None) -> dict[str, Any]:
    """results.json's content from what is on disk now (unfinished runs are left out and counted)."""
    analysis = _read_json(analysis_path) if analysis_path is not None else None
    arms: dict[str, Any] = {}
    for arm in spec.arms.values():
        done = [s for s in spec.seeds if run_state(run_dir(spec.out_path, arm.name, s)) == DONE]
        per_seed = {seed: _run_metrics(spec, arm.name, seed, analysis) for seed in done}
        summary = {key: _summarise([v for r in per_seed.values() if (v := r[key]) is not None])
                   for key in (*METRICS, "train_wall_s")}
        arms[arm.name] = {"title": arm.title, "seeds_asked": list(spec.seeds), "seeds_done": done,
                          "complete": len(done) == len(spec.seeds),
                          "per_seed": {str(s): r for s, r in per_seed.items()}, "summary": summary}
    comparisons, correction = compare_arms(arms, spec)
    notes = []
    if analysis is None:
        notes.append("Confident-correct / confidently-wrong fractions: no analysis of the runs' predictions "
                      "(analysis.predict is false, or none finished), so those columns are empty.")
    else:
        notes.append(f"Confident means the top softmax probability is at least τ = {analysis.get('tau')} "
                     f"(`richkd analyze` of each run's model_last.pt on {analysis.get('n')} test images).")
    rob = spec.analysis.robustness
    if rob is None:
        notes.append("Mean corruption accuracy: analysis.robustness is not set, so that column is empty.")
    else:
        from richkd.robustness.corruptions import CORRUPTIONS

        n_corruptions = len(rob.corruptions) if rob.corruptions else len(CORRUPTIONS)
        notes.append(f"Mean corruption accuracy: mean over {n_corruptions} "
                     f"corruptions × severities {', '.join(map(str, rob.severities))} on "
                     f"{rob.limit or 'all'} test images (seed {rob.seed}), model_last.pt of each run.")
    notes.append(f"The report's calibration, quadrant and robustness sections show seed {spec.shown_seed()} of "
                 "each arm; the tables here use every seed done.")
    return {
        "version": RESULTS_VERSION, "study": spec.name, "seeds": list(spec.seeds), "compare": list(spec.compare),
        "headline": _headline_list(spec), "correction": correction,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": {k: {"label": label, "digits": digits, "higher_is_better": hib}
                    for k, (label, digits, hib) in METRICS.items()},
        "tau": None if analysis is None else analysis.get("tau"),
        "arms": arms, "comparisons": comparisons, "notes": notes,
    }


RESULTS_VERSION = 2  # 2: headline family with Holm's correction, effect sizes, exploratory labels
CONFIDENCE = 0.95
HOLM_RULE = ("Holm's step-down correction over the headline family of m comparisons: sort their paired t-test "
             "p-values p(1) <= ... <= p(m); adjusted p(i) = max over j <= i of min(1, (m − j + 1)·p(j)); a headline "
             "comparison is beyond seed noise iff its adjusted p <= α, which holds the chance of any false call in "
             "the family at most α")


def _headline_list(spec: StudySpec) -> list[dict[str, str]]:
    return [{"arm": h.arm, "against": h.against, "metric": h.metric} for h in spec.headline]


def _paired(arms: Mapping[str, Any], arm: str, against: str, metric: str, family: str) -> dict[str, Any]:
    """One comparison arm − against on `metric` over the seeds both finished: the mean difference and its 95 %
    t-interval, Cohen's d_z and its interval, the paired t-test; the verdict is set by `compare_arms`."""
    values = {int(s): r[metric] for s, r in arms[arm]["per_seed"].items()}
    ref = {int(s): r[metric] for s, r in arms[against]["per_seed"].items()}
    diffs = stats.paired_differences(values, ref)
    d = list(diffs.values())
    interval, test, dz = stats.t_interval(d, CONFIDENCE), stats.paired_t_test(d), stats.cohens_dz_interval(d)
    return {
        "arm": arm, "against": against, "metric": metric, "family": family, "seeds": list(diffs),
        "differences": d, "n": len(d), "mean": stats.mean(d) if d else None, "sd": stats.sample_std(d),
        "low": None if interval is None else interval.low, "high": None if interval is None else interval.high,
        "confidence": CONFIDENCE,
        "dz": None if dz is None else dz.mean, "dz_low": None if dz is None else dz.low,
        "dz_high": None if dz is None else dz.high,
        "t": None if test is None else test.t, "df": None if test is None else test.df,
        "p": None if test is None else test.p, "p_holm": None, "fw_low": None, "fw_high": None,
        "fw_confidence": None, "verdict": "",
    }


def _untested(cmp: dict[str, Any]) -> str | None:
    if cmp["n"] == 0:
        return stats.NO_PAIRS
    if cmp["n"] < 2:
        return stats.TOO_FEW
    return stats.NO_SPREAD if cmp["p"] is None else None


def compare_arms(arms: Mapping[str, Any], spec: StudySpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The headline comparisons (Holm over their family, verdicts) then every arm against each `compare` arm on
    every metric (exploratory, uncorrected: intervals and p, no verdict of noise), and the correction used."""
    missing = [name for h in spec.headline for name in (h.arm, h.against) if name not in arms]
    missing += [name for name in spec.compare if name not in arms]
    if missing:
        raise RichKDError(f"study {spec.name}: the results have no arm {missing[0]!r}; arms: {', '.join(arms)}")
    headline = [_paired(arms, h.arm, h.against, h.metric, "headline") for h in spec.headline]
    m, alpha = len(headline), spec.alpha
    for cmp, adjusted in zip(headline, stats.holm([c["p"] for c in headline]), strict=True):
        cmp["p_holm"] = adjusted
        wide = stats.t_interval(cmp["differences"], 1.0 - alpha / m)
        if wide is not None:
            cmp["fw_low"], cmp["fw_high"], cmp["fw_confidence"] = wide.low, wide.high, 1.0 - alpha / m
        cmp["verdict"] = _untested(cmp) or (stats.BEYOND_HOLM if adjusted is not None and adjusted <= alpha
                                            else stats.WITHIN_HOLM)
    declared = {(h.arm, h.against, h.metric) for h in spec.headline}
    exploratory = []
    for reference in spec.compare:
        for name in arms:
            for metric in METRICS:
                if name == reference or (name, reference, metric) in declared:
                    continue
                cmp = _paired(arms, name, reference, metric, "exploratory")
                low, high = cmp["low"], cmp["high"]
                cmp["verdict"] = _untested(cmp) or (stats.EXPLORATORY_EXCLUDES if low > 0.0 or high < 0.0
                                                    else stats.EXPLORATORY_INCLUDES)
                exploratory.append(cmp)
    correction = {
        "method": "holm" if m else "none", "alpha": alpha, "family_size": m, "rule": HOLM_RULE if m else
        "no headline comparisons declared (spec key `headline`): every comparison is exploratory",
        "exploratory": f"{len(exploratory)} exploratory comparisons, uncorrected for multiplicity: if no arm "
                       f"differed from its reference, about {0.05 * len(exploratory):.0f} of them would exclude 0 by "
                       "chance alone",
        "family_interval": (f"Headline rows also give the Bonferroni interval at {1 - alpha / m:.4g} confidence "
                            "(1 − α/m), the simultaneous interval that matches the family-wise level; Holm can call "
                            "an effect beyond noise while that interval still touches 0, never the reverse")
        if m else None,
    }
    return headline + exploratory, correction


def recompute_results(results: Mapping[str, Any], spec: StudySpec) -> dict[str, Any]:
    """`results` (a results.json of any version) with its comparisons recomputed from the per-run numbers it holds,
    under `spec`'s compare arms and headline family: the tables without the run directories."""
    if results.get("study") != spec.name:
        raise RichKDError(f"results of study {results.get('study')!r} do not belong to spec {spec.name!r}")
    comparisons, correction = compare_arms(results["arms"], spec)
    return {**results, "version": RESULTS_VERSION, "compare": list(spec.compare), "headline": _headline_list(spec),
            "correction": correction, "comparisons": comparisons,
            "recomputed": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def render_results_markdown(results: dict[str, Any]) -> str:
    """results.md: the results table, one paired-comparison table per reference arm, and how to read them."""
    from richkd.report.sections.study import comparison_tables, results_table, study_notes

    parts = [f"# Study {results['study']}: results\n", "## Results per arm (mean ± std over seeds)\n",
             results_table(results).to_markdown()]
    for caption, table in comparison_tables(results):
        parts += [f"## {caption}\n", table.to_markdown()]
    parts += ["## Notes\n", "\n".join(f"- {n}" for n in study_notes(results)) + "\n"]
    return "\n".join(parts)


def write_results(out: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """OUT/results.json and OUT/results.md, each written atomically."""
    json_path, md_path = out / "results.json", out / "results.md"
    write_json_atomic(json_path, results)
    write_text_atomic(md_path, render_results_markdown(results))
    return json_path, md_path
