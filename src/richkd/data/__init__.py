"""Datasets as uint8 tensors, batched augmentation, device-resident batching."""

from richkd.data.arrays import ArrayDataset
from richkd.data.datasets import DATASET_NAMES, FolderOptions, default_cache_dir, load_dataset
from richkd.data.stats import DATASET_STATS

__all__ = ["DATASET_NAMES", "DATASET_STATS", "ArrayDataset", "FolderOptions", "default_cache_dir", "load_dataset"]
