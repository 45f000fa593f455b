"""Sections from run directories: the accuracy summary (mean ± std over seeds) and the training curves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from richkd.errors import RichKDError
from richkd.report.document import FigureBlock, Paragraph, Section, TableBlock
from richkd.report.figures import plot_training_curves
from richkd.report.inputs import Curve, is_surrogate, load_curve
from richkd.report.tables import Table, group_name, load_summaries, read_summary, run_label, summary_table


def vlm_teacher_label(run: Path) -> str:
    """Which vision-language teacher a run distilled from, from its run.json (surrogate marked as not CLIP)."""
    path = run / "run.json"
    if not path.is_file():
        return "unknown (no run.json)"
    try:
        provenance: Any = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RichKDError(f"{path} is not valid JSON ({err}); it is rewritten when the run is resumed") from None
    cache = provenance.get("target_cache") if isinstance(provenance, dict) else None
    if not cache:
        return "none"
    if is_surrogate(cache):
        return "surrogate (not CLIP)"
    return str(cache.get("model_id", "unrecorded"))


BEST_NOTE = (
    "Best top-1 \"chosen on test\" is the best test accuracy over epochs: the epoch is selected on the test set "
    "itself (the reference protocol), so it is optimistic. \"Chosen on val\" is the test accuracy at the epoch with "
    "the best accuracy on held-out training rows (data.val_split), which were never trained on."
)


def summary_section(run_dirs: Sequence[Path]) -> Section:
    """Best and last top-1 per arm (seeds grouped), the loss and which vision-language teacher stood behind it."""
    groups = load_summaries(run_dirs)
    base = summary_table(groups)
    extra: dict[str, tuple[set[str], set[str]]] = {}
    for run in run_dirs:
        losses, vlms = extra.setdefault(group_name(run), (set(), set()))
        losses.add(str(read_summary(run).get("loss", "—")))
        vlms.add(vlm_teacher_label(run))
    rows = tuple((*row, "; ".join(sorted(extra[row[0]][0])), "; ".join(sorted(extra[row[0]][1])))
                 for row in base.rows)
    table = Table((*base.headers, "loss", "vision-language teacher"), rows)
    note = (f"{BEST_NOTE} Last top-1 is the final epoch. ± is the sample standard deviation over the n "
            "seeds (directories NAME_s<seed> and NAME/s<seed> are grouped).")
    return Section("Summary", "summary", [TableBlock(table, "Accuracy of the runs"), Paragraph(note)])


def curves_section(run_dirs: Sequence[Path]) -> Section:
    """Test top-1 and train loss vs epoch for every run that kept its metrics.jsonl."""
    names = [run_label(run) for run in run_dirs]
    curves: dict[str, Curve] = {}
    missing = []
    for run in run_dirs:
        curve = load_curve(run)
        label = run_label(run) if names.count(run_label(run)) == 1 else str(run)
        if curve is None:
            missing.append(label)
        else:
            curves[label] = curve
    section = Section("Training curves", "curves")
    if curves:
        section.blocks.append(FigureBlock(plot_training_curves(curves), "Test top-1 and training loss per epoch"))
    if missing:
        section.blocks.append(Paragraph(f"No metrics.jsonl (no curve) in: {', '.join(missing)}.", note=True))
    return section
