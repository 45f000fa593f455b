"""Prompt templates and class-name cleaning: data only (METHOD.md §2)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from richkd.errors import RichKDError

# The 12 templates of the RichKD reference code, in its order.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a blurry photo of a {}",
    "a cropped photo of a {}",
    "a close-up photo of a {}",
    "a low resolution photo of a {}",
    "a bright photo of a {}",
    "a picture of a {}",
    "a detailed image of a {}",
    "a sketch of a {}",
    "a natural photo of a {} in the wild",
    "a realistic image of a {}",
    "a high quality photo of a {}",
)
SINGLE_TEMPLATE: tuple[str, ...] = DEFAULT_TEMPLATES[:1]


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Return `templates` as a tuple; RichKDError if empty or one has no single "{}" slot."""
    out = tuple(templates)
    if not out:
        raise RichKDError("no prompt templates given")
    for t in out:
        if t.count("{}") != 1:
            raise RichKDError(f'prompt template {t!r} must contain "{{}}" exactly once (the class name slot)')
    return out


def load_templates(path: str | Path) -> tuple[str, ...]:
    """One template per non-blank line; lines starting with '#' are comments."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RichKDError(f"cannot read prompt templates {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RichKDError(f"prompt template file {path} is not UTF-8 text") from None
    lines = [ln.strip() for ln in text.splitlines()]
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    if not templates:
        raise RichKDError(f"prompt template file {path} holds no templates")
    return check_templates(templates)


def templates_sha256(templates: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(templates).encode()).hexdigest()


def clean_class_name(name: str) -> str:
    """'aquarium_fish' -> 'aquarium fish' (underscores to spaces, whitespace collapsed)."""
    return " ".join(name.replace("_", " ").split())


def format_prompts(classname: str, templates: Sequence[str]) -> list[str]:
    return [t.replace("{}", classname) for t in templates]
