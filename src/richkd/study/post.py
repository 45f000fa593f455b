"""After the grid: predictions and robustness of every finished run (resumable steps, `richkd.steps.StepRunner`),
then the analyses, results and the report, rebuilt from what exists each time (they take seconds).

Everything is a `richkd.api` call (`predict`, `analyze`, `measure_robustness`) or library call (`build_report`);
the spec's extra predictors, given as `richkd predict` arguments, run as that command in a child process. This
module only decides the arguments and where the outputs go:

OUT/predictions/<arm>_s<seed>.preds.safetensors   model_last.pt of each run on its test split (and extra predictors)
OUT/robustness/<arm>_s<seed>/robustness.json      each run under the corruptions (same corrupted images for all;
                                                  the runs still missing are evaluated in one pass, so each
                                                  corrupted chunk is generated once, not once per run)
OUT/analysis/runs/analysis.json                   every run's predictions: the results table's quadrant columns
OUT/analysis/report/analysis.json                 one seed per arm + extra predictors, flows: the report's figures
OUT/robustness/report.json                        the same selection of robustness results, for the report
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from richkd.engine.io import write_json_atomic, write_text_atomic
from richkd.errors import RichKDError
from richkd.steps import StepRunner, capture
from richkd.study.grid import available_cores, run_dir
from richkd.study.results import run_key
from richkd.study.spec import StudySpec, substitute

__all__ = ["PostOutputs", "TestData", "post_process", "test_data_of", "write_report"]


@dataclass(frozen=True)
class TestData:
    """The test split a run evaluated on, as `richkd predict` / `robustness` take it."""

    name: str
    root: str | None
    split: str
    limit: int | None

    def args(self, limit: int | None) -> list[str]:
        root = [] if self.root is None else ["--root", self.root]
        return ["--dataset", self.name, *root, "--split", self.split, *([] if limit is None else ["--limit",
                                                                                                  str(limit)])]

    def kwargs(self, limit: int | None) -> dict[str, Any]:
        """The same, as keyword arguments of `richkd.api.predict` / `measure_robustness`."""
        return {"dataset": self.name, "root": self.root, "split": self.split, "limit": limit}


def test_data_of(folder: Path) -> TestData:
    """From the run's resolved config.yaml, so predictions use exactly the rows the run was evaluated on."""
    from richkd.config import load_config

    cfg = load_config(folder / "config.yaml")
    return TestData(cfg.data.name, cfg.data.root, cfg.data.test_split, cfg.data.test_limit)


def _study_test_data(spec: StudySpec, runs: Sequence[tuple[str, int]]) -> TestData:
    found = {test_data_of(run_dir(spec.out_path, arm, seed)): f"{arm} s{seed}" for arm, seed in runs}
    if len(found) > 1:
        (a, first), (b, second) = list(found.items())[:2]
        raise RichKDError(f"runs {first} and {second} were evaluated on different test data ({a} vs {b}); "
                          "a study compares runs on one test set: make the arms' data.* keys agree")
    return next(iter(found))


@dataclass(frozen=True)
class PostOutputs:
    analysis_runs: Path | None  # every run's predictions analysed (for the results table)
    analysis_report: Path | None  # the report's selection
    robustness_report: Path | None


def _forget_if_stale(steps: StepRunner, name: str, source: Path) -> None:
    """A run retrained after its step finished (its model file is newer): the step runs again."""
    marker = steps.marker(name)
    if marker.is_file() and source.is_file() and source.stat().st_mtime > marker.stat().st_mtime:
        marker.unlink()


@dataclass(frozen=True)
class _Speed:
    device: str
    threads: int

    def argv(self) -> list[str]:
        return ["--device", self.device, "--threads", str(self.threads)]

    def apply(self) -> None:
        import torch

        torch.set_num_threads(self.threads)


def _predict_run(model: Path, data: TestData, speed: _Speed, name: str, out: Path) -> None:
    """A run's model_last.pt on the test rows it was evaluated on."""
    from richkd.api import predict

    speed.apply()
    result = predict(checkpoint=model, **data.kwargs(data.limit), device=speed.device, name=name, out=out)
    print(f"{result.path}: {name} ({result.kind}), {result.rows} rows, top-1 {result.top1:.2f} %")


def _predict_argv(argv: list[str], out: Path) -> None:
    """An extra predictor of the spec: its `richkd predict` arguments, run as that command (a child process)."""
    done = subprocess.run([sys.executable, "-m", "richkd", "predict", *argv, "--out", str(out)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    print(done.stdout, end="")
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reason = lines[-1].removeprefix("richkd: error: ") if lines else f"exit code {done.returncode}"
        raise RichKDError(f"`richkd predict {' '.join(argv)}` failed: {reason}")


def _robustness_pass(models: dict[str, Path], shared: dict[str, Any], speed: _Speed, robust: Path) -> None:
    """One `richkd robustness` over several models, split into one robustness.json (+ .md) per model.

    Why one pass: `evaluate_robustness` corrupts each chunk once for all its models, not once per run. The images
    depend only on (seed, row ids), so each model's numbers are those of a pass of its own (tests/test_study.py
    checks this).
    """
    from richkd.api import measure_robustness
    from richkd.robustness.run import render_markdown

    batch = robust / "_pass"
    speed.apply()
    whole = measure_robustness(models, batch, **shared, device=speed.device, progress=True)
    for key in models:
        one = {**whole, "models": {key: whole["models"][key]}, "evaluated_with": sorted(models)}
        write_json_atomic(robust / key / "robustness.json", one)
        write_text_atomic(robust / key / "robustness.md", render_markdown(one))
    shutil.rmtree(batch)  # the per-model files are the record; the combined scratch would go stale


def _run_steps(spec: StudySpec, runs: Sequence[tuple[str, int]], data: TestData, console: TextIO) -> None:
    """Predictions and robustness of every finished run and every extra model, each a resumable step."""
    out, a = spec.out_path, spec.analysis
    speed = _Speed(a.device, a.threads or available_cores())
    preds, robust = out / "predictions", out / "robustness"
    todo: list[tuple[str, str, Path, Path | None, functools.partial[None]]] = []
    if a.predict:
        for arm, seed in runs:
            key, model = run_key(arm, seed), run_dir(out, arm, seed) / "model_last.pt"
            target = preds / f"{key}.preds.safetensors"
            todo.append((f"predict_{key}", f"predictions of {arm} s{seed}", target, model, functools.partial(
                _predict_run, model, data, speed, key, target)))
        for name, args in a.predictors.items():
            target = preds / f"{name}.preds.safetensors"
            argv = [substitute(t, out=spec.out) for t in args]
            todo.append((f"predict_{name}", f"predictions of {name}", target, None, functools.partial(
                _predict_argv, [*argv, *data.args(data.limit), *speed.argv(), "--name", name], target)))
    rob = a.robustness
    if rob is not None:
        shared = {**data.kwargs(rob.limit), "severities": list(rob.severities), "seed": rob.seed,
                  "corruptions": None if rob.corruptions is None else list(rob.corruptions)}
        models = {run_key(arm, seed): run_dir(out, arm, seed) / "model_last.pt" for arm, seed in runs}
        models.update({name: Path(substitute(path, out=spec.out)) for name, path in rob.checkpoints.items()})
        rpass = _RobustnessPass(shared, speed, robust)
        for key, model in models.items():
            target = robust / key / "robustness.json"
            todo.append((f"robustness_{key}", f"robustness of {key}", target, model,
                         functools.partial(rpass.step, key, model)))
    steps = StepRunner(out, len(todo), console)
    for name, _title, target, source, _work in todo:
        if source is not None:
            _forget_if_stale(steps, name, source)
        if name.startswith("robustness_") and source is not None and not steps.is_done(name, [target]):
            rpass.due[name.removeprefix("robustness_")] = source
    for name, title, target, _source, work in todo:
        steps.run(name, title, [target], work)


@dataclass
class _RobustnessPass:
    """The models whose robustness step is due; the first of those steps to run evaluates them all at once."""

    shared: dict[str, Any]
    speed: _Speed
    robust: Path
    due: dict[str, Path] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)

    def step(self, key: str, model: Path) -> None:
        if key in self.written:
            return
        self.due[key] = model
        _robustness_pass(self.due, self.shared, self.speed, self.robust)
        self.written |= set(self.due)
        self.due = {}


def _analyze(files: dict[str, Path], folder: Path, spec: StudySpec, *, extras: bool) -> Path | None:
    """`richkd analyze` of the predictions that exist (flows, agreements and class-name similarity if `extras`)."""
    files = {name: path for name, path in files.items() if path.is_file()}
    if not files:
        return None
    from richkd.analysis.analyze_files import parse_pairs
    from richkd.api import analyze

    a = spec.analysis
    flows: list[tuple[str, str]] = []
    agreements: list[tuple[str, str]] = []
    semantic = None
    if extras:
        for option, pairs, chosen in (("--flow", a.flows, flows), ("--agreement", a.agreement, agreements)):
            chosen += parse_pairs([p for p in pairs if all(end in files for end in p.split(":"))], option)
        if a.semantic is not None:
            semantic = substitute(a.semantic, out=spec.out)
    with capture(spec.out_path / "logs" / f"analysis_{folder.name}.log"):
        result = analyze(list(files.values()), folder, names=list(files), tau=a.tau, flows=flows,
                         agreements=agreements, semantic=semantic)
        print(result.markdown, end="")
    return result.json_path


def _merge_robustness(files: dict[str, Path], target: Path) -> Path | None:
    """One robustness.json of several (same corrupted images), models renamed for the report."""
    merged: dict[str, Any] | None = None
    same = ("dataset", "split", "corruptions", "severities", "n_images", "seed", "source")
    for name, path in files.items():
        if not path.is_file():
            continue
        obj = json.loads(path.read_text())
        if merged is None:
            merged = {**obj, "models": {}}
        elif any(obj.get(k) != merged.get(k) for k in same):
            continue  # measured on other images: not comparable, left out of the report's table
        merged["models"][name] = next(iter(obj["models"].values()))
    if merged is None or not merged["models"]:
        return None
    write_json_atomic(target, merged)
    return target


def post_process(spec: StudySpec, runs: Sequence[tuple[str, int]], console: TextIO, *,
                 compute: bool) -> PostOutputs:
    """Predictions/robustness of the finished `runs` (only when `compute`), then the analyses of what exists."""
    if not runs:
        return PostOutputs(None, None, None)
    out, a = spec.out_path, spec.analysis
    if compute:
        _run_steps(spec, runs, _study_test_data(spec, runs), console)
    preds = out / "predictions"
    analysis_runs = analysis_report = None
    shown_seed = spec.shown_seed()
    shown = [(arm, seed) for arm, seed in runs if seed == shown_seed]
    if a.predict:
        analysis_runs = _analyze({run_key(arm, s): preds / f"{run_key(arm, s)}.preds.safetensors" for arm, s in runs},
                                 out / "analysis" / "runs", spec, extras=False)
        report_files = {name: preds / f"{name}.preds.safetensors" for name in a.predictors}
        report_files.update({arm: preds / f"{run_key(arm, s)}.preds.safetensors" for arm, s in shown})
        analysis_report = _analyze(report_files, out / "analysis" / "report", spec, extras=True)
    robustness_report = None
    if a.robustness is not None:
        files = {name: out / "robustness" / name / "robustness.json" for name in a.robustness.checkpoints}
        files.update({arm: out / "robustness" / run_key(arm, s) / "robustness.json" for arm, s in shown})
        robustness_report = _merge_robustness(files, out / "robustness" / "report.json")
    return PostOutputs(analysis_runs, analysis_report, robustness_report)


def write_report(spec: StudySpec, runs: Sequence[tuple[str, int]], outputs: PostOutputs,
                 results: dict[str, Any]) -> Path:
    """OUT/report/report.html and report.md: the study's tables first, then the analyses' sections."""
    from richkd.report.build import build_report

    title = spec.title or f"Study {spec.name}"
    html, markdown = build_report(
        [run_dir(spec.out_path, arm, seed) for arm, seed in runs], analysis=outputs.analysis_report,
        robustness=outputs.robustness_report, cost=None, title=title, study=results,
    )
    folder = spec.out_path / "report"
    write_text_atomic(folder / "report.md", markdown)
    write_text_atomic(folder / "report.html", html)
    return folder / "report.html"
