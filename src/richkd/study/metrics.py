"""The metrics a study tabulates per run, named once so the spec (headline comparisons) and the tables agree."""

from __future__ import annotations

__all__ = ["DEFAULT_HEADLINE_METRIC", "METRICS"]

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

# a headline comparison without a metric compares the last epoch's top-1 (the best epoch is chosen on the test set)
DEFAULT_HEADLINE_METRIC = "last_top1"
