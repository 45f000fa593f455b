"""The report as data: sections of paragraphs, tables and figures, rendered by report.html and report.markdown.

Keeping content apart from rendering is what makes report.md carry exactly the numbers of report.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from matplotlib.figure import Figure

from richkd.report.tables import Table


@dataclass(frozen=True)
class Paragraph:
    """Plain text (escaped on output); `note=True` styles it as a remark, e.g. why a section is missing."""

    text: str
    note: bool = False


@dataclass(frozen=True)
class FigureBlock:
    """A figure with a caption; HTML embeds it as a PNG, Markdown shows the caption only."""

    figure: Figure
    caption: str


@dataclass(frozen=True)
class TableBlock:
    """A table with a caption above it."""

    table: Table
    caption: str


Block = Paragraph | FigureBlock | TableBlock


@dataclass
class Section:
    """One titled part of the report; `anchor` is its id in the HTML table of contents."""

    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)
