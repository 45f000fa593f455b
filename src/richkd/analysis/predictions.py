"""The predictions file (docs/analysis_formats.md): one predictor's logits on one split, with provenance.

Analyses read these files, never a model, so nothing is recomputed and results compare across machines.
Layout: safetensors tensors ``logits`` float32 [N, C], ``labels`` int64 [N], ``rows`` int64 [N] (row ids in the
full split), optional ``features`` float32 [N, D]; metadata ``format = "richkd.predictions"``, ``version = "1"``
and ``provenance`` (a JSON object: name, kind, arch, checkpoint_sha256, dataset, split, view, classes,
n_rows_split, and for fused / scaled predictors alpha, vlm_scale, sources).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor

from richkd.engine.io import write_atomic
from richkd.errors import RichKDError

__all__ = [
    "FORMAT",
    "VERSION",
    "KINDS",
    "REQUIRED_PROVENANCE",
    "Predictions",
    "write_predictions",
    "read_predictions",
    "check_comparable",
]

FORMAT = "richkd.predictions"
VERSION = "1"
KINDS = ("checkpoint", "teacher", "vlm", "cache", "fused", "scaled_teacher")
REQUIRED_PROVENANCE = (
    "name", "kind", "arch", "checkpoint_sha256", "dataset", "split", "view", "classes", "n_rows_split"
)
FUSION_PROVENANCE = ("alpha", "vlm_scale", "sources")  # required for kinds fused and scaled_teacher


@dataclass(frozen=True, eq=False)
class Predictions:
    """One predictor's outputs on one split, as read from (or about to be written to) a predictions file.

    `eq=False`: tensors do not compare field-wise; use :func:`check_comparable` to compare two files.
    """

    logits: Tensor  # [N, C] float32
    labels: Tensor  # [N] int64
    rows: Tensor  # [N] int64, row ids in the full split
    features: Tensor | None  # [N, D] float32 or None
    provenance: Mapping[str, Any]  # read-only view of the JSON provenance
    path: Path | None = None  # the file it was read from

    @property
    def name(self) -> str:
        return str(self.provenance["name"])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.provenance["classes"])

    @property
    def n(self) -> int:
        return int(self.logits.shape[0])

    def describe(self) -> str:
        """How the file is named in error messages: its path, else its predictor name."""
        return str(self.path) if self.path is not None else f"predictor {self.name!r}"


def _check_provenance(provenance: Mapping[str, Any], where: str) -> None:
    missing = [k for k in REQUIRED_PROVENANCE if k not in provenance]
    if provenance.get("kind") in ("fused", "scaled_teacher"):
        missing += [k for k in FUSION_PROVENANCE if k not in provenance]
    if missing:
        raise RichKDError(f"{where}: provenance lacks {', '.join(missing)}; rewrite it with `richkd predict`")
    if provenance["kind"] not in KINDS:
        raise RichKDError(f"{where}: kind {provenance['kind']!r} is not one of {', '.join(KINDS)}")
    classes = provenance["classes"]
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes) or not classes:
        raise RichKDError(f"{where}: provenance classes must be a non-empty list of class names")
    if not isinstance(provenance["n_rows_split"], int) or provenance["n_rows_split"] < 1:
        raise RichKDError(f"{where}: provenance n_rows_split must be a positive integer")


def _check_tensors(
    logits: Tensor, labels: Tensor, rows: Tensor, features: Tensor | None, provenance: Mapping[str, Any], where: str
) -> None:
    """Shapes, dtypes and value ranges agree with each other and with the provenance."""
    if logits.dtype != torch.float32 or logits.dim() != 2:
        raise RichKDError(f"{where}: logits must be float32 [N, C], got {logits.dtype} {tuple(logits.shape)}")
    n, c = logits.shape
    for name, t in (("labels", labels), ("rows", rows)):
        if t.dtype != torch.int64 or tuple(t.shape) != (n,):
            raise RichKDError(f"{where}: {name} must be int64 [{n}], got {t.dtype} {tuple(t.shape)}")
    if features is not None and (features.dtype != torch.float32 or features.dim() != 2 or features.shape[0] != n):
        raise RichKDError(f"{where}: features must be float32 [{n}, D], got {features.dtype} {tuple(features.shape)}")
    if n == 0:
        raise RichKDError(f"{where}: holds no rows")
    if len(provenance["classes"]) != c:
        raise RichKDError(f"{where}: logits have {c} classes but the provenance lists {len(provenance['classes'])}")
    if not bool(torch.isfinite(logits).all()):
        raise RichKDError(f"{where}: logits contain NaN or infinity")
    if int(labels.min()) < 0 or int(labels.max()) >= c:
        raise RichKDError(f"{where}: labels fall outside 0..{c - 1}")
    n_split = int(provenance["n_rows_split"])
    if int(rows.min()) < 0 or int(rows.max()) >= n_split:
        raise RichKDError(f"{where}: rows fall outside 0..{n_split - 1} (n_rows_split)")
    if int(torch.unique(rows).numel()) != n:
        raise RichKDError(f"{where}: rows repeat a row id")


def write_predictions(
    path: str | Path,
    *,
    logits: Tensor,
    labels: Tensor,
    rows: Tensor,
    features: Tensor | None,
    provenance: Mapping[str, Any],
) -> Path:
    """Validate and write one predictions file atomically (a crash never leaves half a file); return its path."""
    path = Path(path)
    logits = logits.detach().float().cpu().contiguous()
    labels = labels.detach().long().cpu().contiguous()
    rows = rows.detach().long().cpu().contiguous()
    features = None if features is None else features.detach().float().cpu().contiguous()
    prov = dict(provenance)
    if "classes" in prov:
        prov["classes"] = list(prov["classes"])
    where = f"predictions for {path}"
    _check_provenance(prov, where)
    _check_tensors(logits, labels, rows, features, prov, where)
    if _has_nan(prov):
        raise RichKDError(f"{where}: provenance holds NaN or infinity, which JSON cannot store")
    tensors = {"logits": logits, "labels": labels, "rows": rows}
    if features is not None:
        tensors["features"] = features
    blob = save_safetensors(tensors, metadata={"format": FORMAT, "version": VERSION, "provenance": json.dumps(prov)})
    write_atomic(path, lambda fh: fh.write(blob))
    return path


def _has_nan(obj: Any) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, Mapping):
        return any(_has_nan(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_nan(v) for v in obj)
    return False


def _check_subset_rule(labels: Tensor, provenance: Mapping[str, Any], where: str) -> None:
    """Refuse a file whose --limit subset was chosen by the old rule 1 where today's rule picks other rows (files
    record `subset_rule` since issue 27; older ones are checked from their own rows)."""
    from richkd.data.subset import LEGACY_SUBSET_RULE, SUBSET_RULE, legacy_file_rows_agree

    limit = provenance.get("limit")
    if not isinstance(limit, int) or "subset_rule" in provenance:
        return
    if not legacy_file_rows_agree(labels, len(provenance["classes"]), limit):
        raise RichKDError(
            f"{where} holds a --limit {limit} subset chosen by the old subset rule {LEGACY_SUBSET_RULE}, whose rows "
            f"differ from today's rule {SUBSET_RULE}: rewrite it with the same `richkd predict` command"
        )


def read_predictions(path: str | Path) -> Predictions:
    """Read and check one predictions file; a missing, corrupted or foreign file raises a one-line RichKDError."""
    path = Path(path)
    where = f"predictions file {path}"
    if not path.is_file():
        raise RichKDError(f"{where} not found: write it with `richkd predict ... --out {path}`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = set(fh.keys())
            tensors = {k: fh.get_tensor(k) for k in keys & {"logits", "labels", "rows", "features"}}
    except (SafetensorError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RichKDError(f"{where} is corrupt or not a safetensors file ({first[:120]})") from None
    if meta.get("format") != FORMAT:
        raise RichKDError(f"{where} is not a richkd predictions file (format {meta.get('format')!r}); "
                          "write one with `richkd predict`")
    if meta.get("version") != VERSION:
        raise RichKDError(f"{where} has version {meta.get('version')!r}; this richkd reads version {VERSION}")
    try:
        provenance = json.loads(meta.get("provenance", ""))
    except json.JSONDecodeError:
        raise RichKDError(f"{where}: its provenance is not valid JSON; rewrite it with `richkd predict`") from None
    if not isinstance(provenance, dict):
        raise RichKDError(f"{where}: its provenance is not a JSON object; rewrite it with `richkd predict`")
    missing = [k for k in ("logits", "labels", "rows") if k not in tensors]
    if missing:
        raise RichKDError(f"{where} lacks tensor(s) {', '.join(missing)}; rewrite it with `richkd predict`")
    _check_provenance(provenance, where)
    features = tensors.get("features")
    _check_tensors(tensors["logits"], tensors["labels"], tensors["rows"], features, provenance, where)
    _check_subset_rule(tensors["labels"], provenance, where)
    return Predictions(
        logits=tensors["logits"],
        labels=tensors["labels"],
        rows=tensors["rows"],
        features=features,
        provenance=MappingProxyType(provenance),
        path=path,
    )


def check_comparable(preds: Sequence[Predictions]) -> None:
    """Raise RichKDError unless every file predicts the same rows of the same split with the same class order.

    Analyses pair predictions row by row, so files made on different data would give silently wrong results.
    """
    if not preds:
        raise RichKDError("no predictions files given")
    first = preds[0]
    fix = "rerun `richkd predict` for all predictors with the same --dataset, --root, --split and --limit"
    for other in preds[1:]:
        pair = f"{first.describe()} and {other.describe()}"
        for key in ("dataset", "split", "n_rows_split"):
            if first.provenance[key] != other.provenance[key]:
                raise RichKDError(
                    f"{pair} differ in {key} ({first.provenance[key]!r} vs {other.provenance[key]!r}): {fix}"
                )
        if first.classes != other.classes:
            if sorted(first.classes) == sorted(other.classes):
                i = next(i for i, (a, b) in enumerate(zip(first.classes, other.classes, strict=True)) if a != b)
                what = f"class order differs at class {i} ({first.classes[i]!r} vs {other.classes[i]!r})"
            else:
                what = f"class names differ ({len(first.classes)} vs {len(other.classes)} classes)"
            raise RichKDError(f"{pair}: {what}; {fix}, and models trained with that dataset's class order")
        if first.rows.shape != other.rows.shape or not torch.equal(first.rows, other.rows):
            raise RichKDError(f"{pair} cover different rows ({first.n} vs {other.n} rows): {fix}")
        if not torch.equal(first.labels, other.labels):
            bad = int((first.labels != other.labels).nonzero()[0, 0])
            raise RichKDError(
                f"{pair} disagree on the label of row {int(first.rows[bad])}: the data differ; {fix}"
            )
