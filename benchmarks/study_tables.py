"""Recompute a study's comparison tables from its results.json alone (no run directories): the per-run numbers the
file holds, the spec's `compare` arms and declared `headline` family (Holm's correction), written back as
results.json + results.md. How docs/results/cifar10_*_results.* were regenerated for issue 27 item 3:

    python benchmarks/study_tables.py benchmarks/study/cifar10_1k.yaml docs/results/cifar10_1k_results.json
    python benchmarks/study_tables.py benchmarks/study/cifar10_t5k.yaml docs/results/cifar10_t5k_results.json

Writes next to the input (same stem, .json and .md) unless --out names another stem. Also prints, for the
record, how many exploratory comparisons exclude 0 uncorrected and how many of all comparisons would survive
Holm's correction over every comparison at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from richkd.engine.io import write_json_atomic, write_text_atomic
from richkd.errors import RichKDError
from richkd.study import stats
from richkd.study.results import recompute_results, render_results_markdown
from richkd.study.spec import load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="the study's YAML spec (compare arms, headline family)")
    parser.add_argument("results", type=Path, help="its results.json (per-run numbers)")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default: the results file's)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        results = recompute_results(json.loads(args.results.read_text()), spec)
    except (RichKDError, OSError, json.JSONDecodeError) as err:
        print(f"study_tables: error: {err}", file=sys.stderr)
        return 2
    stem = args.out or args.results.with_suffix("")
    write_json_atomic(stem.with_suffix(".json"), results)
    write_text_atomic(stem.with_suffix(".md"), render_results_markdown(results))
    tested = [c for c in results["comparisons"] if c["p"] is not None and c["against"] in spec.compare]
    uncorrected = sum(c["low"] > 0 or c["high"] < 0 for c in tested)
    survive = sum(p is not None and p <= spec.alpha for p in stats.holm([c["p"] for c in tested]))
    headline = [c for c in results["comparisons"] if c["family"] == "headline"]
    print(f"{spec.name}: {len(tested)} testable comparisons against the compare arms (headline ones included), "
          f"{uncorrected} with an uncorrected 95 % interval excluding 0, {survive} surviving Holm over all "
          f"{len(tested)}; headline family m = {len(headline)}: "
          + "; ".join(f"{c['arm']} − {c['against']} {c['metric']}: {c['mean']:+.3f}, p {c['p']}, Holm p "
                      f"{c['p_holm']}, {c['verdict']}" for c in headline))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
