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
from richkd.study import stats
from richkd.study.grid import DONE, run_dir, run_state
from richkd.study.spec import StudySpec

__all__ = ["METRICS", "collect_results", "render_results_markdown", "write_results"]

# key -> (label, digits, higher is better)
METRICS: dict[str, tuple[str, int, bool]] = {
    "best_top1": ("best top-1 (%, chosen on test)", 2, True),
    "last_top1": ("last top-1 (%)", 2, True),
    "nll": ("NLL", 3, False),
    "ece": ("ECE (%)", 2, False),
    "confident_correct": ("confident-correct (%)", 1, True),
    "confident_wrong": ("confidently wrong (%)", 1, False),
    "mean_corruption_accuracy": ("mean corruption acc. (%)", 2, True),
}


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
    comparisons = []
    for reference in spec.compare:
        for name in spec.arms:
            if name == reference:
                continue
            for metric in METRICS:
                values = {int(s): r[metric] for s, r in arms[name]["per_seed"].items()}
                ref = {int(s): r[metric] for s, r in arms[reference]["per_seed"].items()}
                diffs = stats.paired_differences(values, ref)
                interval = stats.t_interval(list(diffs.values()))
                comparisons.append({
                    "arm": name, "against": reference, "metric": metric, "seeds": list(diffs),
                    "differences": list(diffs.values()), "n": len(diffs),
                    "mean": stats.mean(list(diffs.values())) if diffs else None,
                    "low": None if interval is None else interval.low,
                    "high": None if interval is None else interval.high,
                    "confidence": 0.95, "verdict": stats.verdict(interval) if diffs else "no paired seeds",
                })
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
        "version": 1, "study": spec.name, "seeds": list(spec.seeds), "compare": list(spec.compare),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": {k: {"label": label, "digits": digits, "higher_is_better": hib}
                    for k, (label, digits, hib) in METRICS.items()},
        "tau": None if analysis is None else analysis.get("tau"),
        "arms": arms, "comparisons": comparisons, "notes": notes,
    }


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
