"""`build_report`: run directories + analysis/robustness/cost JSON -> (HTML page, Markdown summary).

Every input is read and checked before anything is drawn, so a bad file fails in a second naming itself.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from richkd.report.document import Section
from richkd.report.html import render_html
from richkd.report.inputs import is_surrogate, load_result
from richkd.report.markdown import render_markdown
from richkd.report.sections.analysis import calibration_section, consistency_section, quadrants_section
from richkd.report.sections.common import omitted
from richkd.report.sections.cost import cost_section
from richkd.report.sections.robustness import robustness_section
from richkd.report.sections.runs import curves_section, summary_section, vlm_teacher_label
from richkd.report.sections.study import study_section
from richkd.report.tables import load_summaries

SURROGATE_BANNER = (
    "The vision-language teacher in these results is the offline surrogate (EfficientNet-Lite0 + MiniLM, "
    "ConSE-style), not CLIP. It is far weaker than CLIP, so these numbers show how the pipeline behaves, "
    "not what RichKD gains with a real CLIP teacher."
)


def _accuracy_by_name(run_dirs: Sequence[Path], analysis: dict[str, Any] | None,
                      robustness: dict[str, Any] | None) -> dict[str, tuple[float, str]]:
    """Top-1 per model name for the cost plot, preferring the measurement nearest the same checkpoint."""
    found: dict[str, tuple[float, str]] = {}
    for name, runs in load_summaries(run_dirs).items():
        found[name] = (statistics.mean(float(r["last_top1"]) for r in runs), "run summary (last top-1)")
    # robustness runs on a small corrupted subset; the analysis usually covers more test images, so it wins
    for name, entry in (robustness or {}).get("models", {}).items():
        found[name] = (float(entry["clean_top1"]), "robustness.json (clean)")
    for name, entry in (analysis or {}).get("predictors", {}).items():
        found[name] = (float(entry["top1"]), "analysis.json")
    return found


def _uses_surrogate(run_dirs: Sequence[Path], analysis: dict[str, Any] | None,
                    robustness: dict[str, Any] | None) -> bool:
    if analysis and (is_surrogate([p["provenance"] for p in analysis["predictors"].values()])
                     or is_surrogate((analysis.get("semantic_similarity") or {}).get("source"))):
        return True
    if robustness and is_surrogate([m.get("arch") for m in robustness["models"].values()]):
        return True
    return any(vlm_teacher_label(run).startswith("surrogate") for run in run_dirs)


def build_report(
    run_dirs: Sequence[Path],
    *,
    analysis: Path | None,
    robustness: Path | None,
    cost: Path | None,
    title: str,
    study: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """(self-contained HTML, Markdown) of the runs and whichever analysis files were given; `study` (a study's
    results.json content, `richkd study`) opens the report with its results table and paired comparisons."""
    load_summaries(run_dirs)  # fail on an unfinished run before any figure is drawn
    analysis_obj = load_result(analysis, "analysis") if analysis is not None else None
    robustness_obj = load_result(robustness, "robustness") if robustness is not None else None
    cost_obj = load_result(cost, "cost") if cost is not None else None

    sections: list[Section] = [] if study is None else [study_section(study)]
    sections += [summary_section(run_dirs), curves_section(run_dirs)]
    if analysis_obj is not None:
        sections += [calibration_section(analysis_obj), quadrants_section(analysis_obj),
                     consistency_section(analysis_obj)]
    else:
        sections += [omitted("Calibration", "calibration", "analysis"),
                     omitted("Confidence quadrants and flows", "quadrants", "analysis"),
                     omitted("Inter-class consistency", "consistency", "analysis")]
    sections.append(robustness_section(robustness_obj) if robustness_obj is not None
                    else omitted("Robustness", "robustness", "robustness"))
    if cost_obj is not None:
        sections.append(cost_section(cost_obj, _accuracy_by_name(run_dirs, analysis_obj, robustness_obj)))
    else:
        sections.append(omitted("Model cost", "cost", "cost"))

    banner = SURROGATE_BANNER if _uses_surrogate(run_dirs, analysis_obj, robustness_obj) else None
    inputs = [f"{len(run_dirs)} run directories"]
    inputs += [f"{kind} {path}" for kind, path in (("analysis", analysis), ("robustness", robustness),
                                                   ("cost", cost)) if path is not None]
    return (render_html(title, sections, banner=banner, inputs=inputs),
            render_markdown(title, sections, banner=banner, inputs=inputs))
