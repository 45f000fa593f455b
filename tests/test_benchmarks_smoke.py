"""The benchmark scripts run end to end (tiny sizes, CPU) and write the JSON their docs quote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, out: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_train_step_benchmark_runs(tmp_path: Path) -> None:
    result = _run(
        "train_step.py",
        *("--pair", "resnet8:resnet8", "--rows", "256", "--classes", "10", "--batch", "16", "--nce-k", "32"),
        *("--windows", "2", "--steps", "1", "--warmup", "1", "--threads", "1", "--workers", "0"),
        out=tmp_path / "step.json",
    )
    assert set(result["median_images_per_s"]) == {"ours", "ref"}
    assert all(len(v) == 2 for v in result["images_per_s"].values())
    assert result["speedup_ours_over_ref"] > 0
    assert result["environment"]["command"]


def test_gpu_epoch_time_script_runs_on_cpu(tmp_path: Path) -> None:
    result = _run(
        "gpu_epoch_time.py",
        *("--tiny", "--device", "cpu", "--pair", "resnet8:resnet8", "--teacher", "online,cached", "--build-rows", "2"),
        out=tmp_path / "gpu.json",
    )
    assert result["epochs_run"] == 2 and len(result["train_s_per_epoch_measured"]) == 2
    assert set(result["runs"]) == {"online", "cached"} and result["cached_over_online_train_images_per_s"] > 0
    assert result["runs"]["cached"]["goal_240_epochs_min"] == 5 and result["cache_build_views_per_s"] > 0
    assert result["train_images_per_s"] > 0 and result["projected_240_epochs_min"] > 0
    assert result["bf16"] and result["channels_last"]


def test_teacher_cache_benchmark_runs(tmp_path: Path) -> None:
    result = _run(
        "teacher_cache.py",
        *("--pair", "resnet8:resnet8", "--rows", "256", "--nce-k", "32", "--threads", "1", "--workers", "0"),
        *("--windows", "1", "--steps", "1", "--warmup", "0", "--build-rows", "2"),
        out=tmp_path / "tc.json",
    )
    assert set(result["median_images_per_s"]) == {"cached", "online", "ref"}
    assert result["cached_over_ref"] > 0 and result["build_views_per_s"] > 0
