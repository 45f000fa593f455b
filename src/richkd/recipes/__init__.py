"""Built-in config layers: dataset recipes, method presets and the pair table, and the resolver that composes them.

A run's config is composed, never copied: `richkd train --dataset cifar100 --pair resnet32x4-resnet8x4 --method dkd`
stacks the layers `dataset:cifar100`, `method:dkd` and `pair:resnet32x4-resnet8x4`; a YAML file names the same
layers in its `base:` list. Each recipe block lives in one file here (method weights in richkd/config.py's
defaults, per-pair details in `pairs.py`), and the run directory gets the fully resolved `config.yaml`.
"""

from richkd.recipes.compose import compose, dataset_method_layers, dataset_names, method_names
from richkd.recipes.pairs import PAIRS, Pair, get_pair

__all__ = ["PAIRS", "Pair", "compose", "dataset_method_layers", "dataset_names", "get_pair", "method_names"]
