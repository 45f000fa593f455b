"""`richkd report`: seeds grouped, mean ± sample std, best and last columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from richkd.cli import main
from richkd.errors import RichKDError
from richkd.report import load_summaries, render_table


def _run(tmp: Path, name: str, best: float, last: float) -> Path:
    run = tmp / name
    run.mkdir()
    summary = {"best_top1": best, "last_top1": last, "last_top5": 99.0, "last_ece": 0.05, "train_wall_s": 10.0}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_groups_seeds_and_reports_mean_std(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [_run(tmp_path, "kd_s0", 71.0, 70.0), _run(tmp_path, "kd_s1", 73.0, 72.0), _run(tmp_path, "t", 80, 79)]
    table = render_table(load_summaries(runs))
    # mean 72, sample std sqrt(((71-72)^2 + (73-72)^2) / 1) = 1.414
    assert "| kd | 2 | 72.00 ± 1.41 | 71.00 ± 1.41 |" in table
    assert "| t | 1 | 80.00 | 79.00 |" in table
    assert main(["report", *map(str, runs)]) == 0
    assert capsys.readouterr().out == table


def test_unfinished_run_is_named(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(RichKDError, match="half has no summary.json"):
        load_summaries([tmp_path / "half"])
