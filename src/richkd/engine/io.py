"""Atomic writes, the one way richkd writes a file or replaces a folder: a crash (even SIGKILL or a power cut)
never leaves a half-written result, checkpoint, log or cache behind, and never a leftover that blocks the next run.

Files: a temp file in the same folder (named `.NAME.PID.RANDOM.tmp`), flushed and fsynced, renamed over the
target, then the folder fsynced so the rename itself is durable. Folders (small caches written in one go):
`replace_dir` — new content in `NAME.tmp-PID`, then NAME -> `NAME.old-PID`, tmp -> NAME, old removed; a crash
between the two renames is undone by `recover_dir` on the next write or open. Leftovers of dead processes
(their PID in the name) are removed by `remove_stale`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_TEMP_FILE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")  # write_atomic's temp files
_TEMP_DIR = re.compile(r"^(.+)\.(tmp|old)-(\d+)$")  # replace_dir's new (tmp) and replaced (old) folders


def fsync_dir(folder: Path) -> None:
    """Make renames and creations inside `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (a leftover of a live writer is not stale)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through `write(file)` into a temp file beside `path`, fsync it, rename it over `path`, fsync the folder.

    Readers see the old file or the new one, never a mix; a crash leaves at most a temp file that
    `remove_stale` recognises (dead PID in its name).
    """
    from richkd.errors import RichKDError

    if path.is_dir():
        raise RichKDError(f"{path} is a folder, not a file name: name the file to write, e.g. {path / 'out.json'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, like any new file
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode()))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npy_atomic(path: Path, array: Any) -> None:
    """`np.save` through `write_atomic`."""
    import numpy as np

    write_atomic(path, lambda fh: np.save(fh, array))


def append_line(path: Path, line: str, *, sync: bool = True) -> None:
    """Append one line as ONE write (+ flush, + fsync when `sync`): a kill tears at most this last line, which
    readers of append-only logs (metrics.jsonl) drop on resume."""
    data = (line.rstrip("\n") + "\n").encode()
    with path.open("ab") as fh:
        fh.write(data)
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def is_temp_name(name: str) -> bool:
    """A temp file of `write_atomic` or a tmp/old folder of `replace_dir`: never content of a result."""
    return bool(_TEMP_FILE.match(name) or _TEMP_DIR.match(name))


def remove_stale(folder: Path, *, only: str | None = None) -> list[Path]:
    """Remove leftovers of dead writers in `folder` (temp files, tmp/old folders whose PID no longer runs).

    `only`: just those belonging to the entry named `only` (e.g. a cache folder's siblings). Returns what went.
    Live writers' leftovers stay: another process may be writing them right now.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m_file, m_dir = _TEMP_FILE.match(entry.name), _TEMP_DIR.match(entry.name)
        try:
            if m_file and (only is None or entry.name.startswith(f".{only}.")) and not pid_alive(int(m_file[1])):
                entry.unlink(missing_ok=True)
                removed.append(entry)
            elif m_dir and (only is None or m_dir[1] == only) and not pid_alive(int(m_dir[3])):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
        except OSError:
            continue  # a read-only folder (a shared cache): leftovers there are harmless to readers
    return removed


def temp_dir_for(final: Path) -> Path:
    """A fresh, empty `NAME.tmp-PID` folder beside `final` to build new content in (then `replace_dir`)."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the complete folder `tmp` in place of `final` (made or replaced) with no moment where a reader finds
    a half-written folder; a crash between the two renames leaves `final.old-PID`, restored by `recover_dir`."""
    for f in tmp.iterdir():
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp)
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(final: Path) -> bool:
    """Undo a `replace_dir` killed between its renames (`final` missing, `final.old-PID` of a dead PID present):
    the old folder goes back; then stale tmp/old leftovers of `final` are removed. True if it restored one."""
    restored = False
    if not final.exists() and final.parent.is_dir():
        olds = []
        for entry in final.parent.iterdir():
            m = _TEMP_DIR.match(entry.name)
            if m and m.group(1) == final.name and m.group(2) == "old" and not pid_alive(int(m.group(3))):
                olds.append(entry)
        if olds:
            newest = max(olds, key=lambda p: p.stat().st_mtime)
            try:
                os.replace(newest, final)
            except OSError:
                return False  # read-only: the reader then reports the cache as missing
            fsync_dir(final.parent)
            restored = True
    remove_stale(final.parent, only=final.name)
    return restored


def check_writable(path: Path, what: str = "output") -> None:
    """Raise a one-line RichKDError unless files can be created in `path` (a folder, made if missing).

    Called before expensive work starts, so a read-only or misspelt output fails in a second, not after an hour.
    """
    from richkd.errors import RichKDError

    probe_dir = path
    while not probe_dir.exists() and probe_dir.parent != probe_dir:
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        raise RichKDError(f"{what} {path}: {probe_dir} is a file, not a folder; choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".richkd-write-test.", dir=probe_dir)
    except OSError as err:
        raise RichKDError(
            f"{what} {path} is not writable ({err.strerror}); choose a writable folder"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks: provenance of checkpoints named in results."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_named(values: list[str], option: str, value_name: str = "PATH") -> dict[str, str]:
    """`NAME=VALUE` command-line pairs (e.g. --checkpoint kd=runs/kd/model_last.pt): names unique and non-empty."""
    from richkd.errors import RichKDError

    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            example = "kd=runs/kd/model_last.pt" if value_name == "PATH" else f"kd={value_name}"
            raise RichKDError(f"{option} {value!r}: write NAME={value_name}, e.g. {option} {example}")
        if name in out:
            raise RichKDError(f"{option} name {name!r} is given twice; give each its own name")
        out[name] = rest
    return out
