"""Section from robustness.json: accuracy vs severity, per-corruption heat map, tables, distribution shift."""

from __future__ import annotations

import statistics
from typing import Any

from richkd.report.document import FigureBlock, Paragraph, Section, TableBlock
from richkd.report.figures import plot_corruption_heatmap, plot_robustness_curves
from richkd.report.inputs import display_name
from richkd.report.sections.common import num
from richkd.report.tables import Table


def mean_per_severity(entry: dict[str, Any], corruptions: list[str], n_severities: int) -> list[float]:
    """Accuracy at each severity averaged over the corruptions the model was measured on."""
    measured = [c for c in corruptions if c in entry["per_corruption"]]
    if not measured:  # e.g. a run that measured only distribution-shift sets
        return []
    return [statistics.mean(float(entry["per_corruption"][c][s]) for c in measured) for s in range(n_severities)]


def robustness_section(robustness: dict[str, Any]) -> Section:
    """Clean accuracy, mean corruption accuracy and relative robustness per model, with two figures."""
    severities = [int(s) for s in robustness["severities"]]
    corruptions = list(robustness["corruptions"])
    models = {display_name(k, m): m for k, m in robustness["models"].items()}
    per_severity = {name: mean_per_severity(m, corruptions, len(severities)) for name, m in models.items()}
    headers = ("model", "arch", "clean top-1 (%)", "mean corruption acc. (%)", "relative robustness",
               *(f"severity {s} (%)" for s in severities))
    rows = tuple(
        (name, str(m.get("arch", "—")), num(m["clean_top1"]), num(m["mean_corruption_accuracy"]),
         num(m["relative_robustness"], 3),
         *(num(v) for v in per_severity[name]), *(["—"] * (len(severities) - len(per_severity[name]))))
        for name, m in models.items()
    )
    source = robustness.get("source", "unrecorded")
    section = Section("Robustness", "robustness", [
        Paragraph(f"{len(corruptions)} corruptions × {len(severities)} severities on "
                  f"{robustness.get('n_images', '?')} images of {robustness['dataset']}/"
                  f"{robustness.get('split', '?')} (corrupted images: {source}, seed {robustness.get('seed', '?')}). "
                  "Relative robustness = mean corruption accuracy / clean accuracy."),
        TableBlock(Table(headers, rows), "Accuracy under corruption"),
    ])
    measured = {name: accs for name, accs in per_severity.items() if accs}
    if measured:
        clean = {name: float(models[name]["clean_top1"]) for name in measured}
        section.blocks.append(FigureBlock(plot_robustness_curves(severities, clean, measured),
                                          "Mean accuracy over corruptions at each severity"))
    shown = [c for c in corruptions if all(c in m["per_corruption"] for m in models.values())]
    if shown:
        matrix = [[statistics.mean(float(v) for v in m["per_corruption"][c]) for m in models.values()]
                  for c in shown]
        section.blocks.append(FigureBlock(plot_corruption_heatmap(shown, list(models), matrix),
                                          "Accuracy per corruption, averaged over severities"))
        rows = tuple((c, *(num(v, 1) for v in row)) for c, row in zip(shown, matrix, strict=True))
        section.blocks.append(TableBlock(Table(("corruption", *models), rows),
                                         "Top-1 (%) per corruption, mean over severities"))
    shift = robustness.get("shift") or {}
    if shift:
        model_names = sorted({name for accs in shift.values() for name in accs})
        rows = tuple((set_name, *(num(accs.get(n)) for n in model_names)) for set_name, accs in shift.items())
        section.blocks.append(TableBlock(Table(("test set", *model_names), rows),
                                         "Top-1 (%) on distribution-shift test sets"))
    return section
