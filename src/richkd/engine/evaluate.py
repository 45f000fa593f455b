"""Evaluate a classifier on a device-resident split: top-1/top-5, NLL, ECE (15 bins)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from richkd.analysis.metrics import expected_calibration_error, nll, topk_accuracy
from richkd.data.augment import normalize
from richkd.data.loader import DeviceData


def predict_logits(
    model: nn.Module,
    data: DeviceData,
    *,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    batch_size: int,
    bf16: bool = False,
    channels_last: bool = False,
) -> tuple[Tensor, Tensor]:
    """Logits (float32) and labels for every row, in row order."""
    was_training = model.training
    model.eval()
    device = data.images.device
    outs, labels = [], []
    autocast: contextlib.AbstractContextManager[Any] = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    with torch.no_grad(), autocast:
        for start in range(0, len(data), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(data)), device=device)
            images, y = data.gather(rows)
            x = normalize(images, mean, std, channels_last=channels_last)
            outs.append(model(x).logits.float())
            labels.append(y)
    model.train(was_training)
    return torch.cat(outs), torch.cat(labels)


def evaluate_model(
    model: nn.Module,
    data: DeviceData,
    *,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    batch_size: int,
    bf16: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    logits, labels = predict_logits(
        model, data, mean=mean, std=std, batch_size=batch_size, bf16=bf16, channels_last=channels_last
    )
    return eval_metrics(logits, labels)


def eval_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """The per-epoch test metrics every evaluation path reports: top-1/5 (%), NLL and 15-bin ECE."""
    acc = topk_accuracy(logits, labels, ks=(1, 5))
    return {
        "top1": acc[1],
        "top5": acc[5],
        "nll": nll(logits, labels),
        "ece": expected_calibration_error(logits, labels, n_bins=15),
    }
