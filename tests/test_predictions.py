"""The predictions file: exact round trip, loud failures on corrupted or foreign files, comparability checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from richkd.analysis.predictions import check_comparable, read_predictions, write_predictions
from richkd.errors import RichKDError

CLASSES = ["cat", "dog", "bird"]


def provenance(**over: Any) -> dict[str, Any]:
    prov = {"name": "teacher", "kind": "checkpoint", "arch": "resnet8", "checkpoint_sha256": "ab" * 32,
            "dataset": "imagefolder", "split": "test", "view": "plain", "classes": CLASSES, "n_rows_split": 10}
    prov.update(over)
    return prov


def write(path: Path, rows: list[int] | None = None, labels: list[int] | None = None, features: bool = False,
          **prov: Any) -> Path:
    rows = rows if rows is not None else [0, 3, 7, 9]
    labels = labels if labels is not None else [0, 1, 2, 1]
    logits = torch.arange(len(rows) * 3, dtype=torch.float32).view(len(rows), 3) / 7
    return write_predictions(
        path, logits=logits, labels=torch.tensor(labels), rows=torch.tensor(rows),
        features=torch.ones(len(rows), 5) if features else None, provenance=provenance(**prov),
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    path = write(tmp_path / "t.preds.safetensors", features=True, alpha=None)
    p = read_predictions(path)
    assert torch.equal(p.logits, torch.arange(12, dtype=torch.float32).view(4, 3) / 7)
    assert p.logits.dtype == torch.float32 and p.labels.dtype == torch.int64 and p.rows.dtype == torch.int64
    assert p.labels.tolist() == [0, 1, 2, 1] and p.rows.tolist() == [0, 3, 7, 9]
    assert p.features is not None and p.features.shape == (4, 5)
    assert p.name == "teacher" and p.classes == ("cat", "dog", "bird") and p.n == 4 and p.path == path
    assert dict(p.provenance) == provenance(alpha=None)
    with pytest.raises(TypeError):
        p.provenance["name"] = "other"  # type: ignore[index]
    assert read_predictions(write(tmp_path / "nf.safetensors")).features is None


def test_write_refuses_inconsistent_input(tmp_path: Path) -> None:
    out = tmp_path / "bad.safetensors"
    with pytest.raises(RichKDError, match="provenance lacks alpha, vlm_scale, sources"):
        write(out, kind="fused")
    with pytest.raises(RichKDError, match="3 classes but the provenance lists 2"):
        write(out, classes=["cat", "dog"])
    with pytest.raises(RichKDError, match="rows fall outside"):
        write(out, rows=[0, 3, 7, 10])
    with pytest.raises(RichKDError, match="repeat"):
        write(out, rows=[0, 3, 3, 9])
    with pytest.raises(RichKDError, match="labels fall outside"):
        write(out, labels=[0, 1, 3, 1])
    with pytest.raises(RichKDError, match="kind 'student'"):
        write(out, kind="student")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_corrupted_missing_and_foreign_files(tmp_path: Path) -> None:
    good = write(tmp_path / "good.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[:-7])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file at all")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign))
    no_prov = tmp_path / "noprov.safetensors"
    save_file({"logits": torch.zeros(1, 3)}, str(no_prov), metadata={"format": "richkd.predictions", "version": "1",
                                                                        "provenance": "{not json"})
    for path, message in [
        (truncated, "is corrupt"),
        (garbage, "is corrupt"),
        (foreign, "is not a richkd predictions file"),
        (no_prov, "provenance is not valid JSON"),
        (tmp_path / "missing.safetensors", "not found"),
    ]:
        with pytest.raises(RichKDError, match=message) as info:
            read_predictions(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_wrong_version_and_missing_tensor(tmp_path: Path) -> None:
    path = tmp_path / "v2.safetensors"
    meta = {"format": "richkd.predictions", "version": "2", "provenance": json.dumps(provenance())}
    save_file({"logits": torch.zeros(1, 3)}, str(path), metadata=meta)
    with pytest.raises(RichKDError, match="version '2'"):
        read_predictions(path)
    save_file({"logits": torch.zeros(1, 3)}, str(path), metadata={**meta, "version": "1"})
    with pytest.raises(RichKDError, match="lacks tensor\\(s\\) labels, rows"):
        read_predictions(path)


def test_check_comparable(tmp_path: Path) -> None:
    a = read_predictions(write(tmp_path / "a.safetensors"))
    check_comparable([a, read_predictions(write(tmp_path / "b.safetensors", name="student"))])
    cases = [
        (write(tmp_path / "d.safetensors", dataset="cifar10"), "differ in dataset"),
        (write(tmp_path / "s.safetensors", split="train"), "differ in split"),
        (write(tmp_path / "z.safetensors", n_rows_split=11), "differ in n_rows_split"),
        (write(tmp_path / "o.safetensors", classes=["cat", "bird", "dog"]), "class order differs at class 1"),
        (write(tmp_path / "n.safetensors", classes=["cat", "dog", "fish"]), "class names differ"),
        (write(tmp_path / "r.safetensors", rows=[0, 3, 7, 8]), "cover different rows"),
        (write(tmp_path / "l.safetensors", labels=[0, 1, 2, 2]), "disagree on the label of row 9"),
    ]
    for path, message in cases:
        with pytest.raises(RichKDError, match=message) as info:
            check_comparable([a, read_predictions(path)])
        assert str(path) in str(info.value) and "--limit" in str(info.value)
