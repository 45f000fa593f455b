"""A tiny untrained vision-language model for tests and dry runs: deterministic from a seed, never CLIP."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.teachers.preprocess import CLIP_MEAN, CLIP_STD, ImageSpec, fingerprint_module, preprocess_images

RANDOM_LABEL = "random (untrained test model) — not CLIP"


class RandomVLM:
    """Random conv image tower; texts map to seeded random vectors (sha256 of seed + text)."""

    kind = "random"
    label = RANDOM_LABEL
    logit_scale = 100.0

    def __init__(self, *, seed: int = 0, embed_dim: int = 16, image_size: int = 16) -> None:
        self.seed = seed
        self.embed_dim = embed_dim
        self.model_id = f"random:{seed}:e{embed_dim}:s{image_size}"
        self.image_spec = ImageSpec(size=image_size, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic")
        self.device = torch.device("cpu")
        gen = torch.Generator().manual_seed(seed)
        self.image_model = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(32, embed_dim),
        ).eval()
        with torch.no_grad():
            for p in self.image_model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def to_device(self, device: torch.device | str) -> RandomVLM:
        self.device = torch.device(device)
        self.image_model.to(self.device)
        return self

    def fingerprint(self) -> str:
        return fingerprint_module(self.image_model, extra=(self.model_id, repr(self.image_spec)))

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        x = preprocess_images(images.to(self.device), self.image_spec)
        return F.normalize(self.image_model(x).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        rows = []
        for text in texts:
            digest = hashlib.sha256(f"{self.seed}\0{text}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
            rows.append(torch.randn(self.embed_dim, generator=gen))
        return F.normalize(torch.stack(rows), dim=-1).to(self.device)
