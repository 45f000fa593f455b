"""Summaries of finished runs as tables: mean ± std over seeds of best- and last-epoch accuracy.

"Best" is labelled with what chose the epoch: the test set (reference protocol, optimistic) unless the run held
out a validation split (data.val_split; summary.json `best_selected_on`).

Runs are grouped by directory name with a trailing `_s<seed>` removed, or, for a study's `<arm>/s<seed>` run
directories, by the arm's folder. Also holds the one `Table` type every
report section uses, so Markdown and HTML show the same numbers. Imports no torch (cheap to run anywhere).
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from richkd.errors import RichKDError

_SEED_SUFFIX = re.compile(r"_s\d+$")
_SEED_DIR = re.compile(r"s\d+")
SUMMARY_KEYS = ("best_top1", "last_top1", "last_top5", "last_ece", "train_wall_s")


@dataclass(frozen=True)
class Table:
    """Rows of already formatted cells; rendered to Markdown here and to HTML by report.html."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def group_name(run_dir: Path) -> str:
    """The name shared by the seeds of one arm: `kd_s0`, `kd_s1` -> `kd`; `kd/s0`, `kd/s1` -> `kd` (a study)."""
    if _SEED_DIR.fullmatch(run_dir.name) and run_dir.parent.name:
        return run_dir.parent.name
    return _SEED_SUFFIX.sub("", run_dir.name)


def run_label(run_dir: Path) -> str:
    """A run's own name: its directory's, or `kd_s0` for a study's `kd/s0`."""
    if _SEED_DIR.fullmatch(run_dir.name) and run_dir.parent.name:
        return f"{run_dir.parent.name}_{run_dir.name}"
    return run_dir.name


def _missing_summary_error(run: Path) -> RichKDError:
    if not run.is_dir():
        return RichKDError(f"{run} is not a run directory (it does not exist or is a file); check the path")
    children = sorted(p for p in run.iterdir() if p.is_dir() and (p / "summary.json").is_file())
    if children:
        return RichKDError(
            f"{run} holds no run but {len(children)} run sub-directories (e.g. {children[0].name}): "
            f"pass the sub-directories, e.g. {run}/*"
        )
    return RichKDError(
        f"{run} has no summary.json: the run is unfinished: finish it with `richkd train ... --resume`"
    )


def read_summary(run: Path) -> dict[str, Any]:
    """summary.json of one finished run, checked for the keys the tables read."""
    path = run / "summary.json"
    if not path.is_file():
        raise _missing_summary_error(run)
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RichKDError(f"{path} is not valid JSON ({err}); rerun or finish the run to rewrite it") from None
    if not isinstance(summary, dict):
        raise RichKDError(f"{path} is not a richkd summary (not a JSON object)")
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise RichKDError(f"{path} is not a richkd summary: missing {', '.join(missing)}")
    return summary


def load_summaries(run_dirs: Sequence[Path]) -> dict[str, list[dict[str, Any]]]:
    """summary.json of every run, grouped by arm (name without `_s<seed>`), in the order given."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in run_dirs:
        groups.setdefault(group_name(run), []).append(read_summary(run))
    return groups


def selected_on(summary: dict[str, Any]) -> str:
    """What chose a run's best epoch: "val" (data.val_split) or "test" (every run before best_selected_on
    existed selected on the test set)."""
    return str(summary.get("best_selected_on", "test"))


def best_label(sources: set[str], what: str = "best top-1 (%") -> str:
    """Column header of a best-epoch accuracy, naming the split that chose the epoch; mixed sources are marked
    per cell (see `best_cell`)."""
    if sources == {"val"}:
        return f"{what}, chosen on val)"
    if sources <= {"test"}:
        return f"{what}, chosen on test)"
    return f"{what}, chosen on test or val: see each cell)"


def best_cell(text: str, sources: set[str], all_sources: set[str]) -> str:
    """A best-accuracy cell; marked with its selection split only when the column mixes test and val."""
    if len(all_sources) < 2:
        return text
    return f"{text} [{'+'.join(sorted(sources))}]"


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    """`m ± s` with the sample std; a single value is shown alone (no std from one seed)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summary_table(groups: dict[str, list[dict[str, Any]]]) -> Table:
    """One row per group; std is the sample standard deviation over seeds (n in its own column)."""
    sources = {name: {selected_on(r) for r in runs} for name, runs in groups.items()}
    every = set().union(*sources.values())
    headers = ("run", "n", best_label(every), "last top-1 (%)", "last top-5 (%)", "last ECE", "train wall (s/run)")
    rows = []
    for name, runs in groups.items():
        col = {key: [float(r[key]) for r in runs] for key in ("best_top1", "last_top1", "last_top5", "last_ece")}
        wall = statistics.median(float(r["train_wall_s"]) for r in runs)
        rows.append(
            (
                name,
                str(len(runs)),
                best_cell(mean_std(col["best_top1"]), sources[name], every),
                mean_std(col["last_top1"]),
                mean_std(col["last_top5"]),
                mean_std(col["last_ece"], 3),
                f"{wall:.0f}",
            )
        )
    return Table(headers, tuple(rows))


def render_table(groups: dict[str, list[dict[str, Any]]]) -> str:
    """The Markdown table `richkd report` prints (see summary_table)."""
    return summary_table(groups).to_markdown()
