"""Number formatting and the notes shown where a section's input was not given."""

from __future__ import annotations

from richkd.report.document import Paragraph, Section

MISSING_NOTES = {
    "analysis": "`richkd analyze A.preds.safetensors B.preds.safetensors … --out DIR` writes DIR/analysis.json "
    "(the predictions come from `richkd predict`); pass it with --analysis",
    "robustness": "`richkd robustness … --out DIR` writes DIR/robustness.json; pass it with --robustness",
    "cost": "`richkd cost --checkpoint NAME=PATH … --out DIR` writes DIR/cost.json; pass it with --cost",
}


def num(value: object, digits: int = 2, scale: float = 1.0) -> str:
    """A number with fixed digits, or an em dash for null/missing values."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    return f"{float(value) * scale:.{digits}f}"


def omitted(title: str, anchor: str, kind: str) -> Section:
    """A section whose input was not given: a one-line note saying which command produces it."""
    return Section(title, anchor, [Paragraph(f"Not included: no {kind}.json was given. {MISSING_NOTES[kind]}.",
                                             note=True)])
