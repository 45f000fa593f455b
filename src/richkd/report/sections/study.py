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


def _signed(value: Any, digits: int) -> str:
    return "—" if value is None else f"{float(value):+.{digits}f}"


def _interval(low: Any, high: Any, digits: int) -> str:
    return "—" if low is None or high is None else f"[{_signed(low, digits)}, {_signed(high, digits)}]"


def _p(value: Any) -> str:
    if value is None:
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _per_seed(cmp: dict[str, Any], digits: int) -> str:
    return ", ".join(f"s{s}: {_signed(d, digits)}" for s, d in zip(cmp["seeds"], cmp["differences"], strict=True))


def comparison_tables(results: dict[str, Any]) -> list[tuple[str, Table]]:
    """The headline comparisons (Holm-corrected verdicts), then per reference arm the exploratory comparisons
    (uncorrected): per-seed differences, mean and 95 % t-interval, Cohen's d_z and its interval, paired-t p."""
    metrics, arms = results["metrics"], results["arms"]
    labels = metric_labels(results)
    comparisons = results["comparisons"]
    found = []
    headline = [c for c in comparisons if c.get("family") == "headline"]
    if headline:
        corr = results.get("correction") or {}
        rows: list[tuple[str, ...]] = []
        for cmp in headline:
            digits = int(metrics[cmp["metric"]]["digits"])
            rows.append((f"{cmp['arm']} − {cmp['against']}", labels[cmp["metric"]], str(cmp["n"]),
                         _per_seed(cmp, digits) or "—",
                         f"{_signed(cmp['mean'], digits)} {_interval(cmp['low'], cmp['high'], digits)}",
                         _interval(cmp.get("fw_low"), cmp.get("fw_high"), digits),
                         f"{_signed(cmp.get('dz'), 2)} {_interval(cmp.get('dz_low'), cmp.get('dz_high'), 2)}",
                         _p(cmp.get("p")), _p(cmp.get("p_holm")), cmp["verdict"]))
        m, alpha = corr.get("family_size", len(headline)), corr.get("alpha", 0.05)
        fw = f"{100 * (1 - alpha / m):.4g} %" if m else "—"
        found.append((f"Headline comparisons (declared in the spec): Holm's correction over the family of m = {m}, "
                      f"family-wise α = {alpha}",
                      Table(("comparison", "metric", "n", "per-seed difference", "mean [95 % interval]",
                             f"{fw} interval (Bonferroni)", "d_z [95 % interval]", "p (paired t)", "Holm p",
                             "verdict"), tuple(rows))))
    for reference in results.get("compare", []):
        rows = []  # a fresh list per reference
        for cmp in comparisons:
            if cmp["against"] != reference or cmp.get("family") == "headline":
                continue
            digits = int(metrics[cmp["metric"]]["digits"])
            rows.append((cmp["arm"], labels[cmp["metric"]], str(cmp["n"]), _per_seed(cmp, digits) or "—",
                         _signed(cmp["mean"], digits), _interval(cmp["low"], cmp["high"], digits),
                         f"{_signed(cmp.get('dz'), 2)} {_interval(cmp.get('dz_low'), cmp.get('dz_high'), 2)}",
                         _p(cmp.get("p")), cmp["verdict"]))
        title = arms[reference].get("title") or reference
        found.append((f"Paired differences against {reference} ({title}): arm − {reference}, same seed; exploratory, "
                      "uncorrected for multiple comparisons",
                      Table(("arm", "metric", "n", "per-seed difference", "mean", "95 % interval",
                             "d_z [95 % interval]", "p (paired t, uncorrected)", "label"), tuple(rows))))
    return found


def study_notes(results: dict[str, Any]) -> list[str]:
    """How to read the tables: the protocol behind each column, the marks, the correction and the labels."""
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
    if results.get("comparisons"):
        notes.append("Paired comparisons: for every seed both arms finished, the difference arm − reference; mean "
                     "and 95 % t-interval (mean ± t(0.975, n−1)·s/√n); Cohen's d_z = mean / s with its exact "
                     "interval (noncentral t); p of the two-sided paired t-test (t = mean / (s/√n), n − 1 df). "
                     "With one seed there is no interval and no test.")
        corr = results.get("correction") or {}
        if corr.get("method") == "holm":
            notes.append(f"Correction: {corr['rule']} (α = {corr['alpha']}, m = {corr['family_size']}). "
                         f"{corr.get('family_interval') or ''}.")
        else:
            notes.append("Correction: none — the spec declares no headline comparisons, so no comparison gets a "
                         "verdict of noise.")
        notes.append("Exploratory comparisons (every one not declared headline) are labelled by whether their "
                     "uncorrected 95 % interval excludes 0; such a label is not a finding: "
                     + str(corr.get("exploratory", "they are not corrected for multiplicity")) + ".")
    return notes


def study_section(results: dict[str, Any]) -> Section:
    """The study's results table and paired comparisons, as the first section of its report."""
    section = Section(f"Study results: {results['study']}", "study")
    section.blocks.append(TableBlock(results_table(results), "Results per arm: mean ± std over seeds"))
    for caption, table in comparison_tables(results):
        section.blocks.append(TableBlock(table, caption))
    section.blocks += [Paragraph(text) for text in study_notes(results)]
    return section
