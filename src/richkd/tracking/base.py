"""The logger interface and `Tracker`, the one object the trainer calls: it opens every logger, sends each epoch's
record to all of them, and keeps tracking.json (the trackers' run ids) so a resumed run continues the same
histories."""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from richkd.engine.io import write_json_atomic
from richkd.errors import RichKDError

log = logging.getLogger(__name__)

STATE_FILE = "tracking.json"  # the trackers' run ids, so a resume continues the same runs


def missing_extra(extra: str, module: str) -> RichKDError:
    """The one line for a logger whose optional package is not installed."""
    return RichKDError(
        f"train.loggers: {extra} needs the optional package {module!r}, which is not installed: "
        f"pip install 'richkd[{extra}]' (or drop {extra} from train.loggers)"
    )


def numeric(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record or summary (trackers chart numbers; strings go to text/tags)."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


class Logger(ABC):
    """One tracker. `check` runs at build time (before any training) and raises a one-line RichKDError when the
    tracker cannot start; the other methods run on rank 0 during `fit`."""

    name: str

    @abstractmethod
    def check(self) -> None:
        """Import the optional package and probe the destination; never trains, never opens a run."""

    @abstractmethod
    def open(self, state: dict[str, Any], *, resume_epoch: int | None) -> None:
        """Start a new run (resume_epoch None) or continue the one `state` names, holding epochs 1..resume_epoch
        only. May add ids to `state` (saved atomically by the Tracker)."""

    @abstractmethod
    def log_epoch(self, record: dict[str, Any]) -> None:
        """One epoch's record (metrics.jsonl's line): step = record['epoch']."""

    @abstractmethod
    def held_epochs(self, resume_epoch: int) -> set[int]:
        """After `open` on resume: the epochs this tracker already holds (read back from it where it can say)."""

    def fill(self, resume_epoch: int, records: list[dict[str, Any]]) -> None:
        """On resume: log every epoch of `records` this tracker does not hold yet."""
        held = self.held_epochs(resume_epoch)
        for record in records:
            if int(record["epoch"]) not in held:
                self.log_epoch(record)

    @abstractmethod
    def finish(self, summary: dict[str, Any], model: Path | None) -> None:
        """The final summary, and the model file as an artifact when given (train.log_model)."""

    @abstractmethod
    def close(self, status: str) -> None:
        """End without a summary: status is 'stopped' (train.stop_after), 'killed' or 'failed'."""


class Tracker:
    """Every logger of a run as one. Only rank 0 has loggers (build.py gives the others an empty Tracker).

    A logger that fails mid-run is reported once and dropped: a tracker hiccup never costs the training."""

    def __init__(self, run_dir: Path, loggers: list[Logger]) -> None:
        self.run_dir = run_dir
        self.loggers = loggers
        self.state: dict[str, Any] = {}

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def check(self) -> None:
        for logger in self.loggers:
            logger.check()

    def open(self, *, resume_epoch: int | None, records: list[dict[str, Any]]) -> None:
        """Open every logger; on resume, send each one the epochs of `records` (metrics.jsonl up to the checkpoint)
        it does not hold: the run was killed before they reached it (after the checkpoint, or inside a tracker's
        write buffer)."""
        if not self.loggers:
            return
        path = self.run_dir / STATE_FILE
        if resume_epoch is None:  # a fresh run; a tracking.json here is of a start killed before its first epoch
            self.state = {"replaces": _read_state(path)} if path.is_file() else {}
        else:
            self.state = _read_state(path)
        for logger in self.loggers:
            try:
                logger.open(self.state, resume_epoch=resume_epoch)
            except RichKDError:
                raise
            except Exception as err:  # wandb.init without a login, an MLflow server gone since the check ...
                raise RichKDError(
                    f"train.loggers: {logger.name} could not start ({type(err).__name__}: {_first_line(err)}); fix "
                    f"it or drop {logger.name} from train.loggers"
                ) from None
        self.state.pop("replaces", None)
        write_json_atomic(path, self.state)  # the run ids, before any epoch goes to them
        if resume_epoch is not None:
            for logger in list(self.loggers):
                self._call(logger, "fill", resume_epoch, records)

    def log_epoch(self, record: dict[str, Any]) -> None:
        if not self.loggers:
            return
        for logger in list(self.loggers):
            self._call(logger, "log_epoch", record)

    def finish(self, summary: dict[str, Any], model: Path | None) -> None:
        for logger in list(self.loggers):
            self._call(logger, "finish", summary, model)

    def close(self, status: str) -> None:
        for logger in list(self.loggers):
            try:
                logger.close(status)
            except Exception as err:  # closing after a failure must not hide that failure
                log.warning("train.loggers: %s could not close (%s)", logger.name, err)

    def _call(self, logger: Logger, method: str, *args: Any) -> None:
        try:
            getattr(logger, method)(*args)
        except Exception as err:
            log.warning("train.loggers: %s failed (%s: %s); it logs nothing more in this run", logger.name,
                        type(err).__name__, _first_line(err))
            self.loggers.remove(logger)
            try:
                logger.close("failed")
            except Exception:  # noqa: S110 - already reported above
                pass


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RichKDError(f"--resume: {path} is not valid JSON ({err}): delete it to start new tracker runs") from None
    if not isinstance(state, dict):
        raise RichKDError(f"--resume: {path} is not a JSON object: delete it to start new tracker runs")
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""
