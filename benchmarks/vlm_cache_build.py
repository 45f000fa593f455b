"""Images/s of the surrogate target-cache builder's per-batch path (`_encode_batch`: crop/flip views, resize,
EfficientNet-Lite0, ConSE head, cosines) before and after the issue-12 item-4 changes, side by side in one process.

old   the builder as it was: the published EfficientNet-Lite0 module (BatchNorm, padded copies, ReLU6 out of place)
      on the whole batch of views at once, preprocessing that allocates a tensor per step plus a channels_last copy.
new   what `richkd vlm cache` runs now: SurrogateVLM.fast_model (BN folded, "same" padding inside the conv,
      ReLU6 in place) in chunks of FORWARD_CHUNK_PER_THREAD x threads images, preprocessing written straight
      into channels_last.

Real images: the first `--rows` rows (stratified) of CIFAR-10 train from the JPEG tar; each row is encoded as
plain + flip (2 views), as `richkd vlm cache` does by default. ABBA windows, medians, ratio of paired windows; the
outputs of the two paths are compared on the same batch. fp32 unless --bf16 (slower on CPUs without AVX512-BF16/AMX).

    python benchmarks/vlm_cache_build.py --root /work/shared/data/cifar10-jpeg.tar.gz --rows 256 --threads 2 \
        --windows 4 --out benchmarks/results/cpu_vlm_cache_build.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import environment  # noqa: E402

from richkd.caches.build_target import _encode_batch  # noqa: E402
from richkd.data import load_dataset  # noqa: E402
from richkd.data.subset import limited  # noqa: E402
from richkd.engine.io import write_json_atomic  # noqa: E402
from richkd.teachers import surrogate  # noqa: E402
from richkd.teachers.prompts import DEFAULT_TEMPLATES  # noqa: E402
from richkd.teachers.surrogate import SOFTMAX_TEMPERATURE, SurrogateVLM  # noqa: E402
from richkd.teachers.zero_shot import class_embeddings  # noqa: E402


class LegacySurrogate:
    """The surrogate's image path as the builder ran it before: `model` (default the published, unfolded module)
    on `chunk` images per forward (default all at once), out-of-place preprocessing. The --ablation variants
    swap in the fast model or the chunking alone."""

    def __init__(self, vlm: SurrogateVLM, model: torch.nn.Module | None = None, chunk: int | None = None) -> None:
        self.vlm, self.model, self.chunk = vlm, model if model is not None else vlm.image_model, chunk

    def encode_images(self, images: Tensor) -> Tensor:
        vlm, spec = self.vlm, self.vlm.image_spec
        x = torch.nn.functional.interpolate(images.float(), size=(spec.size, spec.size), mode=spec.interpolation,
                                            align_corners=False, antialias=True).clamp(0.0, 1.0)
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        chunk = self.chunk or x.shape[0]
        logits = torch.cat([self.model(x[i : i + chunk]).float() for i in range(0, x.shape[0], chunk)])
        probs = torch.softmax(logits / SOFTMAX_TEMPERATURE, dim=-1)
        return torch.nn.functional.normalize(probs @ vlm.name_emb, dim=-1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/work/shared/data/cifar10-jpeg.tar.gz", help="CIFAR-10 JPEG tar/folder")
    parser.add_argument("--rows", type=int, default=256, help="rows encoded per window (plain + flip each)")
    parser.add_argument("--batch", type=int, default=256, help="rows per _encode_batch call (the CLI default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=4, help="windows per path, ABBA order")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fast only with AVX512-BF16/AMX)")
    parser.add_argument("--ablation", action="store_true",
                        help="also old model chunked (chunking alone) and fast model unchunked (model rewrite alone)")
    parser.add_argument("--out", default=None, help="JSON result file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment()

    t0 = time.perf_counter()
    ds, _ = limited(load_dataset("imagefolder", args.root, "train"), args.rows)
    load_data_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    vlm = SurrogateVLM.load()
    load_teacher_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    class_emb = class_embeddings(vlm, ds.classes, DEFAULT_TEMPLATES, clean_names=True)
    text_s = time.perf_counter() - t0
    paths: dict[str, Any] = {"old": LegacySurrogate(vlm), "new": vlm}
    if args.ablation:
        chunk = surrogate.FORWARD_CHUNK_PER_THREAD * args.threads
        paths["old_model_chunked"] = LegacySurrogate(vlm, chunk=chunk)
        paths["fast_model_unchunked"] = LegacySurrogate(vlm, model=vlm.fast_model)
    params = torch.tensor([[4, 4, 0], [4, 4, 1]]).expand(len(ds), 2, 3)  # plain, flip (pad 4), as the builder does

    def run(path: str) -> tuple[Tensor, Tensor]:
        coss, embs = [], []
        cos_out = np.empty((len(ds), 2, len(ds.classes)), dtype=np.float16)
        emb_out = np.empty((len(ds), 2, vlm.embed_dim), dtype=np.float16)
        for start in range(0, len(ds), args.batch):
            end = min(start + args.batch, len(ds))
            cos, emb = _encode_batch(paths[path], ds.images[start:end], params[start:end], 4, class_emb, args.bf16)
            cos_out[start:end], emb_out[start:end] = cos.numpy(), emb.numpy()  # the builder's memmap writes
            coss.append(cos)
            embs.append(emb)
        return torch.cat(coss), torch.cat(embs)

    rates: dict[str, list[float]] = {name: [] for name in paths}
    outputs: dict[str, tuple[Tensor, Tensor]] = {}
    with torch.inference_mode():
        for w in range(args.windows):
            for path in list(paths) if w % 2 == 0 else list(paths)[::-1]:
                t0 = time.perf_counter()
                outputs[path] = run(path)
                rates[path].append(len(ds) / (time.perf_counter() - t0))
                print(f"window {w + 1} {path}: {rates[path][-1]:.1f} images/s (x2 views)", file=sys.stderr, flush=True)
    ratios = [n / o for n, o in zip(rates["new"], rates["old"], strict=True)]
    record = {
        **env,
        "what": "surrogate target-cache builder, per-batch path (_encode_batch), plain + flip views, fp32"
                if not args.bf16 else "same, bf16 autocast",
        "rows": len(ds), "batch_rows": args.batch, "windows": args.windows, "bf16": args.bf16,
        "images_per_s": {k: [round(r, 2) for r in v] for k, v in rates.items()},
        "median_images_per_s": {k: round(statistics.median(v), 2) for k, v in rates.items()},
        "ratio_new_over_old_median_of_paired_windows": round(statistics.median(ratios), 3),
        "ratio_of_medians": round(statistics.median(rates["new"]) / statistics.median(rates["old"]), 3),
        "ratio_over_old_median_of_paired_windows": {
            k: round(statistics.median([a / b for a, b in zip(v, rates["old"], strict=True)]), 3)
            for k, v in rates.items()
        },
        "forward_chunk_images": surrogate.FORWARD_CHUNK_PER_THREAD * args.threads,
        "max_abs_diff_cosines": float((outputs["new"][0] - outputs["old"][0]).abs().max()),
        "max_abs_diff_image_emb": float((outputs["new"][1] - outputs["old"][1]).abs().max()),
        "fixed_costs_s": {"load_dataset": round(load_data_s, 2), "load_teacher": round(load_teacher_s, 2),
                          "class_text_embeddings": round(text_s, 2)},
        "load_average_at_end": list(__import__("os").getloadavg()),
    }
    print(f"old {record['median_images_per_s']['old']} images/s, new {record['median_images_per_s']['new']} images/s, "
          f"new/old {record['ratio_new_over_old_median_of_paired_windows']}x (median of paired windows; all: "
          f"{record['ratio_over_old_median_of_paired_windows']}); "
          f"max |diff| cosines {record['max_abs_diff_cosines']:.2e}, embeddings {record['max_abs_diff_image_emb']:.2e}")
    if args.out:
        write_json_atomic(Path(args.out), record)
    return record


if __name__ == "__main__":
    main()
