"""The training grid: the `richkd train` command of every (arm, seed) and of the prepare steps, each run's state
on disk, and a small process pool that runs them `parallel` at a time.

Each run is a child process (`python -m richkd train ...`, this interpreter) that dies with the runner
(`die_with_parent`), writing to OUT/logs/<arm>_s<seed>.log (appended: one `--- start` line per attempt). On disk a
run is done (summary.json), resumable (checkpoint.pt: rerun with --resume) or new; so a runner killed at any point
and started again redoes nothing finished and continues the rest.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import IO, TextIO

from richkd.engine.io import write_json_atomic
from richkd.engine.proc import die_with_parent
from richkd.errors import RichKDError
from richkd.study.spec import StudySpec, split_argv, substitute

__all__ = ["Job", "arm_jobs", "check_arm_records", "log_tail", "prepare_jobs", "run_dir", "run_jobs", "run_state",
           "threads_per_run"]

DONE, RESUME, NEW = "done", "resume", "new"
TAIL_LINES = 15


@dataclass(frozen=True)
class Job:
    """One richkd command of the study and where it stands on disk."""

    key: str  # kd_s0 | prepare_teacher: names its log file
    label: str  # kd s0 | prepare teacher: names it on the console
    argv: tuple[str, ...]  # richkd arguments (the command first)
    log: Path
    state: str  # done | resume | new
    run_dir: Path | None = None

    def command(self) -> str:
        return shlex.join(["richkd", *self.argv])


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "runs" / arm / f"s{seed}"


def run_state(folder: Path) -> str:
    """done: summary.json written; resume: a checkpoint of a finished epoch; new: nothing to continue."""
    if (folder / "summary.json").is_file():
        return DONE
    return RESUME if (folder / "checkpoint.pt").is_file() else NEW


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_run(spec: StudySpec, parallel: int) -> int:
    """train.threads of each run: the spec's, else this machine's cores shared by the runs side by side (prepare
    steps run alone: parallel 1)."""
    return spec.threads if spec.threads is not None else max(1, available_cores() // parallel)


def _train_argv(spec: StudySpec, tokens: Sequence[str], threads: int, tail: Sequence[str]) -> list[str]:
    """`train` + options, then overrides: runner threads < common < the arm's own < seed and out_dir."""
    options, overrides, _ = split_argv(tokens)
    common = [substitute(c, out=spec.out) for c in spec.common]
    return ["train", *options, f"train.threads={threads}", *common, *overrides, *tail]


def arm_jobs(spec: StudySpec, threads: int, only: Sequence[str] = ()) -> list[Job]:
    """The runs of the grid, seed by seed (every arm of the first seed, then the next), so paired comparisons
    fill in early when a long grid is finished over several sittings."""
    out = spec.out_path
    jobs = []
    for seed in spec.seeds:
        for arm in spec.arms.values():
            if only and arm.name not in only:
                continue
            folder = run_dir(out, arm.name, seed)
            tokens = [substitute(t, out=spec.out, arm=arm.name, seed=seed) for t in arm.argv]
            state = run_state(folder)
            argv = _train_argv(spec, tokens, threads, [f"seed={seed}", f"out_dir={folder}"])
            if state == RESUME:
                argv.append("--resume")
            jobs.append(Job(f"{arm.name}_s{seed}", f"{arm.name} s{seed}", tuple(argv),
                            out / "logs" / f"{arm.name}_s{seed}.log", state, folder))
    return jobs


def prepare_jobs(spec: StudySpec, threads: int) -> list[Job]:
    """The prepare steps; a `train` step with an out_dir=... override resumes like an arm's run."""
    jobs = []
    for step in spec.prepare:
        argv = [substitute(t, out=spec.out) for t in step.argv]
        folder = None
        if argv[0] == "train":
            dirs = [t.split("=", 1)[1] for t in split_argv(argv[1:])[1] if t.startswith("out_dir=")]
            folder = Path(dirs[-1]) if dirs else None
            argv = _train_argv(spec, argv[1:], threads, [])
        state = DONE if Path(substitute(step.creates, out=spec.out)).exists() else NEW
        if state == NEW and folder is not None and run_state(folder) == RESUME:
            state = RESUME
            argv.append("--resume")
        jobs.append(Job(f"prepare_{step.name}", f"prepare {step.name}", tuple(argv),
                        spec.out_path / "logs" / f"prepare_{step.name}.log", state, folder))
    return jobs


def check_arm_records(spec: StudySpec) -> None:
    """Refuse to mix runs of an arm made with other arguments; record each arm's arguments beside its runs."""
    for arm in spec.arms.values():
        folder = spec.out_path / "runs" / arm.name
        record = folder / "arm.json"
        current = {"argv": list(arm.argv), "common": list(spec.common)}
        if record.is_file():
            try:
                found = json.loads(record.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                found = {}
            saved = {"argv": found.get("argv"), "common": found.get("common")} if isinstance(found, dict) else {}
            has_runs = any(run_state(d) != NEW for d in folder.glob("s*") if d.is_dir())
            if saved != current and has_runs:
                what = "argv" if saved["argv"] != current["argv"] else "common"
                raise RichKDError(f"arm {arm.name}: its {what} changed since the runs in {folder} were made "
                                  f"(recorded in {record}): restore the spec, or delete {folder} to redo the arm")
            if saved == current:
                continue
        write_json_atomic(record, {**current, "title": arm.title})


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last lines a failed run printed (the runner's own `---` lines left out)."""
    if not path.is_file():
        return []
    text = path.read_text(errors="replace").splitlines()
    return [line for line in text if not line.startswith("--- ")][-lines:]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen[bytes]
    log: IO[str]
    t0: float


def _start(job: Job, threads: int) -> _Running:
    job.log.parent.mkdir(parents=True, exist_ok=True)
    fh = job.log.open("a", buffering=1)
    fh.write(f"--- {_now()} start ({job.state}): {job.command()}\n")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "richkd", *job.argv], stdin=subprocess.DEVNULL, stdout=fh,
                            stderr=subprocess.STDOUT, env=env, preexec_fn=partial(die_with_parent, os.getpid()))
    return _Running(job, proc, fh, time.perf_counter())


def _outcome(job: Job) -> str:
    if job.run_dir is None or not (job.run_dir / "summary.json").is_file():
        return ""
    summary = json.loads((job.run_dir / "summary.json").read_text())
    chosen = summary.get("best_selected_on", "test")
    return (f": best top-1 (chosen on {chosen}) {summary.get('best_top1', float('nan')):.2f} %, "
            f"last {summary.get('last_top1', 0.0):.2f} %")


def run_jobs(jobs: Iterable[Job], *, parallel: int, threads: int, console: TextIO) -> list[Job]:
    """Run the jobs not done, `parallel` at a time; returns those that failed (each reported with its log's tail)."""
    pending = deque(j for j in jobs if j.state != DONE)
    total = len(pending)
    running: list[_Running] = []
    failed: list[Job] = []
    finished = 0

    def say(text: str) -> None:
        print(text, file=console, flush=True)

    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.popleft()
                say(f"  start  {job.label}" + (" (resuming from its checkpoint)" if job.state == RESUME else ""))
                running.append(_start(job, threads))
            time.sleep(0.1)
            for item in [r for r in running if r.proc.poll() is not None]:
                running.remove(item)
                finished += 1
                code, wall = item.proc.returncode, time.perf_counter() - item.t0
                item.log.write(f"--- {_now()} exit {code} after {wall:.1f} s\n")
                item.log.close()
                if code == 0:
                    say(f"  [{finished}/{total}] done {item.job.label} in {wall:.0f} s{_outcome(item.job)}")
                    continue
                failed.append(item.job)
                say(f"  [{finished}/{total}] FAILED {item.job.label} (exit {code}) after {wall:.0f} s; "
                    f"{item.job.log} ends with:")
                for line in log_tail(item.job.log):
                    say(f"      {line}")
    finally:
        for item in running:  # interrupted: let the runs stop at a clean point (they keep their checkpoints)
            if item.proc.poll() is None:
                item.proc.send_signal(signal.SIGINT)
        for item in running:
            try:
                item.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                item.proc.kill()
                item.proc.wait()
            item.log.close()
    return failed
