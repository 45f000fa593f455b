"""`StepRun`: one richkd command of the study as a picklable callable that submitit runs inside a SLURM job.

It decides at run time, not at submission, whether to start or resume (`--resume` when the run directory holds a
checkpoint) or to do nothing (already done), so a job requeued after a preemption or a time limit continues from
the last finished epoch exactly as a killed local run does. On SLURM's warning signal submitit calls `checkpoint`:
the training is interrupted at a clean point (SIGINT; it keeps its checkpoint) and the same StepRun is requeued.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["StepRun"]

_CHILD: list[subprocess.Popen[bytes]] = []  # the training process of this job (not pickled with the StepRun)


@dataclass(frozen=True)
class StepRun:
    key: str
    argv: tuple[str, ...]  # richkd arguments, without --resume
    log: str
    cwd: str
    threads: int
    gpus: int = 0
    run_dir: str | None = None  # a train step's out_dir: resumable
    creates: str | None = None  # done once this exists (summary.json of a run)

    def done(self) -> bool:
        return self.creates is not None and Path(self.creates).exists()

    def command(self) -> list[str]:
        argv = list(self.argv)
        if self.run_dir is not None and (Path(self.run_dir) / "checkpoint.pt").is_file():
            argv.append("--resume")
        if self.gpus > 1:  # DDP: one process per GPU of the job's node
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.gpus}", "-m", "richkd", *argv]
        return [sys.executable, "-m", "richkd", *argv]

    def __call__(self) -> str:
        if self.done():
            return f"{self.key}: done before"
        cmd = self.command()
        env_ = os.environ  # an array task's id as squeue and jobs.json write it: ARRAYJOB_TASK
        job = (f"{env_['SLURM_ARRAY_JOB_ID']}_{env_['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_TASK_ID" in env_
               else env_.get("SLURM_JOB_ID", "?"))
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", buffering=1) as fh:
            state = "resume" if "--resume" in cmd else "new"
            fh.write(f"--- {_now()} start ({state}) slurm job {job}: {' '.join(cmd)}\n")
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.cwd, preexec_fn=_ignore_warning_signal)
            _CHILD[:] = [proc]
            code = proc.wait()
            fh.write(f"--- {_now()} exit {code}\n")
        if code != 0:
            raise RuntimeError(f"{self.key} exited with {code}; see {self.log}")
        return f"{self.key}: done"

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or at its time limit: stop the training at a clean point, then requeue this same step."""
        from submitit.helpers import DelayedSubmission

        for proc in _CHILD:
            _stop(proc.pid)
        return DelayedSubmission(self)


def _ignore_warning_signal() -> None:
    """In the training process: SLURM sends its warning signal (USR2) to every process of the job; only the job's
    submitit process acts on it, and stops the training with SIGINT at a clean point."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _stop(pid: int, timeout_s: float = 60.0) -> None:
    """SIGINT the training and reap it (os.waitpid, not Popen.wait: this runs in a signal handler that interrupted
    Popen.wait, whose lock is held), SIGKILL after `timeout_s`."""
    try:
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):  # already gone and reaped
        return


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
