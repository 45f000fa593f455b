"""The packaged ImageNet-1k facts: wnids in class-index order, class-name wordings, the 200-class subsets of
ImageNet-R and -A, and named prompt-template sets. Data only; the text files ship as package data."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from richkd.errors import RichKDError
from richkd.teachers.prompts import DEFAULT_TEMPLATES, check_templates, load_templates

N_IMAGENET_CLASSES = 1000
# wording name -> packaged file: torchvision's names, or the names CLIP's authors curated for zero-shot prompts
CLASS_WORDINGS = {"torchvision": "imagenet_classes.txt", "clip": "imagenet_classes_clip.txt"}
SUBSETS = {"imagenet-r": "imagenet_r_wnids.txt", "imagenet-a": "imagenet_a_wnids.txt"}
TEMPLATE_SETS = ("richkd12", "imagenet80")


@functools.cache
def _packaged_lines(name: str) -> tuple[str, ...]:
    text = resources.files("richkd.teachers").joinpath(name).read_text(encoding="utf-8")
    return tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted wnids, the standard order)."""
    wnids = _packaged_lines("imagenet_wnids.txt")
    if len(wnids) != N_IMAGENET_CLASSES or list(wnids) != sorted(set(wnids)):
        raise RichKDError("packaged imagenet_wnids.txt is damaged (want 1000 sorted unique wnids): reinstall richkd")
    return wnids


def imagenet_class_names(wording: str = "torchvision") -> tuple[str, ...]:
    """The 1000 class names in class-index order, in torchvision's or CLIP's wording."""
    if wording not in CLASS_WORDINGS:
        raise RichKDError(f"unknown class-name wording {wording!r}; use one of {', '.join(CLASS_WORDINGS)}")
    names = _packaged_lines(CLASS_WORDINGS[wording])
    if len(names) != N_IMAGENET_CLASSES:
        raise RichKDError(f"packaged {CLASS_WORDINGS[wording]} holds {len(names)} names, expected 1000: reinstall")
    return names


def wnid_to_name(wording: str = "torchvision") -> dict[str, str]:
    return dict(zip(imagenet_wnids(), imagenet_class_names(wording), strict=True))


def subset_wnids(name: str) -> tuple[str, ...]:
    """The 200 wnids of ImageNet-R or ImageNet-A, in class-index order."""
    if name not in SUBSETS:
        raise RichKDError(f"unknown ImageNet subset {name!r}; use one of {', '.join(SUBSETS)}")
    return _packaged_lines(SUBSETS[name])


def resolve_templates(spec: str | None) -> tuple[str, ...]:
    """A named template set (`richkd12`: RichKD's 12, the default; `imagenet80`: CLIP's 80) or a file path."""
    if spec is None or spec == "richkd12":
        return DEFAULT_TEMPLATES
    if spec == "imagenet80":
        return check_templates(_packaged_lines("imagenet_templates80.txt"))
    if not Path(spec).expanduser().is_file():
        raise RichKDError(f"--templates {spec!r} is neither a template set ({', '.join(TEMPLATE_SETS)}) nor a file")
    return load_templates(Path(spec).expanduser())


def read_class_list(spec: str | None) -> tuple[str, ...]:
    """The class list (wnids in head order): the packaged 1000 (None), a file (one wnid a line) or `a,b,c`."""
    if spec is None:
        return imagenet_wnids()
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise RichKDError(f"--classes {path} is not UTF-8 text (one wnid a line)") from None
        wnids = tuple(ln.strip() for ln in lines if ln.strip() and not ln.startswith("#"))
    else:
        wnids = tuple(w.strip() for w in spec.split(",") if w.strip())
    if not wnids or len(set(wnids)) != len(wnids):
        raise RichKDError(f"--classes {spec!r}: expected unique wnids (a file, one a line, or comma-separated)")
    known = set(imagenet_wnids())
    unknown = [w for w in wnids if w not in known]
    if unknown:
        raise RichKDError(f"--classes: {unknown[0]!r} is not an ImageNet-1k wnid (e.g. n01440764)")
    return wnids
