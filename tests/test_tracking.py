"""Experiment tracking (issue 23 items 4-5) through the real `richkd train` on tiny real CIFAR-10: every tracker is
read back with its own reader (TensorBoard's EventAccumulator, MLflow's client, W&B's `wandb leet inspect` of the
offline run, Python's csv), a run SIGKILLed mid-epoch-logging and resumed holds ONE history in each, a tracker
that cannot start is one line before any training, and under DDP only rank 0 logs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from richkd.cli import main

pytestmark = pytest.mark.shared_data

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # this process reads the MLflow store back: offline too
tensorboard = pytest.importorskip("tensorboard", reason="pip install 'richkd[tensorboard]'")
mlflow = pytest.importorskip("mlflow", reason="pip install 'richkd[mlflow]'")
wandb = pytest.importorskip("wandb", reason="pip install 'richkd[wandb]'")

EPOCHS = 3
LOGGERS = "train.loggers=[jsonl,csv,tensorboard,mlflow,wandb]"


def _args(archive: Path, out: Path, cache: Path, *more: str) -> list[str]:
    return [
        "train", "data.name=imagefolder", f"data.root={archive}", f"data.cache_dir={cache}", "model.student=resnet8",
        "distill.method=vanilla", f"train.epochs={EPOCHS}", "train.batch_size=32", "train.max_steps_per_epoch=2",
        "train.threads=1", "train.progress=false", "optim.lr=0.05", f"out_dir={out}", *more,
    ]


def _env(tmp: Path) -> dict[str, str]:
    # WANDB_DIR etc. are not needed: the run dir holds everything; HOME keeps wandb's settings out of ~
    return {**os.environ, "OMP_NUM_THREADS": "1", "RICHKD_CACHE": str(tmp / "home"), "HOME": str(tmp / "home")}


# SIGKILL the training process inside the 2nd epoch's logging, right after `victim` logged nothing yet: the
# loggers before it in train.loggers hold epoch 2, the ones from it on do not, and the checkpoint of epoch 2 is
# saved. The resume must leave each tracker with epochs 1..E exactly once.
KILL_IN_LOGGING = """
import os, signal, sys
from richkd.tracking import base
victim, argv = sys.argv[1], sys.argv[2:]
real = base.Tracker._call
def call(self, logger, method, *args):
    if logger.name == victim and method == "log_epoch" and args[0]["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, logger, method, *args)
base.Tracker._call = call
from richkd.cli import main
sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decoded copy of the tiny archive for every run of this module."""
    return tmp_path_factory.mktemp("tracking-dc")


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory, tiny_cifar10: Path, data_cache: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tracking")
    out = tmp / "exp" / "run-a"
    argv = _args(tiny_cifar10, out, data_cache, LOGGERS, "train.log_model=true")
    env = _env(tmp)
    killed = subprocess.run([sys.executable, "-c", KILL_IN_LOGGING, "wandb", *argv], env=env, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # epoch 2: checkpoint and jsonl written
    resumed = subprocess.run([sys.executable, "-m", "richkd", *argv, "--resume"], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    return {"out": out, "records": records, "env": env}


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))}


def test_tensorboard_holds_every_epoch_once(killed_run: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = killed_run["records"]
    events = EventAccumulator(str(killed_run["out"] / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(_numbers(records[0])) | set(_numbers(records[-1]))
    for key in _numbers(records[0]):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2, 3], key  # killed and resumed: no step twice
        # TensorBoard stores float32
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6), key


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_mlflow_run_holds_the_config_and_every_epoch_once(killed_run: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    out, records = killed_run["out"], killed_run["records"]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("exp")  # named after the folder the run dirs share
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "the resume continued the same MLflow run"
    run = runs[0]
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    config = _flat(yaml.safe_load((out / "config.yaml").read_text()))  # the resolved config the run saved
    assert run.data.params == {k: str(v) for k, v in config.items()}
    for key in _numbers(records[0]):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3], key
        assert [m.value for m in history] == pytest.approx([r[key] for r in records], rel=1e-12), key
    summary = json.loads((out / "summary.json").read_text())
    assert run.data.metrics["summary/best_top1"] == pytest.approx(summary["best_top1"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"model", "summary.json"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model_last.pt"]


def _wandb_records(folder: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """The records of an offline run's transaction log, as W&B's own reader prints them."""
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)],
                          env={**env, "WANDB_MODE": "offline"},  # offline: leet reports nothing to W&B
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_wandb_offline_run_holds_every_epoch_once(killed_run: dict[str, Any]) -> None:
    out, records = killed_run["out"], killed_run["records"]
    run_id = json.loads((out / "tracking.json").read_text())["wandb_run_id"]
    folders = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))  # one per invocation, by start time
    assert len(folders) == 2, "killed + resumed: two invocations of the same W&B run"
    logs = [_wandb_records(folder, killed_run["env"]) for folder in folders]
    runs = [next(r["run"] for r in log if r["type"] == "run") for log in logs]
    assert {r["run_id"] for r in runs} == {run_id} and all(r["resume"] for r in runs)
    assert runs[0]["project"] == "exp" and runs[0]["display_name"] == "run-a"
    config = _flat(yaml.safe_load((out / "config.yaml").read_text()))
    logged = {k: v for k, v in runs[0]["config"]["update"].items() if k != "_wandb"}
    assert logged == config
    history = [r["history"] for log in logs for r in log if r["type"] == "history"]
    assert [h["step"]["num"] for h in history] == [1, 2, 3], "one continuous history, no step twice"
    for h, record in zip(history, records, strict=True):
        for key, value in _numbers(record).items():
            assert h["item"][key] == pytest.approx(value, rel=1e-12), key
    summary = json.loads((out / "summary.json").read_text())
    final = {}
    for r in logs[-1]:
        if r["type"] == "summary":
            final.update(r["summary"]["update"])
    assert final["best_top1"] == pytest.approx(summary["best_top1"]) and final["epochs"] == EPOCHS
    assert any(r["type"] == "artifact" for r in logs[-1]), "train.log_model=true: the model as an artifact"


def test_csv_has_one_header_and_every_epoch_once(killed_run: dict[str, Any]) -> None:
    out, records = killed_run["out"], killed_run["records"]
    text = (out / "metrics.csv").read_text()
    assert text.count("epoch,") == 1
    with (out / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row, record in zip(rows, records, strict=True):
        assert {k: float(row[k]) for k in _numbers(record)} == _numbers(record)


# ------------------------------------------------------------------------- a tracker that cannot start


BAD_STORE = "sqlite:////proc/no-such-dir/mlflow.db"


@pytest.mark.parametrize(
    ("loggers", "blocked", "more", "expected"),
    [
        ("tensorboard", ("tensorboard", "torch.utils.tensorboard"), (), "pip install 'richkd[tensorboard]'"),
        ("mlflow", ("mlflow", "mlflow.tracking"), (), "pip install 'richkd[mlflow]'"),
        ("wandb", ("wandb",), (), "pip install 'richkd[wandb]'"),
        ("mlflow", (), (f"train.mlflow_uri={BAD_STORE}",), f"train.mlflow_uri='{BAD_STORE}': MLflow cannot open"),
        ("mlflow", (), ("train.mlflow_uri=runs/mlflow",), "is not a store URI: use sqlite:///PATH/mlflow.db"),
        ("jsonl,csv,csv", (), (), "train.loggers names a logger twice"),
        ("jsonl,tb", (), (), "invalid override train.loggers=[jsonl,tb]: expected a list of one of 'jsonl', 'csv'"),
    ],
    ids=["tensorboard-missing", "mlflow-missing", "wandb-missing", "mlflow-bad-store", "mlflow-not-a-uri", "twice",
         "unknown"],
)
def test_a_tracker_that_cannot_start_is_one_line_before_training(
    loggers: str, blocked: tuple[str, ...], more: tuple[str, ...], expected: str, tiny_cifar10: Path,
    data_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    for module in blocked:  # as if the extra were not installed: `import module` raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "run"
    code = main(_args(tiny_cifar10, out, data_cache, f"train.loggers=[{loggers}]", *more))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("richkd: error: ") and expected in err[0], err
    assert not out.exists() or not any(out.iterdir()), "nothing trained, nothing left behind"


# ------------------------------------------------------------------------- DDP: rank 0 alone logs


def test_under_ddp_only_rank_0_logs(tiny_cifar10: Path, data_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp" / "ddp"
    argv = _args(tiny_cifar10, out, data_cache, "train.loggers=[csv,tensorboard]", "train.epochs=2")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run([*launcher, "-m", "richkd", *argv], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1, "one writer: rank 0"
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("train/loss")] == [1, 2]
    with (out / "metrics.csv").open(newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]


def test_a_tracker_failing_mid_run_is_a_warning_and_training_goes_on(
    tiny_cifar10: Path, data_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from richkd.tracking import CsvLogger

    real = CsvLogger.log_epoch

    def full_disk(self: CsvLogger, record: dict[str, Any]) -> None:
        if record["epoch"] == 2:
            raise OSError(28, "No space left on device", str(self.path))
        real(self, record)

    monkeypatch.setattr(CsvLogger, "log_epoch", full_disk)
    out = tmp_path / "exp" / "disk"
    assert main(_args(tiny_cifar10, out, data_cache, "train.loggers=[csv,tensorboard]")) == 0
    assert any("train.loggers: csv failed (OSError" in r.getMessage() for r in caplog.records)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == EPOCHS and (out / "summary.json").is_file()
    with (out / "metrics.csv").open(newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1], "the csv logger stopped at its failure"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("train/loss")] == [1, 2, 3], "the other trackers went on"
