"""Issue 27 item 5 / issue 20 (out_dir): one atomic writer, torn logs, crash-safe cache replacement, writer locks.

No dataset needed: each case is set up by hand, and the crashes are real (a child process SIGKILLs itself at the
exact point a crash would hurt, so its PID is dead afterwards, as after any kill).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from richkd.caches import chunked
from richkd.caches.target import CacheMeta, TargetCache, write_target_cache
from richkd.engine import io
from richkd.engine.lock import LOCK_NAME, FolderBusy, hold
from richkd.engine.trainer import _last_epoch_logged, _truncate_metrics
from richkd.errors import RichKDError


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch os.fsync to note 'file' or 'dir' for every call (then really fsync)."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


# ------------------------------------------------------------------------------------------- one atomic writer


@pytest.mark.parametrize("writer", ["json", "dataset-cache", "cache-meta"])
def test_every_atomic_writer_fsyncs_the_file_and_its_folder(
    writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old helpers: io.write_atomic fsynced the file only; folder._write_atomic and chunked.finish not at all.
    A rename is durable only once its folder is fsynced, so each must do both, and leave no temp file."""
    seen = _record_fsyncs(monkeypatch)
    if writer == "json":
        io.write_json_atomic(tmp_path / "a.json", {"x": 1})
        target = tmp_path / "a.json"
    elif writer == "dataset-cache":
        from richkd.data.folder import _write_atomic

        _write_atomic(tmp_path / "a.npy", np.arange(3))
        target = tmp_path / "a.npy"
    else:
        chunked.finish(tmp_path, '{"done": true}')
        target = tmp_path / chunked.META_FILE
    assert "file" in seen and "dir" in seen, seen
    assert target.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temp file left


def test_a_file_output_naming_a_folder_is_one_clear_error(tmp_path: Path) -> None:
    """Issue 20: `--out` naming an existing (empty) folder ended in IsADirectoryError from the rename."""
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(RichKDError, match="is a folder, not a file name"):
        io.write_json_atomic(folder, {"x": 1})
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(proc.stdout)


def test_leftovers_of_dead_writers_go_and_live_ones_stay(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    names = [f".a.json.{dead}.0123abcd.tmp", f"cache.tmp-{dead}", f"cache.old-{dead}",
             f".b.json.{live}.0123abcd.tmp", f"cache.tmp-{live}", "keep.txt"]
    for name in names:
        (tmp_path / name).mkdir() if "-" in name else (tmp_path / name).write_text("x")
    removed = {p.name for p in io.remove_stale(tmp_path)}
    assert removed == set(names[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])


# ----------------------------------------------------------------------------------------- metrics.jsonl


def _metrics(path: Path, epochs: int, tail: str = "") -> None:
    path.write_text("".join(json.dumps({"epoch": e, "lr": 0.1, "test/top1": 10.0 * e}) + "\n"
                            for e in range(1, epochs + 1)) + tail)


@pytest.mark.parametrize("tail", ['{"epoch": 3, "lr": 0.', '{"epoch": 3, "lr": 0.1, "test/to\n', "\x00\x00\x00"])
def test_a_torn_last_metrics_line_is_dropped_on_resume(tail: str, tmp_path: Path) -> None:
    """A kill mid-append tears the last line; every later --resume used to fail with a JSONDecodeError."""
    path = tmp_path / "metrics.jsonl"
    _metrics(path, 2, tail)
    assert _last_epoch_logged(path) == 2
    _truncate_metrics(path, 2)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_a_corrupt_middle_metrics_line_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _metrics(path, 1, "not json at all\n" + json.dumps({"epoch": 2, "lr": 0.1}) + "\n")
    with pytest.raises(RichKDError, match="line 2 is corrupt"):
        _truncate_metrics(path, 2)


def test_metrics_append_is_one_write_flushed_and_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from richkd.engine.trainer import _append_jsonl

    seen = _record_fsyncs(monkeypatch)
    _append_jsonl(tmp_path / "m.jsonl", {"epoch": 1})
    assert seen == ["file"]
    assert (tmp_path / "m.jsonl").read_text() == '{"epoch": 1}\n'


# ------------------------------------------------------------------------------------ target cache replace


def _cache_meta(n: int) -> CacheMeta:
    return CacheMeta(
        dataset="toy", split="train", n_rows=n, class_names=("a", "b"), n_views=1, view_names=("plain",),
        model_id="random", model_kind="random", model_label="random", weights_sha256="0" * 64,
        templates=("a photo of a {}.",), templates_sha256="0" * 64, clean_names=True, embed_dim=4, image_size=32,
        pad=4, seed=0, richkd_version="test",
    )


def _write_cache(path: Path, value: float) -> None:
    n = 3
    write_target_cache(path, cosines=np.full((n, 1, 2), value, np.float32),
                       image_emb=np.zeros((n, 1, 4), np.float16), aug_params=np.zeros((n, 1, 3), np.int16),
                       class_emb=np.zeros((2, 4), np.float32), meta=_cache_meta(n))


KILL_AT_REPLACE = """
import os, signal, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {tests!r})
from test_atomic import _write_cache
real, calls = os.replace, []
def replace(src, dst, *a, **k):
    calls.append(dst)
    if len(calls) == {nth}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
os.replace = replace
_write_cache(Path({path!r}), 2.0)
"""


@pytest.mark.parametrize("nth", [1, 2])
def test_a_cache_replacement_killed_between_renames_is_recovered(nth: int, tmp_path: Path) -> None:
    """SIGKILL at the first or second rename of write_target_cache (old away, new in). The old code left no
    cache at all after the first, and `*.tmp-PID` / `*.old-PID` folders that nobody removed."""
    path = tmp_path / "cache"
    _write_cache(path, 1.0)
    code = textwrap.dedent(KILL_AT_REPLACE).format(tests=str(Path(__file__).parent), nth=nth, path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    cache = TargetCache.open(path)  # the old cache, whole (or the new one, had the swap completed)
    assert float(np.asarray(cache._np["cosines.npy"]).flat[0]) == 1.0
    _write_cache(path, 3.0)
    assert float(np.load(path / "cosines.npy").flat[0]) == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no tmp/old folder, no lock file


# --------------------------------------------------------------------------------------------------- locks


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with hold(folder, "run directory"):
        with pytest.raises(FolderBusy) as err, hold(folder, "run directory"):
            pass
        message = str(err.value)
        assert f"pid {os.getpid()}" in message and "\n" not in message
        assert (folder / LOCK_NAME).is_file()
    assert not folder.exists()  # made by the lock, left empty: gone with it


HOLD_AND_DIE = """
import os, signal, sys
from pathlib import Path
from richkd.engine.lock import hold
with hold(Path({folder!r}), "run directory"):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_holder_never_blocks_the_next_writer(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", HOLD_AND_DIE.format(folder=str(folder))], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert (folder / LOCK_NAME).is_file()  # the file survives the kill, the OS lock does not
    with hold(folder, "run directory"):
        pass
    assert not (folder / LOCK_NAME).exists()


def test_a_second_cache_builder_is_refused_and_the_first_finishes(tmp_path: Path) -> None:
    """Two `richkd vlm cache --out X` at once used to write the same memory maps together; now the second is
    refused in one line while the first holds X, and a build after it (the lock gone) completes."""
    import torch

    from richkd.caches.build_target import build_target_cache
    from richkd.data.arrays import ArrayDataset
    from richkd.teachers.random_vlm import RandomVLM

    gen = torch.Generator().manual_seed(0)
    data = ArrayDataset(images=torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=gen),
                        labels=torch.tensor([0, 1, 0, 1, 0, 1]), classes=("cat", "dog"), name="toy", split="train",
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), source="memory")
    out = tmp_path / "cache"

    def build() -> None:
        build_target_cache(RandomVLM(), data, out, templates=["a photo of a {}."], n_aug_views=1, batch_size=2,
                           bf16=False, progress=False, checkpoint_seconds=0)

    with hold(out, "target cache"):
        with pytest.raises(FolderBusy, match=f"target cache {out} is in use by pid {os.getpid()}"):
            build()
        assert {p.name for p in out.iterdir()} == {LOCK_NAME}  # the refused build wrote nothing
    build()
    assert TargetCache.open(out).meta.n_rows == 6 and not (out / LOCK_NAME).exists()
