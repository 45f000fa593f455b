"""CPU latency (batch 1) and throughput (batch 256) of an exported student, in ONNX Runtime and PyTorch,
beside its teacher's. Medians over repeats after warm-up; ONNX Runtime gets as many threads as PyTorch.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from richkd.analysis.cost import count_params, cpu_name, measure_cost
from richkd.engine.io import write_json_atomic
from richkd.errors import RichKDError
from richkd.export.load import LoadedModel
from richkd.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, open_session, require

BATCHES = (1, 256)


class Benched(NamedTuple):
    """One model to time: its role (student/teacher), architecture, PyTorch module and ONNX file."""

    role: str
    arch: str
    module: nn.Module
    onnx_path: Path | None  # None: exported to a temporary file for the run


def bench(models: list[Benched], *, input_size: tuple[int, int], repeats: int, warmup: int) -> dict[str, Any]:
    """bench.json's content: one row per (model, runtime)."""
    if repeats < 1 or warmup < 0:
        raise RichKDError(f"--bench-repeats must be >= 1 and --bench-warmup >= 0 (got {repeats}, {warmup})")
    ort = require("onnxruntime")
    threads = torch.get_num_threads()
    shape = (3, *input_size)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="richkd-bench-") as tmp:
        for m in models:
            path = m.onnx_path
            if path is None:
                path = Path(tmp) / f"{m.role}.onnx"
                export_onnx(m.module, path, input_size=input_size, card={})
            session = open_session(path, threads=threads)
            base = {"role": m.role, "arch": m.arch, "params": count_params(m.module)}
            rows.append({**base, "runtime": "onnxruntime", **_time_onnx(session, shape, repeats, warmup)})
            cost = measure_cost(
                m.module, input_shape=shape, device=torch.device("cpu"), batch_sizes=BATCHES,
                repeats=repeats, warmup=warmup,
            )
            rows.append({**base, "runtime": "pytorch", **{k: cost[k] for k in _keys()}})
    return {
        "version": 1,
        "cpu": cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "input": list(shape),
        "repeats": repeats,
        "warmup": warmup,
        "note": "latency: median ms per batch-1 forward; throughput: 256 / median s per batch-256 forward; fp32",
        "rows": rows,
    }


def _keys() -> list[str]:
    return [f"latency_ms_b{b}" for b in BATCHES] + [f"throughput_b{b}_img_s" for b in BATCHES]


def _time_onnx(session: Any, shape: tuple[int, ...], repeats: int, warmup: int) -> dict[str, float]:
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        x = rng.standard_normal((batch, *shape), dtype=np.float32)
        for _ in range(warmup):
            session.run([OUTPUT_NAME], {INPUT_NAME: x})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run([OUTPUT_NAME], {INPUT_NAME: x})
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        out[f"latency_ms_b{batch}"] = 1000.0 * median
        out[f"throughput_b{batch}_img_s"] = batch / median
    return {k: out[k] for k in _keys()}


def format_bench(result: dict[str, Any]) -> str:
    """The small table `richkd export --bench` prints."""
    lines = [
        f"CPU: {result['cpu']}, threads: {result['threads']}, input {'x'.join(map(str, result['input']))}, "
        f"median of {result['repeats']} runs after {result['warmup']} warm-up",
        f"{'model':<22} {'runtime':<12} {'params':>8} {'b1 latency (ms)':>16} {'b256 throughput (img/s)':>24}",
    ]
    for r in result["rows"]:
        name = f"{r['role']} {r['arch']}"
        lines.append(
            f"{name:<22} {r['runtime']:<12} {r['params'] / 1e6:>7.3f}M {r['latency_ms_b1']:>16.3f} "
            f"{r['throughput_b256_img_s']:>24.0f}"
        )
    return "\n".join(lines) + "\n"


def bench_export(
    loaded: LoadedModel, card: dict[str, Any], folder: Path, *, repeats: int, warmup: int, allow_code: bool = False
) -> dict[str, Any]:
    """Time an exported student (its ONNX file in `folder`, from `card`) and the run's CNN teacher when its file
    is still on this machine; writes FOLDER/bench.json and returns its content."""
    if card.get("onnx") is None:
        raise RichKDError(f"{folder} has no model.onnx to time: export with --onnx (or --bench)")
    if loaded.module is None:
        raise RichKDError(f"{loaded.path} is an ONNX file: the benchmark times PyTorch too, pass the .pt/.safetensors")
    models = [Benched("student", loaded.arch, loaded.module, folder / card["onnx"]["file"])]
    teacher = _run_teacher(card, loaded.classes, allow_code=allow_code)
    if teacher is not None:
        models.append(teacher)
    result = bench(models, input_size=loaded.spec.size, repeats=repeats, warmup=warmup)
    if teacher is None:
        result["teacher"] = "none: the run has no model.teacher, or its checkpoint is not on this machine"
    write_json_atomic(folder / "bench.json", result)
    return result


def _run_teacher(card: dict[str, Any], classes: tuple[str, ...], *, allow_code: bool) -> Benched | None:
    """The run's CNN teacher (model.teacher + model.teacher_checkpoint), when its file is still there."""
    from richkd.models.files import model_from_file

    training = card.get("training") or {}
    arch, ckpt = training.get("teacher"), training.get("teacher_checkpoint")
    if not arch or not ckpt or not Path(ckpt).is_file():
        return None
    model, _ = model_from_file(ckpt, classes, arch=arch, allow_code=allow_code)
    model.eval()
    return Benched("teacher", arch, model, None)
