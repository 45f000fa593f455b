"""Build a target cache: every row x view through the vision-language teacher once (METHOD.md §6).

Constant memory (one batch in flight; results go straight into memory-mapped .npy files) and resumable:
`progress.json` records the recipe and the rows done after each flushed batch; rerunning the same command
continues from there. `meta.json` is written last, so `TargetCache.open` refuses an unfinished build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from richkd.caches import chunked
from richkd.caches.target import ARRAY_FILES, CacheMeta, rows_sha256
from richkd.engine.io import save_npy_atomic
from richkd.errors import RichKDError
from richkd.teachers.prompts import check_templates, templates_sha256
from richkd.teachers.vlm import VisionLanguageTeacher
from richkd.teachers.zero_shot import class_embeddings

if TYPE_CHECKING:
    from richkd.data.arrays import ArrayDataset
    from richkd.data.subset import SubsetRows

log = logging.getLogger(__name__)

PARAM_BLOCK = 65536  # aug params are drawn per block of rows, seeded by (seed, block): batch-size independent


def view_names(n_aug_views: int, include_flip: bool) -> tuple[str, ...]:
    """View 0 is the plain image, 1 its mirror (if included), then the random crop/flip views."""
    return ("plain",) + (("flip",) if include_flip else ()) + tuple(f"aug{k}" for k in range(n_aug_views))


def _exact_params(pad: int) -> np.ndarray[Any, Any]:
    """[V, 3] int16 (dx, dy, flip) of every view of the exact family (richkd.data.views order)."""
    from richkd.data.views import exact_view_params

    p = exact_view_params(pad)
    return torch.stack([p.dx, p.dy, p.flip.long()], dim=-1).numpy().astype(np.int16)


def _block_generator(seed: int, block: int) -> torch.Generator:
    digest = hashlib.sha256(f"richkd-aug|{seed}|{block}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _write_aug_params(arr: np.ndarray[Any, Any], *, n_aug: int, include_flip: bool, pad: int, seed: int) -> None:
    """Fill aug_params [N, V, 3] int16 with (dx, dy, flip): plain, flip, then seeded random views."""
    arr[:, 0] = (pad, pad, 0)
    if include_flip:
        arr[:, 1] = (pad, pad, 1)
    if n_aug == 0:
        return
    from richkd.data.augment import sample_crop_flip

    first = 2 if include_flip else 1
    n = arr.shape[0]
    for block, start in enumerate(range(0, n, PARAM_BLOCK)):
        rows = min(PARAM_BLOCK, n - start)
        p = sample_crop_flip(rows * n_aug, pad=pad, generator=_block_generator(seed, block), device="cpu")
        stacked = torch.stack([p.dx.long(), p.dy.long(), p.flip.long()], dim=-1)  # [rows * n_aug, 3]
        arr[start : start + rows, first:] = stacked.view(rows, n_aug, 3).numpy().astype(np.int16)


def _meta_key(meta: CacheMeta) -> dict[str, Any]:
    """The fields that define a cache's content (not when or by which version it was made)."""
    return chunked.content_key(dataclasses.asdict(meta))


def _array_spec(meta: CacheMeta) -> chunked.ArraySpec:
    n, v, c, e = meta.n_rows, meta.n_views, meta.n_classes, meta.embed_dim
    shapes = {"cosines.npy": (n, v, c), "image_emb.npy": (n, v, e), "aug_params.npy": (n, v, 3)}
    return {name: (ARRAY_FILES[name][0], shape) for name, shape in shapes.items()}


def _encode_batch(
    vlm: VisionLanguageTeacher, images_u8: Tensor, params: Tensor, pad: int, class_emb: Tensor, bf16: bool
) -> tuple[Tensor, Tensor]:
    """uint8 [B, 3, H, W] x params [B, V, 3] -> cosines [B, V, C], image_emb [B, V, E] (float32, CPU)."""
    from richkd.data.augment import CropFlip, apply_crop_flip

    b, v = params.shape[:2]
    flat = params.reshape(b * v, 3).to(images_u8.device)
    views = images_u8.repeat_interleave(v, dim=0)  # [B*V, 3, H, W], row-major over (row, view)
    views = apply_crop_flip(views, CropFlip(dx=flat[:, 0], dy=flat[:, 1], flip=flat[:, 2].bool()), pad=pad)
    x = views.float() / 255.0
    device_type = images_u8.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16 and device_type in ("cpu", "cuda")):
        emb = vlm.encode_images(x)
    emb = torch.nn.functional.normalize(emb.float(), dim=-1)  # [B*V, E]
    cos = emb @ class_emb.t()  # [B*V, C]
    return cos.view(b, v, -1).cpu(), emb.view(b, v, -1).cpu()


def build_target_cache(
    vlm: VisionLanguageTeacher,
    dataset: ArrayDataset,
    out: str | Path,
    *,
    templates: Sequence[str],
    clean_names: bool = True,
    n_aug_views: int = 0,
    include_flip: bool = True,
    batch_size: int = 256,
    seed: int = 0,
    bf16: bool = True,
    device: torch.device | str = "cpu",
    pad: int = 4,
    progress: bool = True,
    checkpoint_seconds: float = 30.0,
    subset: SubsetRows | None = None,
    exact_views: bool = False,
) -> Path:
    """Compute cosines and image embeddings of every row of `dataset` for each view into `out`; return `out`.

    `batch_size` counts dataset rows (each row is encoded once per view), or images with `exact_views`. Every
    `checkpoint_seconds` (0: every batch) the memory maps are flushed and progress.json advanced; an interrupted
    build resumes from there.
    `subset` says which rows of the split `dataset` holds (`richkd.data.subset.limited`); it is recorded so a run
    on the same stratified subset can use the cache. `exact_views` caches every crop/flip of the family instead
    (2 (2 pad + 1)^2 views in richkd.data.views order; `n_aug_views`, `include_flip` and `seed` are then unused),
    so `vlm.view_mode=matched` serves exactly the view the student drew.
    """
    import richkd

    out, device = Path(out), torch.device(device)
    templates = check_templates(templates)
    if n_aug_views < 0 or batch_size < 1:
        raise RichKDError("--views must be >= 0 and --batch-size >= 1")
    if exact_views:
        from richkd.data.views import exact_view_names

        names, n_aug_views, include_flip, seed = exact_view_names(pad), 0, False, 0
    else:
        names = view_names(n_aug_views, include_flip)
    class_emb = class_embeddings(vlm, dataset.classes, templates, clean_names=clean_names).to(device)  # [C, E]
    expected = CacheMeta(
        dataset=dataset.name, split=dataset.split, n_rows=len(dataset), class_names=tuple(dataset.classes),
        n_views=len(names), view_names=names, model_id=vlm.model_id, model_kind=vlm.kind, model_label=vlm.label,
        weights_sha256=vlm.fingerprint(), templates=templates, templates_sha256=templates_sha256(templates),
        clean_names=clean_names, embed_dim=int(class_emb.shape[1]), image_size=vlm.image_spec.size, pad=pad,
        seed=seed, richkd_version=richkd.__version__,
        subset_limit=subset.limit if subset else None, split_rows=subset.split_rows if subset else None,
        rows_sha256=rows_sha256(subset.rows) if subset else None,
    )
    key = _meta_key(expected)
    with chunked.locked(out, "target cache"):
        rows_done = chunked.rows_done_in(out, key, tuple(ARRAY_FILES), what="target cache", n_rows=expected.n_rows)
        if rows_done == expected.n_rows and (out / chunked.META_FILE).is_file():  # else: killed before it
            log.info("%s is already complete for this recipe", out)
            return out
        fresh = rows_done < 0
        out.mkdir(parents=True, exist_ok=True)
        arrays = chunked.open_memmaps(out, _array_spec(expected), fresh=fresh)
        if fresh:
            if exact_views:
                arrays["aug_params.npy"][:] = _exact_params(pad)[None]
            else:
                _write_aug_params(arrays["aug_params.npy"], n_aug=n_aug_views, include_flip=include_flip, pad=pad,
                                  seed=seed)
            arrays["aug_params.npy"].flush()
            rows_done = 0
            chunked.start(out, key)
        save_npy_atomic(out / "class_emb.npy", class_emb.float().cpu().numpy())
        n = expected.n_rows
        log.info("building %s: %d rows x %d views with %s", out, n, len(names), vlm.label)
        last_checkpoint = time.monotonic()
        step = -(-batch_size // len(names)) if exact_views else batch_size  # exact: batch_size counts images
        with torch.inference_mode(), tqdm(total=n, initial=rows_done, unit="img", disable=not progress,
                                          desc="target cache") as bar:
            for start in range(rows_done, n, step):
                end = min(start + step, n)
                params = torch.from_numpy(np.array(arrays["aug_params.npy"][start:end])).long()  # [b, V, 3]
                images = dataset.images[start:end].to(device, non_blocking=True)
                cos, emb = _encode_batch(vlm, images, params, pad, class_emb, bf16)
                arrays["cosines.npy"][start:end] = cos.numpy()
                arrays["image_emb.npy"][start:end] = emb.numpy().astype(np.float16)
                bar.update(end - start)
                if time.monotonic() - last_checkpoint >= checkpoint_seconds or end == n:
                    chunked.checkpoint(out, arrays, key, end)
                    last_checkpoint = time.monotonic()
        del arrays
        meta = dataclasses.replace(expected, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        chunked.finish(out, meta.to_json())
        return out
