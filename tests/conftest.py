"""Shared pytest options, fixtures and CI rules.

Under CI (env CI=true, as GitHub Actions and most runners set it):
- `--update-golden` is a usage error: golden values are never rewritten from the code they check.
- a test skipped for missing data (the shared CIFAR-10 archive) FAILS instead of skipping quietly.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"
# Set to 1 to use the generated archive even where the shared one exists (checks the fallback itself).
FORCE_GENERATED_ENV = "RICHKD_TEST_GENERATED_DATA"
# A skip whose reason contains one of these is a skip for missing data (a failure under CI).
MISSING_DATA_MARKERS = (str(SHARED_DATA), "missing data:")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def in_ci() -> bool:
    """True where the environment says it is CI (CI=true or CI=1, any case)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.json from the current code instead of comparing against them "
        "(refused under CI=true)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--update-golden", default=False) and in_ci():
        raise pytest.UsageError(
            "--update-golden is refused under CI=true: golden values are rewritten by a person, locally, "
            "and the diff reviewed"
        )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when pytest runs with --update-golden: golden tests rewrite their file instead of comparing."""
    return bool(request.config.getoption("--update-golden"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Under CI a skip for missing data is a failure: CI has the data, so such a skip hides a broken setup."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(marker in reason for marker in MISSING_DATA_MARKERS):
        report.outcome = "failed"
        report.longrepr = f"skipped for missing data under CI=true (a failure in CI): {reason}"


def shared_archive_available() -> bool:
    return SHARED_ARCHIVE.is_file() and os.environ.get(FORCE_GENERATED_ENV) != "1"


def _subset_archive(out: Path, per_class: dict[str, int]) -> Path:
    """A small real-image archive: the first `per_class[split]` JPEGs of every class (splits not named: none),
    in the same layout."""
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(SHARED_ARCHIVE) as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) >= per_class.get(parts[0], 0):
                continue
            counts[key] = counts.get(key, 0) + 1
            dst.addfile(member, src.extractfile(member))
    return out


# Ten well-separated RGB colours (0-1): class k draws palette[k] stripes over palette[(k + 3) % 10].
PALETTE = np.array([
    [0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.95, 0.9, 0.1], [0.9, 0.1, 0.9],
    [0.1, 0.9, 0.9], [0.95, 0.55, 0.1], [0.5, 0.1, 0.7], [0.95, 0.95, 0.95], [0.1, 0.1, 0.1],
])  # fmt: skip


def class_image(label: int, index: int, n_classes: int = 10, side: int = 32) -> np.ndarray:
    """A procedurally drawn `[side, side, 3]` uint8 image whose class shows: class k has stripes of its own colour
    over another's, at angle 180k/C degrees with period 4 + k % 3 pixels. `index` moves the stripes' phase and
    draws a disc of random colour, place and size plus mild noise, so every image is distinct (a network can
    memorise it) while the class stays plain to see."""
    rng = np.random.default_rng([label, index, 2027])
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    angle = np.pi * label / n_classes
    period = 4.0 + label % 3
    phase = rng.uniform(0, 2 * np.pi)
    stripes = (np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase) > 0)[..., None]
    fg, bg = PALETTE[label % len(PALETTE)], PALETTE[(label + 3) % len(PALETTE)]
    img = np.where(stripes, fg, bg)
    cy, cx = rng.uniform(0.2, 0.8, 2) * side
    r = rng.uniform(0.1, 0.25) * side
    img = np.where(((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None], rng.uniform(0, 1, 3), img)
    img = img + rng.normal(0, 0.03, (side, side, 3))
    return np.asarray(np.clip(img * 255, 0, 255), dtype=np.uint8)


def generated_archive(out: Path, per_class: dict[str, int], classes: tuple[str, ...] = CIFAR10_CLASSES) -> Path:
    """A JPEG image-folder `tar.gz` in the shared archive's layout (`<split>/<class>/<NNNN>.jpg`, 32x32 RGB) with
    `per_class[split]` procedurally drawn images per class (`class_image`): the tests' data where ../shared is
    absent. Deterministic: the same arguments give the same images."""
    from PIL import Image

    with tarfile.open(out, "w:gz") as dst:
        for split, count in per_class.items():
            for label, name in enumerate(classes):
                for i in range(count):
                    buf = io.BytesIO()
                    index = i if split == "train" else 100_000 + i
                    Image.fromarray(class_image(label, index, len(classes))).save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = buf.tell()
                    info.mode = 0o644
                    buf.seek(0)
                    dst.addfile(info, buf)
    return out


def cifar10_archive(out: Path, per_class: dict[str, int]) -> Path:
    """The first `per_class[split]` real CIFAR-10 JPEGs per class where ../shared/data has the archive, else as
    many generated images in the same layout. Never skips."""
    if shared_archive_available():
        return _subset_archive(out, per_class)
    return generated_archive(out, per_class)


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train / 8 test images per class: real CIFAR-10 cut from ../shared/data, or generated where it is absent."""
    return cifar10_archive(tmp_path_factory.mktemp("tiny") / "cifar10-tiny.tar.gz", {"train": 16, "test": 8})


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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny steps: two threads on a busy 2-core machine were 10x slower than one. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomise_bn_affine(model: Any, generator: Any, *, running_var: bool = False) -> None:
    """Standard-normal BN weights and biases (signs mixed: OFD's margin and the pre-ReLU BN choice are then visible),
    optionally a running variance in [0.5, 1.5): per module, in that order of draws."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.num_features, generator=generator))
                m.bias.copy_(torch.randn(m.num_features, generator=generator))
                if running_var:
                    m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)

