"""Peak resident memory of loading and serving a vision-language target cache: the old load path against today's,
side by side in one run, each in a fresh subprocess (ru_maxrss counts tensors, which tracemalloc does not see).

old       what TargetCache.to_device did before issue 27 (reimplemented here, nowhere else): the whole cache
          copied and upcast (fp16 embeddings -> fp32 and normalised, int16 aug params -> int64).
resident  TargetCache.to_device today: the arrays as stored (fp32 cosines, fp16 embeddings, int16 aug params);
          each batch is converted in `lookup`.
mmap      no to_device (what `richkd train` does when `TargetCache.fits` says no): batches are read from the
          memory-mapped files.

Each child serves the same seeded batches and hashes every batch's cosines, embeddings and aug params; the run
fails unless the three paths hash the same (bit-identical batches). The cache is synthetic, in the real format:
CIFAR-10 `--views all` (162 views) with a 512-d embedding is 50,000 rows (8.6 GB on disk); `--rows` scales it,
and the record gives the full-size figure by linear scaling of the bytes above the interpreter's baseline. Each
child's peak (ru_maxrss) is at least the parent's (Linux copies it on fork), so the parent stays small and says
how small (parent_peak_rss_mib).

    python benchmarks/target_cache_memory.py --rows 5000 --out benchmarks/results/cpu_target_cache_memory.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import environment, write_json  # noqa: E402

from richkd.caches.target import CacheMeta, TargetCache  # noqa: E402
from richkd.data.views import exact_view_names  # noqa: E402

CIFAR10_TRAIN_ROWS = 50_000
MODES = ("old", "resident", "mmap")


def write_synthetic_cache(path: Path, rows: int, classes: int, embed: int, pad: int, chunk: int = 500) -> None:
    """A random cache in the real on-disk format, written in chunks (never whole in memory)."""
    views = len(exact_view_names(pad))
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cos = np.lib.format.open_memmap(path / "cosines.npy", "w+", np.float32, (rows, views, classes))
    emb = np.lib.format.open_memmap(path / "image_emb.npy", "w+", np.float16, (rows, views, embed))
    aug = np.lib.format.open_memmap(path / "aug_params.npy", "w+", np.int16, (rows, views, 3))
    for start in range(0, rows, chunk):
        end = min(start + chunk, rows)
        e = rng.standard_normal((end - start, views, embed), dtype=np.float32)
        e /= np.linalg.norm(e, axis=-1, keepdims=True)
        emb[start:end] = e.astype(np.float16)
        cos[start:end] = rng.uniform(-1, 1, (end - start, views, classes)).astype(np.float32)
        a = rng.integers(0, 2 * pad + 1, (end - start, views, 3), dtype=np.int16)
        a[..., 2] %= 2  # flip is 0 or 1
        aug[start:end] = a
    for arr in (cos, emb, aug):
        arr.flush()
    del cos, emb, aug
    class_emb = rng.standard_normal((classes, embed), dtype=np.float32)
    np.save(path / "class_emb.npy", class_emb / np.linalg.norm(class_emb, axis=-1, keepdims=True))
    meta = CacheMeta(
        dataset="synthetic", split="train", n_rows=rows, class_names=tuple(f"c{i}" for i in range(classes)),
        n_views=views, view_names=exact_view_names(pad), model_id="random-bench", model_kind="random",
        model_label="random (benchmark) — not CLIP", weights_sha256="0" * 64, templates=("{}",),
        templates_sha256="0" * 64, clean_names=True, embed_dim=embed, image_size=32, pad=pad,
    )
    (path / "meta.json").write_text(meta.to_json())


class OldLoad:
    """TargetCache.to_device + lookup + aug_params as they were before issue 27 (the reference of this benchmark)."""

    def __init__(self, path: Path) -> None:
        self.cosines = torch.from_numpy(np.array(np.load(path / "cosines.npy", mmap_mode="r")))
        emb = torch.from_numpy(np.array(np.load(path / "image_emb.npy", mmap_mode="r"))).float()
        self.image_emb = F.normalize(emb, dim=-1)
        self.aug = torch.from_numpy(np.array(np.load(path / "aug_params.npy", mmap_mode="r"))).long()

    def serve(self, idx: torch.Tensor, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.cosines[idx, views], self.image_emb[idx, views], self.aug[idx, views]


def _current_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def _warm_up() -> None:
    """Touch what serving touches (lazy imports, kernels, thread pools) so the baseline holds it already."""
    import richkd.data.augment  # noqa: F401  (aug_params imports it on first use)

    x = torch.randn(64, 3, 512).half()
    idx = torch.arange(8)
    hashlib.sha256(F.normalize(x[idx, idx % 3].float(), dim=-1).numpy().tobytes())


def child(mode: str, path: Path, batches: int, batch_size: int) -> dict[str, Any]:
    """Load with `mode`, serve `batches` seeded batches; RSS before loading (VmRSS: the interpreter, torch and
    richkd imported) and the process's peak RSS (ru_maxrss) after serving."""
    torch.set_num_threads(1)  # serving is a gather: one thread, so a busy machine's thread pool does not time it
    _warm_up()
    baseline_kib = _current_rss_kib()
    t0 = time.perf_counter()
    if mode == "old":
        old = OldLoad(path)
        n, v = old.cosines.shape[:2]
        serve = old.serve
    else:
        cache = TargetCache.open(path)
        if mode == "resident":
            cache.to_device("cpu")
        n, v = cache.meta.n_rows, cache.meta.n_views

        def serve(idx: torch.Tensor, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            t, p = cache.lookup(idx, views), cache.aug_params(idx, views)
            return t.cosines, t.image_emb, torch.stack([p.dx.long(), p.dy.long(), p.flip.long()], -1)

    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    for _ in range(batches):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        views = torch.randint(0, v, (batch_size,), generator=gen)
        for t in serve(idx, views):
            digest.update(t.contiguous().numpy().tobytes())
    return {
        "mode": mode,
        "baseline_rss_mib": baseline_kib / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_s": round(load_s, 3),
        "serve_ms_per_batch": round(1000 * (time.perf_counter() - t0) / batches, 3),
        "batches_sha256": digest.hexdigest(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=CIFAR10_TRAIN_ROWS)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--embed", type=int, default=512)
    ap.add_argument("--pad", type=int, default=4)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--tmp", default=None, help="folder for the synthetic cache (default: the system's temp dir)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        write_synthetic_cache(Path(args.cache), args.rows, args.classes, args.embed, args.pad)
        return
    if args.child is not None:
        print(json.dumps(child(args.child, Path(args.cache), args.batches, args.batch_size)))
        return
    record: dict[str, Any] = {"benchmark": "target_cache_memory", **environment()}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "cache"
        # written by a child too: Linux copies a parent's peak RSS into the children it forks (ru_maxrss survives
        # fork and exec), so the parent must never hold the cache
        subprocess.run([sys.executable, __file__, "--make", "--cache", str(path), "--rows", str(args.rows),
                        "--classes", str(args.classes), "--embed", str(args.embed), "--pad", str(args.pad)],
                       check=True)
        disk = sum(f.stat().st_size for f in path.iterdir())
        parent_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        runs = {}
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--cache", str(path), "--batches", str(args.batches),
                 "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True,
            )
            runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    hashes = {r["batches_sha256"] for r in runs.values()}
    if len(hashes) != 1:
        raise SystemExit(f"the load paths served different batches: {runs}")
    scale = CIFAR10_TRAIN_ROWS / args.rows
    for mode, r in runs.items():
        r["above_baseline_mib"] = round(r["peak_rss_mib"] - r["baseline_rss_mib"], 1)
        # old and resident hold the whole cache, so they scale with its rows; mmap holds the pages the served
        # batches touched (file-backed, reclaimable), which grows with the batches served, not the cache
        r["above_baseline_gib_at_cifar10_size"] = (
            None if mode == "mmap" else round(r["above_baseline_mib"] * scale / 1024, 2)
        )
    record.update(
        rows=args.rows, views=len(exact_view_names(args.pad)), classes=args.classes, embed_dim=args.embed,
        cache_mib_on_disk=round(disk / 2**20, 1), cache_gib_on_disk_at_cifar10_size=round(disk * scale / 2**30, 2),
        batches=args.batches, batch_size=args.batch_size, bit_identical_batches=True,
        parent_peak_rss_mib=round(parent_peak_mib, 1), runs=runs,
        old_over_resident=round(runs["old"]["above_baseline_mib"] / max(runs["resident"]["above_baseline_mib"], 1), 2),
    )
    write_json(args.out, record)


if __name__ == "__main__":
    main()
