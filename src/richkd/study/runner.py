"""`run_study`: prepare steps -> the grid of arms x seeds -> predictions, robustness, analyses -> results.json,
results.md and the report. Reruns continue where a killed runner stopped; `describe_plan` is the dry run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from richkd.errors import RichKDError
from richkd.study.grid import (
    DONE,
    RESUME,
    Job,
    arm_jobs,
    check_arm_records,
    log_tail,
    prepare_jobs,
    run_dir,
    run_jobs,
    run_state,
    threads_per_run,
)
from richkd.study.post import post_process, write_report
from richkd.study.results import collect_results, write_results
from richkd.study.spec import StudySpec

__all__ = ["StudyOutcome", "describe_plan", "run_study"]

_STATE_WORDS = {DONE: "done, skipped", RESUME: "resume", "new": "new"}


@dataclass(frozen=True)
class StudyOutcome:
    failed: tuple[str, ...]  # runs that failed in this invocation
    results: Path | None
    report: Path | None


def _check_only(spec: StudySpec, only: Sequence[str]) -> None:
    unknown = [arm for arm in only if arm not in spec.arms]
    if unknown:
        raise RichKDError(f"--only {unknown[0]}: not an arm of {spec.name}; arms: {', '.join(spec.arms)}")


def describe_plan(spec: StudySpec, *, parallel: int, only: Sequence[str] = ()) -> str:
    """The commands the runner would run now, each with its state on disk (the dry run prints this)."""
    _check_only(spec, only)
    threads = threads_per_run(spec, parallel)
    lines = [f"study {spec.name}: {len(spec.arms)} arms x {len(spec.seeds)} seeds, {parallel} runs side by side, "
             f"train.threads={threads} each; out {spec.out}"]
    for job in prepare_jobs(spec, threads_per_run(spec, 1)):
        lines.append(f"[{job.label}: {_STATE_WORDS[job.state]}] {job.command()}")
    for job in arm_jobs(spec, threads, only):
        lines.append(f"[{job.label}: {_STATE_WORDS[job.state]}] {job.command()}")
    a = spec.analysis
    after = ["predictions + analyses of every finished run" if a.predict else "no predictions (analysis.predict)"]
    if a.robustness is not None:
        after.append(f"robustness on {a.robustness.limit or 'all'} test images, severities "
                     f"{','.join(map(str, a.robustness.severities))}")
    after += [f"{spec.out}/results.json + results.md", f"{spec.out}/report/report.html"]
    lines.append("then: " + "; ".join(after))
    return "\n".join(lines)


def _run_prepare(jobs: Sequence[Job], threads: int, console: TextIO) -> None:
    for job in jobs:
        if job.state == DONE:
            print(f"{job.label}: done before, skipped", file=console, flush=True)
            continue
        print(f"{job.label}: {job.command()}", file=console, flush=True)
        if run_jobs([job], parallel=1, threads=threads, console=console):
            last = (log_tail(job.log, 1) or ["no output"])[-1].strip()
            raise RichKDError(f"{job.label} failed ({last}); see {job.log}, fix it and rerun the study")


def _finished(spec: StudySpec) -> list[tuple[str, int]]:
    return [(arm, seed) for seed in spec.seeds for arm in spec.arms
            if run_state(run_dir(spec.out_path, arm, seed)) == DONE]


def run_study(spec: StudySpec, *, parallel: int | None = None, only: Sequence[str] = (), report_only: bool = False,
              post_only: bool = False, console: TextIO) -> StudyOutcome:
    """Run (or continue) the study; with `report_only`, rebuild results and report from the runs that exist; with
    `post_only`, train nothing but compute the finished runs' predictions and robustness first (a long grid stopped
    part-way gets its full tables without starting another run)."""
    _check_only(spec, only)
    from richkd.engine.io import check_writable

    parallel = parallel or spec.parallel
    threads = threads_per_run(spec, parallel)
    out = spec.out_path
    check_writable(out, "study out")
    failed: list[Job] = []
    if not (report_only or post_only):
        check_arm_records(spec)
        alone = threads_per_run(spec, 1)
        _run_prepare(prepare_jobs(spec, alone), alone, console)
        jobs = arm_jobs(spec, threads, only)
        todo = [j for j in jobs if j.state != DONE]
        print(f"runs: {len(jobs) - len(todo)} of {len(jobs)} done before; {len(todo)} to run, {parallel} at a time",
              file=console, flush=True)
        failed = run_jobs(jobs, parallel=parallel, threads=threads, console=console)
    runs = _finished(spec)
    print(f"after the runs: {len(runs)} of {len(spec.arms) * len(spec.seeds)} finished", file=console, flush=True)
    outputs = post_process(spec, runs, console, compute=not report_only)
    results = collect_results(spec, outputs.analysis_runs)
    json_path, md_path = write_results(out, results)
    print(f"results: {md_path} and {json_path}", file=console, flush=True)
    report = None
    if runs:
        report = write_report(spec, runs, outputs, results)
        print(f"report: {report}", file=console, flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(j.label for j in failed)} (logs in {out / 'logs'}); rerun "
              "the study to retry them", file=console, flush=True)
    return StudyOutcome(tuple(j.key for j in failed), json_path, report)
