"""Stratified subsets (issue 27 item 2): exactly `limit` rows, classes balanced to within one, the first rows of each
class, and old-rule artefacts refused where their rows differ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from richkd.analysis.predictions import read_predictions, write_predictions
from richkd.caches.target import TargetCache, write_random_cache
from richkd.data.subset import (
    SUBSET_RULE,
    check_recorded_subset,
    legacy_stratified_rows,
    rows_sha256,
    stratified_rows,
)
from richkd.errors import RichKDError


def oracle_rows(labels: list[int], limit: int) -> list[int]:
    """Independent statement of the rule: deal rows round-robin, one per class per round, classes in id order,
    skipping classes with no rows left, until `limit` rows are dealt; each class deals its rows in row order."""
    n_classes = max(labels) + 1
    queues = [[i for i, y in enumerate(labels) if y == c] for c in range(n_classes)]
    taken: list[int] = []
    while len(taken) < min(limit, len(labels)):
        for queue in queues:
            if queue and len(taken) < limit:
                taken.append(queue.pop(0))
    return sorted(taken)


def counts(labels: torch.Tensor, rows: torch.Tensor, n_classes: int) -> list[int]:
    return torch.bincount(labels[rows], minlength=n_classes).tolist()


def class_sorted(sizes: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])


def test_the_issue_examples_worked_by_hand() -> None:
    labels = class_sorted([5] * 10)  # a class-sorted folder, 5 images per class
    # rule 1 gave [2, 2, 2, 2, 2, 2, 2, 1, 0, 0]; the remainder 5 goes to the lowest class ids
    assert counts(labels, stratified_rows(labels, 15), 10) == [2] * 5 + [1] * 5
    # CIFAR-100 sized classes, limit 150: 1 per class plus 50 extra to classes 0..49 (rule 1 left 25 empty)
    c100 = class_sorted([500] * 100)
    assert counts(c100, stratified_rows(c100, 150), 100) == [2] * 50 + [1] * 50
    # a class smaller than its share: class 0 has 1 row, its shortfall of 2 goes to classes 1 and 2
    short = class_sorted([1, 5, 5])
    assert stratified_rows(short, 9).tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert len(stratified_rows(short, 11)) == 11  # every row


def test_multiples_of_the_class_count_pick_the_same_rows_as_before() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (500,), generator=g)
    for limit in (10, 50, 200):
        assert torch.equal(stratified_rows(labels, limit), legacy_stratified_rows(labels, limit))


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=8).filter(lambda s: sum(s) > 0),
    limit=st.integers(1, 100),
    seed=st.integers(0, 2**31 - 1),
    shuffle=st.booleans(),
)
def test_every_stated_property_against_an_independent_oracle(
    sizes: list[int], limit: int, seed: int, shuffle: bool
) -> None:
    labels = class_sorted(sizes)
    if shuffle:  # any row order, not only class-sorted folders
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    rows = stratified_rows(labels, limit)
    assert rows.tolist() == oracle_rows(labels.tolist(), limit)
    # the properties, stated directly
    assert len(rows) == min(limit, len(labels))  # exactly `limit` rows whenever the split has them
    assert rows.tolist() == sorted(set(rows.tolist()))  # ascending, no repeats
    got = counts(labels, rows, len(sizes))
    open_counts = [k for k, n in zip(got, sizes, strict=True) if k < n]  # classes with rows left over
    if open_counts:
        level = min(open_counts)
        assert max(open_counts) - level <= 1  # per-class counts differ by at most one ...
        assert all(k <= level + 1 for k in got)  # ... and an exhausted class only ever holds fewer
        # the +1s (when limit % C != 0) go to the lowest class ids among the classes that had a row to spare
        big = [c for c, k in enumerate(got) if k == level + 1]
        small = [c for c, (k, n) in enumerate(zip(got, sizes, strict=True)) if k == level < n]
        assert not big or not small or max(big) < min(small)
    for c in range(len(sizes)):  # the first rows of each class, in row order
        of_class = (labels == c).nonzero().flatten()
        assert torch.equal(rows[labels[rows] == c], of_class[: got[c]])


def test_a_run_directory_of_the_old_rule_is_refused_where_its_rows_differ() -> None:
    labels = class_sorted([5] * 10)
    with pytest.raises(RichKDError, match="old subset rule 1"):  # run.json without subset_rule: rule 1's rows
        check_recorded_subset("run", "data.train_limit", labels, 15, rule=None, sha256=None)
    check_recorded_subset("run", "data.train_limit", labels, 20, rule=None, sha256=None)  # both rules agree
    check_recorded_subset("run", "data.train_limit", labels, None, rule=None, sha256=None)  # the whole split
    new = rows_sha256(stratified_rows(labels, 15))
    check_recorded_subset("run", "data.train_limit", labels, 15, rule=SUBSET_RULE, sha256=new)
    with pytest.raises(RichKDError, match="rows differ"):
        check_recorded_subset("run", "data.train_limit", labels[torch.randperm(50)], 15, rule=SUBSET_RULE,
                              sha256=new)


def _old_cache(path: Path, labels: torch.Tensor, limit: int) -> None:
    """A subset target cache as written before issue 27: rule-1 rows, no subset_rule in meta.json."""
    rows = legacy_stratified_rows(labels, limit)
    write_random_cache(path, dataset="imagefolder", split="train", n_rows=len(rows),
                       class_names=[f"c{i}" for i in range(10)])
    meta = json.loads((path / "meta.json").read_text())
    meta.update(subset_limit=limit, split_rows=len(labels), rows_sha256=rows_sha256(rows))
    del meta["subset_rule"]
    (path / "meta.json").write_text(json.dumps(meta))


def test_a_target_cache_of_the_old_rule_is_refused_where_its_rows_differ(tmp_path: Path) -> None:
    labels = class_sorted([5] * 10)
    _old_cache(tmp_path / "old15", labels, 15)
    cache = TargetCache.open(tmp_path / "old15")
    assert cache.meta.subset_rule == 1
    with pytest.raises(RichKDError, match="old subset rule 1"):
        cache.cache_rows(labels, None)
    _old_cache(tmp_path / "old20", labels, 20)  # a multiple of C: both rules hold the same rows, still served
    served = TargetCache.open(tmp_path / "old20").cache_rows(labels, stratified_rows(labels, 20))
    assert served is not None and torch.equal(served, torch.arange(20))


def test_a_teacher_cache_of_the_old_rule_is_refused_where_its_rows_differ(tmp_path: Path) -> None:
    from richkd.caches.teacher import TeacherCache, TeacherCacheMeta

    labels = class_sorted([5] * 10)
    rows = legacy_stratified_rows(labels, 15)
    meta = TeacherCacheMeta(arch="resnet8", checkpoint_sha256="0" * 64, dataset="imagefolder", split="train",
                            n_rows=15, class_names=tuple(f"c{i}" for i in range(10)), feature_dim=4, pad=0,
                            n_views=2, view_enumeration="x", mean=(0, 0, 0), std=(1, 1, 1), compute="float32",
                            subset_limit=15, split_rows=50, rows_sha256=rows_sha256(rows))
    raw = json.loads(meta.to_json())
    del raw["subset_rule"]  # as written before issue 27
    tmp_path.joinpath("meta.json").write_text(json.dumps(raw))
    np.save(tmp_path / "logits.npy", np.zeros((15, 2, 10), np.float16))
    np.save(tmp_path / "pooled.npy", np.zeros((15, 2, 4), np.float16))
    cache = TeacherCache.open(tmp_path)
    assert cache.meta.subset_rule == 1 and cache.meta.plain_view == 0
    with pytest.raises(RichKDError, match="old subset rule 1"):
        cache.cache_rows(labels, None)


def _preds(path: Path, labels: torch.Tensor, rows: torch.Tensor, limit: int, **extra: object) -> Path:
    prov = {"name": "m", "kind": "checkpoint", "arch": "resnet8", "checkpoint_sha256": None,
            "dataset": "imagefolder", "split": "test", "view": "plain", "classes": [f"c{i}" for i in range(10)],
            "n_rows_split": len(labels), "limit": limit, **extra}
    write_predictions(path, logits=torch.zeros(len(rows), 10), labels=labels[rows], rows=rows, features=None,
                      provenance=prov)
    return path


def test_a_prediction_file_of_the_old_rule_is_refused_where_its_rows_differ(tmp_path: Path) -> None:
    labels = class_sorted([5] * 10)
    old = _preds(tmp_path / "old.safetensors", labels, legacy_stratified_rows(labels, 15), 15)
    with pytest.raises(RichKDError, match="old subset rule 1"):
        read_predictions(old)
    # rule-1 rows that coincide with today's (a multiple of C), and files that record the rule, are read
    assert read_predictions(_preds(tmp_path / "old20.safetensors", labels, legacy_stratified_rows(labels, 20),
                                   20)).n == 20
    new = _preds(tmp_path / "new.safetensors", labels, stratified_rows(labels, 15), 15, subset_rule=SUBSET_RULE)
    assert read_predictions(new).n == 15
    # a short class: rule 1 and today's rule coincide in neither count nor rows, so the file is refused
    short = class_sorted([1] + [5] * 9)
    old_short = _preds(tmp_path / "short.safetensors", short, legacy_stratified_rows(short, 20), 20)
    with pytest.raises(RichKDError, match="old subset rule 1"):
        read_predictions(old_short)


@pytest.mark.shared_data
def test_resuming_a_run_started_under_the_old_rule_is_refused_in_one_line(
    tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from richkd.cli import main

    monkeypatch.setenv("RICHKD_CACHE", str(tmp_path / "rc"))
    out = tmp_path / "run"
    args = ["train", "model.student=resnet8", "distill.method=vanilla", "data.name=imagefolder",
            f"data.root={tiny_cifar10}", f"data.cache_dir={tmp_path / 'dc'}", "data.train_limit=15",
            "data.test_limit=20", "train.epochs=2", "train.max_steps_per_epoch=1", "train.batch_size=8",
            "train.threads=1", "train.progress=false", f"out_dir={out}"]
    assert main([*args, "train.stop_after=1"]) == 0
    today = (out / "run.json").read_text()
    run = json.loads(today)
    assert run["subset_rule"] == SUBSET_RULE and run["train_rows_sha256"] and run["test_rows_sha256"]
    for key in ("subset_rule", "train_rows_sha256", "test_rows_sha256"):  # as run.json was written before issue 27
        del run[key]
    (out / "run.json").write_text(json.dumps(run))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "old subset rule 1" in err[0] and "data.train_limit=15" in err[0], err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # nothing was trained on other rows
    (out / "run.json").write_text(today)  # the same run, as recorded today: it resumes and finishes
    assert main([*args, "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
