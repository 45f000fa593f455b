"""The training loop: method-agnostic (a distiller returns weighted named terms), resumable to the same
result, evaluating every epoch and recording best- AND last-epoch accuracy. The best epoch is chosen on a held-out
validation split when the run has one (data.val_split), else on the test set (the reference protocol)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from richkd.data.batch import Batch
from richkd.data.loader import DeviceData, epoch_batches
from richkd.distill.base import Distiller, StrongView
from richkd.engine import dist
from richkd.engine.batches import BatchMaker, StreamBatches, StreamEval
from richkd.engine.checkpoint import (
    load_training_state,
    restore_training_state,
    save_model,
    save_training_state,
    unwrap,
)
from richkd.engine.evaluate import evaluate_model
from richkd.engine.io import append_line, write_json_atomic, write_text_atomic
from richkd.engine.optim import lr_at, set_lr
from richkd.errors import RichKDError
from richkd.teachers.frozen import TargetSource
from richkd.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    epochs: int
    base_lr: float
    schedule: str
    milestones: tuple[int, ...]
    gamma: float
    warmup_epochs: int

    def lr(self, epoch: int) -> float:
        return lr_at(
            epoch,
            base_lr=self.base_lr,
            epochs=self.epochs,
            schedule=self.schedule,
            milestones=self.milestones,
            gamma=self.gamma,
            warmup_epochs=self.warmup_epochs,
        )


@dataclass
class FitParts:
    """Everything `fit` needs, built by build.py. No config objects below this line."""

    student: nn.Module
    arch: str
    distiller: Distiller
    targets: TargetSource | None
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    train_batches: BatchMaker | StreamBatches  # in-memory rows, or a streamed split (data.name: imagenet)
    test_data: DeviceData | StreamEval
    test_mean: tuple[float, float, float]
    test_std: tuple[float, float, float]
    classes: tuple[str, ...]
    batch_size: int
    eval_batch_size: int
    seed: int
    bf16: bool = False
    channels_last: bool = False
    progress: bool = True
    eval_every: int = 1
    max_steps_per_epoch: int | None = None
    stop_after: int | None = None
    find_unused_parameters: bool = False  # DDP: some trainable parameter never enters the loss
    val_data: DeviceData | None = None  # held-out training rows (data.val_split): they choose the best epoch
    val_rows_sha256: str | None = None  # which rows val_data holds; a resume must hold the same ones
    tracker: Tracker | None = None  # train.loggers beyond metrics.jsonl (rank 0 only; None: none)
    log_model: bool = False  # the trackers also keep model_last.pt as an artifact
    extra_state: dict[str, Any] = field(default_factory=dict)


class StepModule(nn.Module):
    """Student + distiller as one module, so DDP syncs the distiller's trainable heads with the student."""

    def __init__(self, student: nn.Module, distiller: Distiller) -> None:
        super().__init__()
        self.student = student
        self.distiller = distiller

    def forward(
        self, batch: Batch, targets: Any, progress: float, strong_targets: Any = None
    ) -> tuple[dict[str, Tensor], Tensor]:
        out = self.student(batch.images)
        if batch.strong is None:
            terms: dict[str, Tensor] = self.distiller(out, targets, batch, progress)
        else:  # a two-view distiller (MLKD): the student runs on each view separately, as the reference does
            strong = StrongView(self.student(batch.strong.images), strong_targets)
            terms = self.distiller(out, targets, batch, progress, strong=strong)
        return terms, out.logits


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _steps(parts: FitParts, n_rows: int, generator: torch.Generator) -> list[Tensor]:
    batches = epoch_batches(
        n_rows,
        parts.batch_size,
        shuffle=True,
        drop_last=False,
        generator=generator,
        rank=dist.rank(),
        world_size=dist.world_size(),
    )
    if parts.max_steps_per_epoch is not None:
        batches = batches[: parts.max_steps_per_epoch]
    return batches


class NonFiniteLoss(RichKDError):
    """The loss of a step is NaN or infinite (raised before that step's update is applied)."""


def train_step(
    step_module: nn.Module,
    targets: TargetSource | None,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    progress: float,
    *,
    bf16: bool,
    check_finite: bool = True,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """One SGD step on `batch`: teacher targets, student + distiller, backward, update, under bf16 autocast
    when asked. Returns (weighted terms, student logits, loss) as device tensors, without syncing the host
    unless `check_finite` (then a non-finite loss raises before the update)."""
    with _autocast(batch.images.device, bf16):
        teacher = targets(batch) if targets is not None else None
        strong = targets(batch.strong) if targets is not None and batch.strong is not None else None
        terms, logits = step_module(batch, teacher, progress, strong)
        loss = torch.stack([t.float() for t in terms.values()]).sum()
    if check_finite and not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss became {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return terms, logits, loss


def _epoch_batches(parts: FitParts, epoch: int, generator: torch.Generator) -> tuple[Generator[Batch, None, None], int]:
    """(this rank's batches of `epoch`, their number). In memory: row ids drawn from `generator`, then gathered
    and augmented on the device; streamed: decoded by the loader's workers, shuffled from (seed, epoch)."""
    maker = parts.train_batches
    if isinstance(maker, StreamBatches):
        cap = parts.max_steps_per_epoch
        return maker.epoch(epoch, cap), min(maker.steps(), cap) if cap is not None else maker.steps()
    rows_per_epoch = _steps(parts, len(maker.data), generator)
    batches = (maker(rows, generator, rank=dist.rank(), world_size=dist.world_size()) for rows in rows_per_epoch)
    return batches, len(rows_per_epoch)


def _train_epoch(
    parts: FitParts, step_module: nn.Module, epoch: int, generator: torch.Generator
) -> dict[str, float]:
    step_module.train()
    source, n_steps = _epoch_batches(parts, epoch, generator)
    with contextlib.closing(source):  # streamed: the decode workers are joined here, on an error too
        return _run_epoch(parts, step_module, epoch, source, n_steps)


def _run_epoch(
    parts: FitParts, step_module: nn.Module, epoch: int, batches: Iterator[Batch], n_steps: int
) -> dict[str, float]:
    device = parts.test_data.device
    # Sums stay on the device and are read once per epoch: no host sync per step on a GPU. On the CPU a
    # sync is free, so a non-finite loss is caught before its update is applied.
    totals: dict[str, Tensor] = {}
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    check_each_step = device.type == "cpu"
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64
    if parts.progress and dist.is_main():
        batches = iter(tqdm(batches, total=n_steps, desc=f"epoch {epoch + 1}", leave=False, disable=None))
    for step, batch in enumerate(batches):
        progress = (epoch + 1) / parts.schedule.epochs  # mdistiller: 1-based epoch, constant within it
        try:
            terms, logits, _ = train_step(
                step_module,
                parts.targets,
                parts.optimizer,
                batch,
                progress,
                bf16=parts.bf16,
                check_finite=check_each_step,
            )
        except NonFiniteLoss as err:
            raise NonFiniteLoss(f"{err} at epoch {epoch + 1} step {step}: lower optim.lr") from None
        b = batch.labels.numel()
        for key, value in terms.items():
            weighted = value.detach().to(acc_dtype) * b
            totals[key] = totals[key] + weighted if key in totals else weighted
        correct += (logits.detach().argmax(1) == batch.labels).sum()
        seen += b
    record = {f"train/loss_{k}": float(v) / max(1, seen) for k, v in totals.items()}
    record["train/loss"] = sum(record.values())
    record["train/top1"] = 100.0 * int(correct) / max(1, seen)
    record = dist.mean_over_ranks(record)
    if not math.isfinite(record["train/loss"]):  # after the mean, so every rank raises together
        raise RichKDError(f"loss became {record['train/loss']} in epoch {epoch + 1}: lower optim.lr")
    return record


def _metrics_records(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl. A torn LAST line (the run was killed mid-append) is cut off the file and
    logged; an unreadable line before it is damage we cannot explain, so a one-line error names it."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records: list[dict[str, Any]] = []
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    for i, raw in enumerate(lines[: last + 1]):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("not an epoch record")
        except ValueError:
            if i == last:
                log.warning("%s: dropped a torn last line (%d bytes; the run was killed while writing it)", path,
                            len(raw))
                break
            raise RichKDError(
                f"{path} line {i + 1} is corrupt (not an epoch record): fix or delete that line, then --resume"
            ) from None
        records.append(record)
    return records


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Keep the complete records up to the checkpoint we resume from (later ones: the run died between the two
    writes; a torn last line: killed mid-append), rewriting the file atomically when anything goes."""
    if not path.exists():
        return
    kept = [r for r in _metrics_records(path) if r["epoch"] <= last_epoch]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    if path.read_bytes() != text.encode():
        write_text_atomic(path, text)


def _last_epoch_logged(path: Path) -> int:
    records = _metrics_records(path)
    return int(records[-1]["epoch"]) if records else 0


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One write + flush + fsync per epoch: a kill tears at most this line, which the next --resume drops."""
    append_line(path, json.dumps(record))


def _feed_info(parts: FitParts) -> dict[str, Any]:
    """How the model was fed (normalisation, input size), saved with its weights so `richkd classify` and
    `richkd export` need neither the dataset nor the config."""
    if isinstance(parts.test_data, StreamEval):
        height, width = parts.test_data.input_size
    else:
        height, width = parts.test_data.images.shape[2:]
    return {"mean": parts.test_mean, "std": parts.test_std, "input_size": (int(height), int(width))}


def fit(parts: FitParts, run_dir: Path, *, resume: bool) -> dict[str, Any]:
    """Train for `parts.schedule.epochs`; returns the summary also written to run_dir/summary.json. The trackers
    (train.loggers) are told when the run ends early: an error, an interrupt."""
    tracker = parts.tracker if parts.tracker and dist.is_main() else None
    try:
        return _fit(parts, run_dir, resume=resume, tracker=tracker)
    except BaseException as err:
        if tracker is not None:
            tracker.close("killed" if isinstance(err, KeyboardInterrupt) else "failed")
        raise


def _fit(parts: FitParts, run_dir: Path, *, resume: bool, tracker: Tracker | None) -> dict[str, Any]:
    device = parts.test_data.device
    generator = torch.Generator().manual_seed(parts.seed)
    step_module: nn.Module = StepModule(parts.student, parts.distiller)
    best: dict[str, Any] = {"top1": -math.inf, "epoch": 0, "top5": 0.0, "score": -math.inf}
    start_epoch = 0
    wall = 0.0
    last: dict[str, Any] = {}  # the latest evaluation
    ckpt_path = run_dir / "checkpoint.pt"
    metrics_path = run_dir / "metrics.jsonl"
    resumed = resume and ckpt_path.exists()
    if resumed:
        state = load_training_state(ckpt_path)
        restore_training_state(step_module, state, path=ckpt_path, key="student_and_distiller", arch=parts.arch)
        parts.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], generator)
        start_epoch, best, wall = state["epoch"], state["best"], state["wall_s"]
        _check_same_val_rows(state.get("val_rows_sha256"), parts.val_rows_sha256, ckpt_path)
        # the checkpoint also carries its epoch's record and last evaluation: a run killed after saving its
        # final checkpoint but before metrics.jsonl or summary.json still finishes on --resume
        last_record, last = state.get("record"), state.get("last", {})
        if dist.is_main():
            _truncate_metrics(metrics_path, start_epoch)
            if last_record is not None and _last_epoch_logged(metrics_path) < start_epoch:
                _append_jsonl(metrics_path, last_record)
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    elif dist.is_main():
        metrics_path.unlink(missing_ok=True)  # a fresh run's history starts empty: never appended to another's
    if start_epoch == parts.schedule.epochs and (run_dir / "summary.json").exists():
        tracker = None  # nothing to train (refused below): the trackers' finished runs stay as they are
    if tracker is not None:
        tracker.open(resume_epoch=start_epoch if resumed else None,
                     records=_metrics_records(metrics_path) if resumed else [])
    step_module = dist.wrap_ddp(step_module, device, find_unused_parameters=parts.find_unused_parameters)
    end_epoch = parts.schedule.epochs
    if parts.stop_after is not None:
        end_epoch = min(end_epoch, start_epoch + parts.stop_after)
    for epoch in range(start_epoch, end_epoch):
        lr = parts.schedule.lr(epoch)
        set_lr(parts.optimizer, lr)
        t0 = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        record.update(_train_epoch(parts, step_module, epoch, generator))
        record.update(parts.distiller.log_values())  # CTKD: the learned temperature at the epoch's end
        dist.average_buffers(parts.student)  # BN running stats: same model on every rank
        train_s = time.perf_counter() - t0
        wall += train_s
        record["time/train_s"] = train_s
        is_last = epoch + 1 == parts.schedule.epochs
        if (epoch + 1) % parts.eval_every == 0 or is_last:
            metrics = _evaluate(parts)
            record.update({f"test/{k}": v for k, v in metrics.items()})
            val = _evaluate(parts, parts.val_data) if parts.val_data is not None else None
            record.update({f"val/{k}": v for k, v in (val or {}).items()})
            improved = select_best(best, epoch + 1, metrics, val)
            if improved is not None:
                best = improved
                if dist.is_main():
                    save_model(
                        run_dir / "model_best.pt",
                        parts.student,
                        arch=parts.arch,
                        num_classes=len(parts.classes),
                        classes=parts.classes,
                        **_feed_info(parts),
                    )
            last = metrics
        record["time/wall_s"] = wall
        if dist.is_main():
            save_model(
                run_dir / "model_last.pt",
                parts.student,
                arch=parts.arch,
                num_classes=len(parts.classes),
                classes=parts.classes,
                **_feed_info(parts),
            )
            save_training_state(
                ckpt_path,
                {
                    "epoch": epoch + 1,
                    "arch": parts.arch,
                    "student": unwrap(parts.student).state_dict(),
                    "student_and_distiller": unwrap(step_module).state_dict(),
                    "optimizer": parts.optimizer.state_dict(),
                    "rng": _rng_state(generator),
                    "best": best,
                    "val_rows_sha256": parts.val_rows_sha256,
                    "wall_s": wall,
                    "record": record,
                    "last": last,
                },
            )
            _append_jsonl(metrics_path, record)
            if tracker is not None:
                tracker.log_epoch(record)  # after the checkpoint: on resume only its epoch may be missing
        log.info(_format_record(record, parts.schedule.epochs))
    if end_epoch < parts.schedule.epochs:
        log.info("stopped after epoch %d of %d; continue with --resume", end_epoch, parts.schedule.epochs)
        if tracker is not None:
            tracker.close("stopped")
        return {"stopped_at_epoch": end_epoch, "epochs": parts.schedule.epochs}
    if not last or (start_epoch == parts.schedule.epochs and (run_dir / "summary.json").exists()):
        raise RichKDError(f"nothing to train: the run in {run_dir} already finished; use a new out_dir")
    on_val = parts.val_data is not None
    summary = {
        "best_top1": best["top1"],
        "best_top5": best["top5"],
        "best_epoch": best["epoch"],
        "best_selected_on": "val" if on_val else "test",
        **({"best_val_top1": best["val_top1"]} if on_val else {}),
        "last_top1": last["top1"],
        "last_top5": last["top5"],
        "last_nll": last["nll"],
        "last_ece": last["ece"],
        "epochs": parts.schedule.epochs,
        "train_wall_s": wall,
        "loss": parts.distiller.describe(),
        "note": SELECTED_ON_VAL_NOTE if on_val else SELECTED_ON_TEST_NOTE,
    }
    if dist.is_main():
        write_json_atomic(run_dir / "summary.json", summary)
    if tracker is not None:
        tracker.finish(summary, run_dir / "model_last.pt" if parts.log_model else None)
    return summary


SELECTED_ON_TEST_NOTE = (
    "best_* is the test accuracy of the epoch with the best test accuracy: chosen on the test set (reference "
    "protocol), so it is optimistic; last_* is the final epoch"
)
SELECTED_ON_VAL_NOTE = (
    "best_* is the test accuracy at best_epoch, the epoch with the best accuracy on the held-out validation rows "
    "(data.val_split, best_val_top1; never trained on); last_* is the final epoch"
)


def select_best(
    best: dict[str, Any], epoch: int, test: dict[str, float], val: dict[str, float] | None
) -> dict[str, Any] | None:
    """The new best record if `epoch` beats `best`, else None. The score is validation top-1 when the run holds
    rows out, else test top-1; ties keep the earlier epoch. `top1`/`top5` are always the test accuracy AT that
    epoch (a checkpoint from before data.val_split has no score: it selected on test top-1)."""
    score = val["top1"] if val is not None else test["top1"]
    if score <= best.get("score", best["top1"]):
        return None
    new = {"top1": test["top1"], "epoch": epoch, "top5": test["top5"], "score": score}
    if val is not None:
        new["val_top1"] = val["top1"]
    return new


def _check_same_val_rows(saved: str | None, current: str | None, ckpt_path: Path) -> None:
    """A resume must validate on the rows the run started with (the split is rebuilt from data and seed)."""
    if saved != current:
        raise RichKDError(
            f"--resume: the validation rows differ from those {ckpt_path} was trained with (sha256 "
            f"{saved or 'none'} vs {current or 'none'}): were the training images or labels changed? start a "
            "new out_dir"
        )


def _evaluate(parts: FitParts, data: DeviceData | None = None) -> dict[str, float]:
    """Metrics of the student on `data` (the held-out validation rows), or on the test split when None."""
    if data is None and isinstance(parts.test_data, StreamEval):
        return parts.test_data.evaluate(parts.student, bf16=parts.bf16, channels_last=parts.channels_last)
    target = data if data is not None else parts.test_data
    assert isinstance(target, DeviceData)
    return evaluate_model(
        parts.student,
        target,
        mean=parts.test_mean,
        std=parts.test_std,
        batch_size=parts.eval_batch_size,
        bf16=parts.bf16,
        channels_last=parts.channels_last,
    )


def _format_record(record: dict[str, Any], epochs: int) -> str:
    """`epoch 3/40  lr=0.05  train_loss=1.2  train_top1=55.1  test_top1=60.2  test_top5=95.1  train_s=21.3`."""
    keys = ["lr", "train/loss", "train/top1", "val/top1", "test/top1", "test/top5", "time/train_s"]
    fields = [f"{k.split('/')[-1] if k.startswith('time/') else k.replace('/', '_')}={record[k]:.4g}"
              for k in keys if k in record]
    return f"epoch {record['epoch']}/{epochs}  " + "  ".join(fields)
