"""The suite's own rules (tests/conftest.py): golden values are not rewritten under CI, the data fixtures never
skip (a generated archive stands in for ../shared/data), and under CI a skip for missing data is a failure."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import CIFAR10_CLASSES, generated_archive

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "golden" / "losses.json"


def _env(ci: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return {**env, "CI": "true"} if ci else env


def test_update_golden_is_a_usage_error_under_ci() -> None:
    before = GOLDEN.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(TESTS / "test_distillers.py"), "-k", "test_golden_loss_values",
         "--update-golden", "-q", "-p", "no:cacheprovider"],
        cwd=TESTS.parent, env=_env(ci=True), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert GOLDEN.read_bytes() == before, "the golden file was rewritten under CI=true"
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--update-golden is refused under CI=true" in proc.stderr


PROBE = '''
import tarfile
import pytest

def test_uses_the_tiny_archive(tiny_cifar10):
    with tarfile.open(tiny_cifar10) as tf:
        names = [m.name for m in tf if m.isfile()]
    assert len(names) == 10 * (16 + 8)

def test_skips_for_missing_data():
    pytest.skip("missing data: the probe's archive is absent")

def test_skips_for_another_reason():
    pytest.skip("needs a GPU")
'''

RUNNER = '''
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import conftest
import pytest
conftest.SHARED_ARCHIVE = Path("/nonexistent/shared/data/cifar10-jpeg.tar.gz")  # ../shared/data is absent
sys.exit(pytest.main([{probe!r}, "-q", "-rA", "-p", "no:cacheprovider", "--rootdir", {root!r}], plugins=[conftest]))
'''


@pytest.mark.parametrize("ci", [False, True])
def test_without_shared_data_the_fixture_generates_and_ci_fails_data_skips(tmp_path: Path, ci: bool) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    code = RUNNER.format(tests=str(TESTS), probe=str(probe), root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(ci), capture_output=True, text=True,
                          timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert "PASSED test_probe.py::test_uses_the_tiny_archive" in out, out[-3000:]
    assert "SKIPPED" in out and "needs a GPU" in out, out[-3000:]  # other skips stay skips, CI or not
    if ci:
        assert "FAILED test_probe.py::test_skips_for_missing_data" in out, out[-3000:]
        assert proc.returncode == pytest.ExitCode.TESTS_FAILED
    else:
        assert "missing data: the probe" in out and "FAILED" not in out, out[-3000:]
        assert proc.returncode == pytest.ExitCode.OK


def test_generated_archive_has_the_layout_and_separable_classes(tmp_path: Path) -> None:
    from richkd.data import load_dataset

    archive = generated_archive(tmp_path / "gen.tar.gz", {"train": 6, "test": 3})
    with tarfile.open(archive) as tf:
        names = sorted(m.name for m in tf if m.isfile())
    assert names[0] == "test/airplane/0000.jpg" and len(names) == 10 * 9
    train = load_dataset("imagefolder", archive, "train", cache_dir=tmp_path / "c")
    test = load_dataset("imagefolder", archive, "test", cache_dir=tmp_path / "c")
    assert train.classes == CIFAR10_CLASSES and train.images.shape == (60, 3, 32, 32)
    assert train.labels.bincount().tolist() == [6] * 10 and test.labels.bincount().tolist() == [3] * 10
    assert len({bytes(img.numpy()) for img in train.images}) == 60  # no two images equal
    # Class-distinguishable: a nearest-class-mean classifier on the mean colour labels every test image.
    colour = lambda ds: ds.images.float().mean(dim=(2, 3)).numpy()  # noqa: E731
    centroids = np.stack([colour(train)[train.labels.numpy() == k].mean(0) for k in range(10)])
    dist = ((colour(test)[:, None, :] - centroids[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == test.labels.numpy()).all()
