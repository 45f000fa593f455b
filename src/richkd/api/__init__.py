"""The front door: richkd's public Python API, the calls the command line, the demo and the study runner stand on.

Owns the stable, typed entry points (compose a run, train or resume it, read it back; create, load and evaluate
models; build caches; predict, analyse, corrupt, robustness; report and cost; export and classify). Each returns
values or paths and prints nothing; bad input is one `richkd.errors.RichKDError` line. `docs/api.md` lists them
with an example; `examples/quickstart.py` runs the whole pipeline in a few lines.
"""

from richkd.api.analysis import (
    analyze,
    corrupt,
    fit_logit_scale,
    measure_robustness,
    measure_shift,
    predict,
    zero_shot,
)
from richkd.api.caches import (
    ImageNetCacheResult,
    TeacherCacheResult,
    VLMCacheResult,
    build_imagenet_cache,
    build_teacher_cache,
    build_vlm_cache,
    merge_cache_parts,
)
from richkd.api.export import bench_export, classify, export_model
from richkd.api.models import create_model, evaluate, list_models, load_model
from richkd.api.report import ReportFiles, measure_cost, summary_table, write_report
from richkd.api.runs import RunResult, compose, compose_with_layers, config_text, load_run, train

__all__ = [
    "ImageNetCacheResult",
    "ReportFiles",
    "RunResult",
    "TeacherCacheResult",
    "VLMCacheResult",
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
