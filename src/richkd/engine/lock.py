"""One writer per run directory or cache: an OS lock (flock) on a file inside the folder.

The OS drops a flock when its process dies, however it dies, so a killed run never leaves a lock that blocks the
next one; a lock file left by a SIGKILL is just a file, taken over by the next writer. A second writer fails at
once with one line naming the holder (pid, host, start time, command line: a small JSON in the lock file).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from richkd.errors import RichKDError

LOCK_NAME = ".richkd.lock"

log = logging.getLogger(__name__)


class FolderBusy(RichKDError):
    """Another live process holds the folder's lock."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is just starting"


def _command_line() -> str:
    """`richkd train ...` as typed (sys.argv[0] is richkd/__main__.py under `python -m richkd`)."""
    first = Path(sys.argv[0]).name if sys.argv else ""
    head = "richkd" if first in ("__main__.py", "richkd") else first
    return " ".join([head, *sys.argv[1:]])[:300]


@contextmanager
def hold(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder`'s lock (the folder is made if missing) for the `with` body; FolderBusy if another holds it.

    `what` names the folder in the message ("run directory", "target cache"). On release the lock file goes,
    and so does the folder when this call made it and the body left it empty (a refused command leaves nothing).
    """
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(folder / LOCK_NAME, f"{what} {folder}"):
            yield
    finally:
        if created:
            try:
                folder.rmdir()  # only succeeds when empty
            except OSError:
                pass


@contextmanager
def hold_beside(path: Path, what: str) -> Iterator[None]:
    """Like `hold`, for a folder that is replaced as a whole (`replace_dir`): the lock file `.NAME.lock` lies
    beside it, in its parent, so it survives the swap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(f".{path.name}.lock"), f"{what} {path}"):
        yield


@contextmanager
def _locked(path: Path, label: str) -> Iterator[None]:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(f"{label} is in use by {_holder(path)}; wait for it to end, or stop it") from None
        except OSError as err:  # a file system without flock (some network mounts): run, unguarded, and say so
            os.close(fd)
            log.warning("cannot lock %s (%s): nothing stops a second writer there", label, err.strerror)
            yield
            return
        try:  # a releasing holder may have unlinked the file between our open and flock: then lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": _command_line()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiter that opened it re-checks the inode
        os.close(fd)
