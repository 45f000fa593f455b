"""Zero-shot classification as pure functions of the VisionLanguageTeacher protocol (METHOD.md §2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from richkd.teachers.prompts import check_templates, clean_class_name, format_prompts
from richkd.teachers.vlm import VisionLanguageTeacher


@torch.no_grad()
def class_embeddings(
    vlm: VisionLanguageTeacher,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    clean_names: bool = False,
) -> Tensor:
    """w_c = normalize(mean_k normalize(E_text(template_k(name_c)))) -> [C, E] float32.

    All C*K prompts go through the text tower in one call (the backend batches internally).
    """
    templates = check_templates(templates)
    names = [clean_class_name(c) if clean_names else c for c in classnames]
    prompts = [p for name in names for p in format_prompts(name, templates)]
    text_emb = F.normalize(vlm.encode_texts(prompts).float(), dim=-1)  # [C*K, E]
    text_emb = text_emb.view(len(names), len(templates), -1)  # [C, K, E]
    return F.normalize(text_emb.mean(dim=1), dim=-1)


def zero_shot_logits(image_emb: Tensor, class_emb: Tensor, scale: float) -> Tensor:
    """z_C = scale * <v, w_c>: [B, E] x [C, E] -> [B, C]; the scale is applied here and nowhere else."""
    return scale * (image_emb.float() @ class_emb.float().t())


def fit_logit_scale(
    cosines: Tensor, labels: Tensor, *, init: float = 10.0, max_iter: int = 100
) -> float:
    """The scale s minimising mean CE(s * cosines, labels): 1-D LBFGS on log s (convex in s).

    cosines [N, C] (unscaled), labels [N]. Fit on training data, never on the split you report.
    """
    cos = cosines.detach().float()
    y = labels.detach().long().to(cos.device)
    log_s = torch.tensor([math.log(init)], dtype=torch.float64, device=cos.device, requires_grad=True)
    opt = torch.optim.LBFGS([log_s], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(log_s.exp().float() * cos, y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    return float(log_s.detach().exp().item())
