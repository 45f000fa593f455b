"""ImageNet distribution-shift sets: recognise their standard layouts and score a 1000-class head on them.

Layouts (folder names under the set's root):

- ImageNet-V2 (Recht et al. 2019): folders `0` .. `999`, the class index itself.
- ImageNet-Sketch (Wang et al. 2019): the 1000 wnid folders; scored over the whole head.
- ImageNet-R and ImageNet-A (Hendrycks et al. 2021, "The Many Faces of Robustness" and "Natural Adversarial
  Examples"): 200 wnid folders each. As in the authors' evaluation code (eval.py of hendrycks/imagenet-r and
  natural-adv-examples), the head's logits are restricted to the 200 columns of those classes and top-1 is taken
  over them: `logits[:, mask]`, the target being the class's position among the 200.

A head's classes are wnids in head order (the packaged 1000, or a checkpoint's recorded class list), so a head
of other classes is scored on the columns its wnids name; an unknown wnid folder is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from richkd.errors import RichKDError
from richkd.teachers.imagenet_names import SUBSETS, imagenet_wnids, subset_wnids

LAYOUTS = ("auto", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "subset")


@dataclass(frozen=True)
class ShiftLayout:
    """How a set's folders map onto a head: the columns scored, and each folder's target among them."""

    name: str  # one of LAYOUTS but "auto"
    columns: tuple[int, ...]  # head columns scored, in head order
    folder_targets: dict[str, int]  # folder name -> index into `columns`

    def target_map(self, folder_names: Sequence[str]) -> Tensor:
        """[F] int64: target of each folder label of a FolderSource whose classes are `folder_names`."""
        return torch.tensor([self.folder_targets[f] for f in folder_names], dtype=torch.int64)


def _wnid_columns(folders: Sequence[str], classes: Sequence[str], root: str) -> dict[str, int]:
    index = {c: i for i, c in enumerate(classes)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise RichKDError(
            f"{root}: folder {unknown[0]!r} is not a class of the model's head ({len(classes)} wnids, e.g. "
            f"{classes[0]}); pass the head's class list with --classes, or --layout imagenet-v2 for 0..999 folders"
        )
    return {f: index[f] for f in folders}


def detect_layout(folders: Sequence[str], classes: Sequence[str], *, layout: str = "auto",
                  root: str = "the shift set") -> ShiftLayout:
    """The layout of a set with class folders `folders` for a head over wnids `classes` (or `layout` forced)."""
    if layout not in LAYOUTS:
        raise RichKDError(f"unknown --layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if not folders:
        raise RichKDError(f"{root} has no class folders")
    numeric = all(f.isdigit() for f in folders)
    if layout == "imagenet-v2" or (layout == "auto" and numeric):
        if not numeric:
            raise RichKDError(f"{root}: --layout imagenet-v2 needs folders named by class index (0..999)")
        bad = [f for f in folders if int(f) >= len(classes)]
        if bad:
            raise RichKDError(f"{root}: folder {bad[0]!r} is no class index of a {len(classes)}-class head")
        return ShiftLayout("imagenet-v2", tuple(range(len(classes))), {f: int(f) for f in folders})
    cols = _wnid_columns(folders, classes, root)
    if layout == "auto":
        found = set(folders)
        standard = tuple(classes) == imagenet_wnids()
        named = [n for n in SUBSETS if standard and found == set(subset_wnids(n))]
        layout = "imagenet-sketch" if found == set(classes) else named[0] if named else "subset"
    if layout == "imagenet-sketch":
        return ShiftLayout(layout, tuple(range(len(classes))), cols)
    if layout == "subset":
        columns = tuple(sorted(cols.values()))
    else:
        members = subset_wnids(layout)
        outside = sorted(set(folders) - set(members))
        if outside:
            raise RichKDError(f"{root}: folder {outside[0]!r} is not one of the 200 {layout} classes")
        columns = tuple(sorted(_wnid_columns(members, classes, f"the {layout} class list").values()))
    position = {c: i for i, c in enumerate(columns)}
    return ShiftLayout(layout, columns, {f: position[c] for f, c in cols.items()})


class TopK:
    """Running top-1 / top-5 counts over the scored columns (no logits kept: Sketch has 50k x 1000)."""

    def __init__(self, columns: Sequence[int]) -> None:
        self.columns = torch.tensor(columns, dtype=torch.int64)
        self.ks = (1, 5) if len(columns) >= 5 else (1,)
        self.correct = dict.fromkeys(self.ks, 0)
        self.total = 0

    def update(self, logits: Tensor, targets: Tensor) -> None:
        """logits [B, C_head] (every head column), targets [B] indices into the scored columns."""
        scored = logits.float()[:, self.columns.to(logits.device)]  # [B, K]
        top = scored.topk(max(self.ks), dim=1).indices  # [B, k]
        hit = top == targets.to(logits.device)[:, None]
        for k in self.ks:
            self.correct[k] += int(hit[:, :k].any(dim=1).sum())
        self.total += len(targets)

    def result(self) -> dict[str, float]:
        if self.total == 0:
            raise RichKDError("the shift set produced no images")
        return {f"top{k}": 100.0 * self.correct[k] / self.total for k in self.ks}


def evaluate_predictors(
    batches: Iterable[tuple[Tensor, Tensor]], predictors: dict[str, Callable[[Tensor], Tensor]],
    layout: ShiftLayout, target_map: Tensor,
) -> dict[str, dict[str, float]]:
    """Top-k of each predictor (images -> head logits) over `batches` of (images, folder labels)."""
    meters = {name: TopK(layout.columns) for name in predictors}
    with torch.inference_mode():
        for images, labels in batches:
            targets = target_map[labels.long()]
            for name, predict in predictors.items():
                meters[name].update(predict(images), targets)
    return {name: m.result() for name, m in meters.items()}
