"""The feature-term seam: an unweighted loss between student and teacher features, built from shape tables.

A feature term never sees a model: its connectors are sized from `FeatureShapes` (the channel/shape table of
`richkd.models.feature_shapes`), and its forward reads `ModelOutput.stages` / `.pooled` on the student side and
`TeacherTargets.stages` / `.pooled` on the teacher side. `WithFeature` (combined.py) adds one to any logit
distiller, so "KD + AT" or "RichKD-L + FitNet" is one run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from richkd.errors import RichKDError
from richkd.models.base import FeatureShapes
from richkd.models.output import ModelOutput
from richkd.registry import Registry
from richkd.targets import TeacherTargets

__all__ = [
    "FEATURE_TERMS",
    "FeatureOptions",
    "FeatureTerm",
    "FeatureTermSpec",
    "match_spatial",
    "student_preacts",
    "teacher_pooled",
    "teacher_preacts",
    "teacher_stages",
]


@dataclass(frozen=True)
class FeatureOptions:
    """Every feature method's hyperparameters as plain values (build.py fills them from `feature.*`)."""

    hint_layer: int = 2  # FitNet: index into the stage maps (mdistiller: 2)
    at_p: float = 2.0  # AT: attention map = mean_c |A_c|^p
    rkd_distance_weight: float = 25.0  # RKD: weight of the distance term
    rkd_angle_weight: float = 50.0  # RKD: weight of the angle term
    rkd_squared: bool = False  # RKD: squared Euclidean distances
    rkd_eps: float = 1e-12  # RKD: floor of pairwise distances
    vid_init_pred_var: float = 5.0  # VID: initial predicted variance
    vid_eps: float = 1e-5  # VID: variance floor
    kdsvd_k: int = 1  # KDSVD: singular vectors kept of the teacher
    reviewkd_warmup: float = 0.0  # ReviewKD: linear ramp over this fraction of training (build.py: epochs ratio)
    reviewkd_student_preact: bool = False  # ReviewKD: fuse the student's pre-ReLU maps (mdistiller ImageNet: True)
    reviewkd_max_mid_channel: int = 512  # ReviewKD: ABF width = min(this, the student's pooled width)


class FeatureTerm(nn.Module):
    """Unweighted feature loss; subclasses set `label` (how it reads in `describe()`)."""

    label: str = "FEAT"

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        raise NotImplementedError

    def ramp(self, progress: float) -> float:
        """The term's schedule factor at `progress` in [0, 1] (1 = none; ReviewKD warms up)."""
        return 1.0

    if TYPE_CHECKING:  # nn.Module.__call__ is typed Any; this keeps the loss a Tensor downstream

        def __call__(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor: ...


Builder = Callable[[FeatureShapes, FeatureShapes, FeatureOptions], FeatureTerm]


@dataclass(frozen=True)
class FeatureTermSpec:
    """A registered feature method: how to build it, its mdistiller CIFAR-100 loss weight, its paper."""

    build: Builder
    default_weight: float
    paper: str
    taps: str  # which features it reads, for `richkd recipes`


FEATURE_TERMS: Registry[FeatureTermSpec] = Registry("feature method")


def teacher_stages(teacher: TeacherTargets, method: str) -> tuple[Tensor, ...]:
    if teacher.stages is None:
        raise RichKDError(
            f"{method} reads the teacher's stage maps, which only the online teacher gives: drop model.teacher_cache"
        )
    return teacher.stages


def teacher_preacts(teacher: TeacherTargets, method: str) -> tuple[Tensor, ...]:
    if not teacher.preact_stages:
        raise RichKDError(
            f"{method} reads the teacher's pre-ReLU maps, which only the online teacher gives: drop model.teacher_cache"
        )
    return teacher.preact_stages


def student_preacts(student: ModelOutput, method: str) -> tuple[Tensor, ...]:
    if len(student.preact_stages) != len(student.stages):
        raise RichKDError(f"{method} reads the student's pre-ReLU maps, but the student gives none")
    return student.preact_stages


def teacher_pooled(teacher: TeacherTargets, method: str) -> Tensor:
    if teacher.pooled is None:
        raise RichKDError(f"{method} reads the teacher's pooled features, but the teacher gave none")
    return teacher.pooled


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two maps to the other's height (mdistiller's rule for AT, NST and VID)."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t
