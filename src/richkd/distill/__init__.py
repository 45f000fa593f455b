"""Distillers: one module per method, each returning weighted named loss terms."""

from richkd.distill.base import DISTILLERS, Distiller, StrongView
from richkd.distill.crd import CRD, ContrastMemory, CRDLoss, Embed, build_crd_loss, crd_nce_loss
from richkd.distill.ctkd import CurriculumTemperature
from richkd.distill.dist import DIST
from richkd.distill.dkd import DKD
from richkd.distill.kd import KD
from richkd.distill.mlkd import MLKD
from richkd.distill.richkd import RichKD
from richkd.distill.vanilla import Vanilla

__all__ = [
    "CRD",
    "DIST",
    "DISTILLERS",
    "DKD",
    "KD",
    "MLKD",
    "CurriculumTemperature",
    "StrongView",
    "CRDLoss",
    "ContrastMemory",
    "Distiller",
    "Embed",
    "RichKD",
    "Vanilla",
    "build_crd_loss",
    "crd_nce_loss",
]
