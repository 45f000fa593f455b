"""Experiment tracking: the per-epoch record, the resolved config and the final summary of a run, sent to the
trackers users already watch (CSV, TensorBoard, MLflow, Weights & Biases) beside the run's own metrics.jsonl.

This package owns the loggers and their resume bookkeeping (tracking.json in the run dir). Loggers take plain
values (run dir, flattened config, options), never the config object: build.py composes them from `train.loggers`.
Each optional tracker is imported only when asked for, so the core stays light.
"""

from richkd.tracking.base import Logger, Tracker
from richkd.tracking.csv_log import CsvLogger
from richkd.tracking.mlflow_run import MlflowLogger, MlflowOptions
from richkd.tracking.tb import TensorBoardLogger
from richkd.tracking.wandb_run import WandbLogger, WandbOptions

__all__ = [
    "CsvLogger",
    "Logger",
    "MlflowLogger",
    "MlflowOptions",
    "TensorBoardLogger",
    "Tracker",
    "WandbLogger",
    "WandbOptions",
]
