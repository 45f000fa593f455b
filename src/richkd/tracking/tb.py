"""TensorBoard: scalars per epoch (step = epoch) in <run_dir>/tensorboard, the resolved config and the summary as
text. A resumed run writes into the same folder with purge_step = the checkpoint's epoch, so TensorBoard discards
anything logged after it and the history stays one series without duplicate steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from richkd.engine.io import check_writable
from richkd.tracking.base import Logger, missing_extra, numeric

TB_DIR = "tensorboard"


class TensorBoardLogger(Logger):
    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.log_dir = run_dir / TB_DIR
        self.config = config
        self.writer: Any = None

    def check(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - it raises ImportError without tensorboard
        except ImportError:
            raise missing_extra("tensorboard", "tensorboard") from None
        check_writable(self.log_dir, "train.loggers tensorboard folder")

    def open(self, state: dict[str, Any], *, resume_epoch: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if resume_epoch is None:  # a fresh run: event files of a run that died before its first checkpoint go
            for old in self.log_dir.glob("events.out.tfevents.*") if self.log_dir.is_dir() else ():
                old.unlink()
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
            self.writer.add_text("config", _table(self.config), 0)
        else:
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=resume_epoch)

    def held_epochs(self, resume_epoch: int) -> set[int]:
        return set(range(1, resume_epoch))  # flushed each epoch; purge_step hides resume_epoch on: written again

    def log_epoch(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        for key, value in numeric(record).items():
            if key != "epoch":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()  # each epoch reaches the disk: a kill loses nothing already logged

    def finish(self, summary: dict[str, Any], model: Path | None) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=2) + "\n```", int(summary["epochs"]))
        self.writer.close()

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


def _table(config: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in config.items())
    return "| key | value |\n|---|---|\n" + rows
