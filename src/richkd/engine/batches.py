"""Training batches on the compute device, from either kind of data.

- In memory (CIFAR, image folders): `BatchMaker` turns row ids into a Batch: gather uint8 rows, crop/flip and
  normalise batched (airbench style, no per-sample Python), and choose the target-cache view each sample is served.
- Streamed (`data.name: imagenet`): `StreamBatches` re-cuts the decode workers' output into equal per-rank batches
  with their stable row ids, and `StreamEval` evaluates a streamed split, each rank its share.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from richkd.data.augment import (
    CropFlip,
    StrongAugment,
    apply_crop_flip,
    apply_strong_augment,
    normalize,
    sample_crop_flip,
    sample_strong_augment,
)
from richkd.data.batch import Batch
from richkd.data.loader import DeviceData
from richkd.data.stream import StreamDataset, build_stream_loader
from richkd.data.views import plain_view_id, view_ids
from richkd.engine import dist
from richkd.engine.evaluate import eval_metrics

Chunk = tuple[Tensor, Tensor, Tensor]  # streamed images, labels, row ids
AugLookup = Callable[[Tensor, Tensor], CropFlip]  # (cache rows, views) -> the crop/flip of that cached view


@dataclass
class BatchMaker:
    data: DeviceData
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: bool
    pad: int
    channels_last: bool
    n_views: int = 1  # >1: serve a random cached view per sample and give the student that view's crop/flip
    view_aug: AugLookup | None = None
    row_map: Tensor | None = None  # subset row -> cache row
    exact_views: bool = False  # views = exact view id (richkd.data.views) of each drawn crop/flip: served by a
    # teacher cache or a `vlm cache --views all` cache; the random draws are the same as without it
    strong_view: bool = False  # also build MLKD's strong view (batch.strong), drawn after the weak view's draws

    def __post_init__(self) -> None:
        if self.exact_views and self.n_views > 1:
            raise ValueError("exact_views serves the drawn crop/flip; it cannot be combined with random cached views")

    def __call__(
        self, rows: Tensor, generator: torch.Generator | None, *, rank: int = 0, world_size: int = 1
    ) -> Batch:
        """The batch of `rows`: this rank's slice of a global batch of `world_size` equal slices.

        Per-sample random draws are made for the whole global batch and sliced to this rank's rows, so
        every rank's generator stays in step with a 1-process run's and each row gets the same crop/flip.
        """
        device = self.data.images.device
        n = rows.numel()
        mine = slice(rank * n, (rank + 1) * n)
        view_aug = self.view_aug if self.augment and self.n_views > 1 else None
        host = [rows.cpu().long()]  # row ids, then the draws: one host->device copy per batch
        if view_aug is not None:
            host.append(torch.randint(0, self.n_views, (n * world_size,), generator=generator)[mine])
        elif self.augment:
            drawn = sample_crop_flip(n * world_size, pad=self.pad, generator=generator, device="cpu")
            host += [drawn.dx[mine], drawn.dy[mine], drawn.flip[mine].long()]
        moved = _to_device(torch.stack(host), device)  # [1 + draws, B] int64
        rows = moved[0]
        images, labels = self.data.gather(rows)  # uint8 [B, 3, H, W], int64 [B]
        raw = images
        views = torch.zeros_like(rows)
        if self.exact_views:
            views = torch.full_like(rows, plain_view_id(self.pad))
        if self.augment:
            if view_aug is not None:
                views = moved[1]
                cache_rows = rows if self.row_map is None else self.row_map[rows]
                params = view_aug(cache_rows, views)
            else:
                params = CropFlip(moved[1], moved[2], moved[3].bool())
                if self.exact_views:
                    views = view_ids(params, self.pad)
            images = apply_crop_flip(images, params, pad=self.pad)
        x = normalize(images, self.mean, self.std, channels_last=self.channels_last)
        strong = self._strong(raw, rows, labels, world_size, mine, generator) if self.strong_view else None
        return Batch(images=x, labels=labels, indices=rows, views=views, strong=strong)

    def _strong(
        self, raw: Tensor, rows: Tensor, labels: Tensor, world_size: int, mine: slice,
        generator: torch.Generator | None,
    ) -> Batch:
        """MLKD's strong view of the same rows: its own crop/flip, RandAugment(2) and Cutout (whatever data.augment
        says), drawn for the global batch like the weak view's. A vision-language cache holds no entry for such an
        image, so the view id served with it is the plain view's: fusion reads the same row's un-augmented cosines."""
        drawn = sample_strong_augment(rows.numel() * world_size, pad=self.pad, generator=generator)
        params = StrongAugment(
            CropFlip(drawn.crop.dx[mine], drawn.crop.dy[mine], drawn.crop.flip[mine]),
            drawn.ops[mine], drawn.values[mine], drawn.cutout[mine],
        )
        strong = apply_strong_augment(raw, params, pad=self.pad)
        x = normalize(strong, self.mean, self.std, channels_last=self.channels_last)
        plain = plain_view_id(self.pad) if self.exact_views else 0
        return Batch(images=x, labels=labels, indices=rows, views=torch.full_like(rows, plain))


def _to_device(host: Tensor, device: torch.device) -> Tensor:
    """Copy a small host tensor to `device` without stalling the host on CUDA: from pinned memory with
    non_blocking (a plain copy from pageable memory waits for the GPU to drain its queue, every step)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


@dataclass
class StreamBatches:
    """One rank's training batches of a streamed split: `batch_size` rows each (this rank's slice of the global
    batch), images already decoded, cropped, flipped and normalised by the workers (data/stream).

    Every rank must run the same number of equal-sized steps (DDP, and the CRD memory's all-gather and global
    negative draw). Ranks hold len(range(rank, N, world)) rows, and each DataLoader worker ends on a partial batch,
    so the workers' output is re-cut into exact batches and each rank stops after `steps()`, the count the
    smallest rank can fill. With one process every row is used and the last batch may be short; with several, at
    most `batch_size` + (N mod world) rows of a rank wait for the next epoch (a different draw then).
    """

    dataset: StreamDataset  # this rank's share (rank and world size set), train transforms
    batch_size: int  # rows per rank per step
    workers: int  # decode processes of this rank
    device: torch.device
    channels_last: bool = False
    world_size: int = 1

    def __len__(self) -> int:
        return len(self.dataset.source)  # rows of the whole split (CRD's N)

    def steps(self) -> int:
        if self.world_size == 1:
            return -(-len(self.dataset) // self.batch_size)
        return (len(self.dataset.source) // self.world_size) // self.batch_size

    def epoch(self, epoch: int, max_steps: int | None = None) -> Generator[Batch, None, None]:
        """The batches of `epoch` (its shuffle and crops are functions of seed, epoch and row only).

        The decode workers are shut down when the epoch ends, stops after `steps()`, or is closed early (an error
        in the consumer: close the generator), not whenever the garbage collector reaches the loader.
        """
        self.dataset.set_epoch(epoch)
        steps = self.steps() if max_steps is None else min(self.steps(), max_steps)
        loader = build_stream_loader(
            self.dataset, batch_size=self.batch_size, workers=self.workers, pin_memory=self.device.type == "cuda"
        )
        held: list[Chunk] = []
        n_held = done = 0
        with closing_loader(loader) as chunks:
            for images, labels, rows in chunks:
                if done == steps:
                    break
                held.append((images, labels, rows))
                n_held += len(rows)
                while n_held >= self.batch_size and done < steps:
                    cut, held = _take(held, self.batch_size)
                    n_held -= self.batch_size
                    done += 1
                    yield self._batch(*cut)
        if done < steps and n_held and self.world_size == 1:
            yield self._batch(*_take(held, n_held)[0])

    def _batch(self, images: Tensor, labels: Tensor, rows: Tensor) -> Batch:
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rows = rows.to(self.device, torch.int64, non_blocking=True)
        # the plain view: a RandomResizedCrop is not one of finitely many cached views (docs/imagenet.md)
        return Batch(x, labels.to(self.device, torch.int64, non_blocking=True), rows, torch.zeros_like(rows))


def _take(held: list[Chunk], n: int) -> tuple[Chunk, list[Chunk]]:
    """The first `n` rows of the held chunks, and the rest. The usual case, a loader batch of exactly the rank's
    size, is passed through as it is: no copy of [B, 3, 224, 224] floats, and pinned memory stays pinned."""
    images, labels, rows = held[0]
    if rows.shape[0] >= n:
        rest: list[Chunk] = [(images[n:], labels[n:], rows[n:])] if rows.shape[0] > n else []
        return (images[:n], labels[:n], rows[:n]), [*rest, *held[1:]]
    images, labels, rows = (torch.cat(parts) for parts in zip(*held, strict=True))
    rest = [(images[n:], labels[n:], rows[n:])] if rows.shape[0] > n else []
    return (images[:n], labels[:n], rows[:n]), rest


@dataclass
class StreamEval:
    """Evaluation on a streamed split (resize + centre crop): each rank scores its rows, the logits are gathered
    so every rank computes the same metrics over the whole split."""

    dataset: StreamDataset  # this rank's share, eval transforms
    batch_size: int
    workers: int
    device: torch.device
    input_size: tuple[int, int] = (224, 224)

    def __len__(self) -> int:
        return len(self.dataset.source)

    def predict(self, model: nn.Module, *, bf16: bool = False, channels_last: bool = False) -> tuple[Tensor, Tensor]:
        """(logits float32 [N, C], labels [N]) for every row of the split, in row order, on the CPU."""
        was_training = model.training
        model.eval()
        outs, labels, rows = [], [], []
        autocast: contextlib.AbstractContextManager[Any] = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )
        loader = build_stream_loader(self.dataset, batch_size=self.batch_size, workers=self.workers)
        with torch.no_grad(), autocast, closing_loader(loader) as chunks:
            for images, y, r in chunks:
                x = images.to(self.device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                outs.append(model(x).logits.float().cpu())
                labels.append(y.long())
                rows.append(r.long())
        model.train(was_training)
        logits, label, row = torch.cat(outs), torch.cat(labels), torch.cat(rows)
        if dist.is_distributed():
            logits, label, row = _gather_rows(logits, label, row, len(self))
        order = torch.argsort(row)
        return logits[order], label[order]

    def evaluate(self, model: nn.Module, *, bf16: bool = False, channels_last: bool = False) -> dict[str, float]:
        logits, labels = self.predict(model, bf16=bf16, channels_last=channels_last)
        return eval_metrics(logits, labels)


@contextlib.contextmanager
def closing_loader(loader: DataLoader[Any]) -> Generator[Iterator[Any], None, None]:
    """Iterate `loader` and shut its worker processes down on leaving the block, however it is left (its
    iterator joins them when freed; here it is freed at once, not when an exception's traceback lets go)."""
    chunks = iter(loader)
    try:
        yield chunks
    finally:
        shutdown = getattr(chunks, "_shutdown_workers", None)  # torch's multi-process iterator; idempotent
        if shutdown is not None:
            shutdown()
        del chunks


def _gather_rows(logits: Tensor, labels: Tensor, rows: Tensor, n_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """All ranks' rows: padded to the largest share (all_gather needs equal shapes), padding dropped."""
    width = math.ceil(n_rows / dist.world_size())
    pad = width - rows.shape[0]
    packed = torch.cat([logits, labels[:, None].double(), rows[:, None].double()], dim=1).double()
    packed = torch.cat([packed, torch.full((pad, packed.shape[1]), -1.0, dtype=torch.float64)])
    every = dist.all_gather_cat(packed)
    every = every[every[:, -1] >= 0]
    return every[:, :-2].float(), every[:, -2].long(), every[:, -1].long()
