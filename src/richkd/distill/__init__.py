"""Distillers: one module per method, each returning weighted named loss terms."""

from richkd.distill.base import DISTILLERS, Distiller
from richkd.distill.crd import CRD, ContrastMemory, CRDLoss, Embed, build_crd_loss, crd_nce_loss
from richkd.distill.dkd import DKD
from richkd.distill.kd import KD
from richkd.distill.richkd import RichKD
from richkd.distill.vanilla import Vanilla

__all__ = [
    "CRD",
    "DISTILLERS",
    "DKD",
    "KD",
    "CRDLoss",
    "ContrastMemory",
    "Distiller",
    "Embed",
    "RichKD",
    "Vanilla",
    "build_crd_loss",
    "crd_nce_loss",
]
