"""`richkd study SPEC`: run (or continue) a grid of arms x seeds, then write results.json, results.md and the report.

Thin: parse, load the spec (checked once, one-line errors), call `richkd.study.run_study`. Exit code 0 when every
run finished, 1 when some run failed (the others and the tables still complete), 2 on a bad spec or input.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from richkd.cli.args import count_int


def add_study_parser(subparsers: Any) -> None:
    """Register `richkd study` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "study", help="run a grid of arms x seeds from a spec file, with results table and report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The spec format is in docs/study.md. Paths in the spec are relative to the current directory.",
    )
    p.add_argument("spec", help="study spec (YAML)")
    p.add_argument("--parallel", type=count_int, default=None,
                   help="runs side by side (default: the spec's `parallel`)")
    p.add_argument("--only", nargs="+", default=(), metavar="ARM", help="train only these arms' runs")
    p.add_argument("--executor", choices=("local", "slurm"), default=None,
                   help="where the runs execute (default: the spec's `executor`, else local); slurm: one job per "
                        "(arm, seed) through submitit, resources from the spec's `resources` (docs/cluster.md)")
    p.add_argument("--wait", action="store_true",
                   help="slurm: wait for the jobs, then write results and report (default: submit and return)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--status", action="store_true",
                      help="every step's state (done/queued/running/failed/not started) and SLURM job id")
    mode.add_argument("--dry-run", action="store_true", help="print the planned commands and their state; run nothing")
    mode.add_argument("--report-only", action="store_true",
                      help="rebuild results and report from the runs, predictions and robustness files that exist")
    mode.add_argument("--post-only", action="store_true",
                      help="train nothing: predictions, robustness and analyses of the finished runs, then results "
                           "and report (to report a grid stopped part-way)")
    p.set_defaults(func=cmd_study, interrupt_hint="run the same command again to continue where it stopped")


def cmd_study(args: argparse.Namespace) -> int:
    from richkd.errors import RichKDError
    from richkd.steps import quiet_console_logging
    from richkd.study import describe_plan, load_spec, run_study

    spec = load_spec(args.spec)
    if args.parallel is not None and args.parallel < 1:
        raise RichKDError(f"--parallel must be >= 1, got {args.parallel}")
    parallel = args.parallel or spec.parallel
    executor = args.executor or spec.executor
    if args.dry_run:
        print(describe_plan(spec, parallel=parallel, only=args.only))
        if executor == "slurm":
            r = spec.resources
            print(f"executor slurm: each step not done is one job (a job array per arm, after the prepare jobs), "
                  f"each with partition {r.partition or '(default)'}, {r.cpus} CPUs, {r.gpus} GPUs, "
                  f"{'mem ' + format(r.mem_gb, 'g') + ' GB' if r.mem_gb else 'default memory'}, {r.time_min} min")
        return 0
    if args.status:
        from richkd.study.executors.slurm import format_status

        print(format_status(spec, args.only))
        return 0
    quiet_console_logging()
    if executor == "slurm" and not (args.report_only or args.post_only):
        return _slurm(spec, args)
    outcome = run_study(spec, parallel=parallel, only=args.only, report_only=args.report_only,
                        post_only=args.post_only, console=sys.stdout)
    return 1 if outcome.failed else 0


def _slurm(spec: Any, args: argparse.Namespace) -> int:
    """Submit what is not done; with --wait (or when nothing is left to run) post-process the finished grid."""
    from richkd.study import run_study
    from richkd.study.executors.slurm import QUEUED, RUNNING, step_status, submit_study, wait_study

    submitted = submit_study(spec, args.only, console=sys.stdout)
    pending = [r for r in step_status(spec, args.only) if r.state in (QUEUED, RUNNING)]
    if pending and not args.wait:
        print(f"{submitted} job(s) submitted, {len(pending)} step(s) queued or running; follow them with "
              f"`richkd study {args.spec} --status`; rerun the study (or --post-only) when they are done",
              flush=True)
        return 0
    failed = wait_study(spec, args.only, console=sys.stdout)
    outcome = run_study(spec, only=args.only, post_only=True, console=sys.stdout)
    return 1 if failed or outcome.failed else 0
