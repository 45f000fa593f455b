"""examples/quickstart.py, the API's worked example (docs/api.md), run as a user runs it on a few hundred real
CIFAR-10 JPEGs: teacher -> surrogate vision-language cache -> RichKD student -> analysis -> report. The checks are
on what it produced, read back from the files, not only on its exit code."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_ARCHIVE, cifar10_archive, shared_archive_available

pytestmark = pytest.mark.shared_data
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
TRAIN, TEST = 500, 200  # 50 and 20 real images per class


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely a chance-level classifier scores k or more of n."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_binomial_tail_by_hand() -> None:
    assert binomial_tail(0, 5, 0.3) == pytest.approx(1.0)
    assert binomial_tail(2, 2, 0.5) == pytest.approx(0.25)
    assert binomial_tail(1, 2, 0.5) == pytest.approx(0.75)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    if not shared_archive_available():  # generated images carry no class signal to beat chance with
        pytest.skip(f"missing data: the real CIFAR-10 archive {SHARED_ARCHIVE}")
    base = tmp_path_factory.mktemp("quickstart")
    archive = cifar10_archive(base / "cifar10.tar.gz", {"train": TRAIN // 10, "test": TEST // 10})
    out = base / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RICHKD_CACHE": str(base / "home-cache")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--data", str(archive), "--out", str(out), "--train-images", str(TRAIN),
         "--test-images", str(TEST)], capture_output=True, text=True, env=env, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), out


def test_runs_train_and_record_every_epoch(quickstart: tuple[dict, Path]) -> None:
    result, out = quickstart
    for name in ("teacher", "student"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert result[name] == summary  # what the API returned is what the run directory holds
        assert {"best_top1", "last_top1", "last_nll", "last_ece", "epochs"} <= summary.keys()
        epochs = [json.loads(line)["epoch"] for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, summary["epochs"] + 1))
    assert result["student_epochs"] == result["student"]["epochs"]
    assert "CRD" in result["student"]["loss"] and "KD" in result["student"]["loss"]  # RichKD(L+F): both terms


def test_models_beat_chance_on_the_test_rows(quickstart: tuple[dict, Path]) -> None:
    """Each predictions file holds TEST rows; a 10-class guesser reaching its top-1 has probability < 1e-3."""
    from richkd.analysis.predictions import read_predictions

    result, _ = quickstart
    for name in ("teacher", "richkd"):
        preds = read_predictions(result["predictions"][name]["path"])
        correct = int((preds.logits.argmax(1) == preds.labels).sum())
        assert len(preds.labels) == TEST and len(set(preds.labels.tolist())) == 10
        assert 100.0 * correct / TEST == pytest.approx(result["predictions"][name]["top1"], abs=1e-4)
        assert binomial_tail(correct, TEST, 0.1) < 1e-3, (name, correct)


def test_cache_analysis_and_report(quickstart: tuple[dict, Path]) -> None:
    from richkd.caches.target import TargetCache

    result, out = quickstart
    cache = TargetCache.open(result["cache"])
    assert cache.meta.n_rows == TRAIN and "not CLIP" in result["cache_teacher"]
    analysis = json.loads(Path(result["analysis"]).read_text())
    assert set(analysis["predictors"]) == {"teacher", "richkd"}
    report = Path(result["report"]).read_text()
    assert Path(result["report_html"]).is_file()
    assert "RichKD quickstart" in report and "| teacher |" in report and "| student |" in report
    assert "surrogate" in report  # the report says which vision-language teacher it was


def test_api_doc_names_every_public_name() -> None:
    """docs/api.md describes each name of richkd.__all__ (and richkd.api's), and names nothing that is not one."""
    import re

    import richkd
    import richkd.api

    doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    public = set(richkd.__all__) - {"__version__"}
    assert public == set(richkd.api.__all__)
    described = {m.group(1) for m in re.finditer(r"^\| `(\w+)", doc, re.M)}
    described |= {name for m in re.finditer(r"^\| `(\w+)`, `(\w+)`", doc, re.M) for name in m.groups()}
    assert public - described == set(), "undocumented"
    assert described - public == set(), "documented but not public"
    for name in public:
        assert getattr(richkd, name) is getattr(richkd.api, name)
