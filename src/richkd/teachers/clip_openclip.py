"""CLIP through `open_clip` (optional extra: `pip install 'richkd[openclip]'`, which needs torchvision).

`--teacher open_clip:ARCH --weights W`: W is a local checkpoint file, or a pretrained tag (e.g. `openai`) that
open_clip fetches when online. The paper's teacher is `open_clip:ViT-L-14 --weights openai`; a local copy of
the OpenAI weights should be paired with the `ViT-L-14-quickgelu` architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from richkd.errors import RichKDError
from richkd.teachers.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    INTERPOLATIONS,
    ImageSpec,
    fingerprint_module,
    preprocess_images,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "the open_clip teacher needs `pip install 'richkd[openclip]'` (open_clip_torch and torchvision)"
TEXT_BATCH = 256


def _triple(values: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if values is None:
        return default
    v = [float(x) for x in (values if isinstance(values, list | tuple) else [values] * 3)]
    return (v[0], v[1], v[2])


def image_spec_of(model: Any) -> ImageSpec:
    """The image recipe the weights were trained with (open_clip's preprocess_cfg, else the visual attrs)."""
    visual = model.visual
    cfg: dict[str, Any] = dict(getattr(visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", getattr(visual, "image_size", 224))
    size = int(size[0] if isinstance(size, list | tuple) else size)
    interp = str(cfg.get("interpolation", "bicubic"))
    return ImageSpec(
        size=size,
        mean=_triple(cfg.get("mean", getattr(visual, "image_mean", None)), CLIP_MEAN),
        std=_triple(cfg.get("std", getattr(visual, "image_std", None)), CLIP_STD),
        interpolation=interp if interp in INTERPOLATIONS else "bicubic",
    )


class OpenClipVLM:
    """An open_clip model behind the VisionLanguageTeacher protocol."""

    kind = "clip"

    def __init__(self, model: Any, tokenizer: Any, model_id: str, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.image_spec = image_spec_of(model)
        self.logit_scale = float(model.logit_scale.exp().item())
        self.embed_dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else int(
            model.encode_text(tokenizer(["a"]).to(device)).shape[1]
        )
        self.label = f"CLIP {model_id} (open_clip)"
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, arch: str, *, weights: str | None, device: torch.device | str = "cpu") -> OpenClipVLM:
        try:
            import open_clip
        except ImportError:
            raise RichKDError(INSTALL_HINT) from None
        if weights is None:
            raise RichKDError(
                f"open_clip:{arch} needs --weights: a local checkpoint file, or a pretrained tag such as `openai` "
                "(downloaded when online; list them with open_clip.list_pretrained())"
            )
        if arch not in open_clip.list_models():
            raise RichKDError(f"unknown open_clip architecture {arch!r}; e.g. ViT-L-14, ViT-B-32, ViT-L-14-quickgelu")
        path = Path(weights).expanduser()
        is_file = path.is_file()
        if not is_file and (weights.startswith((".", "/", "~")) or "/" in weights):
            raise RichKDError(f"open_clip weights file {path} does not exist")
        try:
            model = open_clip.create_model(arch, pretrained=str(path) if is_file else weights, device="cpu")
        except (OSError, RuntimeError, ValueError) as exc:
            raise RichKDError(
                f"cannot load open_clip {arch} weights {weights!r} ({str(exc).splitlines()[0]}); with no network, "
                "copy the checkpoint file here and pass --weights /path/to/file"
            ) from None
        tag = f"file:{path.name}" if is_file else weights
        return cls(model, open_clip.get_tokenizer(arch), f"open_clip:{arch}:{tag}", torch.device(device))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_module(self.model, extra=(self.model_id, repr(self.image_spec)))
        return self._fingerprint

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        pixels = preprocess_images(images.to(self.device), self.image_spec)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        out = []
        for i in range(0, len(texts), TEXT_BATCH):
            tokens = self.tokenizer(list(texts[i : i + TEXT_BATCH])).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(out)
