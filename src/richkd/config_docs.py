"""Every config key with its type, default and meaning, for `richkd config keys` and `richkd train --help`.

The meanings are the field comments in config.py, read from its source, so the help can never drift from the
code that defines the keys.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from typing import Any

from richkd.config import DISTILL_CONFIGS, RunConfig

__all__ = ["describe_keys"]

_FIELD_COMMENT = re.compile(r"^\s+(\w+):[^#]*#\s*(.+)$")


def _comments(cls: type) -> dict[str, str]:
    """field name -> its trailing comment in the class body (continuation comment lines are joined)."""
    out: dict[str, str] = {}
    last: str | None = None
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD_COMMENT.match(line)
        if match:
            last = match.group(1)
            out[last] = match.group(2).strip()
        elif last and line.strip().startswith("#"):
            out[last] += " " + line.strip().lstrip("#").strip()
        else:
            last = None
    return out


def _type_text(tp: Any) -> str:
    text = str(tp) if typing.get_origin(tp) else getattr(tp, "__name__", str(tp))
    return text.replace("typing.", "").replace("NoneType", "None")


def _rows(cls: type, prefix: str) -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    notes = _comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) or f.name == "distill":
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        rows.append((f"{prefix}{f.name}", _type_text(hints[f.name]), repr(default), notes.get(f.name, "")))
    return rows


@functools.cache  # parses the config's source (0.4 s); every CLI call builds the train epilog from it
def describe_keys() -> str:
    """A plain-text table of every key, grouped by section; the distill keys per `distill.method`."""
    hints = typing.get_type_hints(RunConfig)
    groups: list[tuple[str, list[tuple[str, str, str, str]]]] = [("", _rows(RunConfig, ""))]
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            groups.append(("", _rows(hints[f.name], f"{f.name}.")))
    for method, cls in DISTILL_CONFIGS.items():
        rows = [row for row in _rows(cls, "distill.") if row[0] != "distill.method"]
        groups.append((f"with distill.method={method}:", rows))
    every = [row for _, rows in groups for row in rows]
    width, twidth = max(len(r[0]) for r in every), max(len(r[1]) for r in every)
    lines = []
    for title, rows in groups:
        if title:
            lines.append(title)
        for key, tp, default, note in rows:
            head = f"  {key:<{width}}  {tp:<{twidth}}  = {default}"
            lines.append(f"{head}  # {note}" if note else head)
    return "\n".join(lines) + "\n"
