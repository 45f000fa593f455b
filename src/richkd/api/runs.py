"""Compose a run, train or resume it, read a finished one back: the run directory's whole life cycle.

Owns the run-directory rules every caller shares (the CLI's `richkd train`, the demo, notebooks): one writer at a
time (a lock, rank 0 only under DDP), checks before any work (a run already there, nothing to resume, another
student or config on resume), nothing half-made left behind by a run that failed before its first checkpoint, and
the process group left on every path out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from richkd.errors import RichKDError, expected_failure

if TYPE_CHECKING:
    from richkd.config import RunConfig

log = logging.getLogger("richkd")

__all__ = ["RunResult", "compose", "compose_with_layers", "config_text", "load_run", "train"]


@dataclass(frozen=True)
class RunResult:
    """A finished (or resumed-to-the-end) run, read from its directory.

    run_dir: the run directory; model_path: its final model file (model_last.pt); summary: summary.json;
    metrics: one dict per epoch (metrics.jsonl); provenance: run.json (loss, teacher targets, config layers).
    """

    run_dir: Path
    model_path: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def best_model_path(self) -> Path:
        """model_best.pt: the epoch with the best validation (or test, when there is no validation split) score."""
        return self.run_dir / "model_best.pt"


def compose_with_layers(
    dataset: str | None = None,
    pair: str | None = None,
    method: str | None = None,
    overrides: Sequence[str] = (),
    config: str | Path | None = None,
) -> tuple[RunConfig, list[str]]:
    """`compose` plus the names of the layers it stacked, in order (a run records them in run.json)."""
    from richkd.config import load_config_with_layers

    return load_config_with_layers(config, list(overrides), dataset=dataset, pair=pair, method=method)


def compose(
    dataset: str | None = None,
    pair: str | None = None,
    method: str | None = None,
    overrides: Sequence[str] = (),
    config: str | Path | None = None,
) -> RunConfig:
    """The resolved, validated config of a run: built-in layers (`richkd recipes` lists them), then the YAML file
    `config`, then `key=value` overrides. A frozen dataclass: inspect it (`cfg.train.epochs`) or print
    `config_text(cfg)`; `dataclasses.replace` derives variants."""
    return compose_with_layers(dataset, pair, method, overrides, config)[0]


def config_text(config: RunConfig) -> str:
    """The config as YAML, every key filled in (what `richkd config show` prints and a run saves as config.yaml)."""
    from richkd.config import dump_config

    return dump_config(config)


def train(
    config: RunConfig, *, resume: bool = False, layers: Sequence[str] | None = None, allow_code: bool = False
) -> RunResult:
    """Train (or with `resume`, continue) the run `config` describes, in `config.out_dir`; returns its result.

    `layers` (from `compose_with_layers`) is recorded in run.json. `allow_code` is the explicit opt-in that a model
    named `module:PKG.MOD:FACTORY` may import and run that code (never implied by a config or a file). Bad input
    (a run already there, nothing to resume, another student or config on resume) is a RichKDError before any
    work. Under torchrun every rank calls this;
    only rank 0 writes the run directory. A run stopped early by `train.stop_after` returns the trainer's
`{"stopped_at_epoch", "epochs"}` as its summary: continue it with `resume=True`.
    """
    from richkd.engine.device import check_device
    from richkd.engine.io import check_writable

    run_dir = Path(config.out_dir)
    check_writable(run_dir, "out_dir")
    with _run_dir_lock(run_dir):  # before any check: two identical commands must not both pass them
        before = set(run_dir.iterdir()) if run_dir.is_dir() else None
        try:
            check_run_dir(run_dir, resume=resume)
        except RichKDError:
            remove_unstarted_run(run_dir, before)
            raise
        if resume:
            check_same_student(config, run_dir)
        if resume and (run_dir / "config.yaml").exists():
            check_same_config(config, run_dir)
        check_device(config.train.device, "train.device")
        try:
            summary = _fit(config, run_dir, resume=resume, layers=list(layers or []), allow_code=allow_code)
        except BaseException as err:
            if not isinstance(err, KeyboardInterrupt) and expected_failure(err) is None:
                raise  # a bug: its traceback stays, and so do its files (evidence)
            remove_unstarted_run(run_dir, before)
            raise
    return RunResult(run_dir=run_dir, model_path=run_dir / "model_last.pt", summary=summary,
                     metrics=_read_metrics(run_dir), provenance=_read_provenance(run_dir))


def load_run(run_dir: str | Path) -> RunResult:
    """A finished run's result from its directory (summary.json, metrics.jsonl, run.json)."""
    folder = Path(run_dir)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        what = "holds no checkpoint either" if not (folder / "checkpoint.pt").is_file() else "has not finished"
        raise RichKDError(f"{folder} is no finished run (no summary.json; it {what}): train it, or resume it")
    return RunResult(run_dir=folder, model_path=folder / "model_last.pt", summary=_read_json(summary_path),
                     metrics=_read_metrics(folder), provenance=_read_provenance(folder))


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """One record per finished epoch (a torn last line of a killed run is skipped, as the trainer does)."""
    path = run_dir / "metrics.jsonl"
    records: list[dict[str, Any]] = []
    for line in path.read_text().splitlines() if path.is_file() else ():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line of a killed run: the trainer cuts it off when the run resumes
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_provenance(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    return _read_json(path) if path.is_file() else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RichKDError(f"{path} is not valid JSON ({exc}): the run directory is damaged") from None
    if not isinstance(obj, dict):
        raise RichKDError(f"{path} holds no JSON object: the run directory is damaged")
    return obj


def _run_dir_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The run directory's writer lock; under DDP only rank 0 (the only rank that writes it) takes it."""
    from richkd.engine.lock import hold

    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return hold(run_dir, "run directory")


def check_run_dir(run_dir: Path, *, resume: bool) -> None:
    """Fail before any work: output not writable, a run already there, or nothing to resume.

    Leftovers of a killed writer (temp files with a dead PID in their name) are removed first: they never block.
    """
    from richkd.engine.io import check_writable, remove_stale

    check_writable(run_dir, "out_dir")
    remove_stale(run_dir)
    has_ckpt = (run_dir / "checkpoint.pt").exists()
    if has_ckpt and not resume:
        raise RichKDError(f"{run_dir} already holds a run: pass --resume to continue it, or set out_dir=...")
    if resume and not has_ckpt:
        what = "does not exist" if not _has_files(run_dir) else "holds no checkpoint.pt (no epoch finished yet)"
        raise RichKDError(f"--resume: {run_dir} {what}: check out_dir, or drop --resume to start the run")


def _has_files(run_dir: Path) -> bool:
    from richkd.engine.lock import LOCK_NAME

    return run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir())


def check_same_student(cfg: RunConfig, run_dir: Path) -> None:
    """--resume of a run with another student: one line naming both, before the run's files are touched."""
    from richkd.engine.checkpoint import recorded_student

    saved = recorded_student(run_dir)
    if saved is not None and saved != cfg.model.student:
        raise RichKDError(
            f"--resume: {run_dir} trained a {saved} student but the config names model.student={cfg.model.student}: "
            f"resume with model.student={saved} (the run's config.yaml), or start a new run in another out_dir"
        )


def check_same_config(cfg: RunConfig, run_dir: Path) -> None:
    """--resume with a config that differs from the run's config.yaml (other than how far and how fast)."""
    from richkd.config import config_to_dict, load_config

    saved, current = _flatten(config_to_dict(load_config(run_dir / "config.yaml"))), _flatten(config_to_dict(cfg))
    # how far one invocation goes, and how fast, does not change the run
    changed = sorted(
        key
        for key in saved.keys() | current.keys()
        if saved.get(key) != current.get(key) and key not in ("train.stop_after", "train.progress", "train.threads")
    )
    if changed:
        shown = "; ".join(f"{key}: {saved.get(key)!r} in the run, {current.get(key)!r} now" for key in changed[:3])
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise RichKDError(
            f"--resume: {', '.join(changed)} differ from {run_dir / 'config.yaml'} ({shown}{more}); resume with "
            "that file"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def remove_unstarted_run(run_dir: Path, before: set[Path] | None) -> None:
    """A run that failed before its first checkpoint leaves nothing behind (no half-made run directory)."""
    from richkd.engine import dist

    if dist.launch_rank() != 0 or (run_dir / "checkpoint.pt").exists():  # the group is left by now
        return
    from richkd.engine.lock import LOCK_NAME

    for path in set(run_dir.iterdir()) - (before or set()) if run_dir.is_dir() else ():
        if path.is_file() and path.name != LOCK_NAME:  # the lock goes when it is released (then the folder)
            path.unlink(missing_ok=True)
    if before is None and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def previous_run(run_dir: Path) -> dict[str, Any] | None:
    """The run.json of the run being resumed (None if it has none), for build_fit's subset check."""
    path = run_dir / "run.json"
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RichKDError(f"--resume: {path} is not valid JSON ({exc})") from None
    return previous if isinstance(previous, dict) else None


def _fit(cfg: RunConfig, run_dir: Path, *, resume: bool, layers: list[str], allow_code: bool) -> dict[str, Any]:
    import torch

    from richkd.build import build_fit
    from richkd.config import dump_config
    from richkd.engine import dist
    from richkd.engine.io import write_json_atomic, write_text_atomic
    from richkd.engine.trainer import fit

    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)  # validated by the config: in [1, 4096]
    torch.manual_seed(cfg.seed)
    device = dist.init_from_env(cfg.train.device)
    ok = False
    try:  # the process group is left on every path out, before interpreter exit (dist.shutdown says why)
        parts, provenance = build_fit(
            cfg, device, previous=previous_run(run_dir) if resume else None, allow_code=allow_code
        )
        provenance["config_layers"] = layers
        log.info("%s", provenance["loss"])
        if provenance["teacher_targets"]:
            log.info("teacher targets: %s", provenance["teacher_targets"])
        if dist.is_main():
            write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
            write_json_atomic(run_dir / "run.json", provenance)
        summary = fit(parts, run_dir, resume=resume)
        del parts  # the student, its optimizer and data: nothing that touched the group outlives it
        ok = True
    finally:
        dist.shutdown(ok=ok)
    return summary
