"""`python -m richkd.launch`: tcmalloc preload, thread settings, torchrun for several processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from richkd.launch import find_tcmalloc, launch_plan


def test_plan_preloads_tcmalloc_and_sets_threads(tmp_path: Path) -> None:
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    env = {"RICHKD_TCMALLOC": str(lib), "LD_PRELOAD": "/x/other.so"}
    command, changes = launch_plan(["train", "-c", "a.yaml"], threads=3, env=env)
    assert command[-4:] == ["richkd", "train", "-c", "a.yaml"] and command[0] == sys.executable
    assert changes["LD_PRELOAD"] == f"{lib}:/x/other.so"
    assert changes["OMP_NUM_THREADS"] == changes["MKL_NUM_THREADS"] == "3"
    _, off = launch_plan(["train"], threads=1, tcmalloc=False, env=env)
    assert "LD_PRELOAD" not in off
    _, already = launch_plan(["train"], threads=1, env={**env, "LD_PRELOAD": str(lib)})
    assert "LD_PRELOAD" not in already  # preloaded once, not twice


def test_plan_for_several_processes_uses_torchrun_and_splits_cores() -> None:
    command, changes = launch_plan(["train"], nproc=2, env={"RICHKD_TCMALLOC": "", "OMP_NUM_THREADS": "x"})
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[-3:] == ["-m", "richkd", "train"]
    assert int(changes["OMP_NUM_THREADS"]) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert "LD_PRELOAD" not in changes


def test_find_tcmalloc_override_and_disable() -> None:
    assert find_tcmalloc({"RICHKD_TCMALLOC": ""}) is None
    assert find_tcmalloc({"RICHKD_TCMALLOC": "/opt/lib/libtcmalloc.so"}) == "/opt/lib/libtcmalloc.so"


def test_launch_runs_richkd() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RICHKD_LAUNCHED"}
    proc = subprocess.run(
        [sys.executable, "-m", "richkd.launch", "--threads", "1", "--", "models"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "resnet32x4" in proc.stdout
    assert "OMP_NUM_THREADS=1" in proc.stderr
    dry = subprocess.run(
        [sys.executable, "-m", "richkd.launch", "--dry-run", "--nproc", "2", "--", "train", "x=1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert dry.returncode == 0 and "--nproc_per_node=2" in dry.stdout and dry.stdout.strip().endswith("train x=1")
