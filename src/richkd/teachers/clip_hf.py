"""CLIP through `transformers` (CLIPModel + its tokenizer) from a local folder, or a hub id when online.

Needs `pip install 'richkd[hf]'`. The folder is what `CLIPModel.save_pretrained` / `huggingface-cli download`
writes (config.json, weights, tokenizer files, optionally preprocessor_config.json for the image recipe).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from richkd.errors import RichKDError
from richkd.teachers.preprocess import CLIP_MEAN, CLIP_STD, ImageSpec, fingerprint_module, preprocess_images

log = logging.getLogger(__name__)

INSTALL_HINT = "the hf: teacher needs `pip install 'richkd[hf]'` (transformers)"
TEXT_BATCH = 256
# PIL resample codes used in preprocessor_config.json
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def image_spec_from_folder(folder: Path | None, default_size: int) -> ImageSpec:
    """The image recipe from preprocessor_config.json when present, else CLIP's at the vision config size."""
    cfg_file = folder / "preprocessor_config.json" if folder is not None else None
    if cfg_file is None or not cfg_file.is_file():
        log.warning("no preprocessor_config.json: using CLIP mean/std, bicubic, %d px", default_size)
        return ImageSpec(size=default_size, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic")
    cfg: dict[str, Any] = json.loads(cfg_file.read_text())
    crop = cfg.get("crop_size", default_size)
    size = int(crop["height"] if isinstance(crop, dict) else crop)
    mean = tuple(float(v) for v in cfg.get("image_mean", CLIP_MEAN))
    std = tuple(float(v) for v in cfg.get("image_std", CLIP_STD))
    interp = RESAMPLE.get(int(cfg.get("resample", 3)), "bicubic")
    return ImageSpec(size=size, mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]), interpolation=interp)


class HFClipVLM:
    """A transformers CLIPModel behind the VisionLanguageTeacher protocol."""

    kind = "clip"

    def __init__(self, model: Any, tokenizer: Any, image_spec: ImageSpec, model_id: str, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_spec = image_spec
        self.model_id = model_id
        self.device = device
        self.embed_dim = int(model.config.projection_dim)
        self.logit_scale = float(model.logit_scale.exp().item())
        self.label = f"CLIP {model_id} (transformers)"
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, name: str, *, device: torch.device | str = "cpu") -> HFClipVLM:
        try:
            from transformers import AutoTokenizer, CLIPModel
        except ImportError:
            raise RichKDError(INSTALL_HINT) from None
        folder = Path(name).expanduser()
        is_local = folder.is_dir()
        if not is_local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise RichKDError(f"hf: teacher folder {folder} does not exist")
        local_only = is_local or _offline()
        source = str(folder) if is_local else name
        try:
            model = CLIPModel.from_pretrained(source, local_files_only=local_only)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        except OSError as exc:
            raise RichKDError(
                f"cannot load CLIP weights {name!r} ({str(exc).splitlines()[0]}); with no network, download them "
                f"where online (`huggingface-cli download {name} --local-dir DIR`) and pass --teacher hf:DIR"
            ) from None
        vision_config: Any = model.config.vision_config
        default_size = int(vision_config.image_size)
        if is_local:
            spec = image_spec_from_folder(folder, default_size)
        else:
            spec = image_spec_from_folder(_snapshot_folder(name), default_size)
        return cls(model, tokenizer, spec, f"hf:{name}", torch.device(device))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_module(self.model, extra=(self.model_id, repr(self.image_spec)))
        return self._fingerprint

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        pixels = preprocess_images(images.to(self.device), self.image_spec)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        out = []
        for i in range(0, len(texts), TEXT_BATCH):
            tok = self.tokenizer(list(texts[i : i + TEXT_BATCH]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            text_out = self.model.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            pooled = text_out.pooler_output
            out.append(F.normalize(self.model.text_projection(pooled).float(), dim=-1))
        return torch.cat(out)


def _snapshot_folder(hub_id: str) -> Path | None:
    """The local snapshot folder of a hub id already in the HF cache (for preprocessor_config.json)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(hub_id, local_files_only=True, allow_patterns=["*.json"]))
    except (OSError, ValueError):
        return None
