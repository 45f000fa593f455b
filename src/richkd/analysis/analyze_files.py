"""Analyse predictions files: calibration, confidence quadrants, consistency and agreement
(`richkd.analysis.analyze`), written as DIR/analysis.json and DIR/analysis.md."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from richkd.errors import RichKDError

__all__ = ["AnalysisResult", "analyze_files", "parse_pairs", "semantic_embeddings"]


@dataclass(frozen=True)
class AnalysisResult:
    """analysis.json's content, the Markdown summary, and where both were written."""

    result: dict[str, Any]
    markdown: str
    json_path: Path
    markdown_path: Path


def parse_pairs(values: list[str], option: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        a, sep, b = v.partition(":")
        if not sep or not a or not b or ":" in b:
            raise RichKDError(f"{option} {v!r} must be two predictor names as A:B")
        out.append((a, b))
    return out


def semantic_embeddings(spec: str, classes: tuple[str, ...], *, templates: str | None = None, device: str = "cpu"
                        ) -> tuple[str, Tensor]:
    """(source description, class embeddings [C, E]) from `vlm:SPEC` or `cache:DIR`."""
    kind, _, arg = spec.partition(":")
    if kind == "cache" and arg:
        from richkd.caches.target import TargetCache

        cache = TargetCache.open(arg)
        if cache.meta.class_names != classes:
            raise RichKDError(f"--semantic cache {arg} was built for other classes or another class order than "
                              "the predictions: use a cache of the same dataset")
        m = cache.meta
        return f"class-name text embeddings of target cache {arg} ({m.model_id}; {len(m.templates)} templates)", \
            cache.class_emb
    if kind == "vlm" and arg:
        from richkd.engine.device import check_device
        from richkd.teachers.prompts import DEFAULT_TEMPLATES, load_templates
        from richkd.teachers.vlm import load_vlm
        from richkd.teachers.zero_shot import class_embeddings

        prompts = load_templates(templates) if templates else DEFAULT_TEMPLATES
        vlm = load_vlm(arg, device=check_device(device))
        emb = class_embeddings(vlm, classes, prompts, clean_names=True).cpu()
        return f"class-name text embeddings of {vlm.model_id} ({len(prompts)} templates)", emb
    raise RichKDError(f"--semantic {spec!r}: use vlm:SPEC (e.g. vlm:surrogate) or cache:DIR")


def analyze_files(
    predictions: Sequence[str | Path], out: str | Path, *, names: Sequence[str] | None = None, tau: float = 0.5,
    n_bins: int = 15, flows: Sequence[tuple[str, str]] = (), agreements: Sequence[tuple[str, str]] = (),
    semantic: str | None = None, templates: str | None = None, reference: str | None = None, device: str = "cpu",
) -> AnalysisResult:
    """Analyse predictions files written by `predict` (names default to their own; `semantic`: vlm:SPEC or
    cache:DIR for class-name similarity); writes OUT/analysis.json and OUT/analysis.md."""
    from richkd.analysis.analyze import analyze, check_request, render_summary
    from richkd.analysis.predictions import check_comparable, read_predictions
    from richkd.engine.io import check_writable, write_json_atomic, write_text_atomic

    folder = Path(out)
    check_writable(folder, "--out")
    preds = [read_predictions(p) for p in predictions]
    chosen = list(names) if names else [p.name for p in preds]
    check_request(chosen, len(preds), flows=list(flows), agreements=list(agreements), reference=reference)
    check_comparable(preds)
    sem = semantic_embeddings(semantic, preds[0].classes, templates=templates, device=device) if semantic else None
    result = analyze(preds, chosen, tau=tau, flows=list(flows), agreements=list(agreements), semantic=sem,
                     reference=reference, n_bins=n_bins)
    summary = render_summary(result)
    write_json_atomic(folder / "analysis.json", result)
    write_text_atomic(folder / "analysis.md", summary)
    return AnalysisResult(result=result, markdown=summary, json_path=folder / "analysis.json",
                          markdown_path=folder / "analysis.md")
