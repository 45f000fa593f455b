"""metrics.csv: one row per epoch, one header (timm's summary.csv habit), rewritten atomically each epoch so a kill
never leaves a torn row; the header widens when a later epoch brings a new column (an eval_every epoch)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from richkd.engine.io import check_writable, write_text_atomic
from richkd.tracking.base import Logger

CSV_FILE = "metrics.csv"


class CsvLogger(Logger):
    name = "csv"

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / CSV_FILE
        self.rows: list[dict[str, Any]] = []

    def check(self) -> None:
        check_writable(self.path.parent, "out_dir")

    def open(self, state: dict[str, Any], *, resume_epoch: int | None) -> None:
        if resume_epoch is None:
            self.rows = []
            self.path.unlink(missing_ok=True)  # a fresh run's history starts empty, as metrics.jsonl's
            return
        # rows beyond the checkpoint were logged by a run killed before its next checkpoint: cut, as metrics.jsonl
        self.rows = [r for r in _read_rows(self.path) if int(r["epoch"]) <= resume_epoch]
        self._write()

    def held_epochs(self, resume_epoch: int) -> set[int]:
        return {int(r["epoch"]) for r in self.rows}

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.rows.append(dict(record))
        self._write()

    def finish(self, summary: dict[str, Any], model: Path | None) -> None:
        """The summary stays in summary.json: a CSV holds the per-epoch table only."""

    def close(self, status: str) -> None:
        pass

    def _write(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, out.getvalue())


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]
