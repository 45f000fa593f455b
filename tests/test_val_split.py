"""issue 27 item 7: `data.val_split` holds out a seeded, stratified fraction of the training rows that chooses the
best epoch instead of the test set; the split is recorded, reproducible, disjoint from training, and caches and
memory banks still see each training row's ORIGINAL row id."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import richkd.build as build_module
from richkd.caches.target import write_random_cache
from richkd.config import config_from_dict
from richkd.data.arrays import ArrayDataset
from richkd.data.subset import subset
from richkd.data.valsplit import held_out_counts, split_validation, val_split_rows
from richkd.engine.checkpoint import save_model
from richkd.engine.trainer import select_best
from richkd.errors import RichKDError
from richkd.models import create_model

CLASSES = tuple(f"c{i}" for i in range(5))


def _labels(sizes: list[int], interleave: bool = True) -> torch.Tensor:
    """Labels with `sizes[c]` rows of class c, round-robin (interleave) or class-sorted."""
    if not interleave:
        return torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(sizes)])
    order: list[int] = []
    left = list(sizes)
    while any(left):
        for c in range(len(left)):
            if left[c]:
                order.append(c)
                left[c] -= 1
    return torch.tensor(order, dtype=torch.int64)


def test_held_out_counts_by_hand() -> None:
    # round-half-up(0.25 * n), at most n - 1: 8 -> 2, 6 -> 1.5 -> 2, 4 -> 1, 3 -> 0.75 -> 1, 2 -> 0.5 -> 1, 1 -> 0
    assert held_out_counts([8, 6, 4, 3, 2, 1], 0.25) == [2, 2, 1, 1, 1, 0]
    # 0.9 of 10 is 9, capped at n - 1 = 9; of 5 it is 4.5 -> 5, capped at 4
    assert held_out_counts([10, 5], 0.9) == [9, 4]


@pytest.mark.parametrize("interleave", [True, False])
def test_split_is_stratified_disjoint_and_complete(interleave: bool) -> None:
    sizes = [8, 6, 4, 3, 2, 1]
    labels = _labels(sizes, interleave)
    train, val = val_split_rows(labels, 0.25, seed=3)
    assert torch.bincount(labels[val], minlength=6).tolist() == [2, 2, 1, 1, 1, 0]  # held_out_counts by hand
    assert torch.bincount(labels[train], minlength=6).tolist() == [6, 4, 3, 2, 1, 1]
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())


def test_split_is_reproducible_by_seed() -> None:
    labels = _labels([100] * 4)
    a = val_split_rows(labels, 0.1, seed=0)[1]
    assert torch.equal(a, val_split_rows(labels, 0.1, seed=0)[1])
    # another seed draws other rows: the chance that 4 classes draw the same 10 of 100 again is C(100,10)^-4
    assert not torch.equal(a, val_split_rows(labels, 0.1, seed=1)[1])
    # not simply the first rows of each class
    assert not torch.equal(a, torch.cat([(labels == c).nonzero().flatten()[:10] for c in range(4)]).sort().values)


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(RichKDError, match="holds out no row"):
        val_split_rows(_labels([3, 3]), 0.1, seed=0)  # 0.3 rounds to 0 in every class
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(RichKDError, match=r"data.val_split must be a fraction in \(0, 1\)"):
            held_out_counts([10], bad)
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(RichKDError, match=r"data.val_split must be a fraction in \(0, 1\)"):
            config_from_dict({"data": {"val_split": bad}}).validate()
    with pytest.raises(RichKDError, match="data.name=imagenet: data.val_split is not supported"):
        config_from_dict({"data": {"name": "imagenet", "val_split": 0.1}}).validate()
    config_from_dict({"data": {"val_split": 0.0}}).validate()  # 0 = off


def _dataset(sizes: list[int]) -> ArrayDataset:
    """Images whose pixels all equal their row id (so a batch shows which full-split rows it holds)."""
    labels = _labels(sizes)
    n = len(labels)
    assert n < 256
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    return ArrayDataset(images=images, labels=labels, classes=CLASSES, name="synthetic", split="train",
                        mean=(0.5,) * 3, std=(0.25,) * 3, source="memory")


def test_limit_first_then_split_keeps_original_ids() -> None:
    full = _dataset([40] * 5)
    limited, row_map = subset(full, 50)  # 10 per class: stratified_rows' first rows of each class
    assert row_map is not None
    fit_part, val_part, split = split_validation(limited, row_map, 0.2, seed=7)
    assert split.val_ids.tolist() == val_part.images[:, 0, 0, 0].long().tolist()  # pixel = original row id
    assert split.train_ids.tolist() == fit_part.images[:, 0, 0, 0].long().tolist()
    assert sorted(split.train_ids.tolist() + split.val_ids.tolist()) == row_map.tolist()
    record = split.record()
    assert record["val_per_class"] == [2] * 5 and record["train_per_class"] == [8] * 5
    assert record["n_val"] == 10 and record["fraction"] == 0.2 and record["seed"] == 7
    assert record["val_rows"] == split.val_ids.tolist()
    expected_sha = hashlib.sha256(torch.tensor(record["val_rows"], dtype=torch.int64).numpy().tobytes()).hexdigest()
    assert record["val_rows_sha256"] == expected_sha


def test_best_epoch_is_the_argmax_of_val_top1() -> None:
    # test/val top-1 per epoch; the val argmax (first of ties) is epoch 2, where test top-1 is 60
    test = [80.0, 60.0, 90.0, 95.0]
    val = [50.0, 70.0, 60.0, 70.0]
    best: dict[str, float] = {"top1": -math.inf, "epoch": 0, "top5": 0.0, "score": -math.inf}
    for epoch, (t, v) in enumerate(zip(test, val, strict=True), start=1):
        best = select_best(best, epoch, {"top1": t, "top5": t}, {"top1": v, "top5": v}) or best
    assert (best["epoch"], best["top1"], best["val_top1"]) == (2, 60.0, 70.0)
    best = {"top1": -math.inf, "epoch": 0, "top5": 0.0}  # a checkpoint from before val_split: no score
    for epoch, t in enumerate(test, start=1):
        best = select_best(best, epoch, {"top1": t, "top5": t}, None) or best
    assert (best["epoch"], best["top1"]) == (4, 95.0)


def test_caches_and_memory_bank_see_original_row_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RichKD run with a whole-split target cache, data.train_limit and data.val_split: every training batch's
    cache rows are the original full-split ids of its images, the memory bank has one row per trained row, and
    no held-out row is ever drawn."""
    full = _dataset([40] * 5)
    test = _dataset([4] * 5)
    monkeypatch.setattr(build_module, "load_data", lambda cfg: (full, test))
    teacher = tmp_path / "teacher.pt"
    save_model(teacher, create_model("resnet8", 5), arch="resnet8", num_classes=5, classes=CLASSES)
    cache = tmp_path / "cache"
    write_random_cache(cache, dataset="synthetic", split="train", n_rows=len(full), class_names=CLASSES)
    cfg = config_from_dict({
        "data": {"name": "synthetic", "train_limit": 100, "val_split": 0.25, "pad": 2},
        "model": {"student": "resnet8", "teacher": "resnet8", "teacher_checkpoint": str(teacher)},
        "distill": {"method": "richkd", "nce_k": 8}, "fusion": {"mode": "vlm"}, "vlm": {"cache": str(cache)},
        "train": {"epochs": 1, "batch_size": 25}, "seed": 5,
    })
    cfg.validate()
    parts, provenance = build_module.build_fit(cfg, torch.device("cpu"))
    record = provenance["val_split"]
    assert provenance["best_selected_on"] == "val"
    assert record["n_val"] == 25 and record["val_per_class"] == [5] * 5  # round-half-up(0.25 * 20) = 5 per class
    assert provenance["train_rows"] == 75
    limited_ids = subset(full, 100)[1]
    assert limited_ids is not None
    val_ids = set(record["val_rows"])
    assert val_ids <= set(limited_ids.tolist())
    batches = parts.train_batches
    assert not isinstance(batches, build_module.StreamBatches) and batches.row_map is not None
    seen: set[int] = set()
    generator = torch.Generator().manual_seed(0)
    for start in range(0, 75, 25):
        batch = batches(torch.arange(start, start + 25), generator)
        original = (batch.images[:, 0, 4, 4] * 0.25 + 0.5) * 255  # centre pixel, un-normalised: the row id
        cache_rows = batches.row_map[batch.indices]
        assert cache_rows.tolist() == original.round().long().tolist()
        seen.update(cache_rows.tolist())
    assert seen == set(limited_ids.tolist()) - val_ids
    memory = parts.distiller.crd.memory  # the bank has one row per TRAINED row, indexed by its position
    assert memory.memory_student.shape[0] == 75
    assert memory._labels.tolist() == batches.data.labels.tolist()
    assert parts.val_data is not None and len(parts.val_data) == 25
    assert sorted(parts.val_data.images[:, 0, 0, 0].long().tolist()) == sorted(val_ids)
    json.dumps(provenance)  # run.json must be writable


def _richkd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "richkd", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert proc.returncode == 0, f"richkd {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.shared_data
def test_cli_run_selects_on_val_resumes_the_same_split_and_reports_it(tmp_path: Path, tiny_cifar10: Path) -> None:
    """Real images through the real CLI: 16 training images per class, data.val_split=0.25 holds out 4 of each."""
    run = tmp_path / "run"
    args = ["train", "data.name=imagefolder", f"data.root={tiny_cifar10}", f"data.cache_dir={tmp_path / 'dc'}",
            "data.val_split=0.25", "model.student=resnet8", "distill.method=vanilla", "train.epochs=3",
            "train.batch_size=32", "train.eval_batch_size=64", "train.threads=1", "train.progress=false",
            "optim.lr=0.05", "optim.schedule=cosine", f"out_dir={run}"]
    _richkd(*args, "train.stop_after=2")
    first = json.loads((run / "run.json").read_text())["val_split"]
    _richkd(*args, "--resume")
    provenance = json.loads((run / "run.json").read_text())
    split = provenance["val_split"]
    assert split["val_rows_sha256"] == first["val_rows_sha256"]  # the resume rebuilt the same split
    assert split["n_val"] == 40 and split["val_per_class"] == [4] * 10 and split["train_per_class"] == [12] * 10
    assert provenance["train_rows"] == 120 and provenance["best_selected_on"] == "val"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    val = [r["val/top1"] for r in records]
    # every val accuracy is a whole number of the 40 held-out images
    assert all(abs(v * 40 / 100 - round(v * 40 / 100)) < 1e-6 for v in val)
    summary = json.loads((run / "summary.json").read_text())
    chosen = val.index(max(val))  # first epoch with the highest val top-1
    assert summary["best_selected_on"] == "val"
    assert summary["best_epoch"] == chosen + 1
    assert summary["best_val_top1"] == val[chosen]
    assert summary["best_top1"] == records[chosen]["test/top1"]
    report = _richkd("report", str(run)).stdout
    assert "best top-1 (%, chosen on val)" in report


def test_model_card_names_the_split_that_chose_best() -> None:
    from richkd.export.card import RunInfo, _accuracy

    old = {"best_top1": 70.0, "best_epoch": 3, "last_top1": 69.0, "epochs": 4}  # a run from before val_split
    card = _accuracy(RunInfo(summary=old), Path("model_best.pt"))
    assert card is not None and card["best_selected_on"] == "test" and "chosen on test" in card["note"]
    val = {**old, "best_selected_on": "val", "best_val_top1": 64.0}
    card = _accuracy(RunInfo(summary=val), Path("model_best.pt"))
    assert card is not None and card["best_selected_on"] == "val" and card["best_val_top1"] == 64.0
    assert "chosen on val" in card["note"]


def test_resume_with_other_held_out_rows_is_refused(tmp_path: Path) -> None:
    from richkd.engine.trainer import _check_same_val_rows

    _check_same_val_rows(None, None, tmp_path / "checkpoint.pt")  # no split, before and now
    _check_same_val_rows("ab", "ab", tmp_path / "checkpoint.pt")
    with pytest.raises(RichKDError, match="--resume: the validation rows differ"):
        _check_same_val_rows("ab", "cd", tmp_path / "checkpoint.pt")
    with pytest.raises(RichKDError, match="--resume: the validation rows differ"):
        _check_same_val_rows(None, "cd", tmp_path / "checkpoint.pt")  # a checkpoint trained on every row
