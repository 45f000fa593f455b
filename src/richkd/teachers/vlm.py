"""The vision-language teacher seam (ARCHITECTURE.md 6.2) and `load_vlm`, the one way to get a backend.

A backend owns its preprocessing (`image_spec` belongs to the weights, as in open_clip/timm): callers hand it
float images in [0, 1] at any resolution and get L2-normalised embeddings back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.errors import RichKDError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
# Bump when preprocess_images changes its output: it enters every backend's fingerprint, so caches built with
# other preprocessing are told apart. v2: antialiased (PIL-style, a = -0.5) kernels also when upsampling.
PREPROCESS_VERSION = "preprocess-v2"


@dataclass(frozen=True)
class ImageSpec:
    """Input recipe of an image tower: resize the short side to `size`, center-crop `size`, normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise RichKDError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")


def preprocess_images(images: Tensor, spec: ImageSpec) -> Tensor:
    """[B, 3, h, w] float in [0, 1] -> [B, 3, size, size] normalised for the tower (resize, center-crop)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    scale = spec.size / min(h, w)
    new_h, new_w = max(spec.size, round(h * scale)), max(spec.size, round(w * scale))
    x = images.float()
    if (new_h, new_w) != (h, w):
        if spec.interpolation == "nearest":
            x = F.interpolate(x, size=(new_h, new_w), mode="nearest")
        else:
            # antialias=True selects PIL's kernels (bicubic a = -0.5), which CLIP was trained with, for up- and
            # downsampling alike: 32 -> 224 px differs from PIL by 0.2 grey levels on average, against 3.9 for
            # torch's plain bicubic (a = -0.75)
            x = F.interpolate(x, size=(new_h, new_w), mode=spec.interpolation, align_corners=False, antialias=True)
        # bicubic overshoots; PIL clips to the uint8 range
        x = x.clamp(0.0, 1.0)
    top, left = (new_h - spec.size) // 2, (new_w - spec.size) // 2
    x = x[:, :, top : top + spec.size, left : left + spec.size]
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def fingerprint_module(*modules: nn.Module, extra: Sequence[str] = ()) -> str:
    """sha256 over the state-dict tensors (name, dtype, shape, bytes) of `modules`, plus `extra` strings
    (callers pass their model id and image spec) and PREPROCESS_VERSION."""
    h = hashlib.sha256(PREPROCESS_VERSION.encode())
    for module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for s in extra:
        h.update(s.encode())
    return h.hexdigest()


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
