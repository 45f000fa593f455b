"""The exact finite family of training views: every crop offset of a pad-`p` random crop times a flip.

With pad p, a crop origin (dx, dy) lies in a (2p+1) x (2p+1) grid and the flip is 0 or 1, so there are
2 (2p+1)^2 views (162 for CIFAR's pad 4). They are enumerated in one fixed order, flip-major, then dy, then dx:

    view_id = (flip * (2p+1) + dy) * (2p+1) + dx

so the plain image (dx = dy = p, no flip) is view p (2p+1) + p (40 for pad 4) and its mirror is that plus
(2p+1)^2. A view id is computable from the crop/flip the BatchMaker drew, which is what lets a teacher or
vision-language cache serve exactly the view the student sees without changing the random draws.
"""

from __future__ import annotations

import torch
from torch import Tensor

from richkd.data.augment import CropFlip

__all__ = ["ENUMERATION", "exact_view_names", "exact_view_params", "n_exact_views", "plain_view_id", "view_ids"]

ENUMERATION = "crop-flip-v1: view_id = (flip*(2p+1) + dy)*(2p+1) + dx, dx,dy in [0, 2p]"


def n_exact_views(pad: int) -> int:
    """How many views the family holds: 2 (2 pad + 1)^2."""
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    side = 2 * pad + 1
    return 2 * side * side


def view_ids(params: CropFlip, pad: int) -> Tensor:
    """[B] int64 view id of each sample's (dx, dy, flip)."""
    side = 2 * pad + 1
    dx, dy = params.dx.long(), params.dy.long()
    return (params.flip.long() * side + dy) * side + dx


def exact_view_params(pad: int, device: torch.device | str = "cpu") -> CropFlip:
    """The crop/flip of every view in enumeration order ([V] each): the inverse of `view_ids`."""
    side = 2 * pad + 1
    ids = torch.arange(n_exact_views(pad), device=device)
    return CropFlip(dx=ids % side, dy=(ids // side) % side, flip=(ids // (side * side)).bool())


def plain_view_id(pad: int) -> int:
    """The un-augmented image: crop origin (pad, pad), no flip."""
    return pad * (2 * pad + 1) + pad


def exact_view_names(pad: int) -> tuple[str, ...]:
    """Human names in enumeration order, e.g. "dx4dy4" (the plain view) and "dx0dy8f" (mirrored)."""
    p = exact_view_params(pad)
    return tuple(
        f"dx{int(x)}dy{int(y)}{'f' if bool(f) else ''}" for x, y, f in zip(p.dx, p.dy, p.flip, strict=True)
    )
