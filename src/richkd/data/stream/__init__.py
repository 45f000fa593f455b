"""Streaming image data for sets too large to decode into memory (ImageNet): an ImageNet-style folder or
WebDataset-style tar shards, read with stable row ids, decoded and augmented in DataLoader worker processes,
sharded by row across ranks. PIL + torch only; the core never imports torchvision.

    source = FolderSource("imagenet/train")          # or ShardSource("imagenet-shards/train")
    data = StreamDataset(source, train=True, rank=rank, world_size=world, seed=0)
    for images, labels, rows in build_stream_loader(data, batch_size=256, workers=8): ...
"""

from richkd.data.stream.dataset import Sample, StreamDataset, build_stream_loader
from richkd.data.stream.sources import FolderSource, RawSample, ShardSource, write_shards
from richkd.data.stream.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FolderSource",
    "RawSample",
    "Sample",
    "ShardSource",
    "StreamDataset",
    "build_stream_loader",
    "write_shards",
]
