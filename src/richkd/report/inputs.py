"""Reading the report's inputs: analysis.json, robustness.json, cost.json (docs/analysis_formats.md) and each
run's metrics.jsonl, checked for the version and keys the report reads, so a wrong file fails naming itself."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from richkd.errors import RichKDError

FORMAT_VERSION = 1
PRODUCERS = {
    "analysis": "richkd analyze",
    "robustness": "richkd robustness",
    "cost": "richkd cost",
}
_TOP_KEYS = {
    "analysis": ("tau", "n_bins", "classes", "n", "predictors"),
    "robustness": ("dataset", "corruptions", "severities", "models"),
    "cost": ("device", "threads", "input", "models"),
}
_ENTRY_KEYS = {
    "analysis": ("provenance", "top1", "top5", "nll", "ece", "reliability", "quadrants", "class_correlation"),
    "robustness": ("clean_top1", "per_corruption", "mean_corruption_accuracy", "relative_robustness"),
    "cost": ("params", "flops", "latency_ms_b1", "throughput_b256_img_s"),
}
_ENTRIES = {"analysis": "predictors", "robustness": "models", "cost": "models"}


def _require(obj: Mapping[str, Any], keys: Iterable[str], path: Path, where: str, kind: str) -> None:
    missing = [key for key in keys if key not in obj]
    if missing:
        raise RichKDError(
            f"{path} is not a valid {kind}.json: {where} lacks {', '.join(missing)}; "
            f"rewrite it with `{PRODUCERS[kind]}`"
        )


def load_result(path: Path, kind: str) -> dict[str, Any]:
    """One analysis/robustness/cost JSON file, checked against docs/analysis_formats.md (version 1)."""
    if not path.is_file():
        raise RichKDError(f"--{kind} {path} not found; write it with `{PRODUCERS[kind]}`")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RichKDError(f"{path} is not valid JSON ({err}); rewrite it with `{PRODUCERS[kind]}`") from None
    if not isinstance(obj, dict):
        raise RichKDError(f"{path} is not a valid {kind}.json (not a JSON object); rewrite it with `{PRODUCERS[kind]}`")
    if obj.get("version") != FORMAT_VERSION:
        raise RichKDError(
            f"{path} has version {obj.get('version')!r}, this report reads version {FORMAT_VERSION} "
            f"{kind}.json; rewrite it with `{PRODUCERS[kind]}`"
        )
    _require(obj, _TOP_KEYS[kind], path, "the file", kind)
    entries = obj[_ENTRIES[kind]]
    if not isinstance(entries, dict) or not entries:
        raise RichKDError(f"{path}: '{_ENTRIES[kind]}' is empty or not an object; rewrite it with "
                          f"`{PRODUCERS[kind]}`")
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise RichKDError(f"{path}: entry {name!r} is not an object; rewrite it with `{PRODUCERS[kind]}`")
        _require(entry, _ENTRY_KEYS[kind], path, f"entry {name!r}", kind)
    if kind == "analysis":
        _check_analysis(obj, path)
    if kind == "robustness":
        _check_robustness(obj, path)
    return obj


def _check_analysis(obj: dict[str, Any], path: Path) -> None:
    n_classes = len(obj["classes"])
    for name, entry in obj["predictors"].items():
        _require(entry["reliability"], ("bin_edges", "count", "accuracy"), path, f"{name!r} reliability", "analysis")
        _require(
            entry["quadrants"],
            ("confident_correct", "unconfident_correct", "confident_wrong", "unconfident_wrong"),
            path,
            f"{name!r} quadrants",
            "analysis",
        )
        corr = entry["class_correlation"]
        if corr is not None and (len(corr) != n_classes or any(len(row) != n_classes for row in corr)):
            raise RichKDError(f"{path}: {name!r} class_correlation is not {n_classes} x {n_classes} (one per class)")
    for flow in obj.get("flows") or []:
        _require(flow, ("from", "to", "states", "counts"), path, "a flow", "analysis")


def _check_robustness(obj: dict[str, Any], path: Path) -> None:
    n_sev = len(obj["severities"])
    for name, entry in obj["models"].items():
        for corruption, accs in entry["per_corruption"].items():
            if len(accs) != n_sev:
                raise RichKDError(
                    f"{path}: model {name!r} {corruption} has {len(accs)} accuracies for {n_sev} severities"
                )


def is_surrogate(provenance: Any) -> bool:
    """True when any string in the provenance (kind, model id, sources) names the surrogate teacher."""
    if isinstance(provenance, str):
        return "surrogate" in provenance.lower()
    if isinstance(provenance, Mapping):
        return any(is_surrogate(v) for v in provenance.values())
    if isinstance(provenance, list | tuple):
        return any(is_surrogate(v) for v in provenance)
    return False


def display_name(name: str, provenance: Any) -> str:
    """The predictor's name, marked when a surrogate vision-language teacher stands behind it (never "CLIP")."""
    if not is_surrogate(provenance):
        return name
    kind = provenance.get("kind") if isinstance(provenance, Mapping) else None
    if kind in ("vlm", "cache"):
        return f"{name} [surrogate VLM, not CLIP]"
    return f"{name} [uses surrogate VLM, not CLIP]"


@dataclass(frozen=True)
class Curve:
    """Per-epoch values of one run from metrics.jsonl (test metrics only on evaluated epochs)."""

    loss_epochs: tuple[int, ...]
    train_loss: tuple[float, ...]
    test_epochs: tuple[int, ...]
    test_top1: tuple[float, ...]
    val_epochs: tuple[int, ...] = ()  # held-out training rows (data.val_split): what chose the best epoch
    val_top1: tuple[float, ...] = ()


def load_curve(run_dir: Path) -> Curve | None:
    """The training curve of a run, or None when it has no metrics.jsonl (e.g. a copied summary only)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    loss_epochs, loss, test_epochs, top1, val_epochs, val_top1 = [], [], [], [], [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = int(record["epoch"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise RichKDError(f"{path} line {number} is not a richkd metrics record (no epoch)") from None
        if "train/loss" in record:
            loss_epochs.append(epoch)
            loss.append(float(record["train/loss"]))
        if "test/top1" in record:
            test_epochs.append(epoch)
            top1.append(float(record["test/top1"]))
        if "val/top1" in record:
            val_epochs.append(epoch)
            val_top1.append(float(record["val/top1"]))
    return Curve(tuple(loss_epochs), tuple(loss), tuple(test_epochs), tuple(top1), tuple(val_epochs),
                 tuple(val_top1))
