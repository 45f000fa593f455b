"""SIGKILL at seeded random points: a training run and a target-cache build, killed and rerun, end exactly where
an uninterrupted run ends, and no process of theirs outlives them (decode workers included)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from proctree import assert_all_gone, descendants
from richkd.engine.checkpoint import read_model_file

SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"

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
    if not SHARED_ARCHIVE.is_file():
        pytest.skip(f"needs the shared CIFAR-10 archive at {SHARED_ARCHIVE}")
    archive = tmp_path / "medium.tar.gz"
    with tarfile.open(SHARED_ARCHIVE) as src, tarfile.open(archive, "w:gz") as dst:
        taken = 0
        for member in src:
            if member.isfile() and member.name.startswith("train/") and taken < 3000:
                dst.addfile(member, src.extractfile(member))
                taken += 1
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
