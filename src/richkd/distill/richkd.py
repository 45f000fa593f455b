"""RichKD: distillation from a teacher fused with a vision-language model (METHOD.md §5).

Mansourian, Babaei, Kasaei, "Enriching Knowledge Distillation with Cross-Modal Teacher Fusion",
CVPR 2026 Findings (https://arxiv.org/abs/2511.09286).
"""

from __future__ import annotations

from torch import Tensor

from richkd.data.batch import Batch
from richkd.distill.base import DISTILLERS, Distiller, cross_entropy_term, format_loss, require_teacher
from richkd.distill.crd import CRDLoss
from richkd.errors import RichKDError
from richkd.fusion import FeatureFusion
from richkd.losses import kd_loss
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["RichKD"]


@DISTILLERS.register("richkd")
class RichKD(Distiller):
    """``L = w_ce · CE(z_S, y) + w_kd · T² · KL(softmax(z_F/T) ‖ softmax(z_S/T)) + w_feat · L_CRD(f_S, f_F)``.

    - z_F = α z_T + (1 − α) s z_C is fused on the teacher side (``FusedTargets``), so ``teacher.logits``
      arrive fused; this class only applies KD to them.
    - f_F = normalize(λ P_T f_T + (1 − λ) P_C f_C) is the ``FeatureFusion`` inside ``crd``, fed with
      ``teacher.pooled`` and ``teacher.clip.image_emb``; L_CRD is CRD's two-sided NCE loss. If ``crd``'s
      teacher side is a plain ``Embed`` instead, the feature term is plain CRD on ``teacher.pooled``: the
      teacher-only control, which reads no CLIP targets.

    Keys "ce", "kd", "feat". Reference defaults: w_ce = 1, w_kd = 3, w_feat = 0.8, T = 3.
    RichKD-L: ``feat_weight=0`` (and ``crd=None``); RichKD-F: ``kd_weight=0``.
    """

    def __init__(
        self,
        *,
        ce_weight: float,
        kd_weight: float,
        feat_weight: float,
        temperature: float,
        crd: CRDLoss | None,
    ) -> None:
        super().__init__()
        self.ce_weight, self.kd_weight, self.feat_weight = self.check_weights(
            ce_weight=ce_weight, kd_weight=kd_weight, feat_weight=feat_weight
        )
        if (crd is None) != (feat_weight == 0):
            raise ValueError(
                "crd must be given iff feat_weight > 0 (a zero-weight term builds no memory bank)"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.crd = crd
        self.needs_teacher = bool(self.kd_weight or self.feat_weight)
        # A plain Embed teacher side is the teacher-only control (no vision-language model in play).
        self.fuses_features = crd is not None and isinstance(crd.teacher_embed, FeatureFusion)
        self.needs_clip = self.fuses_features
        self.needs_indices = crd is not None

    def forward(
        self, student: ModelOutput, teacher: TeacherTargets | None, batch: Batch, progress: float
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * cross_entropy_term(student, batch)
        if self.kd_weight:
            teacher = require_teacher(teacher, "RichKD")
            terms["kd"] = self.kd_weight * kd_loss(student.logits, teacher.logits, self.temperature)
        if self.crd is not None:
            teacher = require_teacher(teacher, "RichKD")
            terms["feat"] = self.feat_weight * self.crd(
                student.pooled, self._teacher_side(teacher), batch.indices
            )
        return terms

    def _teacher_side(self, teacher: TeacherTargets) -> tuple[Tensor, ...]:
        if teacher.pooled is None:
            raise RichKDError("RichKD's feature term needs the teacher's pooled features (teacher.pooled)")
        if self.fuses_features:
            if teacher.clip is None:
                raise RichKDError(
                    "RichKD's feature term (feat_weight > 0) needs CLIP targets, but teacher.clip is None: "
                    "configure a CLIP target cache, or set feat_weight to 0 (RichKD-L)"
                )
            return (teacher.pooled, teacher.clip.image_emb)
        return (teacher.pooled,)

    def describe(self) -> str:
        parts = [(self.ce_weight, "CE"), (self.kd_weight, f"KD(T={self.temperature})")]
        if self.crd is not None:
            parts.append((self.feat_weight, f"CRD({self.crd.describe()})"))
        return format_loss(parts)
