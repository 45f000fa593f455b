"""The logit scale s minimising the NLL of a target cache's cosines on its own (training) rows: the zero-shot
scale a fused or cache-only predictor uses (`richkd vlm fit-scale`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from richkd.data import FolderOptions

__all__ = ["fit_cache_logit_scale"]


def fit_cache_logit_scale(
    cache_dir: str | Path, *, dataset: str, root: str | None = None, split: str = "train", download: bool = False,
    limit: int | None = None, all_views: bool = False, folder: FolderOptions | None = None,
) -> dict[str, Any]:
    """Fit s on the cached cosines of `dataset/split` (its plain view, or every view with `all_views`); returns
    the fitted scale with the NLL at 1 and at s, and the ECE at s. `limit` None: every row the cache holds."""
    from richkd.caches.target import TargetCache
    from richkd.data import load_dataset
    from richkd.data.subset import stratified_rows
    from richkd.teachers.zero_shot import fit_logit_scale
    from richkd.teachers.zero_shot_eval import classification_metrics

    ds = load_dataset(dataset, root, split, download=download, folder=folder)
    cache = TargetCache.open(cache_dir)
    cache.validate(dataset=ds.name, split=ds.split, n_rows=len(ds), class_names=ds.classes)
    limit = limit if limit is not None else cache.meta.subset_limit  # no limit: every row it holds
    run_rows = stratified_rows(ds.labels, limit) if limit is not None else None
    cache_rows = cache.cache_rows(ds.labels, run_rows)  # refuses rows the cache lacks, or another rule's rows
    labels = ds.labels if run_rows is None else ds.labels[run_rows]
    view = None if all_views else cache.meta.plain_view
    cosines = cache.all_cosines(view)
    if cache_rows is not None:
        cosines = cosines[cache_rows]
    if all_views:  # [N, V, C] -> [N*V, C], each view labelled with its row's class
        labels = labels.repeat_interleave(cache.n_views)
        cosines = cosines.reshape(-1, cosines.shape[-1])
    scale = fit_logit_scale(cosines.float(), labels)
    before = classification_metrics(cosines.float(), labels)
    after = classification_metrics(scale * cosines.float(), labels)
    return {"cache": str(cache_dir), "teacher": cache.meta.model_label, "logit_scale": scale,
            "views": "all" if all_views else "plain",
            "view_index": view, "view_name": None if view is None else cache.meta.view_names[view],
            "nll_at_1": before["nll"], "nll_at_fit": after["nll"],
            "ece_at_fit": after["ece"]}
