"""`richkd study SPEC`: run (or continue) a grid of arms x seeds, then write results.json, results.md and the report.

Thin: parse, load the spec (checked once, one-line errors), call `richkd.study.run_study`. Exit code 0 when every
run finished, 1 when some run failed (the others and the tables still complete), 2 on a bad spec or input.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from richkd.cli_args import count_int


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
    mode = p.add_mutually_exclusive_group()
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
    if args.dry_run:
        print(describe_plan(spec, parallel=parallel, only=args.only))
        return 0
    quiet_console_logging()
    outcome = run_study(spec, parallel=parallel, only=args.only, report_only=args.report_only,
                        post_only=args.post_only, console=sys.stdout)
    return 1 if outcome.failed else 0
