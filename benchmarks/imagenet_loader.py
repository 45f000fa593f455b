"""Images/s of the streaming ImageNet loader (richkd.data.stream) on real JPEGs at ImageNet sizes.

CIFAR-10 JPEGs from the shared archive are upscaled (bicubic) to --size and re-encoded at quality 90 into a
temporary ImageNet-style folder and 2 WebDataset shards; then one epoch is timed per (source, transform,
workers): decode + RandomResizedCrop/flip (train) or resize 256 + centre crop (eval) + normalise to float.
workers=0 decodes in this process (one core); for workers>0 the clock starts at the first batch, so worker
start-up is excluded, and per-worker rate = total / workers. Load average and CPU model go in the output.

    python benchmarks/imagenet_loader.py --n 480 --workers 0,2 --out benchmarks/results/imagenet_loader.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from richkd.data.stream import FolderSource, ShardSource, StreamDataset, build_stream_loader, write_shards
from richkd.engine.io import write_json_atomic

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def make_tree(archive: Path, out: Path, n: int, size: tuple[int, int]) -> None:
    """The first n/10 train JPEGs of each class, upscaled to `size`, as out/train/<class>/<name>.JPEG."""
    per_class = max(1, n // 10)
    counts: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != "train":
                continue
            if counts.get(parts[1], 0) >= per_class:
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            img = Image.open(io.BytesIO(fh.read())).convert("RGB").resize(size, Image.Resampling.BICUBIC)
            dest = out / "train" / parts[1] / (Path(parts[2]).stem + ".JPEG")
            dest.parent.mkdir(parents=True, exist_ok=True)
            img.save(dest, format="JPEG", quality=90)
            counts[parts[1]] = counts.get(parts[1], 0) + 1


def time_epoch(dataset: StreamDataset, workers: int, batch_size: int) -> tuple[float, int]:
    """(seconds, images) from the first batch to the end of one epoch (images of the first batch excluded)."""
    loader = build_stream_loader(dataset, batch_size=batch_size, workers=workers)
    start, seen = 0.0, 0
    for i, (images, _, _) in enumerate(loader):
        if i == 0:
            start = time.perf_counter()
            continue
        seen += images.shape[0]
    return time.perf_counter() - start, seen


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--n", type=int, default=480, help="images (a tenth per CIFAR-10 class)")
    parser.add_argument("--size", default="400x350", help="upscaled WIDTHxHEIGHT")
    parser.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("x"))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tree(args.archive, root, args.n, (width, height))
        folder = FolderSource(root / "train")
        write_shards(folder, root / "shards", 2)
        sources: dict[str, FolderSource | ShardSource] = {"folder": folder, "shards": ShardSource(root / "shards")}
        mean_bytes = sum((root / "train" / p.decode()).stat().st_size for p in folder.paths) / len(folder)
        for workers in (int(w) for w in args.workers.split(",")):
            for kind, source in sources.items():
                for train in (True, False):
                    load_before = os.getloadavg()[0]
                    seconds, images = time_epoch(StreamDataset(source, train=train), workers, args.batch_size)
                    rate = images / seconds
                    row = {
                        "source": kind, "transform": "train" if train else "eval", "workers": workers,
                        "images": images, "seconds": round(seconds, 3), "images_per_s": round(rate, 1),
                        "images_per_s_per_worker": round(rate / max(1, workers), 1),
                        "load_avg_1m_before": load_before, "load_avg_1m_after": os.getloadavg()[0],
                    }  # fmt: skip
                    results.append(row)
                    print(json.dumps(row), flush=True)
    record = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "image_size": [width, height],
        "mean_jpeg_bytes": round(mean_bytes), "torch": torch.__version__, "python": sys.version.split()[0],
        "results": results,
    }  # fmt: skip
    if args.out:
        write_json_atomic(args.out, record)
    print(json.dumps({k: v for k, v in record.items() if k != "results"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
