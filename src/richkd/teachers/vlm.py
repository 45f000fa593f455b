"""The vision-language teacher seam (ARCHITECTURE.md 6.2) and `load_vlm`, the one way to get a backend.

A backend owns its preprocessing (`image_spec` belongs to the weights, as in open_clip/timm): callers hand it
float images in [0, 1] at any resolution and get L2-normalised embeddings back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from richkd.errors import RichKDError
from richkd.teachers.preprocess import CLIP_MEAN, CLIP_STD, ImageSpec, fingerprint_module, preprocess_images

# the seam's types are re-exported beside the protocol, for callers
__all__ = [
    "CLIP_MEAN", "CLIP_STD", "ImageSpec", "VisionLanguageTeacher", "fingerprint_module", "load_vlm",
    "preprocess_images",
]


@runtime_checkable
class VisionLanguageTeacher(Protocol):
    """A frozen image tower + text tower sharing one embedding space (CLIP, or a labelled stand-in)."""

    image_spec: ImageSpec
    embed_dim: int
    logit_scale: float  # the model's own zero-shot scale (100 for CLIP); fusion chooses its own
    model_id: str  # e.g. "open_clip:ViT-L-14:openai", "hf:openai/clip-vit-large-patch14", "surrogate"
    kind: str  # "clip" | "surrogate" | "random"
    label: str  # human label for reports; non-CLIP models say so

    def fingerprint(self) -> str: ...

    def encode_images(self, images: Tensor) -> Tensor:  # [B, 3, h, w] in [0, 1] -> [B, E], L2-normalised
        ...

    def encode_texts(self, texts: Sequence[str]) -> Tensor:  # -> [N, E], L2-normalised
        ...


def load_vlm(spec: str, *, device: torch.device | str = "cpu", weights: str | None = None) -> VisionLanguageTeacher:
    """Build a teacher from a spec string.

    - ``surrogate``            the packaged offline EfficientNet-Lite0 + MiniLM ConSE stand-in (not CLIP)
    - ``random`` / ``random:SEED``  a tiny untrained model, for tests only
    - ``open_clip:ARCH``       open_clip architecture; `weights` = local checkpoint file or pretrained tag
    - ``hf:PATH_OR_HUB_ID``    a transformers CLIPModel folder (or hub id, when online)
    """
    device = torch.device(device)
    kind, _, arg = spec.partition(":")
    if kind == "surrogate" and not arg:
        from richkd.teachers.surrogate import SurrogateVLM

        if weights is not None:
            raise RichKDError("the surrogate teacher ships its own weights; drop --weights")
        return SurrogateVLM.load(device=device)
    if kind == "random":
        from richkd.teachers.random_vlm import RandomVLM

        try:
            seed = int(arg) if arg else 0
        except ValueError:
            raise RichKDError(f"random teacher seed must be an integer, got {arg!r}") from None
        if not 0 <= seed <= 2**63 - 1:  # torch.Generator takes 64-bit seeds (as config's SEED_MAX)
            raise RichKDError(f"random teacher seed must be in [0, 2**63 - 1], got {arg}")
        return RandomVLM(seed=seed).to_device(device)
    if kind == "open_clip" and arg:
        from richkd.teachers.clip_openclip import OpenClipVLM

        return OpenClipVLM.load(arg, weights=weights, device=device)
    if kind == "hf" and arg:
        from richkd.teachers.clip_hf import HFClipVLM

        if weights is not None:
            raise RichKDError("hf: teachers read weights from their folder; pass hf:/path/to/folder, not --weights")
        return HFClipVLM.load(arg, device=device)
    raise RichKDError(
        f"unknown vision-language teacher {spec!r}; use surrogate, random[:SEED], open_clip:ARCH or hf:PATH"
    )
