"""The train and evaluation splits of a streamed dataset (`data.name: imagenet`), opened and checked once.

`root/<split>` is either an ImageNet-style class folder (`train/<wnid>/*.JPEG`) or a folder of WebDataset tar
shards (`shard-000000.tar`, ... with `classes.txt`). A `StreamSplit` carries what the rest of a run needs to know
about a split without reading its images: name, split, class names, per-row labels and normalisation, the same
attributes an in-memory `ArrayDataset` offers to the target cache and the CRD memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from richkd.data.stream.sources import CLASSES_FILE, SHARD_SUFFIX, FolderSource, ShardSource
from richkd.data.stream.transforms import IMAGENET_MEAN, IMAGENET_STD
from richkd.errors import RichKDError

__all__ = ["StreamSplit", "open_split", "open_stream_splits"]


@dataclass(frozen=True)
class StreamSplit:
    """One split of a streamed dataset: its source (rows are read on demand) and its bookkeeping."""

    name: str  # dataset name, as a target cache records it ("imagenet")
    split: str  # "train", "val", ...
    source: FolderSource | ShardSource
    classes: tuple[str, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> Tensor:
        """[N] int64 label of every row (8 B a row: 10 MB for ImageNet's 1.28 M; CRD needs them)."""
        return torch.from_numpy(self.source.labels.astype(np.int64))

    @property
    def kind(self) -> str:
        return "shards" if isinstance(self.source, ShardSource) else "folder"


def open_split(
    root: Path, split: str, *, name: str = "imagenet", classes: tuple[str, ...] | None = None
) -> StreamSplit:
    """`root/split` as a folder or a shard set; `classes` (the train split's) fixes the label order of val."""
    folder = root / split
    if not folder.is_dir():
        raise RichKDError(
            f"{name} split {split!r} not found: expected the folder {folder} (<wnid>/*.JPEG or *.tar shards); "
            f"check data.root or data.{'train' if classes is None else 'test'}_split"
        )
    if any(p.name.endswith(SHARD_SUFFIX) for p in folder.iterdir()):
        shards = ShardSource(folder)
        if classes is not None:
            top = int(shards.labels.max()) + 1 if len(shards) else 0
            if top > len(classes):
                raise RichKDError(
                    f"shards in {folder} hold label {top - 1} but the train split has {len(classes)} classes; "
                    "build both splits' shards from folders with the same classes"
                )
            if (folder / CLASSES_FILE).is_file() and shards.classes != classes:
                raise RichKDError(
                    f"{folder / CLASSES_FILE} differs from the train split's class list; build both splits' "
                    "shards from folders with the same classes"
                )
        return StreamSplit(name, split, shards, classes if classes is not None else shards.classes)
    source = FolderSource(folder, classes=classes)
    return StreamSplit(name, split, source, source.classes)


def open_stream_splits(root: str | None, train_split: str, test_split: str) -> tuple[StreamSplit, StreamSplit]:
    """(train, evaluation) splits under `root`; evaluation labels follow the train split's class order."""
    if root is None:
        raise RichKDError("data.name=imagenet needs data.root: the folder holding train/ and val/")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise RichKDError(f"data.root {base} does not exist; it should hold {train_split}/ and {test_split}/")
    train = open_split(base, train_split)
    test = open_split(base, test_split, classes=train.classes)
    return train, test
