"""Corruption robustness: the 19 CIFAR-C corruptions (`corrupt`), loaders for the official CIFAR-10-C/100-C files
and distribution-shift image folders, and the evaluation of several models on them (`evaluate_robustness`)."""

from richkd.robustness.corruptions import CIFAR_C_PARAMS, CORRUPTIONS, SEVERITIES, corrupt, corrupt_with_params
from richkd.robustness.evaluate import evaluate_robustness
from richkd.robustness.official import load_official_c, load_shift_set

__all__ = [
    "CIFAR_C_PARAMS",
    "CORRUPTIONS",
    "SEVERITIES",
    "corrupt",
    "corrupt_with_params",
    "evaluate_robustness",
    "load_official_c",
    "load_shift_set",
]
