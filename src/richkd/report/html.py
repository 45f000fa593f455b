"""Rendering the report as one self-contained HTML page: inline CSS, figures as base64 PNG, no external URL."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence

from matplotlib.figure import Figure

from richkd.report.document import FigureBlock, Paragraph, Section, TableBlock
from richkd.report.tables import Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1360px;
       padding: 1.5rem 2rem 3rem; color: #1b1f23; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 0.2rem; margin-top: 2.4rem; }
nav a { margin-right: 1.1rem; } .meta { color: #57606a; font-size: 0.9rem; }
.note { color: #57606a; font-style: italic; } .banner { background: #fff8c5; border: 1px solid #d4a72c;
       padding: 0.6rem 0.9rem; border-radius: 6px; }
table { border-collapse: collapse; margin: 0.4rem 0 1.2rem; font-size: 0.92rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; } th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fbfcfd; } caption { caption-side: top; text-align: left; font-weight: 600;
       padding-bottom: 0.3rem; }
figure { margin: 0.6rem 0 1.6rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 0.9rem; } code { background: #f6f8fa; padding: 0 0.2rem; }
"""
_CODE = re.compile(r"`([^`]+)`")
_NUMBER = re.compile(r"^(—|-?[\d,.]+( ± [\d.]+)?)$")


def text_to_html(text: str) -> str:
    """Escape, then show `backticked` commands as code."""
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


def figure_to_data_uri(fig: Figure, dpi: int = 100) -> str:
    """PNG bytes of the figure as a data: URI (no Software metadata, so no URL hides in the file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(text: str) -> str:
    """Numbers (and "m ± s") right-aligned so digits line up; text left-aligned."""
    return f'<td class="num">{html.escape(text)}</td>' if _NUMBER.match(text) else f"<td>{html.escape(text)}</td>"


def table_to_html(table: Table, caption: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>\n" for row in table.rows)
    return (f"<table>\n<caption>{html.escape(caption)}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}</tbody>\n</table>")


def _block_to_html(block: Paragraph | FigureBlock | TableBlock) -> str:
    if isinstance(block, Paragraph):
        return f'<p class="note">{text_to_html(block.text)}</p>' if block.note else f"<p>{text_to_html(block.text)}</p>"
    if isinstance(block, TableBlock):
        return table_to_html(block.table, block.caption)
    alt = html.escape(block.caption, quote=True)
    return (f'<figure><img alt="{alt}" src="{figure_to_data_uri(block.figure)}">'
            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")


def render_html(title: str, sections: Sequence[Section], *, banner: str | None, inputs: Sequence[str]) -> str:
    """The whole page; `banner` is a warning shown above everything (e.g. the surrogate teacher)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>',
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="meta">Inputs: ' + "; ".join(html.escape(i) for i in inputs) + "</p>",
    ]
    if banner:
        parts.append(f'<p class="banner">{text_to_html(banner)}</p>')
    parts.append("<nav>" + "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections) + "</nav>")
    for section in sections:
        parts.append(f'<section id="{section.anchor}">\n<h2>{html.escape(section.title)}</h2>')
        parts.extend(_block_to_html(block) for block in section.blocks)
        parts.append("</section>")
    parts += ['<p class="meta">Written by <code>richkd report</code>.</p>', "</body>", "</html>", ""]
    return "\n".join(parts)
