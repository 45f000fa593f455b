"""Summaries of finished runs as Markdown: mean ± std over seeds of best- and last-epoch accuracy.

Runs are grouped by directory name with a trailing `_s<seed>` removed. Imports no torch (cheap to run anywhere).
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from richkd.errors import RichKDError

_SEED_SUFFIX = re.compile(r"_s\d+$")


def load_summaries(run_dirs: Sequence[Path]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in run_dirs:
        path = run / "summary.json"
        if not path.is_file():
            raise RichKDError(f"{run} has no summary.json (unfinished run? finish it with --resume)")
        groups.setdefault(_SEED_SUFFIX.sub("", run.name), []).append(json.loads(path.read_text()))
    return groups


def _mean_std(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def render_table(groups: dict[str, list[dict[str, Any]]]) -> str:
    """One row per group; std is the sample standard deviation over seeds (n in its own column)."""
    lines = [
        "| run | n | best top-1 (%) | last top-1 (%) | last top-5 (%) | last ECE | train wall (s/run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in groups.items():
        col = {key: [float(r[key]) for r in runs] for key in ("best_top1", "last_top1", "last_top5", "last_ece")}
        wall = statistics.median(float(r["train_wall_s"]) for r in runs)
        lines.append(
            f"| {name} | {len(runs)} | {_mean_std(col['best_top1'])} | {_mean_std(col['last_top1'])} | "
            f"{_mean_std(col['last_top5'])} | {_mean_std(col['last_ece'], 3)} | {wall:.0f} |"
        )
    return "\n".join(lines) + "\n"
