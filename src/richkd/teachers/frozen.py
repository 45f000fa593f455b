"""Teacher-side target sources: a frozen CNN run on the student's batch, optionally fused with cached
vision-language targets. Logit fusion happens here, so KD/DKD consume fused logits unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from richkd.data.batch import Batch
from richkd.fusion import fuse_logits
from richkd.targets import TeacherTargets

if TYPE_CHECKING:
    from richkd.caches.target import TargetCache


class TargetSource(Protocol):
    def __call__(self, batch: Batch) -> TeacherTargets: ...


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class OnlineTeacher:
    """A frozen CNN in eval mode on the same augmented batch the student sees (no grad, no BN updates)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = freeze(model)

    def __call__(self, batch: Batch) -> TeacherTargets:
        with torch.no_grad():
            out = self.model(batch.images)
        stages = tuple(f.float() for f in out.stages)
        preacts = tuple(f.float() for f in out.preact_stages)
        return TeacherTargets(
            logits=out.logits.float(), pooled=out.pooled.float(), clip=None, stages=stages, preact_stages=preacts
        )


class FusedTargets:
    """z_F = alpha * z_T + (1 - alpha) * s * z_C with z_C looked up from a target cache by (row, view).

    `teacher` is either source of z_T: an OnlineTeacher or a teacher cache (CachedTeacher). With exact view ids in
    batch.views (a teacher cache in use), `vlm_view` says which cached view plain serving reads.
    With `use_vlm=False` it is the control the paper must be read against: alpha * z_T alone (the teacher
    at temperature T / alpha), no vision-language term and no cache read.
    """

    def __init__(
        self,
        teacher: TargetSource,
        cache: TargetCache | None,
        *,
        logit_alpha: float,
        vlm_logit_scale: float,
        use_vlm: bool,
        row_map: Tensor | None = None,
        vlm_view: int | None = None,
    ) -> None:
        if use_vlm and cache is None:
            raise ValueError("use_vlm=True needs a target cache")
        self.teacher = teacher
        self.cache = cache
        self.logit_alpha = logit_alpha
        self.vlm_logit_scale = vlm_logit_scale
        self.use_vlm = use_vlm
        self.row_map = row_map  # subset row -> cache row, when training on a subset of the cached split
        self.vlm_view = vlm_view  # serve this cached view to every sample (None: batch.views)

    def cache_rows(self, indices: Tensor) -> Tensor:
        return indices if self.row_map is None else self.row_map[indices]

    def __call__(self, batch: Batch) -> TeacherTargets:
        t = self.teacher(batch)
        if not self.use_vlm or self.cache is None:
            return t._replace(logits=self.logit_alpha * t.logits, clip=None)
        views = batch.views if self.vlm_view is None else torch.full_like(batch.views, self.vlm_view)
        clip = self.cache.lookup(self.cache_rows(batch.indices), views)
        fused = fuse_logits(t.logits, clip.cosines, self.logit_alpha, self.vlm_logit_scale)  # [B, C]
        return t._replace(logits=fused, clip=clip)  # stage maps pass through unfused
