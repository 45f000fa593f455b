"""`richkd export`: a trained student -> DIR/model.safetensors + model_card.json (+ model.onnx, checked
against PyTorch with ONNX Runtime; + bench.json). The card is written last: it is the export's commit marker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from richkd.data.augment import normalize
from richkd.engine.io import file_sha256, write_atomic, write_json_atomic
from richkd.errors import RichKDError
from richkd.export.card import CARD_NAME, build_card
from richkd.export.images import decode_image
from richkd.export.load import WEIGHTS_FORMAT, LoadedModel

log = logging.getLogger(__name__)

WEIGHTS_NAME, ONNX_NAME, BENCH_NAME = "model.safetensors", "model.onnx", "bench.json"
RANDOM_CHECK_IMAGES = 16
CHECK_BATCH = 256


def write_safetensors(module: nn.Module, path: Path, *, arch: str, num_classes: int) -> None:
    """The state dict, pickle-free (contiguous private copies: safetensors refuses shared storage)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    blob = save(state, metadata={"format": WEIGHTS_FORMAT, "arch": arch, "num_classes": str(num_classes)})
    write_atomic(path, lambda fh: fh.write(blob))


def export_model(
    loaded: LoadedModel,
    out_dir: Path,
    *,
    onnx: bool,
    check_images: Sequence[Path] | None,
    on_error: Callable[[Path, str], None],
) -> dict[str, Any]:
    """Write the export; returns its model card. `check_images`: real images for the ONNX check (else random)."""
    module = loaded.module
    if module is None:
        raise RichKDError(f"{loaded.path} is an ONNX file: export needs PyTorch weights (.pt or .safetensors)")
    weights = out_dir / WEIGHTS_NAME
    if loaded.path.resolve() == weights.resolve():
        raise RichKDError(f"--out {out_dir} is where {loaded.path} lives: export to another folder")
    card = build_card(
        arch=loaded.arch,
        classes=loaded.classes,
        spec=loaded.spec,
        source=loaded.path,
        source_sha256=file_sha256(loaded.path),
        run=loaded.run,
        params=sum(p.numel() for p in module.parameters()),
        previous=loaded.card,
    )
    write_safetensors(module, weights, arch=loaded.arch, num_classes=len(loaded.classes))
    card["weights"] = {"file": WEIGHTS_NAME, "format": "safetensors", "sha256": file_sha256(weights)}
    card["onnx"] = None
    if onnx:
        card["onnx"] = export_and_check(loaded, out_dir / ONNX_NAME, card, check_images, on_error)
    write_json_atomic(out_dir / CARD_NAME, card)
    return card


def export_and_check(
    loaded: LoadedModel,
    path: Path,
    card: dict[str, Any],
    check_images: Sequence[Path] | None,
    on_error: Callable[[Path, str], None],
) -> dict[str, Any]:
    """Export to ONNX, then run the same inputs through ONNX Runtime and PyTorch and compare the logits."""
    from richkd.export.onnx_export import OPSET, compare, export_onnx, open_session, require, run_session

    assert loaded.module is not None
    export_onnx(loaded.module, path, input_size=loaded.spec.size, card={k: v for k, v in card.items() if k != "onnx"})
    session = open_session(path)
    x, described = _check_inputs(loaded, check_images, on_error)
    torch_logits, onnx_logits = [], []
    for start in range(0, x.shape[0], CHECK_BATCH):
        batch = x[start : start + CHECK_BATCH]
        torch_logits.append(loaded.logits(batch))
        onnx_logits.append(run_session(session, batch))
    check = {"inputs": described, **compare(torch.cat(torch_logits), torch.cat(onnx_logits))}
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "opset": OPSET,
        "exporter": "torch.onnx.export, TorchScript-based (dynamo=False)",
        "input": "images: float32 [batch, 3, H, W], normalised as in `input`",
        "output": "logits: float32 [batch, num_classes]",
        "onnxruntime": require("onnxruntime").__version__,
        "check": check,
    }


def _check_inputs(
    loaded: LoadedModel, images: Sequence[Path] | None, on_error: Callable[[Path, str], None]
) -> tuple[torch.Tensor, str]:
    spec = loaded.spec
    if not images:
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (RANDOM_CHECK_IMAGES, 3, *spec.size), generator=gen, dtype=torch.uint8)
        return normalize(x, spec.mean, spec.std), f"{RANDOM_CHECK_IMAGES} random uint8 images (pass --check IMAGES)"
    arrays = []
    for p in images:
        decoded = decode_image(p, spec)
        if isinstance(decoded, str):
            on_error(p, decoded)
        else:
            arrays.append(decoded)
    if not arrays:
        raise RichKDError("--check: none of the images could be decoded")
    x = normalize(torch.from_numpy(np.stack(arrays)), spec.mean, spec.std)
    return x, f"{len(arrays)} real images"
