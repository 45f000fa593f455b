"""MLflow: the resolved config as params, each epoch's numbers as metrics (step = epoch), the summary's numbers as
metrics plus summary.json, and the model file as an artifact when asked. The default store is a SQLite file
inside the run dir (MLflow's maintained local backend; nothing leaves the machine). The run id is kept in
tracking.json, so --resume continues the same MLflow run."""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from richkd.errors import RichKDError
from richkd.tracking.base import Logger, missing_extra, numeric

MLFLOW_DB = "mlflow.db"  # the default store, inside the run dir
MLFLOW_ARTIFACTS = "mlflow-artifacts"
# MLflow limits a param value to 6000 characters; longer values (none in today's config) are cut with a marker
_PARAM_MAX = 6000


@dataclass(frozen=True)
class MlflowOptions:
    tracking_uri: str  # e.g. sqlite:////abs/run/mlflow.db, file:///abs/mlruns, http://host:5000
    experiment: str
    run_name: str
    artifact_dir: Path | None  # where a new experiment of a local store keeps artifacts (None: MLflow's default)


def default_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"


class MlflowLogger(Logger):
    name = "mlflow"

    def __init__(self, run_dir: Path, config: dict[str, Any], options: MlflowOptions) -> None:
        self.run_dir = run_dir
        self.config = config
        self.options = options
        self.client: Any = None
        self.experiment_id = ""
        self.run_id = ""

    def check(self) -> None:
        """Open the store and find or create the experiment: a bad URI, a missing driver or an unwritable store
        fails here, before training."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline: MLflow 3 reports usage otherwise
        for name in ("mlflow", "alembic"):  # their INFO lines (creating tables ...) would drown the run's log
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise missing_extra("mlflow", "mlflow-skinny") from None
        uri = self.options.tracking_uri
        if uri.startswith("sqlite:"):
            try:
                import alembic  # noqa: F401 - MLflow's SQL store migrates with it
                import sqlalchemy  # noqa: F401
            except ImportError as err:
                raise missing_extra("mlflow", err.name or "sqlalchemy") from None
            if self.options.artifact_dir is not None:
                self.run_dir.mkdir(parents=True, exist_ok=True)
        # SQLAlchemy warns about MLflow's own mappings (not the user's to fix): keep the run's output clean
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\..*")
        try:
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(self.options.experiment)
            if experiment is None:
                location = self.options.artifact_dir.resolve().as_uri() if self.options.artifact_dir else None
                self.experiment_id = self.client.create_experiment(self.options.experiment,
                                                                   artifact_location=location)
            else:
                self.experiment_id = experiment.experiment_id
        except Exception as err:  # MlflowException, sqlalchemy's OperationalError, a connection error ...
            raise RichKDError(
                f"train.mlflow_uri={uri!r}: MLflow cannot open this store ({_first_line(err)}); use a writable "
                "sqlite:///PATH/mlflow.db or a reachable server URI, or drop mlflow from train.loggers"
            ) from None

    def open(self, state: dict[str, Any], *, resume_epoch: int | None) -> None:
        saved = state.get("mlflow_run_id")
        if resume_epoch is not None and saved:
            run = self._get_run(str(saved))
            if run is not None:
                self.run_id = run.info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                return
            raise RichKDError(
                f"--resume: the MLflow run {saved} recorded in {self.run_dir / 'tracking.json'} is not in "
                f"{self.options.tracking_uri}: point train.mlflow_uri at the store the run started with"
            )
        stale = state.get("replaces", {}).get("mlflow_run_id")
        if stale and self._get_run(str(stale)) is not None:  # killed before its first epoch ended: not RUNNING
            self.client.set_terminated(str(stale), status="KILLED")
        run = self.client.create_run(self.experiment_id, run_name=self.options.run_name,
                                     tags={"richkd.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        state["mlflow_run_id"] = self.run_id
        state["mlflow_uri"] = self.options.tracking_uri
        from mlflow.entities import Param

        params = [Param(k, _param_text(v)) for k, v in self.config.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def held_epochs(self, resume_epoch: int) -> set[int]:
        return {int(m.step) for m in self.client.get_metric_history(self.run_id, "train/loss")}  # in every record

    def log_epoch(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now = int(record["epoch"]), int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numeric(record).items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, Any], model: Path | None) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(summary["epochs"])
        self.client.log_batch(self.run_id, metrics=[Metric(f"summary/{k}", v, now, step)
                                                    for k, v in numeric(summary).items()])
        self.client.log_dict(self.run_id, summary, "summary.json")
        if model is not None:
            self.client.log_artifact(self.run_id, str(model), artifact_path="model")
        self.client.set_terminated(self.run_id, status="FINISHED")

    def close(self, status: str) -> None:
        if self.client is not None and self.run_id:
            self.client.set_terminated(self.run_id, status="FAILED" if status == "failed" else "KILLED")

    def _get_run(self, run_id: str) -> Any:
        try:
            return self.client.get_run(run_id)
        except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST
            return None


def _param_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _PARAM_MAX else text[: _PARAM_MAX - 12] + "...(cut)"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]
