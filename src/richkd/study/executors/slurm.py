"""The `slurm` executor: every (arm, seed) of the study one SLURM job through submitit (a job array per arm), the
prepare steps jobs that the runs depend on (afterok), resources from the spec's `resources` block.

Before anything is submitted the cluster is checked (`sinfo`, `scontrol show partition`): no SLURM, a missing
partition, or more CPUs, GPUs or memory per job than the partition's nodes have is one RichKDError. The job id of
every submitted step is recorded in OUT/slurm/jobs.json; a rerun submits only the steps that are neither done on
disk nor queued/running in `squeue`, and `status` combines the two. No job accounting is needed (`sacct` may be
off): a recorded job that is neither in `squeue` nor done on disk has failed or was cancelled, and its log says why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from richkd.engine.io import write_json_atomic
from richkd.errors import RichKDError
from richkd.study.executors.step import StepRun
from richkd.study.grid import DONE, Job, arm_jobs, check_arm_records, log_tail, prepare_jobs
from richkd.study.spec import ResourcesSpec, StudySpec, substitute

__all__ = ["Partition", "StepStatus", "check_cluster", "format_status", "step_status", "submit_study", "wait_study"]

QUEUED, RUNNING, FAILED, NOT_STARTED = "queued", "running", "failed", "not started"
_RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"}
_TOOLS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")


@dataclass(frozen=True)
class Partition:
    name: str
    cpus: int  # most CPUs of one node
    gpus: int  # most GPUs of one node
    mem_mb: int  # most memory of one node


@dataclass(frozen=True)
class StepStatus:
    key: str
    label: str
    state: str  # done | queued | running | failed | not started
    job_id: str | None
    log: Path


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)


def check_cluster(res: ResourcesSpec) -> Partition:
    """The partition the jobs go to, after checking that it exists and that one node holds a job's resources."""
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        raise RichKDError(f"executor slurm: no SLURM on this machine ({missing[0]} not found on PATH); run the study "
                          "on the cluster's login node, or with executor: local")
    info = _run(["sinfo", "-h", "-o", "%P"])
    if info.returncode != 0:
        first = (info.stderr.strip().splitlines() or ["no answer"])[0]
        raise RichKDError(f"executor slurm: sinfo failed ({first}); is slurmctld reachable from this machine?")
    names = [p.strip() for p in info.stdout.split()]
    name = res.partition or next((p.rstrip("*") for p in names if p.endswith("*")), None)
    known = [p.rstrip("*") for p in names]
    if name is None:
        raise RichKDError(f"executor slurm: the cluster has no default partition; set resources.partition to one of "
                          f"{', '.join(known)}")
    shown = _run(["scontrol", "show", "partition", name, "-o"])
    if shown.returncode != 0 or name not in known:
        raise RichKDError(f"resources.partition {name!r} does not exist on this cluster; partitions: "
                          f"{', '.join(known) or 'none'}")
    nodes = _run(["sinfo", "-p", name, "-h", "-N", "-o", "%c|%G|%m"])
    cpus = gpus = mem = 0
    for line in nodes.stdout.splitlines():
        c, g, m = (line.split("|") + ["", "", ""])[:3]
        cpus = max(cpus, int(c) if c.strip().isdigit() else 0)
        gpus = max(gpus, sum(int(n) for n in re.findall(r"gpu(?::[^:,()]+)?:(\d+)", g)))
        mem = max(mem, int(m) if m.strip().isdigit() else 0)
    part = Partition(name, cpus, gpus, mem)
    if res.cpus > part.cpus:
        raise RichKDError(f"resources.cpus {res.cpus} is more than a node of partition {name} has ({part.cpus})")
    if res.gpus > part.gpus:
        raise RichKDError(f"resources.gpus {res.gpus} is more than a node of partition {name} has ({part.gpus})")
    if res.mem_gb is not None and part.mem_mb and res.mem_gb * 1024 > part.mem_mb:
        raise RichKDError(f"resources.mem_gb {res.mem_gb:g} is more than a node of partition {name} has "
                          f"({part.mem_mb / 1024:.1f} GB)")
    return part


def _records_path(spec: StudySpec) -> Path:
    return spec.out_path / "slurm" / "jobs.json"


def _records(spec: StudySpec) -> dict[str, str]:
    path = _records_path(spec)
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _squeue() -> dict[str, str]:
    """job id (array tasks as ARRAYID_TASK) -> SLURM state, for the jobs the scheduler still holds."""
    if shutil.which("squeue") is None:
        return {}
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T"])
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)


def _steps(spec: StudySpec, threads: int, only: Sequence[str]) -> list[Job]:
    return [*prepare_jobs(spec, threads), *arm_jobs(spec, threads, only)]


def _threads(spec: StudySpec) -> int:
    res = spec.resources
    return spec.threads if spec.threads is not None else max(1, res.cpus // max(1, res.gpus))


def step_status(spec: StudySpec, only: Sequence[str] = ()) -> list[StepStatus]:
    """Every step with its state, from its directory on disk and the scheduler's queue."""
    records, queue = _records(spec), _squeue()
    rows = []
    for job in _steps(spec, _threads(spec), only):
        job_id = records.get(job.key)
        if job.state == DONE:
            state = DONE
        elif job_id is not None and job_id in queue:
            state = RUNNING if queue[job_id] in _RUNNING_STATES else QUEUED
        elif job_id is not None:
            state = FAILED
        else:
            state = NOT_STARTED
        rows.append(StepStatus(job.key, job.label, state, job_id, job.log))
    return rows


def format_status(spec: StudySpec, only: Sequence[str] = ()) -> str:
    rows = step_status(spec, only)
    counts = {s: sum(r.state == s for r in rows) for s in (DONE, QUEUED, RUNNING, FAILED, NOT_STARTED)}
    lines = [f"study {spec.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    for r in rows:
        line = f"  {r.label:<24} {r.state:<12} job {r.job_id or '-'}"
        if r.state == FAILED:
            line += f"  {_why(spec, r)}"
        lines.append(line)
    return "\n".join(lines)


def _why(spec: StudySpec, r: StepStatus) -> str:
    """Where to look for a failed step: its log's last line and path, or why it has none."""
    if not r.log.is_file():
        return "never started (a step it depends on failed, or it was cancelled while queued)"
    last = (log_tail(r.log, 1) or ["no output"])[-1].strip()
    return f"{last}; see {r.log}" + (f" and {_submitit_log(spec, r.job_id)}" if r.job_id else "")


def _submitit_log(spec: StudySpec, job_id: str) -> Path:
    return spec.out_path / "slurm" / job_id / f"{job_id}_0_log.err"


def _executor(spec: StudySpec, name: str, dependency: Sequence[str]) -> Any:
    import submitit

    res = spec.resources
    extra: dict[str, Any] = {"kill_on_invalid_dep": "yes"}  # a failed prepare step fails its runs, not hangs them
    for line in res.sbatch:
        key, _, value = line[2:].partition("=")
        extra[key.replace("-", "_")] = value if value else True
    params: dict[str, Any] = {"job_name": f"{spec.name}.{name}", "time": res.time_min, "cpus_per_task": res.cpus,
                              "signal_delay_s": 120, "additional_parameters": extra}
    for option, given in (("partition", res.partition), ("account", res.account), ("qos", res.qos)):
        if given is not None:
            params[option] = given
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    if res.mem_gb is not None:
        params["mem"] = f"{int(res.mem_gb * 1024)}MB"
    if dependency:
        params["dependency"] = "afterok:" + ":".join(dependency)
    executor = submitit.SlurmExecutor(folder=spec.out_path / "slurm" / "%j", max_num_timeout=10)
    executor.update_parameters(**params)
    return executor


def _step_run(spec: StudySpec, job: Job, threads: int, creates: str | None) -> StepRun:
    argv = tuple(a for a in job.argv if a != "--resume")
    return StepRun(key=job.key, argv=argv, log=str(job.log.resolve()), cwd=os.getcwd(), threads=threads,
                   gpus=spec.resources.gpus, run_dir=None if job.run_dir is None else str(job.run_dir.resolve()),
                   creates=creates)


def submit_study(spec: StudySpec, only: Sequence[str], console: TextIO) -> int:
    """Submit every step that is neither done nor in the queue; returns how many jobs were submitted."""
    check_cluster(spec.resources)
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise RichKDError("executor slurm needs submitit: pip install 'richkd[cluster]'") from None
    from richkd.engine.io import check_writable

    check_writable(spec.out_path, "study out")
    check_arm_records(spec)
    threads = _threads(spec)
    records, queue = _records(spec), _squeue()
    submitted = 0

    def say(text: str) -> None:
        print(text, file=console, flush=True)

    def live(job: Job) -> str | None:
        job_id = records.get(job.key)
        return job_id if job_id is not None and job_id in queue else None

    def record() -> None:
        write_json_atomic(_records_path(spec), records)

    after: list[str] = []  # the prepare steps not done yet: each runs after the ones before it, the arms after all
    creates = {f"prepare_{s.name}": substitute(s.creates, out=spec.out) for s in spec.prepare}
    for job in prepare_jobs(spec, threads):
        if job.state == DONE:
            continue
        job_id = live(job) or ""
        if not job_id:
            step = _step_run(spec, job, threads, str(Path(creates[job.key]).resolve()))
            job_id = str(_executor(spec, job.key, after).submit(step).job_id)
            records[job.key] = job_id
            record()
            submitted += 1
            say(f"  submitted {job.label}: job {job_id}")
        after.append(job_id)
    arms = arm_jobs(spec, threads, only)
    for arm in spec.arms:
        todo = [j for j in arms if j.key.rsplit("_s", 1)[0] == arm and j.state != DONE and live(j) is None]
        if not todo:
            continue
        executor = _executor(spec, arm, after)
        with executor.batch():
            handles = [executor.submit(_step_run(spec, j, threads, str((j.run_dir or Path()).resolve() /
                                                                        "summary.json"))) for j in todo]
        for job, handle in zip(todo, handles, strict=True):
            records[job.key] = str(handle.job_id)
        record()
        submitted += len(todo)
        say(f"  submitted {arm}: job array {handles[0].job_id.split('_')[0]} "
            f"(seeds {', '.join(j.key.rsplit('_s', 1)[1] for j in todo)})")
    return submitted


def wait_study(spec: StudySpec, only: Sequence[str], console: TextIO, poll_s: float = 2.0) -> list[StepStatus]:
    """Wait until no step is queued or running; returns the failed ones (each reported with its log)."""
    while True:
        rows = step_status(spec, only)
        if not any(r.state in (QUEUED, RUNNING) for r in rows):
            break
        time.sleep(poll_s)
    failed = [r for r in rows if r.state == FAILED]
    for r in failed:
        print(f"  FAILED {r.label} (job {r.job_id}): {_why(spec, r)}", file=console, flush=True)
    return failed
