"""Accuracy of several models on clean and corrupted images: each corrupted batch is made once and shared."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from richkd.data.augment import normalize
from richkd.errors import RichKDError
from richkd.robustness.corruptions import check_corruption, corrupt

ImageSource = Callable[[str, int], tuple[Tensor, Tensor]]  # (corruption, severity) -> (images, labels)


def count_correct(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    batch_size: int,
    device: torch.device,
) -> int:
    """Top-1 hits of `model` (eval mode, no grad) on uint8 images, normalised like training."""
    was_training = model.training
    model.eval()
    hits = 0
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = normalize(images[start : start + batch_size].to(device), mean, std)
            pred = model(x).logits.argmax(dim=1)
            hits += int((pred == labels[start : start + batch_size].to(device)).sum())
    model.train(was_training)
    return hits


def evaluate_robustness(
    models: dict[str, nn.Module],
    images: Tensor,
    labels: Tensor,
    *,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    corruptions: Sequence[str],
    severities: Sequence[int],
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    seed: int = 0,
    rows: Tensor | None = None,
    source: ImageSource | None = None,
    progress: bool = False,
) -> dict[str, dict[str, object]]:
    """Per-model part of robustness.json: clean_top1, per_corruption (one accuracy per severity, in the order
    given), mean_corruption_accuracy (mean over all corruption x severity cells) and relative_robustness
    (mean corruption accuracy / clean accuracy; None when undefined). Accuracies in percent.

    Corrupted images come from `corrupt(images, ..., seed, rows)` chunk by chunk (`rows` = dataset row ids, so a
    subset is corrupted as in the full set), or from `source(corruption, severity)` (e.g. official CIFAR-C
    files); each chunk is corrupted once and every model is evaluated on it.
    """
    if not models:
        raise RichKDError("evaluate_robustness needs at least one model")
    if batch_size < 1:
        raise RichKDError(f"batch size must be >= 1, got {batch_size}")
    for name in corruptions:
        check_corruption(name)
    for s in severities:
        check_corruption("gaussian_noise", s)
    dev = torch.device(device)

    def hits_of(model: nn.Module, x: Tensor, y: Tensor) -> int:
        return count_correct(model, x, y, mean=mean, std=std, batch_size=batch_size, device=dev)

    n = int(images.shape[0])
    row_ids = rows if rows is not None else torch.arange(n)
    clean = {name: 100.0 * hits_of(m, images, labels) / max(n, 1) for name, m in models.items()}
    per: dict[str, dict[str, list[float]]] = {m: {} for m in models}
    cells: Iterable[tuple[str, int]] = [(c, s) for c in corruptions for s in severities]
    bar = tqdm(cells, desc="robustness", unit="cell", disable=not progress, leave=False)
    for corruption, severity in bar:
        bar.set_postfix_str(f"{corruption} s{severity}")
        hits = dict.fromkeys(models, 0)
        if source is not None:
            x, y = source(corruption, severity)
            total = int(y.shape[0])
            for name, model in models.items():
                hits[name] = hits_of(model, x, y)
        else:
            total = n
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                x = corrupt(images[start:stop], corruption, severity, seed=seed, rows=row_ids[start:stop])
                for name, model in models.items():
                    hits[name] += hits_of(model, x, labels[start:stop])
        for name in models:
            per[name].setdefault(corruption, []).append(100.0 * hits[name] / max(total, 1))
    result: dict[str, dict[str, object]] = {}
    for name in models:
        values = [a for accs in per[name].values() for a in accs]
        mca = sum(values) / len(values) if values else None
        result[name] = {
            "clean_top1": clean[name],
            "per_corruption": per[name],
            "mean_corruption_accuracy": mca,
            "relative_robustness": mca / clean[name] if mca is not None and clean[name] > 0 else None,
        }
    return result
