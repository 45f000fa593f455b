"""Sections from analysis.json: calibration, confidence quadrants and flows, inter-class consistency."""

from __future__ import annotations

from typing import Any

from richkd.report.document import FigureBlock, Paragraph, Section, TableBlock
from richkd.report.figures import (
    QUADRANT_LABELS,
    QUADRANTS,
    Reliability,
    plot_class_correlation,
    plot_flow,
    plot_quadrants,
    plot_reliability,
)
from richkd.report.inputs import display_name, is_surrogate
from richkd.report.sections.common import num
from richkd.report.tables import Table

MAX_CORRELATION_PAIRS = 6


def _names(analysis: dict[str, Any]) -> dict[str, str]:
    """Predictor key -> name shown, marking the surrogate vision-language teacher."""
    return {key: display_name(key, entry["provenance"]) for key, entry in analysis["predictors"].items()}


def _shown(names: dict[str, str], key: str) -> str:
    return names.get(key, key)


def calibration_section(analysis: dict[str, Any]) -> Section:
    """Accuracy, NLL and the three ECE variants per predictor, and a reliability diagram each."""
    names = _names(analysis)
    headers = ("predictor", "top-1 (%)", "top-5 (%)", "NLL", "ECE (%)", "adaptive ECE (%)", "classwise ECE (%)")
    rows = tuple(
        (names[key], num(p["top1"]), num(p["top5"]), num(p["nll"], 3), num(p["ece"], 2, 100),
         num(p.get("adaptive_ece"), 2, 100), num(p.get("classwise_ece"), 2, 100))
        for key, p in analysis["predictors"].items()
    )
    reliability = {
        names[key]: Reliability(p["reliability"]["bin_edges"], p["reliability"]["count"],
                                p["reliability"]["accuracy"],
                                p["reliability"].get("confidence") or [None] * len(p["reliability"]["count"]),
                                float(p["ece"]))
        for key, p in analysis["predictors"].items()
    }
    where = f"{analysis['n']} samples of {analysis.get('dataset', '?')}/{analysis.get('split', '?')}"
    return Section("Calibration", "calibration", [
        Paragraph(f"{where}; ECE over {analysis['n_bins']} equal-width confidence bins."),
        TableBlock(Table(headers, rows), "Accuracy and calibration per predictor"),
        FigureBlock(plot_reliability(reliability), "Reliability diagrams: bars below the diagonal are "
                                                   "over-confident bins"),
    ])


def quadrants_section(analysis: dict[str, Any]) -> Section:
    """Quadrant shares per predictor, then how samples move between quadrants from one predictor to another."""
    names = _names(analysis)
    tau = float(analysis["tau"])
    quadrants = {names[key]: p["quadrants"] for key, p in analysis["predictors"].items()}
    table = Table(("predictor", *(f"{QUADRANT_LABELS[q]} (%)" for q in QUADRANTS)),
                  tuple((name, *(num(q[k], 1, 100) for k in QUADRANTS)) for name, q in quadrants.items()))
    section = Section("Confidence quadrants and flows", "quadrants", [
        Paragraph(f"Confident means the highest softmax probability is at least τ = {tau:g}."),
        TableBlock(table, "Share of samples per quadrant"),
        FigureBlock(plot_quadrants(quadrants, tau), "Confidence quadrants per predictor"),
    ])
    for flow in analysis.get("flows") or []:
        src, dst = _shown(names, flow["from"]), _shown(names, flow["to"])
        states = [QUADRANT_LABELS.get(s, s) for s in flow["states"]]
        rows = tuple((state, *(str(c) for c in counts)) for state, counts in zip(states, flow["counts"],
                                                                                    strict=True))
        section.blocks.append(TableBlock(Table(("from \\ to", *states), rows),
                                         f"Samples moving from a quadrant under {src} (rows) to one under {dst} "
                                         "(columns)"))
        section.blocks.append(FigureBlock(plot_flow(src, dst, flow["states"], flow["counts"]),
                                          f"Where the samples of each {src} quadrant end up under {dst}"))
    agreement = analysis.get("agreement") or []
    if agreement:
        rows = tuple((_shown(names, a["reference"]), _shown(names, a["other"]), num(a.get("top1_agreement")),
                      num(a.get("mean_kl"), 4)) for a in agreement)
        section.blocks.append(TableBlock(Table(("reference", "other", "top-1 agreement (%)", "mean KL"), rows),
                                         "Agreement with a reference predictor"))
    return section


def _correlation_pairs(analysis: dict[str, Any]) -> list[tuple[str, str]]:
    """(teacher, student) pairs to compare: the agreement pairs, else the first predictor against the rest."""
    have = [k for k, p in analysis["predictors"].items() if p["class_correlation"] is not None]
    pairs = [(a["reference"], a["other"]) for a in analysis.get("agreement") or []]
    if not pairs and have:
        pairs = [(have[0], other) for other in have[1:]]
    return [(t, s) for t, s in pairs if t in have and s in have][:MAX_CORRELATION_PAIRS]


def consistency_section(analysis: dict[str, Any]) -> Section:
    """Rank correlations with class-name similarity and a reference, and class-correlation difference maps."""
    names = _names(analysis)
    rows = tuple(
        (names[key], num((p.get("consistency") or {}).get("semantic_spearman"), 3),
         num((p.get("consistency") or {}).get("reference_spearman"), 3))
        for key, p in analysis["predictors"].items()
    )
    section = Section("Inter-class consistency", "consistency", [
        TableBlock(Table(("predictor", "Spearman vs class-name similarity", "Spearman vs reference"), rows),
                   "Rank correlation of mean non-target probabilities per class pair"),
    ])
    similarity = analysis.get("semantic_similarity")
    if similarity:
        source = str(similarity.get("source", "unrecorded"))
        if is_surrogate(source):
            source += " — the surrogate's text tower, not CLIP"
        section.blocks.append(Paragraph(f"Class-name similarity: {source}."))
    else:
        section.blocks.append(Paragraph("No class-name similarity was given, so the semantic Spearman is empty.",
                                        note=True))
    for teacher, student in _correlation_pairs(analysis):
        fig = plot_class_correlation(names[teacher], analysis["predictors"][teacher]["class_correlation"],
                                     names[student], analysis["predictors"][student]["class_correlation"],
                                     analysis["classes"])
        section.blocks.append(FigureBlock(fig, f"Class correlation of {names[teacher]} and {names[student]}; "
                                               "a darker difference map means the student kept the teacher's "
                                               "class relations"))
    return section
