"""Resumable named steps, shared by `richkd demo` and `richkd study`: each finished step leaves a marker
(OUT/steps/<name>.json), written atomically only after its outputs are complete, so a rerun after a kill at any
point reuses what is done and continues the rest. A step's chatter (printed tables, INFO logs) goes to
OUT/logs/<name>.log; the console gets one line per step. The steps' work is `richkd.api` calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from richkd.engine.io import write_json_atomic
from richkd.errors import RichKDError

__all__ = ["StepRunner", "capture", "quiet_console_logging"]


class StepRunner:
    """Runs named steps in order, skipping those whose marker and outputs exist."""

    def __init__(self, out: Path, total: int, console: TextIO) -> None:
        self.out, self.total, self.console = out, total, console
        self.index = 0
        self.reused: list[str] = []
        self.ran: list[str] = []

    def marker(self, name: str) -> Path:
        return self.out / "steps" / f"{name}.json"

    def is_done(self, name: str, outputs: Sequence[Path]) -> bool:
        return self.marker(name).is_file() and all(p.exists() for p in outputs)

    def say(self, text: str) -> None:
        print(text, file=self.console, flush=True)

    def run(self, name: str, title: str, outputs: Sequence[Path], work: Callable[[], None]) -> None:
        """Run `work` unless done before; then check `outputs` exist and write the step's marker."""
        self.index += 1
        head = f"[{self.index}/{self.total}] {title}"
        if self.is_done(name, outputs):
            took = json.loads(self.marker(name).read_text()).get("wall_s", 0.0)
            self.say(f"{head}: done before ({took:.0f} s then), reused")
            self.reused.append(name)
            return
        self.marker(name).unlink(missing_ok=True)  # its outputs went missing: redo the step
        self.say(f"{head} ...")
        t0 = time.perf_counter()
        with capture(self.out / "logs" / f"{name}.log"):
            work()
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise RichKDError(f"step {name} finished without writing {missing[0]}; see "
                              f"{self.out / 'logs' / (name + '.log')}")
        wall = time.perf_counter() - t0
        write_json_atomic(self.marker(name), {
            "step": name, "wall_s": round(wall, 2), "outputs": [str(p) for p in outputs],
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        self.ran.append(name)
        self.say(f"{head}: done in {wall:.0f} s")


@contextlib.contextmanager
def capture(log_path: Path) -> Iterator[TextIO]:
    """Send stdout and the richkd loggers' INFO records to `log_path` (appended: a resumed step keeps its past)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("richkd")
    with log_path.open("a", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        old_level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        fh.write(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {' '.join(sys.argv)}\n")
        try:
            with contextlib.redirect_stdout(fh):
                yield fh
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)


def quiet_console_logging() -> None:
    """Keep INFO records (epoch lines, cache progress) off the console: they go to the step logs instead.

    Without a handler on the root logger, `richkd train` would install one at INFO on stderr.
    """
    root = logging.getLogger()
    if not root.handlers:
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter("richkd: %(levelname)s %(message)s"))
        root.addHandler(console)
        return
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout):
            handler.setLevel(max(handler.level, logging.WARNING))
