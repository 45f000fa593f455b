"""A vision-language teacher's zero-shot accuracy on a split: image embeddings of every row, then top-1/top-5,
NLL and ECE per prompt set and logit scale (what `richkd vlm zeroshot` reports)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from richkd.data.arrays import ArrayDataset
    from richkd.data.subset import SubsetRows
    from richkd.teachers.vlm import VisionLanguageTeacher

__all__ = ["classification_metrics", "encode_split", "zero_shot_results"]


def encode_split(
    vlm: VisionLanguageTeacher, ds: ArrayDataset, *, batch_size: int, device: str | torch.device, bf16: bool
) -> torch.Tensor:
    """L2-normalised image embeddings [N, E] of every row of `ds` (float32, on the CPU)."""
    device = torch.device(device)
    amp = bf16 and device.type in ("cpu", "cuda")
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(ds), batch_size):
            x = ds.images[start : start + batch_size].to(device).float() / 255.0
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                chunks.append(torch.nn.functional.normalize(vlm.encode_images(x).float(), dim=-1).cpu())
    return torch.cat(chunks)  # [N, E]


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1/top5 (%), NLL and ECE (15 bins, a fraction) of logits against labels."""
    from richkd.analysis.metrics import expected_calibration_error, nll, topk_accuracy

    acc = topk_accuracy(logits, labels, (1, 5))
    return {"top1": acc[1], "top5": acc[5], "nll": nll(logits, labels),
            "ece": expected_calibration_error(logits, labels, n_bins=15)}


def zero_shot_results(
    vlm: VisionLanguageTeacher, ds: ArrayDataset, *, templates: Sequence[str], subset: SubsetRows | None = None,
    scales: Sequence[float] | None = None, clean_names: bool = True, batch_size: int = 256,
    device: str | torch.device = "cpu", bf16: bool = False,
) -> dict[str, Any]:
    """Zero-shot metrics of `vlm` on `ds` with the template ensemble and the single template, at each scale
    (default: 1 and the model's own); the dict `richkd vlm zeroshot --out` writes."""
    from richkd.teachers.prompts import SINGLE_TEMPLATE
    from richkd.teachers.zero_shot import class_embeddings, zero_shot_logits

    scales = list(scales) if scales else [1.0, vlm.logit_scale]
    t0 = time.perf_counter()
    image_emb = encode_split(vlm, ds, batch_size=batch_size, device=device, bf16=bf16)
    seconds = time.perf_counter() - t0
    prompt_sets = {f"ensemble ({len(templates)})": tuple(templates),
                   f"single ({SINGLE_TEMPLATE[0]!r})": SINGLE_TEMPLATE}
    rows = []
    for prompts_name, prompts in prompt_sets.items():
        class_emb = class_embeddings(vlm, ds.classes, prompts, clean_names=clean_names).cpu()
        for scale in scales:
            logits = zero_shot_logits(image_emb, class_emb, scale)
            rows.append({"prompts": prompts_name, "logit_scale": scale, **classification_metrics(logits, ds.labels)})
    return {"teacher": vlm.label, "model_id": vlm.model_id, "dataset": ds.name, "split": ds.split,
            "rows": len(ds), "subset": None if subset is None else subset.describe(), "clean_names": clean_names,
            "image_seconds": round(seconds, 2),
            "images_per_second": round(len(ds) / seconds, 1), "results": rows}
