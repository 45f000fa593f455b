"""`richkd study`: the seed statistics against hand-computed values, the spec's one-line errors, the argv the runner
composes, and end to end on real CIFAR-10 images: a 2 arms x 2 seeds grid with a teacher in `prepare`, the runner
SIGKILLed once a run has finished, then rerun: finished runs are not trained again and the results are complete."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from proctree import assert_all_gone, descendants
from richkd.cli import build_parser, main
from richkd.errors import RichKDError
from richkd.study import stats
from richkd.study.grid import arm_jobs, check_arm_records, run_dir
from richkd.study.spec import parse_spec, split_argv

# ---------------------------------------------------------------- statistics


def test_mean_and_sample_std_match_hand_values() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert stats.mean(values) == 2.5
    # sum of squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3
    assert stats.sample_std(values) == pytest.approx(math.sqrt(5 / 3))
    assert stats.sample_std([7.0]) is None


@pytest.mark.parametrize(("df", "quantile"), [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (30, 2.0423)])
def test_t_quantiles_match_the_table(df: int, quantile: float) -> None:
    assert stats.t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-4)


def test_t_interval_and_verdict() -> None:
    # [1, 2, 3, 4]: 2.5 ± 3.1824 * sqrt(5/3) / 2 = 2.5 ± 2.0542
    interval = stats.t_interval([1.0, 2.0, 3.0, 4.0])
    assert interval is not None
    assert (interval.low, interval.high) == (pytest.approx(0.44575, abs=1e-4), pytest.approx(4.55425, abs=1e-4))
    assert stats.verdict(interval) == stats.BEYOND
    # two seeds, differences 1 and 3: 2 ± 12.7062 * sqrt(2) / sqrt(2) = [-10.706, 14.706]
    wide = stats.t_interval([1.0, 3.0])
    assert wide is not None and wide.low == pytest.approx(-10.7062, abs=1e-4)
    assert stats.verdict(wide) == stats.WITHIN
    assert stats.t_interval([0.5]) is None and stats.verdict(None) == stats.TOO_FEW
    negative = stats.t_interval([-2.0, -2.2, -1.8])
    assert negative is not None and negative.high < 0 and stats.verdict(negative) == stats.BEYOND


def test_paired_differences_use_shared_seeds_only() -> None:
    arm = {0: 71.0, 1: 70.0, 2: None, 3: 69.5}
    ref = {0: 70.0, 1: 70.5, 2: 69.0}
    assert stats.paired_differences(arm, ref) == {0: 1.0, 1: -0.5}


# ---------------------------------------------------------------- spec and argv


def _spec_dict(out: Path) -> dict[str, object]:
    return {
        "name": "t", "out": str(out), "seeds": [0, 1], "common": ["train.epochs=1"],
        "arms": {"vanilla": {"argv": ["distill.method=vanilla"]},
                 "kd": {"title": "KD", "argv": ["distill.method=kd", "-c", "x.yaml"]}},
        "compare": ["kd"],
    }


@pytest.mark.parametrize(("change", "needle"), [
    (lambda d: d.update(parralel=2), "unknown key 'parralel'"),
    (lambda d: d["arms"]["kd"].pop("argv"), "arms.kd has no argv"),
    (lambda d: d.update(compare=["dkd"]), "compare names 'dkd'"),
    (lambda d: d.update(analysis={"robustness": {"limt": 10}}), "unknown key 'analysis.robustness.limt'"),
    (lambda d: d["arms"]["kd"].update(argv=["seed=3"]), "the runner sets seed"),
    (lambda d: d.update(seeds=[0, 0]), "repeat a seed"),
    (lambda d: d.update(common=["-c", "x.yaml"]), "only key=value overrides"),
    (lambda d: d["arms"]["kd"].update(argv=["{outdir}/x=1"]), "neither an option"),
    (lambda d: d.update(analysis={"flows": ["kd:teacher"]}), "'teacher' is neither"),
])
def test_bad_spec_is_one_line_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: object,
                                             needle: str) -> None:
    raw = _spec_dict(tmp_path / "out")
    change(raw)  # type: ignore[operator]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["study", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("richkd: error: study spec") and needle in err[0], err


def test_runner_argv_puts_options_first_and_resumes_a_checkpointed_run(tmp_path: Path) -> None:
    assert split_argv(["model.x=1", "-c", "cfg.yaml", "--method", "kd", "--flag", "a.b=2"]) == (
        ["-c", "cfg.yaml", "--method", "kd", "--flag"], ["model.x=1", "a.b=2"], [])
    spec = parse_spec(_spec_dict(tmp_path / "out"), "test")
    folder = run_dir(spec.out_path, "kd", 1)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"")  # an epoch finished, no summary: resume
    jobs = {job.key: job for job in arm_jobs(spec, threads=3)}
    assert [job.key for job in jobs.values()] == ["vanilla_s0", "kd_s0", "vanilla_s1", "kd_s1"]  # seed by seed
    kd1 = jobs["kd_s1"]
    assert kd1.state == "resume" and kd1.argv[-1] == "--resume" and jobs["kd_s0"].state == "new"
    args = build_parser().parse_args(list(kd1.argv))  # the real `richkd train` parser takes it as one block
    assert args.config == "x.yaml" and args.resume
    assert args.overrides == ["train.threads=3", "train.epochs=1", "distill.method=kd", "seed=1", f"out_dir={folder}"]


def test_changed_arm_is_refused_once_it_has_runs(tmp_path: Path) -> None:
    raw = _spec_dict(tmp_path / "out")
    check_arm_records(parse_spec(raw, "test"))  # records each arm's argv
    raw["arms"]["kd"]["argv"] = ["distill.method=kd", "distill.temperature=2"]  # type: ignore[index]
    check_arm_records(parse_spec(raw, "test"))  # no runs yet: the new argv is recorded
    folder = run_dir(tmp_path / "out", "kd", 0)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    raw["arms"]["kd"]["argv"] = ["distill.method=kd"]  # type: ignore[index]
    with pytest.raises(RichKDError, match="arm kd: its argv changed"):
        check_arm_records(parse_spec(raw, "test"))


def test_report_groups_study_run_directories_by_arm() -> None:
    from richkd.report.tables import group_name, run_label

    assert group_name(Path("out/runs/kd/s0")) == "kd" and run_label(Path("out/runs/kd/s0")) == "kd_s0"
    assert group_name(Path("runs/kd_s1")) == "kd" and run_label(Path("runs/kd_s1")) == "kd_s1"


def _fake_run(folder: Path, last_top1: float) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "best_top1": last_top1 + 0.5, "best_top5": 99.0, "best_epoch": 1, "last_top1": last_top1, "last_top5": 99.0,
        "last_nll": 1.0, "last_ece": 0.05, "epochs": 1, "train_wall_s": 10.0, "loss": "Loss = 1.0*CE"}))


def test_report_only_tables_from_finished_runs_match_hand_values(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    raw = {**_spec_dict(tmp_path / "out"), "seeds": [0, 1, 2]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    for seed, (kd, vanilla) in enumerate([(69.0, 70.0), (70.0, 72.0), (70.0, 71.0)]):
        _fake_run(tmp_path / "out" / "runs" / "kd" / f"s{seed}", kd)
        if seed < 2:
            _fake_run(tmp_path / "out" / "runs" / "vanilla" / f"s{seed}", vanilla)
    assert main(["study", str(path), "--report-only"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith(("runs:", "["))]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    kd = results["arms"]["kd"]["summary"]["last_top1"]
    assert kd["n"] == 3 and kd["mean"] == pytest.approx(209 / 3) and kd["std"] == pytest.approx(math.sqrt(1 / 3))
    [cmp] = [c for c in results["comparisons"] if c["metric"] == "last_top1"]
    # vanilla − kd on seeds 0 and 1: [1, 2]; mean 1.5, s = sqrt(0.5), half width 12.7062 * sqrt(0.5) / sqrt(2)
    assert (cmp["arm"], cmp["against"], cmp["seeds"], cmp["differences"]) == ("vanilla", "kd", [0, 1], [1.0, 2.0])
    assert cmp["low"] == pytest.approx(1.5 - 6.3531, abs=1e-3) and cmp["high"] == pytest.approx(1.5 + 6.3531, abs=1e-3)
    assert cmp["verdict"] == stats.WITHIN
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| vanilla | vanilla | 2/3 * | 71.50 ± 1.41 | 71.00 ± 1.41 |" in markdown  # fewer seeds: marked
    assert "| kd | KD | 3/3 | 70.17 ± 0.58 | 69.67 ± 0.58 |" in markdown
    assert "Study results: t" in (tmp_path / "out" / "report" / "report.html").read_text()


# ---------------------------------------------------------------- end to end


def _write_spec(tmp_path: Path, archive: Path) -> Path:
    train = ["data.name=imagefolder", f"data.root={archive}", "model.student=resnet8", "train.epochs=1",
             "train.batch_size=16", "train.max_steps_per_epoch=2", "train.progress=false", "optim.lr=0.05"]
    spec = {
        "name": "tiny", "out": str(tmp_path / "study"), "seeds": [0, 1], "parallel": 2, "threads": 1,
        "common": train,
        "prepare": [{"name": "teacher", "argv": ["train", "distill.method=vanilla", "out_dir={out}/teacher"],
                     "creates": "{out}/teacher/summary.json"}],
        "arms": {
            "vanilla": {"title": "vanilla", "argv": ["distill.method=vanilla"]},
            "kd": {"title": "KD (T=4)", "argv": ["distill.method=kd", "model.teacher=resnet8",
                                                 "model.teacher_checkpoint={out}/teacher/model_last.pt"]},
        },
        "compare": ["kd"],
        "analysis": {"threads": 1, "flows": ["teacher:kd"],
                     "predictors": {"teacher": ["--checkpoint", "{out}/teacher/model_last.pt", "--kind", "teacher"]},
                     "robustness": {"limit": 20, "severities": [1], "corruptions": ["contrast", "gaussian_noise"]}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _starts(log: Path) -> int:
    return sum(line.startswith("--- ") and " start (" in line for line in log.read_text().splitlines())


@pytest.mark.shared_data
def test_study_killed_mid_grid_then_rerun_skips_finished_runs(
    tiny_cifar10: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RICHKD_CACHE", str(tmp_path / "home"))
    spec = _write_spec(tmp_path, tiny_cifar10)
    out = tmp_path / "study"
    runs = {f"{arm}_s{seed}": out / "runs" / arm / f"s{seed}" for seed in (0, 1) for arm in ("vanilla", "kd")}

    assert main(["study", str(spec), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert plan.count(": new] richkd train") == 5 and "seed=1 out_dir=" in plan

    # the runner, SIGKILLed once two runs have written their summaries and a third has started (progress, not the
    # clock, sets the kill point; two, not one, so that the run killed in flight is the one with the least to redo)
    proc = subprocess.Popen([sys.executable, "-m", "richkd", "study", str(spec)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    def ready() -> bool:
        done = [key for key, r in runs.items() if (r / "summary.json").is_file()]
        started = [key for key in runs if (out / "logs" / f"{key}.log").is_file()]
        return len(done) >= 2 and len(started) > len(done)

    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    kids = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.stderr:
        proc.stderr.close()
    assert kids, "no training run was running"
    assert_all_gone(kids, "training runs outlived the SIGKILLed runner")
    finished = {key: (r / "summary.json").stat().st_mtime_ns for key, r in runs.items()
                if (r / "summary.json").is_file()}
    assert 1 <= len(finished) < len(runs), finished
    in_flight = [key for key in runs if key not in finished and (out / "logs" / f"{key}.log").is_file()]
    assert in_flight, "no run was in flight at the kill"

    # --post-only: the finished runs get predictions and tables; nothing is trained or resumed
    starts = {key: _starts(out / "logs" / f"{key}.log") for key in in_flight}
    assert main(["study", str(spec), "--post-only"]) == 0
    said = capsys.readouterr().out
    assert " done before" not in said and f"after the runs: {len(finished)} of 4 finished" in said
    assert {key: _starts(out / "logs" / f"{key}.log") for key in in_flight} == starts
    assert all((out / "predictions" / f"{key}.preds.safetensors").is_file() for key in finished)

    assert main(["study", str(spec)]) == 0
    said = capsys.readouterr().out
    assert "prepare teacher: done before, skipped" in said
    assert f"runs: {len(finished)} of 4 done before" in said
    for key, mtime in finished.items():  # not trained again
        assert (runs[key] / "summary.json").stat().st_mtime_ns == mtime
        assert _starts(out / "logs" / f"{key}.log") == 1, key
        assert f"start  {key.replace('_s', ' s')}" not in said
    for key, run in runs.items():
        assert (run / "summary.json").is_file(), key
    for key in in_flight:  # killed mid-run: started again
        assert _starts(out / "logs" / f"{key}.log") == 2, key

    results = json.loads((out / "results.json").read_text())
    assert results["arms"]["vanilla"]["seeds_done"] == [0, 1] and results["arms"]["kd"]["seeds_done"] == [0, 1]
    assert results["arms"]["kd"]["summary"]["last_top1"]["n"] == 2
    last = {key: json.loads((run / "summary.json").read_text())["last_top1"] for key, run in runs.items()}
    diffs = [last["vanilla_s0"] - last["kd_s0"], last["vanilla_s1"] - last["kd_s1"]]
    [cmp] = [c for c in results["comparisons"] if c["arm"] == "vanilla" and c["metric"] == "last_top1"]
    assert cmp["against"] == "kd" and cmp["n"] == 2 and cmp["seeds"] == [0, 1]
    assert cmp["differences"] == pytest.approx(diffs) and cmp["mean"] == pytest.approx(sum(diffs) / 2)
    half = stats.t_quantile(0.975, 1) * abs(diffs[0] - diffs[1]) / 2  # s / sqrt(2) with s = |d0 - d1| / sqrt(2)
    assert cmp["low"] == pytest.approx(cmp["mean"] - half) and cmp["high"] == pytest.approx(cmp["mean"] + half)
    assert cmp["verdict"] == (stats.BEYOND if cmp["low"] > 0 or cmp["high"] < 0 else stats.WITHIN)
    for arm in ("vanilla", "kd"):
        summary = results["arms"][arm]["summary"]
        assert summary["confident_correct"]["n"] == 2 and summary["mean_corruption_accuracy"]["n"] == 2
    markdown = (out / "results.md").read_text()
    assert "| vanilla | vanilla | 2/2 |" in markdown and "Paired differences against kd" in markdown
    html = (out / "report" / "report.html").read_text()
    assert "Study results: tiny" in html and "Confidence quadrants" in html

    assert main(["study", str(spec), "--dry-run"]) == 0
    assert capsys.readouterr().out.count(": done, skipped] richkd train") == 5

    # robustness: the models due were evaluated in one pass (each corrupted chunk made once); a model's numbers are
    # those of a pass of its own (gaussian_noise draws random noise: the same images only if keyed the same way)
    for key in runs:
        assert len(json.loads((out / "robustness" / key / "robustness.json").read_text())["evaluated_with"]) >= 2
    alone = tmp_path / "alone"
    assert main(["robustness", "--checkpoint", f"kd_s1={runs['kd_s1'] / 'model_last.pt'}", "--dataset", "imagefolder",
                 "--root", str(tiny_cifar10), "--split", "test", "--limit", "20", "--severities", "1", "--seed", "0",
                 "--corruptions", "contrast,gaussian_noise", "--threads", "1", "--out", str(alone)]) == 0
    own = json.loads((alone / "robustness.json").read_text())["models"]["kd_s1"]
    shared = json.loads((out / "robustness" / "kd_s1" / "robustness.json").read_text())["models"]["kd_s1"]
    assert own.pop("checkpoint_sha256") == shared.pop("checkpoint_sha256")
    assert {k: v for k, v in own.items() if k != "checkpoint"} == {k: v for k, v in shared.items() if k != "checkpoint"}
    assert "kd_s1" in (out / "robustness" / "kd_s1" / "robustness.md").read_text()
