"""Rendering the report as Markdown: the same sections and tables as the HTML page, figures named only."""

from __future__ import annotations

from collections.abc import Sequence

from richkd.report.document import FigureBlock, Paragraph, Section, TableBlock


def render_markdown(title: str, sections: Sequence[Section], *, banner: str | None, inputs: Sequence[str]) -> str:
    """Markdown twin of report.html: every table, every note; each figure appears as a pointer to the HTML."""
    lines = [f"# {title}", "", "Inputs: " + "; ".join(inputs), ""]
    if banner:
        lines += [f"> **Note:** {banner}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                lines += [f"> {block.text}" if block.note else block.text, ""]
            elif isinstance(block, TableBlock):
                lines += [f"**{block.caption}**", "", block.table.to_markdown()]
            elif isinstance(block, FigureBlock):
                lines += [f"(Figure in report.html: {block.caption}.)", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
