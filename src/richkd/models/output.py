"""The one output type every CNN in the zoo returns, so any model can be teacher or student."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class ModelOutput(NamedTuple):
    logits: Tensor  # [B, C]
    pooled: Tensor  # [B, D]: global-average-pooled penultimate features, before fc; D == model.feature_dim
    stages: tuple[Tensor, ...]  # per-stage maps (post-ReLU, as mdistiller feats["feats"])
    # The same maps before their last ReLU (mdistiller's feats["preact_feats"]; OFD and ReviewKD read them), same
    # shapes as `stages`; entry 0 is the stem map itself, as in mdistiller. Empty only for non-zoo test doubles.
    preact_stages: tuple[Tensor, ...] = ()
