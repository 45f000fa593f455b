"""Section from a study's results.json (written by `richkd study`): the results table over seeds and the paired
comparisons against the reference arms. The same tables make the study's results.md, so both show one set of
numbers."""

from __future__ import annotations

from typing import Any

from richkd.report.document import Paragraph, Section, TableBlock
from richkd.report.sections.common import num
from richkd.report.tables import Table, best_label

__all__ = ["comparison_tables", "results_table", "study_notes", "study_section"]

FEWER_MARK = "*"


def _mean_std(entry: dict[str, Any], digits: int) -> str:
    if not entry or not entry.get("n"):
        return "—"
    if entry.get("std") is None:
        return num(entry["mean"], digits)
    return f"{num(entry['mean'], digits)} ± {num(entry['std'], digits)}"


def _selected_on(results: dict[str, Any]) -> set[str]:
    """What chose the best epoch of the study's runs (a run recorded before best_selected_on chose on test)."""
    return {str(run.get("best_selected_on") or "test")
            for arm in results["arms"].values() for run in arm.get("per_seed", {}).values()}


def metric_labels(results: dict[str, Any]) -> dict[str, str]:
    """Each metric's column label; best top-1 names the split that chose its epoch (test unless data.val_split)."""
    labels = {key: str(m["label"]) for key, m in results["metrics"].items()}
    if "best_top1" in labels:
        labels["best_top1"] = best_label(_selected_on(results))
    return labels


def results_table(results: dict[str, Any]) -> Table:
    """One row per arm: seeds done / asked (marked when fewer), then mean ± sample std of every metric."""
    metrics = results["metrics"]
    labels = metric_labels(results)
    headers = ("arm", "title", "seeds", *(labels[key] for key in metrics), "train wall (s/run)")
    rows = []
    for name, arm in results["arms"].items():
        done, asked = len(arm["seeds_done"]), len(arm["seeds_asked"])
        seeds = f"{done}/{asked}" + ("" if done >= asked else f" {FEWER_MARK}")
        cells = [_mean_std(arm["summary"].get(key, {}), int(m["digits"])) for key, m in metrics.items()]
        wall = _mean_std(arm["summary"].get("train_wall_s", {}), 0)
        rows.append((name, arm.get("title") or name, seeds, *cells, wall))
    return Table(headers, tuple(rows))


def comparison_tables(results: dict[str, Any]) -> list[tuple[str, Table]]:
    """Per reference arm: for each other arm and metric, the per-seed differences, their mean and 95 % interval."""
    metrics, arms = results["metrics"], results["arms"]
    labels = metric_labels(results)
    found = []
    for reference in results.get("compare", []):
        rows = []
        for cmp in results["comparisons"]:
            if cmp["against"] != reference:
                continue
            digits = int(metrics[cmp["metric"]]["digits"])
            per_seed = ", ".join(f"s{s}: {num(d, digits)}" for s, d in zip(cmp["seeds"], cmp["differences"],
                                                                             strict=True))
            interval = ("—" if cmp["low"] is None
                        else f"[{num(cmp['low'], digits)}, {num(cmp['high'], digits)}]")
            rows.append((cmp["arm"], labels[cmp["metric"]],
                         str(cmp["n"]), per_seed or "—", num(cmp["mean"], digits), interval, cmp["verdict"]))
        title = arms[reference].get("title") or reference
        found.append((f"Paired differences against {reference} ({title}): arm − {reference}, same seed",
                      Table(("arm", "metric", "n", "per-seed difference", "mean", "95 % interval", "verdict"),
                            tuple(rows))))
    return found


def study_notes(results: dict[str, Any]) -> list[str]:
    """How to read the tables: the protocol behind each column, the marks, the verdict rule."""
    seeds = ", ".join(str(s) for s in results["seeds"])
    notes = [
        f"{len(results['seeds'])} seeds asked per arm ({seeds}); ± is the sample standard deviation over the seeds "
        f"done; {FEWER_MARK} marks an arm with fewer seeds done than asked.",
        "Best top-1 chosen on test is the best test accuracy over epochs (the reference protocol selects the epoch on "
        "the test set, so it is optimistic); chosen on val is the test accuracy at the epoch with the best accuracy "
        "on held-out training rows (data.val_split). Last top-1, NLL and ECE are the final epoch's evaluation "
        "during training.",
    ]
    notes += [str(n) for n in results.get("notes", [])]
    if results.get("compare"):
        notes.append("Paired comparisons: for every seed both arms finished, the difference arm − reference; mean "
                     "and 95 % t-interval (mean ± t(0.975, n−1)·s/√n). \"beyond seed noise\" means the interval "
                     "excludes 0; with one seed there is no interval.")
    return notes


def study_section(results: dict[str, Any]) -> Section:
    """The study's results table and paired comparisons, as the first section of its report."""
    section = Section(f"Study results: {results['study']}", "study")
    section.blocks.append(TableBlock(results_table(results), "Results per arm: mean ± std over seeds"))
    for caption, table in comparison_tables(results):
        section.blocks.append(TableBlock(table, caption))
    section.blocks += [Paragraph(text) for text in study_notes(results)]
    return section
