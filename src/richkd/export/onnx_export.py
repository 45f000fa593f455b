"""ONNX export of a zoo model (logits only, dynamic batch) and running it with ONNX Runtime.

Exporter: the legacy TorchScript one (`torch.onnx.export(..., dynamo=False)`). With torch 2.13 the default
torch.export-based exporter needs onnxscript (plus sympy, onnx_ir: ~25 s more to install) and took 14-16 s
per model here against 0.2-2 s for the students, with the same agreement on the models tried; the legacy
exporter covers every zoo graph (convolution, BatchNorm, pooling, channel shuffle).
"""

from __future__ import annotations

import importlib
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from richkd.engine.io import write_atomic
from richkd.errors import RichKDError

OPSET = 17  # ONNX Runtime >= 1.14, TensorRT 8.6 and onnx.js-era runtimes all read it
INPUT_NAME, OUTPUT_NAME = "images", "logits"
CARD_KEY = "richkd_model_card"  # the model card, embedded so a lone .onnx file still describes itself
INSTALL_HINT = "pip install 'richkd[export]'"


def require(module: str) -> Any:
    """Import an optional export dependency, or fail in one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RichKDError(f"ONNX export and runtime need the onnx and onnxruntime packages: {INSTALL_HINT}") from None


class LogitsOnly(nn.Module):
    """A zoo model with only its logits as output: what a deployed classifier needs (ModelOutput is a tuple)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        logits: Tensor = self.model(images).logits
        return logits


def export_onnx(model: nn.Module, path: Path, *, input_size: tuple[int, int], card: dict[str, Any]) -> None:
    """Write `model` (eval mode) as ONNX with a dynamic batch axis and the card in its metadata, atomically."""
    onnx = require("onnx")
    was_training = model.training
    model.eval()
    example = torch.zeros(2, 3, *input_size)
    with tempfile.TemporaryDirectory(prefix="richkd-onnx-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; see the module docstring
        raw = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(
                LogitsOnly(model),
                (example,),
                str(raw),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        finally:
            model.train(was_training)
        proto = onnx.load_model(str(raw))
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, json.dumps(card)
    proto.producer_name = "richkd"
    blob = proto.SerializeToString()
    write_atomic(path, lambda fh: fh.write(blob))


def open_session(path: Path, *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session; a file ONNX Runtime cannot read is a one-line error."""
    ort = require("onnxruntime")
    if not path.is_file():
        raise RichKDError(f"ONNX model {path} not found")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RichKDError(f"ONNX model {path} is corrupt or unreadable ({first[:140]})") from None


def embedded_card(session: Any) -> dict[str, Any] | None:
    raw = session.get_modelmeta().custom_metadata_map.get(CARD_KEY)
    if raw is None:
        return None
    try:
        card = json.loads(raw)
    except ValueError:
        return None
    return card if isinstance(card, dict) else None


def output_classes(session: Any) -> int | None:
    """Number of logits per image the graph declares (None when the axis is symbolic)."""
    shape = session.get_outputs()[0].shape
    return shape[-1] if shape and isinstance(shape[-1], int) else None


def run_session(session: Any, images: Tensor) -> Tensor:
    """Logits [B, C] for a normalised float32 batch [B, 3, H, W]."""
    x = np.ascontiguousarray(images.detach().cpu().float().numpy())
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    return torch.from_numpy(np.asarray(logits, dtype=np.float32))


def compare(torch_logits: Tensor, onnx_logits: Tensor) -> dict[str, Any]:
    """How far ONNX Runtime is from PyTorch on the same inputs: max |Δlogit| and top-1 agreement."""
    diff = (torch_logits.float() - onnx_logits.float()).abs()
    agree = (torch_logits.argmax(1) == onnx_logits.argmax(1)).float().mean().item()
    return {
        "images": int(torch_logits.shape[0]),
        "max_abs_logit_diff": float(diff.max().item()) if diff.numel() else 0.0,
        "max_abs_logit": float(torch_logits.abs().max().item()) if diff.numel() else 0.0,
        "top1_agreement": float(agree),
    }
