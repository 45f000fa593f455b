"""Issue 24: `richkd study` on a cluster. The spec's executor/resources block; bad cluster input refused before
anything is submitted (a fake SLURM on PATH, and the real one); the local executor's `--parallel 2` against
`--parallel 1`; and end to end on a REAL single-node SLURM (scripts/slurm_local.sh: Debian's slurm-wlm + munge,
started once for the session, stopped at its end): a teacher prepare step and a 2 arms x 2 seeds grid as sbatch
jobs, one run scancelled mid-run then resubmitted by the study, one preempted (USR2) and requeued by its own job,
every run and table equal to the local executor's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from richkd.cli import main
from richkd.errors import RichKDError
from richkd.study.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- spec


def _base(out: Path) -> dict[str, Any]:
    return {"name": "t", "out": str(out), "seeds": [0], "arms": {"a": {"argv": ["distill.method=vanilla"]}}}


def test_resources_block_is_parsed() -> None:
    raw = {**_base(Path("o")), "executor": "slurm",
           "resources": {"partition": "gpu", "gpus": 8, "cpus": 32, "mem_gb": 200, "time_min": 1440,
                         "account": "kd", "qos": "high", "sbatch": ["--constraint=a100", "--exclusive"]}}
    spec = parse_spec(raw, "s.yaml")
    r = spec.resources
    assert spec.executor == "slurm"
    assert (r.partition, r.gpus, r.cpus, r.mem_gb, r.time_min, r.account, r.qos) == ("gpu", 8, 32, 200.0, 1440,
                                                                                       "kd", "high")
    assert r.sbatch == ("--constraint=a100", "--exclusive")
    assert parse_spec(_base(Path("o")), "s.yaml").executor == "local"


@pytest.mark.parametrize(("change", "needle"), [
    ({"executor": "pbs"}, "executor 'pbs': use one of local, slurm"),
    ({"resources": {"gpu": 1}}, "unknown key 'resources.gpu'"),
    ({"resources": {"cpus": 0}}, "cpus and time_min >= 1"),
    ({"resources": {"sbatch": ["#SBATCH -C a100"]}}, "as --key=value or --flag"),
])
def test_bad_executor_or_resources_is_one_error(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(RichKDError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_spec({**_base(Path("o")), **change}, "s.yaml")


# ---------------------------------------------------------------- bad cluster input, fake SLURM


def _fake_slurm(folder: Path) -> Path:
    """sinfo/scontrol answering as a 1-partition cluster (`debug`, nodes of 2 CPUs, 1 GPU, 4000 MB); sbatch records
    that it was called (it must never be)."""
    folder.mkdir()
    scripts = {
        "sinfo": 'case "$*" in *-N*) echo "2|gpu:a100:1(S:0)|4000";; *) echo "debug*";; esac',
        "scontrol": '[ "$3" = debug ] || { echo "Partition $3 not found" >&2; exit 1; }',
        "sbatch": f'touch {folder}/SUBMITTED; exit 1', "squeue": "true", "scancel": "true",
    }
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


@pytest.mark.parametrize(("resources", "needle"), [
    ({"partition": "gpu"}, "resources.partition 'gpu' does not exist on this cluster; partitions: debug"),
    ({"cpus": 3}, "resources.cpus 3 is more than a node of partition debug has (2)"),
    ({"gpus": 2}, "resources.gpus 2 is more than a node of partition debug has (1)"),
    ({"mem_gb": 8}, "resources.mem_gb 8 is more than a node of partition debug has (3.9 GB)"),
    (None, "no SLURM on this machine (sbatch not found on PATH)"),
])
def test_bad_cluster_input_is_one_line_exit_2_nothing_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    resources: dict[str, Any] | None, needle: str,
) -> None:
    fake = _fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(fake) if resources is not None else str(tmp_path / "empty"))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({**_base(tmp_path / "out"), "executor": "slurm", "resources": resources or {}}))
    assert main(["study", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("richkd: error: ") and needle in err, err
    assert not (fake / "SUBMITTED").exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the tiny grid, local and SLURM


def _grid(tmp_path: Path, archive: Path, out: str, epochs: int = 1, **extra: Any) -> Path:
    train = ["data.name=imagefolder", f"data.root={archive}", "model.student=resnet8", f"train.epochs={epochs}",
             "train.batch_size=16", "train.max_steps_per_epoch=2", "train.progress=false", "optim.lr=0.05"]
    spec = {
        "name": "tiny", "out": str(tmp_path / out), "seeds": [0, 1], "threads": 1, "common": train,
        "prepare": [{"name": "teacher", "argv": ["train", "distill.method=vanilla", "out_dir={out}/teacher"],
                     "creates": "{out}/teacher/summary.json"}],
        "arms": {"vanilla": {"argv": ["distill.method=vanilla"]},
                 "kd": {"title": "KD", "argv": ["distill.method=kd", "model.teacher=resnet8",
                                                "model.teacher_checkpoint={out}/teacher/model_last.pt"]}},
        "compare": ["kd"], "analysis": {"predict": False}, **extra,
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


RUNS = ("vanilla_s0", "kd_s0", "vanilla_s1", "kd_s1")


def _run(out: Path, key: str) -> Path:
    arm, seed = key.rsplit("_s", 1)
    return out / "runs" / arm / f"s{seed}"


def _tables(out: Path) -> dict[str, Any]:
    """What the study reports, less what no two runs share: the wall-clock time (measured, not trained: the last
    column of results.md and train_wall_s) and the run folders' paths."""

    def science(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: science(v) for k, v in value.items() if k not in ("train_wall_s", "run_dir")}
        return [science(v) for v in value] if isinstance(value, list) else value

    results = json.loads((out / "results.json").read_text())
    md = [line.rsplit("|", 2)[0] if line.startswith("| ") and line.count("|") == 12 else line
          for line in (out / "results.md").read_text().splitlines() if str(out) not in line]
    assert any("| train wall (s/run) |" in line for line in (out / "results.md").read_text().splitlines())
    return {"arms": science(results["arms"]), "comparisons": science(results["comparisons"]), "md": md}


def _same_run(a: Path, b: Path) -> None:
    """Bit-identical training: the same weights and the same per-epoch history (timings aside)."""
    wa, wb = torch.load(a / "model_last.pt", map_location="cpu"), torch.load(b / "model_last.pt", map_location="cpu")
    sa = wa.get("model", wa) if isinstance(wa, dict) else wa
    sb = wb.get("model", wb) if isinstance(wb, dict) else wb
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), k
    ka, kb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    for key in ("best_top1", "last_top1"):
        assert ka[key] == kb[key], key


@pytest.fixture(scope="module", autouse=True)
def _quiet_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One thread a run and a private cache folder, for this module's runs (sbatch passes them on to the jobs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("RICHKD_CACHE", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="module")
def local_p1(tiny_cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grid run with the local executor, one run at a time: the reference (5 epochs: the SLURM test needs
    checkpoints before the end to cancel and preempt runs at)."""
    tmp = tmp_path_factory.mktemp("local")
    assert main(["study", str(_grid(tmp, tiny_cifar10, "p1", epochs=5)), "--parallel", "1"]) == 0
    return tmp / "p1"


@pytest.mark.shared_data
def test_local_parallel_2_gives_the_tables_of_parallel_1(local_p1: Path, tiny_cifar10: Path, tmp_path: Path) -> None:
    assert main(["study", str(_grid(tmp_path, tiny_cifar10, "p2", epochs=5)), "--parallel", "2"]) == 0
    p2 = tmp_path / "p2"
    assert _tables(p2) == _tables(local_p1)
    for key in RUNS:
        _same_run(_run(p2, key), _run(local_p1, key))


# ---------------------------------------------------------------- the real SLURM


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A single-node SLURM for this session; skipped (with the reason) only where it cannot be started here: not
    root, or no apt to install it. Under CI=true those are failures: CI runs as root on Debian."""
    ci = os.environ.get("CI", "").lower() == "true"
    reason = None
    if os.geteuid() != 0:
        reason = "needs root to install and start a local SLURM (scripts/slurm_local.sh)"
    elif shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        reason = "SLURM is not installed and apt-get is unavailable to install slurm-wlm and munge"
    if reason:
        if ci:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    was_up = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False).stdout \
        if shutil.which("sinfo") else ""
    started = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "start"], capture_output=True,
                             text=True, timeout=600, check=False)
    assert started.returncode == 0, started.stderr
    yield
    if "idle" not in was_up and "alloc" not in was_up and "mix" not in was_up:
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "stop"], check=False, timeout=60)


def _squeue() -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, check=True).stdout
    return dict(line.split("|", 1) for line in out.splitlines())


def _starts(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("--- ") and " start (" in line]


@pytest.mark.slurm
def test_real_slurm_bad_input_submits_nothing(
    slurm_cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _squeue()
    for resources, needle in (({"partition": "gpu"}, "resources.partition 'gpu' does not exist"),
                              ({"cpus": 64}, "resources.cpus 64 is more than a node of partition debug has"),
                              ({"gpus": 1}, "resources.gpus 1 is more than a node of partition debug has (0)")):
        spec = tmp_path / "s.yaml"
        spec.write_text(yaml.safe_dump({**_base(tmp_path / "out"), "executor": "slurm", "resources": resources}))
        assert main(["study", str(spec)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
        assert _squeue() == before and not (tmp_path / "out").exists()


def _epochs_done(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.slurm
@pytest.mark.shared_data
def test_real_slurm_grid_cancelled_run_resumes_identical_to_local(
    slurm_cluster: None, local_p1: Path, tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _grid(tmp_path, tiny_cifar10, "sl", epochs=5, executor="slurm",
                 resources={"partition": "debug", "cpus": 1, "time_min": 10})
    out = tmp_path / "sl"
    assert main(["study", str(spec)]) == 0
    said = capsys.readouterr().out
    assert "submitted prepare teacher: job" in said and "submitted vanilla: job array" in said
    assert "submitted kd: job array" in said and "5 job(s) submitted" in said
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert set(jobs) == {"prepare_teacher", *RUNS}
    queue = _squeue()
    assert all(jobs[k] in queue for k in RUNS), (jobs, queue)  # the runs wait on the teacher (afterok)
    assert main(["study", str(spec), "--status"]) == 0
    status = capsys.readouterr().out
    for key in RUNS:
        assert f"job {jobs[key]}" in status
    assert "queued" in status

    # the first run that has a checkpoint (an epoch done) and is not finished is cancelled (scancel: the job is gone,
    # the study must resubmit it); the second is preempted (SLURM's warning signal USR2, as at a time limit or a
    # preemption: the job checkpoints and requeues itself)
    victims: list[str] = []
    deadline = time.monotonic() + 240
    while len(victims) < 2 and time.monotonic() < deadline:
        for key in (k for k in RUNS if k not in victims):
            r = _run(out, key)
            # caught after its first or second of 5 epochs: 3+ epochs of margin for the signal to land before the
            # run could finish (a run caught in its last epoch raced the cancel on a lightly loaded machine)
            if (r / "checkpoint.pt").is_file() and _epochs_done(r) <= 2:
                victims.append(key)
                signal = [] if len(victims) == 1 else ["--signal=USR2"]
                subprocess.run(["scancel", *signal, jobs[key]], check=True)
                break
        else:
            time.sleep(0.02)
    assert len(victims) == 2, f"fewer than two runs were caught between a checkpoint and the end: {victims}"
    cancelled, preempted = victims
    while jobs[cancelled] in _squeue():
        time.sleep(0.1)
    while _squeue().get(jobs[preempted]) != "PENDING":  # requeued by its own job
        time.sleep(0.1)
    # SLURM holds a requeued job ~2 min (its BeginTime) while the old instance's job credential stays revoked: a
    # start forced earlier (scontrol update StartTime=now) was killed as "non-startable: Job credential revoked"
    # about one run in four, so the test waits for SLURM's own begin time, as a real cluster does.
    assert not (_run(out, cancelled) / "summary.json").is_file(), "the run finished before the cancel took effect"
    assert main(["study", str(spec), "--status"]) == 0
    status = capsys.readouterr().out
    assert any(line.split()[:3] == [*cancelled.rsplit("_", 1), "failed"] and f"see {out / 'logs'}" in line
               for line in status.splitlines()), status

    # wait for the others, then rerun: only the cancelled run is submitted again, and it resumes
    while any(jobs[k] in _squeue() for k in jobs if k != cancelled):
        time.sleep(0.5)
    assert main(["study", str(spec), "--wait"]) == 0
    said = capsys.readouterr().out
    assert said.count("  submitted ") == 1 and f"(seeds {cancelled.rsplit('_s', 1)[1]})" in said, said
    for key in victims:
        starts = _starts(out / "logs" / f"{key}.log")
        assert len(starts) == 2 and "start (resume)" in starts[1] and "--resume" in starts[1], starts
    again = _starts(out / "logs" / f"{preempted}.log")  # requeued: the same job both times
    assert all(f"slurm job {jobs[preempted]}:" in line for line in again), again
    for key in (k for k in RUNS if k not in victims):
        assert len(_starts(out / "logs" / f"{key}.log")) == 1, key

    for key in RUNS:
        _same_run(_run(out, key), _run(local_p1, key))
    assert _tables(out) == _tables(local_p1)
    assert main(["study", str(spec), "--status"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "study tiny: 5 done"


@pytest.mark.slurm
@pytest.mark.shared_data
def test_real_slurm_failed_teacher_fails_its_runs_with_log_paths(
    slurm_cluster: None, tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _grid(tmp_path, tiny_cifar10, "bad", executor="slurm", resources={"cpus": 1, "time_min": 5})
    raw = yaml.safe_load(spec.read_text())
    raw["prepare"][0]["argv"].append("model.student=nosuchnet")
    raw["seeds"] = [0]
    spec.write_text(yaml.safe_dump(raw))
    assert main(["study", str(spec), "--wait"]) == 1
    said = capsys.readouterr().out
    out = tmp_path / "bad"
    log = out / "logs" / "prepare_teacher.log"
    assert "FAILED prepare teacher (job " in said and "unknown model 'nosuchnet'" in said and f"see {log}" in said
    # the runs waited on the teacher (afterok) and were dropped with it, never started
    assert "FAILED vanilla s0 (job " in said and "FAILED kd s0 (job " in said and said.count("never started") == 2
    assert not (out / "runs" / "vanilla" / "s0").exists()


# ---------------------------------------------------------------- what a job asks for and runs


def test_sbatch_lines_come_from_the_resources_block(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    from richkd.study.executors.slurm import _executor

    spec = parse_spec({**_base(tmp_path / "out"), "executor": "slurm",
                       "resources": {"partition": "gpu", "gpus": 8, "cpus": 64, "mem_gb": 480, "time_min": 2880,
                                     "account": "kd", "qos": "high", "sbatch": ["--constraint=a100", "--exclusive"]}},
                      "s.yaml")
    text = _executor(spec, "kd", ["101", "102"])._make_submission_file_text("python -m x", "u")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=64",
                 "#SBATCH --mem=491520MB", "#SBATCH --time=2880", "#SBATCH --account=kd", "#SBATCH --qos=high",
                 "#SBATCH --constraint=a100", "#SBATCH --exclusive", "#SBATCH --dependency=afterok:101:102",
                 "#SBATCH --kill-on-invalid-dep=yes", "#SBATCH --job-name=t.kd", "#SBATCH --signal=USR2@120"):
        assert line in text.splitlines(), (line, text)


def test_a_multi_gpu_job_trains_under_torchrun_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    from richkd.study.executors.step import StepRun

    step = StepRun(key="kd_s0", argv=("train", "seed=0"), log=str(tmp_path / "l.log"), cwd=str(tmp_path), threads=4,
                   gpus=8, run_dir=str(tmp_path / "run"), creates=str(tmp_path / "run" / "summary.json"))
    assert step.command()[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "-m"]
    assert step.command()[-2:] == ["train", "seed=0"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    assert step.command()[-1] == "--resume"
    (tmp_path / "run" / "summary.json").write_text("{}")
    assert step() == "kd_s0: done before" and not (tmp_path / "l.log").exists()
