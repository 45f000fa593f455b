"""DIST: distillation from a stronger teacher by matching inter- and intra-class Pearson relations."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from richkd.data.batch import Batch
from richkd.distill.base import DISTILLERS, Distiller, cross_entropy_term, format_loss, require_teacher
from richkd.losses import standardize_logits
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["DIST", "dist_loss", "pearson_rows"]

_EPS = 1e-8  # the reference's cosine_similarity eps


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Per-row Pearson correlation ``[N]`` of two ``[N, M]`` tensors: the cosine of the row-centred rows,
    ``Σ (a − ā)(b − b̄) / (‖a − ā‖ ‖b − b̄‖ + 1e-8)``, as the reference's ``pearson_correlation``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    rho: Tensor = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + _EPS)
    return rho


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float,
    gamma: float,
    temperature: float | Tensor,
    standardize: bool = False,
) -> Tensor:
    """``τ² · (β · (1 − mean_b ρ(Y_s[b,:], Y_t[b,:])) + γ · (1 − mean_c ρ(Y_s[:,c], Y_t[:,c])))``, Y = softmax(z/τ).

    Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022
    (https://arxiv.org/abs/2205.10536), eq. 5-8 and its reference code (``DIST(beta, gamma, tau)``): the
    inter-class relation correlates each sample's class distribution, the intra-class relation each class's
    distribution over the batch. Pearson correlation is invariant to a shift and scale of either side, which is
    the paper's point: the student matches the teacher's relations, not its exact probabilities. Their CIFAR-100
    setting: β = γ = 2, τ = 4. ``standardize`` z-scores both logits before τ (logit standardisation).
    Computed in float32.
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits must both be [B, C] with the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    zs, zt = student_logits.float(), teacher_logits.float()
    if standardize:
        zs, zt = standardize_logits(zs), standardize_logits(zt)
    ys, yt = F.softmax(zs / temperature, dim=1), F.softmax(zt / temperature, dim=1)
    inter = 1.0 - pearson_rows(ys, yt).mean()
    intra = 1.0 - pearson_rows(ys.t(), yt.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)


@DISTILLERS.register("dist")
class DIST(Distiller):
    """``L = w_ce · CE(z_S, y) + w_dist · DIST(z_S, z_T; β, γ, τ)`` (:func:`dist_loss`). Keys "ce", "dist".

    Reference CIFAR weights: w_ce = 1, w_dist = 1. ``teacher.logits`` may arrive fused (fusion.mode=vlm).
    """

    def __init__(
        self,
        *,
        ce_weight: float,
        dist_weight: float,
        beta: float,
        gamma: float,
        temperature: float,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.ce_weight, self.dist_weight = self.check_weights(ce_weight=ce_weight, dist_weight=dist_weight)
        if not temperature > 0 or not beta >= 0 or not gamma >= 0:
            raise ValueError(f"need temperature > 0, beta >= 0, gamma >= 0; got {temperature}, {beta}, {gamma}")
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), float(temperature)
        self.standardize = bool(standardize)
        self.needs_teacher = self.dist_weight > 0

    def forward(
        self, student: ModelOutput, teacher: TeacherTargets | None, batch: Batch, progress: float
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * cross_entropy_term(student, batch)
        if self.dist_weight:
            teacher = require_teacher(teacher, "DIST")
            loss = dist_loss(
                student.logits, teacher.logits, beta=self.beta, gamma=self.gamma,
                temperature=self.temperature, standardize=self.standardize,
            )
            terms["dist"] = self.dist_weight * loss
        return terms

    def describe(self) -> str:
        ls = "LS-" if self.standardize else ""
        name = f"{ls}DIST(beta={self.beta}, gamma={self.gamma}, tau={self.temperature})"
        return format_loss([(self.ce_weight, "CE"), (self.dist_weight, name)])
