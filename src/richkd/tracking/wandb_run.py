"""Weights & Biases: the resolved config, each epoch's numbers (step = epoch), the summary and the model file as
an artifact when asked. Offline by default: the run is written under <run_dir>/wandb (`wandb sync` uploads it
later). The run id is kept in tracking.json and --resume reopens it with resume='allow'; offline, each invocation
writes its own offline-run-*-<id> folder of the same run, which `wandb sync` uploads in order as one history.

W&B buffers its offline log (flushed every FLUSH_S here, 15 s by default) and a killed process loses the buffer:
on resume the earlier folders are read back with W&B's own reader (`wandb leet inspect`) and every epoch they
lack is logged again, so the history has each epoch exactly once."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from richkd.engine.io import check_writable
from richkd.tracking.base import Logger, missing_extra, numeric

WANDB_MODES = ("offline", "online", "disabled")
FLUSH_S = 1.0  # seconds between flushes of the offline log (.wandb): what a kill can lose, logged again on resume


@dataclass(frozen=True)
class WandbOptions:
    project: str
    run_name: str
    mode: str  # offline (default: nothing leaves the machine) | online | disabled
    entity: str | None = None


class WandbLogger(Logger):
    name = "wandb"

    def __init__(self, run_dir: Path, config: dict[str, Any], options: WandbOptions) -> None:
        self.run_dir = run_dir
        self.config = config
        self.options = options
        self.run: Any = None
        self.earlier: list[Path] = []  # the offline folders of this run from earlier invocations

    def check(self) -> None:
        if self.options.mode != "online":  # offline means offline: no crash reports to W&B's error service either
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise missing_extra("wandb", "wandb") from None
        check_writable(self.run_dir / "wandb", "train.loggers wandb folder")

    def open(self, state: dict[str, Any], *, resume_epoch: int | None) -> None:
        import wandb

        saved = state.get("wandb_run_id")
        run_id = str(saved) if resume_epoch is not None and saved else secrets.token_hex(4)
        state["wandb_run_id"] = run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True,
                                  save_code=False, x_transaction_log_flush_interval=FLUSH_S)
        self.earlier = sorted((self.run_dir / "wandb").glob(f"offline-run-*-{run_id}"))  # before this invocation's
        self.run = wandb.init(
            project=self.options.project, entity=self.options.entity, name=self.options.run_name, id=run_id,
            dir=str(self.run_dir), mode=self.options.mode,  # type: ignore[arg-type]
            resume="allow", config=self.config, settings=settings, reinit="create_new",
        )

    def held_epochs(self, resume_epoch: int) -> set[int]:
        if self.options.mode == "disabled":
            return set(range(1, resume_epoch + 1))
        if self.options.mode == "online":  # the server holds the history: W&B resumes after its last step
            return set(range(1, int(self.run.step)))
        return {step for folder in self.earlier for step in _history_steps(folder)}

    def log_epoch(self, record: dict[str, Any]) -> None:
        values = numeric(record)
        values["epoch"] = int(record["epoch"])
        self.run.log(values, step=int(record["epoch"]), commit=True)  # committed now, not held for the next step

    def finish(self, summary: dict[str, Any], model: Path | None) -> None:
        import wandb

        for key, value in summary.items():
            self.run.summary[key] = value
        if model is not None:
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model")
            artifact.add_file(str(model))
            self.run.log_artifact(artifact)
        self.run.finish()

    def close(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "stopped" else 1)


def _history_steps(folder: Path) -> list[int]:
    """The history steps of one offline run folder, read by W&B's own reader (a torn tail is W&B's to skip)."""
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "WANDB_MODE": "offline"})
    if proc.returncode != 0:
        raise RuntimeError(f"wandb leet inspect {folder} failed: {proc.stderr.strip()[-300:]}")
    steps = []
    for line in proc.stdout.splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("type") == "history":
            steps.append(int(record["history"]["step"]["num"]))
    return steps
