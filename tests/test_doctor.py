"""Issue 20 item 3: `richkd doctor` reports this machine (CPU flags, torch build, bf16, tcmalloc, extras, data
locations) as text and as JSON. Expected values come from outside richkd: /proc/cpuinfo read here, torch's own
answers, importlib.metadata, and a fake environment set up by the test."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

from richkd.cli import main


def run_json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["doctor", "--json"]) == 0
    report: dict[str, object] = json.loads(capsys.readouterr().out)
    return report


def _cpuinfo_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def test_json_report_matches_the_machine(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RICHKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.chdir(tmp_path)
    report = run_json(capsys)
    cpu, tch = report["cpu"], report["torch"]
    assert isinstance(cpu, dict) and isinstance(tch, dict)
    flags = _cpuinfo_flags()
    if flags is not None:  # every reported flag agrees with /proc/cpuinfo, read independently here
        for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"):
            assert cpu["flags"][flag] == (flag in flags), flag
        assert cpu["bf16_fast"] == bool(flags & {"amx_bf16", "avx512_bf16"})
    assert tch["version"] == torch.__version__
    assert tch["cuda_available"] == torch.cuda.is_available()
    assert tch["threads"] == torch.get_num_threads()
    assert report["thread_env"]["OMP_NUM_THREADS"] == "3"  # type: ignore[index]
    packages = report["packages"]
    assert isinstance(packages, dict)
    for name in ("onnx", "onnxruntime", "open_clip_torch", "transformers", "timm", "simplejpeg", "mlflow",
                 "tensorboard", "wandb", "submitit", "efficientnet-lite-pytorch"):
        try:
            want: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            want = None
        assert packages[name] == want, name
    where = report["locations"]
    assert isinstance(where, dict)
    assert where["dataset_cache"]["path"] == str(tmp_path / "cache" / "datasets")
    assert where["dataset_cache"]["found"] is False
    assert where["fashion_mnist"]["path"] == "/usr/share/datasets/fashion-mnist"
    assert where["fashion_mnist"]["found"] == Path("/usr/share/datasets/fashion-mnist").is_dir()
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    assert run_json(capsys)["locations"]["demo_out"]["found"] is True  # type: ignore[index]


def test_text_report_says_what_a_bug_report_needs(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RICHKD_TCMALLOC", "/opt/fake/libtcmalloc.so.4")  # the launcher's override, honoured here
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}" in text
    assert "bf16 fast on this CPU:" in text
    assert "tcmalloc: found /opt/fake/libtcmalloc.so.4" in text
    assert "wandb" in text and "submitit" in text and "onnxruntime" in text
    assert "/usr/share/datasets/fashion-mnist" in text
    assert "not installed" in text or all(
        _installed(n) for n in ("mlflow", "tensorboard", "wandb", "submitit", "open_clip_torch", "timm")
    )


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
