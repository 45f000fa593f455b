"""richkd: knowledge distillation from a fused CNN + vision-language teacher (RichKD).

The public API (`richkd.api`, docs/api.md) is re-exported here: `richkd.compose(...)`, `richkd.train(cfg)`, ...
`__all__` is the list. Names load on first use, so `import richkd` stays as light as `__version__`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.4.0"

if TYPE_CHECKING:
    from richkd.api import (
        ImageNetCacheResult,
        ReportFiles,
        RunResult,
        TeacherCacheResult,
        VLMCacheResult,
        analyze,
        bench_export,
        build_imagenet_cache,
        build_teacher_cache,
        build_vlm_cache,
        classify,
        compose,
        compose_with_layers,
        config_text,
        corrupt,
        create_model,
        evaluate,
        export_model,
        fit_logit_scale,
        list_models,
        load_model,
        load_run,
        measure_cost,
        measure_robustness,
        measure_shift,
        merge_cache_parts,
        predict,
        summary_table,
        train,
        write_report,
        zero_shot,
    )

__all__ = [
    "ImageNetCacheResult",
    "ReportFiles",
    "RunResult",
    "TeacherCacheResult",
    "VLMCacheResult",
    "__version__",
    "analyze",
    "bench_export",
    "build_imagenet_cache",
    "build_teacher_cache",
    "build_vlm_cache",
    "classify",
    "compose",
    "compose_with_layers",
    "config_text",
    "corrupt",
    "measure_cost",
    "create_model",
    "evaluate",
    "export_model",
    "fit_logit_scale",
    "list_models",
    "load_model",
    "load_run",
    "predict",
    "write_report",
    "measure_robustness",
    "measure_shift",
    "merge_cache_parts",
    "summary_table",
    "train",
    "zero_shot",
]


def __getattr__(name: str) -> Any:
    """`richkd.train` etc.: import richkd.api on first use (PEP 562)."""
    if name in __all__ and name != "__version__":
        value = getattr(importlib.import_module("richkd.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'richkd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
