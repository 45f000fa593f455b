"""The streaming dataset: rows of a `FolderSource` or `ShardSource` for one rank, decoded and transformed in
DataLoader worker processes, yielded as (image [3, 224, 224] float, label, row id).

Sharding is by row: rank r of w reads rows r, r + w, ... of the split, so the ranks together see every row
exactly once per epoch, for folders and shards alike. Within a rank, DataLoader workers split a folder's rows
round-robin and a shard set shard by shard. Training shuffles per epoch (`set_epoch`), from `seed` only: a
folder's rows by a permutation, shards by their order plus a bounded buffer of encoded samples.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterator

import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from richkd.data.stream.sources import FolderSource, RawSample, ShardSource
from richkd.data.stream.transforms import decode_rgb, eval_view, to_normalized_tensor, train_view
from richkd.engine.proc import die_with_parent
from richkd.errors import RichKDError

Sample = tuple[Tensor, int, int]  # image [3, S, S] float32 normalised, label, row id


class StreamDataset(IterableDataset[Sample]):
    """One rank's share of a split, decoded on the fly; nothing beyond the shuffle buffer is held."""

    def __init__(
        self,
        source: FolderSource | ShardSource,
        *,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        image_size: int = 224,
        resize_size: int = 256,
        shuffle_buffer: int = 256,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise RichKDError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if image_size < 1 or resize_size < image_size:
            raise RichKDError(f"need 1 <= image_size <= resize_size, got {image_size} and {resize_size}")
        self.source = source
        self.train = train
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.image_size = image_size
        self.resize_size = resize_size
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch's iteration (workers get a fresh copy of the dataset per epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, len(self.source), self.world_size))

    def _rng(self, *salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *salt])

    def iter_raw(self) -> Iterator[RawSample]:
        """This rank's (and this worker's) encoded samples, in epoch order."""
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if isinstance(self.source, FolderSource):
            rows = np.arange(self.rank, len(self.source), self.world_size)
            if self.train:
                rows = self._rng().permutation(rows)
            for row in rows[worker::n_workers]:
                yield self.source.read(int(row))
            return
        order = np.arange(len(self.source.shards))
        if self.train:
            order = self._rng().permutation(order)
        mine = (
            s
            for shard in order[worker::n_workers]
            for s in self.source.iter_shard(int(shard))
            if s.row % self.world_size == self.rank
        )
        if self.train:
            yield from _shuffled(mine, self.shuffle_buffer, self._rng(self.rank, worker, 1))
        else:
            yield from mine

    def transform(self, sample: RawSample) -> Sample:
        img = decode_rgb(sample.data, sample.name)
        if self.train:
            view = train_view(img, random.Random(f"{self.seed}:{self.epoch}:{sample.row}"), self.image_size)
        else:
            view = eval_view(img, self.image_size, self.resize_size)
        return to_normalized_tensor(view), sample.label, sample.row

    def __iter__(self) -> Iterator[Sample]:
        for sample in self.iter_raw():
            yield self.transform(sample)


def _shuffled(samples: Iterator[RawSample], size: int, rng: np.random.Generator) -> Iterator[RawSample]:
    """A bounded shuffle buffer (WebDataset's): emit a random held sample for each new one read."""
    buffer: list[RawSample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = int(rng.integers(size))
        buffer[i], sample = sample, buffer[i]
        yield sample
    order = rng.permutation(len(buffer))
    for i in order:
        yield buffer[int(i)]


def _init_worker(parent_pid: int, worker_id: int) -> None:
    die_with_parent(parent_pid)


def build_stream_loader(
    dataset: StreamDataset, *, batch_size: int, workers: int, drop_last: bool = False, pin_memory: bool = False
) -> DataLoader[Sample]:
    """Batches of (images [B, 3, S, S], labels [B], rows [B]); workers die with the process that made them."""
    if batch_size < 1 or workers < 0:
        raise RichKDError(f"need batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_init_worker, os.getpid()) if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,  # a fresh copy per epoch carries set_epoch's epoch into the workers
    )
