"""`analyze`: predictions files in, the analysis.json object out (docs/analysis_formats.md); plus its Markdown.

Reads no model and no file itself: the CLI reads the predictions and writes the results. Per predictor:
accuracy, NLL, ECE / adaptive ECE / classwise ECE, reliability bins, confidence quadrants, the non-target class
matrix and its rank correlation with class-name similarity and with a reference predictor. Across predictors:
quadrant flows and agreement (top-1, KL, mdistiller's mean-logit difference).

Defaults: when the names include both ``teacher`` and ``fused``, the flow teacher → fused is added (the paper's
Fig. 1 comparison) unless already asked for; when no reference is named and a predictor is called ``teacher``,
it is the reference of ``reference_spearman``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from richkd.analysis.agreement import mean_kl, top1_agreement
from richkd.analysis.calibration import adaptive_ece, classwise_ece, ece, reliability_bins
from richkd.analysis.consistency import (
    class_difference,
    mean_class_logits,
    non_target_matrix,
    reference_spearman,
    semantic_similarity,
    semantic_spearman,
)
from richkd.analysis.metrics import nll, topk_accuracy
from richkd.analysis.predictions import Predictions, check_comparable
from richkd.analysis.quadrants import STATES, flow_counts, quadrant_fractions, sample_states
from richkd.errors import RichKDError

__all__ = ["FORMAT_VERSION", "analyze", "check_request", "resolve_flows", "render_summary"]

FORMAT_VERSION = 1
SHORT_STATES = {"confident_correct": "conf. correct", "unconfident_correct": "unconf. correct",
                "unconfident_wrong": "unconf. wrong", "confident_wrong": "conf. wrong"}


def _matrix_json(matrix: Tensor) -> list[list[float | None]]:
    """C × C nested lists, 6 significant digits (ample for plots and rank statistics), NaN as null."""
    return [[float(f"{v:.6g}") if math.isfinite(v) else None for v in row] for row in matrix.tolist()]


def _check_names(names: Sequence[str], n_preds: int) -> None:
    if len(names) != n_preds:
        raise RichKDError(f"{len(names)} names for {n_preds} predictions files: give one name per file")
    if any(not n or n != n.strip() for n in names):
        raise RichKDError(f"predictor names must be non-empty without surrounding spaces, got {list(names)}")
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise RichKDError(f"predictor name(s) {', '.join(dupes)} repeat: pass distinct --names n1,n2,...")


def _known(name: str, names: Sequence[str], what: str) -> None:
    if name not in names:
        raise RichKDError(f"{what} names {name!r}, which is not a predictor; known: {', '.join(names)}")


def check_request(
    names: Sequence[str],
    n_preds: int,
    *,
    flows: Sequence[tuple[str, str]] = (),
    agreements: Sequence[tuple[str, str]] = (),
    reference: str | None = None,
) -> None:
    """Raise RichKDError for names that are missing, repeated or unknown to a flow / agreement / reference.

    Cheap, so the CLI calls it before loading a text encoder for the class-name similarity.
    """
    _check_names(names, n_preds)
    for a, b in [*flows, *agreements]:
        _known(a, names, f"{a}:{b}")
        _known(b, names, f"{a}:{b}")
    if reference is not None:
        _known(reference, names, "--reference")


def resolve_flows(names: Sequence[str], flows: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The flows to compute: those asked for, with teacher → fused first when both names exist (paper Fig. 1)."""
    out = list(dict.fromkeys(flows))
    if "teacher" in names and "fused" in names and ("teacher", "fused") not in out:
        out.insert(0, ("teacher", "fused"))
    return out


def _predictor(
    p: Predictions, states: Tensor, matrix: Tensor, similarity: Tensor | None, reference_matrix: Tensor | None,
    n_bins: int,
) -> dict[str, Any]:
    acc = topk_accuracy(p.logits, p.labels, (1, 5))
    return {
        "provenance": dict(p.provenance),
        "top1": acc[1],
        "top5": acc[5],
        "nll": nll(p.logits, p.labels),
        "ece": ece(p.logits, p.labels, n_bins),
        "adaptive_ece": adaptive_ece(p.logits, p.labels, n_bins),
        "classwise_ece": classwise_ece(p.logits, p.labels, n_bins),
        "reliability": reliability_bins(p.logits, p.labels, n_bins).to_json(),
        "quadrants": quadrant_fractions(states),
        "consistency": {
            "semantic_spearman": None if similarity is None else semantic_spearman(matrix, similarity),
            "reference_spearman": None if reference_matrix is None else reference_spearman(matrix, reference_matrix),
        },
        "class_correlation": _matrix_json(matrix),
    }


def analyze(
    preds: Sequence[Predictions],
    names: Sequence[str],
    *,
    tau: float = 0.5,
    flows: Sequence[tuple[str, str]] = (),
    agreements: Sequence[tuple[str, str]] = (),
    semantic: tuple[str, Tensor] | None = None,
    reference: str | None = None,
    n_bins: int = 15,
) -> dict[str, Any]:
    """The analysis.json object for comparable predictions `preds` named `names`.

    flows: (from, to) pairs of names, quadrant flow counts; agreements: (reference, other) pairs.
    semantic: (source description, class embeddings [C, E] in the files' class order) or None.
    reference: the predictor whose class matrix the others are rank-correlated with (default: ``teacher``
    when present). See the module docstring for the automatic teacher → fused flow.
    """
    check_request(names, len(preds), flows=flows, agreements=agreements, reference=reference)
    check_comparable(preds)
    if not 0.0 < tau <= 1.0:
        raise RichKDError(f"--tau must be in (0, 1], got {tau}")
    if n_bins < 1:
        raise RichKDError(f"--n-bins must be >= 1, got {n_bins}")
    flows = resolve_flows(names, flows)
    if reference is None and "teacher" in names:
        reference = "teacher"
    first = preds[0]
    similarity, semantic_json = None, None
    if semantic is not None:
        source, class_emb = semantic
        if class_emb.dim() != 2 or class_emb.shape[0] != len(first.classes):
            raise RichKDError(
                f"class embeddings from {source} are {tuple(class_emb.shape)} for {len(first.classes)} classes"
            )
        similarity = semantic_similarity(class_emb)
        semantic_json = {"source": source, "matrix": _matrix_json(similarity)}
    by_name = dict(zip(names, preds, strict=True))
    states = {n: sample_states(p.logits, p.labels, tau) for n, p in by_name.items()}
    matrices = {n: non_target_matrix(p.logits, p.labels) for n, p in by_name.items()}
    reference_matrix = None if reference is None else matrices[reference]
    predictors = {
        n: _predictor(p, states[n], matrices[n], similarity, reference_matrix, n_bins) for n, p in by_name.items()
    }
    return {
        "version": FORMAT_VERSION,
        "tau": tau,
        "n_bins": n_bins,
        "dataset": first.provenance["dataset"],
        "split": first.provenance["split"],
        "classes": list(first.classes),
        "n": first.n,
        "n_rows_split": first.provenance["n_rows_split"],
        "reference": reference,
        "predictors": predictors,
        "semantic_similarity": semantic_json,
        "flows": [
            {"from": a, "to": b, "states": list(STATES), "counts": flow_counts(states[a], states[b])}
            for a, b in flows
        ],
        "agreement": [_agreement(a, b, by_name[a], by_name[b]) for a, b in agreements],
    }


def _agreement(ref_name: str, other_name: str, ref: Predictions, other: Predictions) -> dict[str, Any]:
    diff = class_difference(mean_class_logits(ref.logits, ref.labels), mean_class_logits(other.logits, other.labels))
    off_diagonal = diff[~torch.eye(diff.shape[0], dtype=torch.bool)]
    off_diagonal = off_diagonal[off_diagonal.isfinite()]  # classes absent from the split have NaN rows
    return {
        "reference": ref_name,
        "other": other_name,
        "top1_agreement": top1_agreement(ref.logits, other.logits),
        "mean_kl": mean_kl(ref.logits, other.logits),
        # mdistiller's |mean logits_T − mean logits_S| per (true class, class); mean over off-diagonal entries
        "class_logit_diff": {
            "mean": float(off_diagonal.mean()) if off_diagonal.numel() else None,
            "max": float(off_diagonal.max()) if off_diagonal.numel() else None,
            "matrix": _matrix_json(diff),
        },
    }


def _fmt(v: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "—" if v is None else f"{scale * v:.{digits}f}"


def render_summary(analysis: dict[str, Any]) -> str:
    """A short Markdown summary of an analysis.json object (ECE and quadrants shown in percent)."""
    a = analysis
    lines = [
        f"# Analysis: {a['dataset']}/{a['split']}, {a['n']} rows, {len(a['classes'])} classes "
        f"(τ = {a['tau']}, {a['n_bins']} bins)",
        "",
        "| predictor | kind | top-1 % | top-5 % | NLL | ECE % | adaptive ECE % | classwise ECE % | "
        + " | ".join(f"{SHORT_STATES[s]} %" for s in STATES) + " | ρ semantic | ρ reference |",
        "|---|---|" + "---:|" * (8 + len(STATES)),
    ]
    for name, p in a["predictors"].items():
        cons = p["consistency"]
        lines.append(
            f"| {name} | {p['provenance'].get('kind', '?')} | {_fmt(p['top1'])} | {_fmt(p['top5'])} | "
            f"{_fmt(p['nll'], digits=3)} | {_fmt(p['ece'], 100)} | {_fmt(p['adaptive_ece'], 100)} | "
            f"{_fmt(p['classwise_ece'], 100, 3)} | "
            + " | ".join(_fmt(p["quadrants"][s], 100, 1) for s in STATES)
            + f" | {_fmt(cons['semantic_spearman'], digits=3)} | {_fmt(cons['reference_spearman'], digits=3)} |"
        )
    lines.append("")
    sem = a["semantic_similarity"]
    lines.append(f"ρ semantic: Spearman vs {sem['source']}." if sem else "ρ semantic: no class-name similarity given.")
    lines.append(f"ρ reference: Spearman vs the class matrix of {a['reference']}." if a["reference"]
                 else "ρ reference: no reference predictor.")
    for flow in a["flows"]:
        lines += ["", f"## Flow {flow['from']} → {flow['to']} (rows: {flow['from']}, columns: {flow['to']})", "",
                  "| | " + " | ".join(SHORT_STATES[s] for s in flow["states"]) + " |",
                  "|---|" + "---:|" * len(flow["states"])]
        for state, row in zip(flow["states"], flow["counts"], strict=True):
            lines.append(f"| {SHORT_STATES[state]} | " + " | ".join(str(v) for v in row) + " |")
    if a["agreement"]:
        lines += ["", "## Agreement", "", "| reference | other | top-1 agreement % | mean KL | mean Δ class logits |",
                  "|---|---|---:|---:|---:|"]
        for g in a["agreement"]:
            lines.append(f"| {g['reference']} | {g['other']} | {_fmt(g['top1_agreement'])} | "
                         f"{_fmt(g['mean_kl'], digits=4)} | {_fmt(g['class_logit_diff']['mean'], digits=4)} |")
    return "\n".join(lines) + "\n"
