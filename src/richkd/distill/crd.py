"""Contrastive Representation Distillation (CRD).

Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020
(https://arxiv.org/abs/1910.10699); reference code github.com/HobbitLong/RepDistiller (``crd/``), as
copied into mdistiller and the RichKD fork.

Pieces, from the bottom up:

- :func:`crd_nce_loss`: the NCE loss on one side's scores (CRD's ``ContrastLoss``).
- :class:`ContrastMemory`: two momentum memory banks (student side, teacher side) that supply the
  positive and K negatives for every sample, and produce the scores.
- :class:`Embed`: Linear + L2 normalisation (CRD's ``Embed``).
- :class:`CRDLoss`: student embed + teacher-side embed (an :class:`Embed`, or a
  :class:`~richkd.fusion.FeatureFusion` for RichKD) + memory + NCE on both sides.
- The :class:`CRD` distiller: ``w_ce · CE + w_kd · KD + w_crd · L_CRD``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.data.batch import Batch
from richkd.distill.base import (
    DISTILLERS,
    Distiller,
    cross_entropy_term,
    format_loss,
    kd_name,
    require_teacher,
)
from richkd.engine import dist
from richkd.errors import RichKDError
from richkd.fusion import FeatureFusion
from richkd.losses import kd_loss
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["crd_nce_loss", "ContrastMemory", "Embed", "CRDLoss", "CRD", "build_crd_loss"]

_NCE_EPS = 1e-7  # CRD's ContrastLoss eps, kept for bit-compatibility with the reference
# Score all N bank rows with one matmul when N <= this * (K + 1), else gather the K + 1 rows per sample:
# a matmul multiply-add costs far less than gathering one float from a bank too large for the caches.
_FULL_SCORE_RATIO = 16


def crd_nce_loss(scores: Tensor, n_data: int) -> Tensor:
    """CRD's NCE loss with a uniform noise distribution P_n = 1/N.

    ``scores`` ``[B, K+1]`` are ``x = exp(⟨v, m⟩ / τ) / Z``; column 0 is the positive pair. With
    ``P(D=1 | x) = x / (x + K·P_n)``::

        L = −( Σ_b log P(D=1 | x_b,0) + Σ_b Σ_k log(1 − P(D=1 | x_b,k)) ) / B

    where ``1 − P(D=1 | x) = K·P_n / (x + K·P_n)``. As in the reference, ``eps = 1e-7`` is added to each
    denominator. Tian et al., ICLR 2020, eq. (9)-(10) (https://arxiv.org/abs/1910.10699).
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [B, K+1] with K >= 1, got {tuple(scores.shape)}")
    if n_data <= 0:
        raise ValueError(f"n_data must be positive, got {n_data}")
    scores = scores.float()
    batch_size = scores.shape[0]
    noise = (scores.shape[1] - 1) / float(n_data)  # K · P_n
    positive = scores[:, 0]  # [B]
    negatives = scores[:, 1:]  # [B, K]
    log_d1 = torch.log(positive / (positive + noise + _NCE_EPS))
    log_d0 = torch.log(noise / (negatives + noise + _NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / batch_size


def _uniform_bank(n_data: int, embed_dim: int) -> Tensor:
    stdv = 1.0 / math.sqrt(embed_dim / 3)  # CRD's init: U(−stdv, stdv)
    return torch.rand(n_data, embed_dim).mul_(2 * stdv).add_(-stdv)


class ContrastMemory(nn.Module):
    """Two momentum memory banks and CRD's score computation (CRD's ``ContrastMemory``).

    For sample b with row id i and K negative rows j_1..j_K drawn uniformly from rows of *other* classes
    (CRD's ``mode="exact"`` CIFAR sampler)::

        student_scores[b] = exp(⟨M_t[i, j_1..j_K], s_b⟩ / τ) / Z_s   # student emb vs teacher bank
        teacher_scores[b] = exp(⟨M_s[i, j_1..j_K], t_b⟩ / τ) / Z_t   # teacher emb vs student bank

    Z_s, Z_t are set once, at the first forward, to ``mean(exp(·/τ)) · N`` and kept in buffers so that a
    resumed run uses the same constants. After the scores, in training mode, the banks are updated at the
    batch rows: ``M[i] ← normalize(μ · M[i] + (1 − μ) · v)``.

    K is capped at the smallest number of other-class rows (only bites on tiny datasets).

    ``distinct=True`` (default) draws the K rows without replacement, as the reference sampler does
    (``np.random.choice(..., replace=False)``): a uniformly random K-subset, taken as the top-K of one uniform
    key per other-class row. It costs a ``[B, N]`` draw per step (about 50 ms at B = 64, N = 50k on 2 CPU
    cores, vs 30 ms with replacement); at ImageNet scale (N = 1.28 M) choose ``distinct=False``, where
    duplicates are rare anyway (K/N ≈ 1 %).

    Under torch.distributed (DDP) each rank holds a slice of the global batch and the banks stay identical
    on every rank, equal to a 1-process run's: negatives are drawn for the whole global batch from the
    identically seeded generator and sliced, Z is set from the global mean, and every rank applies the
    momentum update for all rows of the global batch (embeddings and row ids all-gathered).

    Args:
        embed_dim: width of the embeddings and banks (128).
        n_data: N, number of dataset rows (the row ids ``indices`` index into).
        labels: ``[N]`` int64 class of every row, to sample negatives from other classes.
        nce_k: K, negatives per sample (16384).
        nce_t: τ, NCE temperature (0.07).
        momentum: μ, bank momentum (0.5).
        distinct: K distinct negatives per sample (reference) or K draws with replacement (faster).
    """

    memory_student: Tensor
    memory_teacher: Tensor
    z_student: Tensor
    z_teacher: Tensor
    _labels: Tensor
    _rows_by_class: Tensor
    _class_start: Tensor
    _class_count: Tensor

    def __init__(
        self,
        *,
        embed_dim: int,
        n_data: int,
        labels: Tensor,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        momentum: float = 0.5,
        distinct: bool = True,
    ) -> None:
        super().__init__()
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).cpu()
        if labels.numel() != n_data:
            raise ValueError(f"labels has {labels.numel()} rows but n_data is {n_data}")
        if labels.min() < 0:
            raise ValueError("labels must be non-negative class ids")
        if nce_k < 1 or not nce_t > 0 or not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"need nce_k >= 1, nce_t > 0, 0 <= momentum < 1; got {nce_k}, {nce_t}, {momentum}"
            )
        class_count = torch.bincount(labels)
        min_other = n_data - int(class_count.max())
        if min_other < 1:
            raise ValueError("CRD needs at least two classes to draw negatives from other classes")
        self.embed_dim = embed_dim
        self.n_data = n_data
        self.nce_k = min(nce_k, min_other)
        self.requested_k = nce_k
        self.nce_t = float(nce_t)
        self.momentum = float(momentum)
        self.distinct = bool(distinct)
        self.max_other = n_data - int(class_count.min())  # width of the key draw for distinct sampling
        self.register_buffer("memory_student", _uniform_bank(n_data, embed_dim))
        self.register_buffer("memory_teacher", _uniform_bank(n_data, embed_dim))
        self.register_buffer("z_student", torch.tensor(-1.0))  # < 0: not set yet
        self.register_buffer("z_teacher", torch.tensor(-1.0))
        # Derived from `labels`, so not checkpointed: rows sorted by class make "all rows of other
        # classes" two contiguous ranges, which lets sampling skip the own-class block arithmetically.
        self.register_buffer("_labels", labels, persistent=False)
        self.register_buffer("_rows_by_class", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("_class_start", torch.cumsum(class_count, 0) - class_count, persistent=False)
        self.register_buffer("_class_count", class_count, persistent=False)
        self._z_ready = False  # host-side: Z known to be set, so the step needs no device->host sync

    def sample_negatives(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[B]`` row ids -> ``[B, K]`` row ids drawn uniformly from other classes (distinct unless disabled)."""
        sample_labels = self._labels[indices]  # [B]
        start = self._class_start[sample_labels].unsqueeze(1)  # [B, 1]
        count = self._class_count[sample_labels].unsqueeze(1)  # [B, 1]
        n_other = self.n_data - count  # [B, 1]
        n_local = indices.shape[0]
        # Draw for the whole global batch and keep this rank's rows: same negatives as one process.
        n_draw = n_local * dist.world_size()
        device = indices.device
        if self.distinct:
            # One key per other-class slot; the K largest keys are a uniform K-subset. Slots past this
            # sample's n_other get key -1 and are never chosen (K <= min n_other).
            keys = torch.rand(n_draw, self.max_other, generator=generator, device=device)
            keys = keys[dist.rank_slice(n_local)]  # [B, max_other]
            keys.masked_fill_(torch.arange(self.max_other, device=device) >= n_other, -1.0)
            slot = keys.topk(self.nce_k, dim=1, sorted=False).indices  # [B, K] in [0, n_other), distinct
        else:
            uniform = torch.rand(n_draw, self.nce_k, generator=generator, device=device, dtype=torch.float64)
            uniform = uniform[dist.rank_slice(n_local)]  # [B, K]
            slot = torch.minimum((uniform * n_other).long(), n_other - 1)  # [B, K] in [0, n_other)
        slot = slot + (slot >= start).long() * count  # jump over the own-class block
        return self._rows_by_class[slot]

    def forward(
        self,
        student_emb: Tensor,
        teacher_emb: Tensor,
        indices: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``[B, E]`` unit-norm embeddings, ``[B]`` row ids -> (student, teacher) scores ``[B, K+1]``."""
        indices = indices.to(self.memory_student.device, torch.int64)
        with torch.autocast(device_type=student_emb.device.type, enabled=False):
            student_emb = student_emb.float()
            teacher_emb = teacher_emb.float()
            rows = torch.cat([indices.unsqueeze(1), self.sample_negatives(indices, generator)], dim=1)
            student_scores = self._scores(self.memory_teacher, rows, student_emb)  # [B, K+1]
            teacher_scores = self._scores(self.memory_student, rows, teacher_emb)  # [B, K+1]
            self._set_z_once(student_scores, teacher_scores)
            student_scores = student_scores / self.z_student
            teacher_scores = teacher_scores / self.z_teacher
            if self.training:
                if dist.is_distributed():
                    indices = dist.all_gather_cat(indices)
                    both = dist.all_gather_cat(torch.cat([student_emb, teacher_emb], dim=1).detach())
                    student_emb, teacher_emb = both[:, : self.embed_dim], both[:, self.embed_dim :]
                self._update_bank(self.memory_student, indices, student_emb)
                self._update_bank(self.memory_teacher, indices, teacher_emb)
        return student_scores, teacher_scores

    def _scores(self, bank: Tensor, rows: Tensor, emb: Tensor) -> Tensor:
        """exp(<bank[rows[b, k]], emb[b]> / tau), ``[B, K+1]``.

        The reference gathers ``bank[rows]``, a ``[B, K+1, E]`` tensor (537 MB per side at B = 64,
        K = 16384), and multiplies it with a bmm: memory-bound, and most of a CPU step. When the bank is not
        much larger than K (CIFAR: N = 50k), one ``[B, E] x [E, N]`` matmul scores every row and the
        K+1 wanted columns are gathered from it; same values up to float summation order.
        """
        bank = bank.detach()
        if self.n_data <= _FULL_SCORE_RATIO * rows.shape[1]:
            if emb.requires_grad:  # backward needs the bank as it is now, before this step's update
                bank = bank.clone()  # N x E: 25 MB on CIFAR, vs the 537 MB the gather would build
            dots = torch.mm(emb, bank.t()).gather(1, rows)  # [B, N] -> [B, K+1]
        else:
            dots = torch.bmm(bank[rows], emb.unsqueeze(2)).squeeze(2)  # [B, K+1, E] x [B, E, 1]
        return torch.exp(dots / self.nce_t)

    @torch.no_grad()
    def _set_z_once(self, student_scores: Tensor, teacher_scores: Tensor) -> None:
        """Z = mean(raw scores) * N, from the first batch only (the global batch under DDP)."""
        if self._z_ready:
            return
        means = torch.stack([student_scores.mean(), teacher_scores.mean()])
        if dist.is_distributed():
            # Equal slices per rank, so the mean of the rank means is the global-batch mean. Every rank
            # runs this collective on the same steps: Z (hence _z_ready) is the same on every rank.
            means = dist.all_reduce_mean(means)
            self._z_ready = True  # Z > 0 after this call (scores are exponentials)
        # torch.where instead of `if z < 0` keeps the 1-process step free of a device->host sync.
        self.z_student.copy_(torch.where(self.z_student < 0, means[0] * self.n_data, self.z_student))
        self.z_teacher.copy_(torch.where(self.z_teacher < 0, means[1] * self.n_data, self.z_teacher))

    @torch.no_grad()
    def _update_bank(self, bank: Tensor, indices: Tensor, emb: Tensor) -> None:
        mixed = bank[indices] * self.momentum + emb.detach() * (1.0 - self.momentum)
        bank.index_copy_(0, indices, F.normalize(mixed, dim=1, eps=0.0))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, n_data={self.n_data}, nce_k={self.nce_k}, "
            f"nce_t={self.nce_t}, momentum={self.momentum}, distinct={self.distinct}"
        )


class Embed(nn.Module):
    """CRD's embedding head: ``normalize(W f + b)`` (Linear then L2 normalisation), output float32."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, features: Tensor) -> Tensor:
        features = features.reshape(features.shape[0], -1).to(self.linear.weight.dtype)
        return F.normalize(self.linear(features).float(), dim=1)


class CRDLoss(nn.Module):
    """``L_CRD = NCE(student_scores) + NCE(teacher_scores)`` (CRD's ``loss_s + loss_t``).

    The student embedding is ``Embed(student_dim, embed_dim)``; the teacher side is ``teacher_embed``:
    ``Embed(teacher_dim, embed_dim)`` for plain CRD, or a :class:`~richkd.fusion.FeatureFusion` for
    RichKD-F, whose output f_F = normalize(λ P_T f_T + (1 − λ) P_C f_C) takes the teacher's place.
    Tian et al., ICLR 2020 (https://arxiv.org/abs/1910.10699); Mansourian et al., 2025
    (https://arxiv.org/abs/2511.09286).
    """

    def __init__(
        self, *, student_dim: int, teacher_embed: nn.Module, embed_dim: int = 128, memory: ContrastMemory
    ) -> None:
        super().__init__()
        if memory.embed_dim != embed_dim:
            raise ValueError(f"memory embed_dim {memory.embed_dim} != embed_dim {embed_dim}")
        self.student_embed = Embed(student_dim, embed_dim)
        self.teacher_embed = teacher_embed
        self.memory = memory

    @property
    def fuses_features(self) -> bool:
        """The teacher side is a FeatureFusion: it reads the cached CLIP image embedding as well."""
        return isinstance(self.teacher_embed, FeatureFusion)

    def teacher_inputs(self, teacher: TeacherTargets) -> tuple[Tensor, ...]:
        """What the teacher side embeds: (f_T,) for plain CRD, (f_T, f_C) for fused features."""
        if teacher.pooled is None:
            raise RichKDError("the contrastive term needs the teacher's pooled features (teacher.pooled)")
        if not self.fuses_features:
            return (teacher.pooled,)
        if teacher.clip is None:
            raise RichKDError(
                "feature fusion needs CLIP targets, but teacher.clip is None: configure a vision-language "
                "target cache (vlm.cache with fusion.mode=vlm), or turn feature fusion off"
            )
        return (teacher.pooled, teacher.clip.image_emb)

    def forward(
        self,
        student_pooled: Tensor,
        teacher_inputs: tuple[Tensor, ...],
        indices: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``[B, D_s]`` student features, teacher-side inputs, ``[B]`` row ids -> scalar loss."""
        student_emb = self.student_embed(student_pooled)  # [B, E]
        teacher_emb = self.teacher_embed(*(x.detach() for x in teacher_inputs))  # [B, E]
        student_scores, teacher_scores = self.memory(student_emb, teacher_emb, indices, generator)
        n_data = self.memory.n_data
        return crd_nce_loss(student_scores, n_data) + crd_nce_loss(teacher_scores, n_data)

    def describe(self) -> str:
        mem = self.memory
        desc = f"K={mem.nce_k}, tau={mem.nce_t}, momentum={mem.momentum}, dim={mem.embed_dim}"
        if isinstance(self.teacher_embed, FeatureFusion):
            desc += f", fused lambda={self.teacher_embed.feature_lambda}"
        if not mem.distinct:
            desc += ", negatives with replacement"
        return desc


def build_crd_loss(
    *,
    student_dim: int,
    teacher_dim: int,
    clip_dim: int | None,
    feature_lambda: float | None,
    embed_dim: int,
    n_data: int,
    labels: Tensor,
    nce_k: int,
    nce_t: float,
    momentum: float,
    distinct: bool = True,
) -> CRDLoss:
    """CRD loss whose teacher side is ``FeatureFusion`` when ``clip_dim`` is given, else ``Embed``."""
    teacher_embed: nn.Module
    if clip_dim is not None:
        if feature_lambda is None:
            raise ValueError("feature_lambda is required when clip_dim is given (feature fusion)")
        teacher_embed = FeatureFusion(
            teacher_dim=teacher_dim, clip_dim=clip_dim, embed_dim=embed_dim, feature_lambda=feature_lambda
        )
    else:
        if feature_lambda is not None:
            raise ValueError("feature_lambda without clip_dim: feature fusion needs the CLIP width")
        teacher_embed = Embed(teacher_dim, embed_dim)
    memory = ContrastMemory(
        embed_dim=embed_dim,
        n_data=n_data,
        labels=labels,
        nce_k=nce_k,
        nce_t=nce_t,
        momentum=momentum,
        distinct=distinct,
    )
    return CRDLoss(student_dim=student_dim, teacher_embed=teacher_embed, embed_dim=embed_dim, memory=memory)


@DISTILLERS.register("crd")
class CRD(Distiller):
    """``L = w_ce · CE + w_kd · KD_T + w_crd · L_CRD(f_S, f_T)`` (Tian et al., ICLR 2020).

    mdistiller/RepDistiller CIFAR defaults: w_ce = 1, w_crd = 0.8, w_kd = 0. Keys "ce", "kd", "crd".
    The teacher side of ``crd`` decides what the feature term distils: a plain ``Embed`` reads the teacher's
    pooled features; a ``FeatureFusion`` fuses them with the cached CLIP image embedding (fusion on).
    ``standardize`` z-scores the logits of the KD term (logit standardisation, Sun et al. CVPR 2024).
    """

    feature_key = "crd"  # name of the contrastive term in the step's loss dict

    def __init__(
        self,
        *,
        ce_weight: float,
        crd_weight: float,
        crd: CRDLoss | None,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.ce_weight, self.kd_weight, self.crd_weight = self.check_weights(
            ce_weight=ce_weight, kd_weight=kd_weight, **{f"{self.feature_key}_weight": crd_weight}
        )
        if (crd is None) != (crd_weight == 0):
            raise ValueError(
                f"crd must be given iff {self.feature_key}_weight > 0 (a zero-weight term builds no memory bank)"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.standardize = bool(standardize)
        self.crd = crd
        self.needs_teacher = bool(self.kd_weight or self.crd_weight)
        self.fuses_features = crd is not None and crd.fuses_features
        self.needs_clip = self.fuses_features
        self.needs_indices = crd is not None

    def forward(
        self, student: ModelOutput, teacher: TeacherTargets | None, batch: Batch, progress: float
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * cross_entropy_term(student, batch)
        if self.kd_weight:
            teacher = require_teacher(teacher, type(self).__name__)
            temperature = self.logit_temperature(self.temperature, progress)
            kd = kd_loss(student.logits, teacher.logits, temperature, standardize=self.standardize)
            terms["kd"] = self.kd_weight * kd
        if self.crd is not None:
            teacher = require_teacher(teacher, type(self).__name__)
            loss = self.crd(student.pooled, self.crd.teacher_inputs(teacher), batch.indices)
            terms[self.feature_key] = self.crd_weight * loss
        return terms

    def describe(self) -> str:
        kd = kd_name(self.temperature_label(self.temperature), self.standardize)
        parts = [(self.ce_weight, "CE"), (self.kd_weight, kd)]
        if self.crd is not None:
            parts.append((self.crd_weight, f"CRD({self.crd.describe()})"))
        return format_loss(parts)
