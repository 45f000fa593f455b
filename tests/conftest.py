"""Shared pytest options and fixtures."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.json from the current code instead of comparing against them",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when pytest runs with --update-golden: golden tests rewrite their file instead of comparing."""
    return bool(request.config.getoption("--update-golden"))


SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _subset_archive(out: Path, per_class: dict[str, int]) -> Path:
    """A small real-image archive: the first `per_class[split]` JPEGs of every class, in the same layout."""
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(SHARED_ARCHIVE) as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) >= per_class[parts[0]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            dst.addfile(member, src.extractfile(member))
    return out


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real CIFAR-10 images (16 train / 8 test per class) cut from ../shared/data; skips where it is absent."""
    if not SHARED_ARCHIVE.is_file():
        pytest.skip(
            f"needs the shared CIFAR-10 archive at {SHARED_ARCHIVE} (present in CI, not on user machines)"
        )
    return _subset_archive(tmp_path_factory.mktemp("tiny") / "cifar10-tiny.tar.gz", {"train": 16, "test": 8})


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may create files in: chmod 555 for a normal user; root ignores modes, so /sys there."""
    if os.geteuid() == 0:
        yield Path("/sys/richkd-test-output")
        return
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)

