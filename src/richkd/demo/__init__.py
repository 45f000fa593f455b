"""`richkd demo`: the whole RichKD pipeline in one offline command, on a dataset a fresh machine has.

Owns the demo's plan (which data, how many images and epochs, which models: `plan.py`), its output folder
(`steps.py`; the step runner that reuses finished steps is `richkd.steps`, shared with `richkd study`) and the
pipeline itself (`pipeline.py`): teacher -> target caches of the packaged surrogate vision-language model (not
CLIP) -> students (vanilla, KD, the alpha*z_T control, RichKD-L+F) -> predictions -> analyses -> robustness ->
cost -> the HTML report. It is an orchestrator: every step is an existing library function or CLI command, called
in-process.
"""

from richkd.demo.pipeline import run_demo
from richkd.demo.plan import DemoData, DemoPlan, describe_plan, estimate_seconds, make_plan, resolve_data

__all__ = ["DemoData", "DemoPlan", "describe_plan", "estimate_seconds", "make_plan", "resolve_data", "run_demo"]
