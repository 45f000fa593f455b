"""Feature distillers (mdistiller's FitNet, AT, NST, PKT, SP, RKD, VID, KDSVD, OFD, ReviewKD): one module per
method, each an unweighted `FeatureTerm` sized from shape tables, registered in `FEATURE_TERMS`, and added to any
logit distiller with `WithFeature` (importing this package registers them all)."""

from richkd.distill.features import (  # noqa: F401  (registration)
    at,
    fitnet,
    kdsvd,
    nst,
    ofd,
    pkt,
    reviewkd,
    rkd,
    sp,
    vid,
)
from richkd.distill.features.base import FEATURE_TERMS, FeatureOptions, FeatureTerm, FeatureTermSpec
from richkd.distill.features.combined import WithFeature
from richkd.models.base import FeatureShapes

__all__ = ["FEATURE_TERMS", "FeatureOptions", "FeatureTerm", "FeatureTermSpec", "WithFeature", "build_feature_term"]


def build_feature_term(
    method: str, student: FeatureShapes, teacher: FeatureShapes, options: FeatureOptions
) -> FeatureTerm:
    """The registered method's term, its connectors sized from the two shape tables."""
    return FEATURE_TERMS.get(method).build(student, teacher, options)
