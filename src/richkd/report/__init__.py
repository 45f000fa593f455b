"""The report: run summaries and analysis JSON files in, Markdown tables, figures and one HTML page out.

Owns tables of runs (`tables`), plot functions over plain lists (`figures`), the checked reading of
analysis.json / robustness.json / cost.json (`inputs`), report sections and their HTML / Markdown rendering.
Nothing here trains or evaluates a model, and nothing imports torch.
"""

from typing import TYPE_CHECKING

from richkd.report.tables import load_summaries, render_table

if TYPE_CHECKING:
    from richkd.report.build import build_report

__all__ = ["build_report", "load_summaries", "render_table"]


def __getattr__(name: str) -> object:
    """`build_report` is imported on first use: it pulls in matplotlib, which the plain table does not need."""
    if name == "build_report":
        from richkd.report.build import build_report

        return build_report
    raise AttributeError(name)
