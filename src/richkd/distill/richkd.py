"""RichKD: distillation from a teacher fused with a vision-language model (METHOD.md §5).

Mansourian, Babaei, Kasaei, "Enriching Knowledge Distillation with Cross-Modal Teacher Fusion",
CVPR 2026 Findings (https://arxiv.org/abs/2511.09286).
"""

from __future__ import annotations

from richkd.distill.base import DISTILLERS
from richkd.distill.crd import CRD, CRDLoss

__all__ = ["RichKD"]


@DISTILLERS.register("richkd")
class RichKD(CRD):
    """``L = w_ce · CE(z_S, y) + w_kd · T² · KL(softmax(z_F/T) ‖ softmax(z_S/T)) + w_feat · L_CRD(f_S, f_F)``.

    The loss is CRD's with a KD term; what makes it RichKD is the teacher side:

    - z_F = α z_T + (1 − α) s z_C is fused on the teacher side (``FusedTargets``), so ``teacher.logits``
      arrive fused; this class only applies KD to them.
    - f_F = normalize(λ P_T f_T + (1 − λ) P_C f_C) is the ``FeatureFusion`` inside ``crd``, fed with
      ``teacher.pooled`` and ``teacher.clip.image_emb``. With a plain ``Embed`` teacher side instead, the feature
      term is plain CRD on ``teacher.pooled``: the teacher-only control, which reads no CLIP targets.

    Keys "ce", "kd", "feat". Reference defaults: w_ce = 1, w_kd = 3, w_feat = 0.8, T = 3.
    RichKD-L: ``feat_weight=0`` (and ``crd=None``); RichKD-F: ``kd_weight=0``.
    """

    feature_key = "feat"

    def __init__(
        self,
        *,
        ce_weight: float,
        kd_weight: float,
        feat_weight: float,
        temperature: float,
        crd: CRDLoss | None,
        standardize: bool = False,
    ) -> None:
        super().__init__(
            ce_weight=ce_weight,
            crd_weight=feat_weight,
            crd=crd,
            kd_weight=kd_weight,
            temperature=temperature,
            standardize=standardize,
        )

    @property
    def feat_weight(self) -> float:
        return self.crd_weight
