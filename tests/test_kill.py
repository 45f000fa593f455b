"""SIGKILL at seeded random points: a training run and a target-cache build, killed and rerun, end exactly where
an uninterrupted run ends, and no process of theirs outlives them (decode workers included)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cifar10_archive
from proctree import assert_all_gone, descendants
from richkd.engine.checkpoint import read_model_file

pytestmark = pytest.mark.shared_data


def _env(cache_home: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RICHKD_CACHE": str(cache_home)}


def _run_killed(argv: list[str], env: dict[str, str], ready: Callable[[], bool], delay: float) -> bool:
    """Start `argv`; once `ready()` holds (progress made, so the kill lands mid-work whatever the machine's
    speed), wait `delay` s more and SIGKILL it. True if it was killed (False: it finished first)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            kids = descendants(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert_all_gone(kids, "processes outlived their SIGKILLed parent")
            return True
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        return False
    finally:
        if proc.stderr:
            proc.stderr.close()


def _epochs_done(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0



def _train_argv(archive: Path, out: Path, data_cache: Path) -> list[str]:
    argv = [sys.executable, "-m", "richkd", "train", "data.name=imagefolder", f"data.root={archive}",
            f"data.cache_dir={data_cache}", "model.student=resnet8", "distill.method=vanilla", "train.epochs=4",
            "train.batch_size=16", "train.threads=1", "train.progress=false", "optim.lr=0.05", f"out_dir={out}"]
    return argv + (["--resume"] if (out / "checkpoint.pt").exists() else [])


def test_training_killed_at_random_points_ends_bit_identical(tiny_cifar10: Path, tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_argv(tiny_cifar10, straight, tmp_path / "dc"), env=env, check=True, capture_output=True)
    # an epoch's training time on this machine, now: kill points are fractions of it, so they land inside an
    # epoch on a fast CPU as on a slow or loaded one (fixed seconds missed the whole run where epochs are short)
    epoch_s = min(json.loads(line)["time/train_s"] for line in (straight / "metrics.jsonl").read_text().splitlines())
    rng = random.Random(20261130)
    kills = 0
    for _ in range(12):
        if (killed / "summary.json").exists():
            break
        # a seeded point inside a seeded epoch: after `at` more epochs are logged, a seeded fraction into the next
        start, at, delay = _epochs_done(killed), rng.randint(0, 1), rng.uniform(0.0, 1.0) * epoch_s
        kills += _run_killed(_train_argv(tiny_cifar10, killed, tmp_path / "dc"), env,
                             lambda s=start, a=at: (killed / "run.json").exists() and _epochs_done(killed) >= s + a,
                             delay)
    if not (killed / "summary.json").exists():
        subprocess.run(_train_argv(tiny_cifar10, killed, tmp_path / "dc"), env=env, check=True, capture_output=True)
    assert kills >= 2, "the seeded kill points missed the run; widen the delays"
    state_a, _ = read_model_file(straight / "model_last.pt")
    state_b, _ = read_model_file(killed / "model_last.pt")
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    lines_a = (straight / "metrics.jsonl").read_text().splitlines()
    lines_b = (killed / "metrics.jsonl").read_text().splitlines()
    assert len(lines_b) == 4
    strip = ("time/", "throughput")
    for la, lb in zip(lines_a, lines_b, strict=True):
        ra, rb = ({k: v for k, v in json.loads(line).items() if not k.startswith(strip)} for line in (la, lb))
        assert ra == rb


def _cache_argv(archive: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "richkd", "vlm", "cache", "--dataset", "imagefolder", "--root", str(archive),
            "--teacher", "random:3", "--views", "2", "--batch-size", "4", "--checkpoint-every", "0",
            "--threads", "1", "--out", str(out)]


def test_cache_build_killed_at_random_points_ends_identical(tiny_cifar10: Path, tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_cache_argv(tiny_cifar10, straight), env=env, check=True, capture_output=True)
    rng = random.Random(7)
    kills = 0
    for _ in range(12):
        if (killed / "meta.json").exists():
            break
        kills += _run_killed(_cache_argv(tiny_cifar10, killed), env, lambda: (killed / "progress.json").exists(),
                             rng.uniform(0.0, 0.6))
    if not (killed / "meta.json").exists():
        subprocess.run(_cache_argv(tiny_cifar10, killed), env=env, check=True, capture_output=True)
    assert kills >= 1, "the seeded kill points missed the build; widen the delays"
    for name in ("cosines.npy", "image_emb.npy", "aug_params.npy", "class_emb.npy"):
        assert np.array_equal(np.load(straight / name), np.load(killed / name)), name
    assert not (killed / "progress.json").exists()


def test_decode_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    """An archive big enough for the decode pool; SIGKILL the parent as soon as its workers exist."""
    archive = cifar10_archive(tmp_path / "medium.tar.gz", {"train": 300})  # real where ../shared has it
    code = f"from richkd.data import load_dataset; load_dataset('imagefolder', {str(archive)!r}, 'train')"
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(tmp_path / "home"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    kids: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None and len(kids) < 2:
        kids = descendants(proc.pid)
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail("the decode finished before its worker pool was seen; use a larger archive")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert kids, "no decode workers were started"
    assert_all_gone(kids, "processes outlived their SIGKILLed parent", within=5.0)


# ------------------------------------------------------ issue 27 item 5: kills at the writes themselves, locks

KILL_AT_WRITE = """
import os, signal, sys
from pathlib import Path
name, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
seen = [0]
def hit():
    seen[0] += 1
    return seen[0] == nth
if name.endswith("metrics.jsonl"):  # torn append: half the line reaches the file, then the kill
    import io
    real_open = io.open  # what Path.open calls
    class Torn:
        def __init__(self, fh):
            self.fh = fh
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.fh.close()
        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    def torn_open(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        return Torn(fh) if str(file).endswith(name) and "a" in mode and hit() else fh
    io.open = torn_open
else:  # a kill just before the rename that would publish `name`: its temp file is complete and left behind
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if str(dst).endswith(name) and hit():
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **k)
    os.replace = replace
from richkd.cli import main
sys.exit(main(argv))
"""

RUN_FILES = {"config.yaml", "run.json", "model_best.pt", "model_last.pt", "checkpoint.pt", "metrics.jsonl",
             "summary.json"}


def _kill_at(argv: list[str], out: Path, name: str, nth: int, env: dict[str, str]) -> None:
    """Run `richkd argv` in a child that SIGKILLs itself at the `nth` write of `out/name`."""
    proc = subprocess.run([sys.executable, "-c", KILL_AT_WRITE, str(out / name), str(nth), *argv[3:]], env=env,
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL, f"no kill at {name} #{nth}: {proc.stderr.decode()[-2000:]}"


def _with(argv: list[str], *overrides: str) -> list[str]:
    """`argv` with more key=value overrides (before a trailing --resume)."""
    resume = argv[-1:] if argv[-1] == "--resume" else []
    return [*argv[: len(argv) - len(resume)], *overrides, *resume]


def _train2(archive: Path, out: Path, data_cache: Path) -> list[str]:
    return _with(_train_argv(archive, out, data_cache), "train.epochs=2")


@pytest.fixture(scope="module")
def straight_run(tiny_cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(an unkilled 2-epoch run, its data cache folder), shared by the kill-at-a-write cases."""
    base = tmp_path_factory.mktemp("straight")
    run, data_cache = base / "run", base / "dc"
    subprocess.run(_train2(tiny_cifar10, run, data_cache), env=_env(base / "home"), check=True, capture_output=True)
    return run, data_cache


@pytest.mark.parametrize("name,nth", [("run.json", 1), ("checkpoint.pt", 1), ("metrics.jsonl", 2),
                                      ("summary.json", 1)])
def test_training_killed_at_a_write_reruns_cleanly(name: str, nth: int, tiny_cifar10: Path, tmp_path: Path,
                                                   straight_run: tuple[Path, Path]) -> None:
    """SIGKILL at the write of each run file (a torn metrics line included); the next command (the same, plus
    --resume once a checkpoint exists) must go through, end where an unkilled run ends, and leave no temp file
    or lock behind. Old main: the torn line failed every --resume (JSONDecodeError), temp files stayed."""
    env = _env(tmp_path / "home")
    (straight, data_cache), killed = straight_run, tmp_path / "killed"
    _kill_at(_train2(tiny_cifar10, killed, data_cache), killed, name, nth, env)
    rerun = subprocess.run(_train2(tiny_cifar10, killed, data_cache), env=env, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert {p.name for p in killed.iterdir()} == RUN_FILES
    strip = ("time/", "throughput")
    records = [[{k: v for k, v in json.loads(line).items() if not k.startswith(strip)}
                for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (straight, killed)]
    assert records[0] == records[1] and [r["epoch"] for r in records[1]] == [1, 2]
    state_a, _ = read_model_file(straight / "model_last.pt")
    state_b, _ = read_model_file(killed / "model_last.pt")
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.fixture(scope="module")
def straight_cache(tiny_cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("straight-cache")
    subprocess.run(_cache_argv(tiny_cifar10, base / "cache"), env=_env(base / "home"), check=True,
                   capture_output=True)
    return base / "cache"


@pytest.mark.parametrize("name,nth", [("progress.json", 1), ("progress.json", 2), ("meta.json", 1)])
def test_cache_build_killed_at_a_write_reruns_cleanly(name: str, nth: int, tiny_cifar10: Path, tmp_path: Path,
                                                      straight_cache: Path) -> None:
    """Old main: a kill at the first progress record left `.progress.json.*.tmp` beside the arrays, and the
    rerun refused the folder as "not a target cache"; a kill after the last progress record but before
    meta.json left a complete-looking build that the rerun called done and never finished."""
    env = _env(tmp_path / "home")
    straight, killed = straight_cache, tmp_path / "killed"
    _kill_at(_cache_argv(tiny_cifar10, killed), killed, name, nth, env)
    rerun = subprocess.run(_cache_argv(tiny_cifar10, killed), env=env, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert {p.name for p in killed.iterdir()} == {p.name for p in straight.iterdir()}
    for name_ in ("cosines.npy", "image_emb.npy", "aug_params.npy", "class_emb.npy"):
        assert np.array_equal(np.load(straight / name_), np.load(killed / name_)), name_


def test_two_identical_trains_into_one_out_dir(tiny_cifar10: Path, tmp_path: Path) -> None:
    """Old main: both ran and "succeeded", one interleaved metrics.jsonl. Now the second fails in one line
    naming the first (pid), exit 2; and once the first is SIGKILLed its lock blocks nobody."""
    env = _env(tmp_path / "home")
    out = tmp_path / "run"
    argv = _with(_train_argv(tiny_cifar10, out, tmp_path / "dc"), "train.epochs=60")  # long enough to be caught
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.yaml").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        second = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert first.poll() is None, "the first run ended before the second started: raise train.epochs"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith("richkd: error: run directory") and f"pid {first.pid}" in lines[0], lines[0]
    assert "Traceback" not in second.stderr
    resumed = subprocess.run(_with(_train_argv(tiny_cifar10, out, tmp_path / "dc"), "train.epochs=60",
                                   "train.stop_after=1"), env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))
