"""Atomic file writes: a crash never leaves a half-written result, checkpoint or log behind."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through `write(file)` into a temp file beside `path`, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should be readable like any file
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode()))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


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
