"""Classify image files with a loaded model: decode in batches, top-k softmax probabilities, table or JSONL.

An image that cannot be decoded is reported through `on_error` and skipped; the rest are still classified.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from richkd.data.augment import normalize
from richkd.data.decode import default_workers
from richkd.errors import RichKDError
from richkd.export.images import InputSpec, decode_image
from richkd.export.load import LoadedModel


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, most probable first."""

    path: Path
    indices: tuple[int, ...]
    probs: tuple[float, ...]


def classify_images(
    model: LoadedModel,
    paths: Sequence[Path],
    *,
    top_k: int,
    batch_size: int,
    progress: bool,
    on_error: Callable[[Path, str], None],
) -> list[Prediction]:
    """Predictions for every decodable image of `paths`, in order."""
    if top_k < 1:
        raise RichKDError(f"--top-k must be >= 1 (got {top_k})")
    if batch_size < 1:
        raise RichKDError(f"--batch-size must be >= 1 (got {batch_size})")
    k = min(top_k, len(model.classes))
    out: list[Prediction] = []
    bar = tqdm(total=len(paths), unit="img", disable=not progress, leave=False)
    try:
        for n_read, batch_paths, images in _decoded_batches(paths, model.spec, batch_size, on_error):
            if images is not None:
                x = normalize(torch.from_numpy(images), model.spec.mean, model.spec.std)
                probs = torch.softmax(model.logits(x).double(), dim=1)  # [B, C]
                top_p, top_i = probs.topk(k, dim=1)
                out.extend(
                    Prediction(p, tuple(i.tolist()), tuple(q.tolist()))
                    for p, i, q in zip(batch_paths, top_i, top_p, strict=True)
                )
            bar.update(n_read)
    finally:
        bar.close()
    return out


def _decoded_batches(
    paths: Sequence[Path], spec: InputSpec, batch_size: int, on_error: Callable[[Path, str], None]
) -> Iterator[tuple[int, list[Path], np.ndarray | None]]:
    """(files read, paths decoded, their uint8 [B, 3, H, W]) per batch. Pillow releases the GIL while it
    decodes, so a few threads decode in parallel."""
    with cf.ThreadPoolExecutor(max_workers=min(4, default_workers())) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            good: list[Path] = []
            arrays: list[np.ndarray] = []
            for path, result in zip(chunk, pool.map(lambda p: decode_image(p, spec), chunk), strict=True):
                if isinstance(result, str):
                    on_error(path, result)
                else:
                    good.append(path)
                    arrays.append(result)
            yield len(chunk), good, (np.stack(arrays) if arrays else None)


def format_table(predictions: Sequence[Prediction], classes: Sequence[str]) -> str:
    """One aligned line per image: the path, then `class probability` pairs."""
    if not predictions:
        return ""
    path_w = max(5, *(len(str(p.path)) for p in predictions))
    class_w = max(len(c) for c in classes)
    k = len(predictions[0].indices)
    header = f"{'image':<{path_w}}  " + "  ".join(f"{f'top-{j + 1}':<{class_w}} {'prob':>5}" for j in range(k))
    lines = [header.rstrip()]
    for p in predictions:
        cells = "  ".join(f"{classes[i]:<{class_w}} {q:>5.3f}" for i, q in zip(p.indices, p.probs, strict=True))
        lines.append(f"{str(p.path):<{path_w}}  {cells}".rstrip())
    return "\n".join(lines) + "\n"


def format_jsonl(predictions: Sequence[Prediction], classes: Sequence[str]) -> str:
    """One JSON object per image: {"image", "top": [{"class", "index", "prob"}, ...]}."""
    return "".join(
        json.dumps(
            {
                "image": str(p.path),
                "top": [
                    {"class": classes[i], "index": i, "prob": round(q, 6)}
                    for i, q in zip(p.indices, p.probs, strict=True)
                ],
            }
        )
        + "\n"
        for p in predictions
    )
