"""Backends (transformers CLIP from a tiny local folder, open_clip, the packaged surrogate) and `richkd vlm`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from richkd.errors import RichKDError
from richkd.teachers.vlm import VisionLanguageTeacher, load_vlm


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: every byte has a printable stand-in character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised CLIPModel with tiny dims + a byte-level tokenizer (no merges), saved to disk."""
    transformers = pytest.importorskip("transformers", reason="the hf backend needs transformers (richkd[hf])")
    out = tmp_path_factory.mktemp("tinyclip")
    chars = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=eos, bos_token_id=bos,
                         pad_token_id=eos),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 16, "width": 16}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
        "resample": 3, "size": {"shortest_edge": 16},
    }))
    return out


def test_hf_backend_from_tiny_local_folder(tiny_clip_folder: Path) -> None:
    vlm = load_vlm(f"hf:{tiny_clip_folder}")
    assert isinstance(vlm, VisionLanguageTeacher)
    assert vlm.kind == "clip" and vlm.embed_dim == 8
    assert vlm.image_spec.size == 16 and vlm.image_spec.mean == (0.5, 0.5, 0.5) and vlm.image_spec.std == (0.25,) * 3
    assert vlm.logit_scale == pytest.approx(float(torch.tensor(2.6592).exp()), rel=1e-3)  # CLIP's init value
    img = vlm.encode_images(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    txt = vlm.encode_texts(["a photo of a cat", "a dog"])
    assert img.shape == (3, 8) and txt.shape == (2, 8)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    again = load_vlm(f"hf:{tiny_clip_folder}")
    assert again.fingerprint() == vlm.fingerprint()
    torch.testing.assert_close(again.encode_texts(["a dog"]), txt[1:])


def test_hf_backend_refuses_missing_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(RichKDError, match="does not exist"):
        load_vlm(f"hf:{tmp_path / 'nope'}")
    with pytest.raises(RichKDError, match="drop --weights|not --weights"):
        load_vlm(f"hf:{tmp_path}", weights="x.bin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RichKDError, match="huggingface-cli download"):
        load_vlm("hf:richkd-test/no-such-clip")


def test_open_clip_needs_package_or_weights() -> None:
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(RichKDError, match=r"richkd\[openclip\]"):
            load_vlm("open_clip:ViT-L-14", weights="openai")
        return
    with pytest.raises(RichKDError, match="needs --weights"):
        load_vlm("open_clip:ViT-L-14")
    with pytest.raises(RichKDError, match="does not exist"):
        load_vlm("open_clip:ViT-B-32", weights="/no/such/file.pt")


def test_open_clip_backend_from_tiny_local_checkpoint(tmp_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip", reason="the open_clip backend is optional (richkd[openclip])")
    config = {
        "embed_dim": 8,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "richkd-tiny-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    model = open_clip.create_model("richkd-tiny-test", pretrained=None)
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    vlm = load_vlm("open_clip:richkd-tiny-test", weights=str(weights))
    assert isinstance(vlm, VisionLanguageTeacher)
    assert vlm.kind == "clip" and vlm.embed_dim == 8 and vlm.image_spec.size == 16
    assert vlm.logit_scale == pytest.approx(1 / 0.07, rel=1e-3)  # open_clip's init
    img = vlm.encode_images(torch.rand(2, 3, 32, 32))
    txt = vlm.encode_texts(["a photo of a cat", "a dog"])
    assert img.shape == (2, 8) and txt.shape == (2, 8)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    # same weights -> same fingerprint and outputs as the model itself
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer("richkd-tiny-test")(["a dog"])))
    torch.testing.assert_close(txt[1:], ref)
    assert load_vlm("open_clip:richkd-tiny-test", weights=str(weights)).fingerprint() == vlm.fingerprint()


def _imagenet_groups(names: tuple[str, ...]) -> dict[str, set[str]]:
    """ImageNet classes a CIFAR-10 photo of each class plausibly lands in."""
    return {
        "airplane": {"airliner", "warplane", "airship", "wing", "space shuttle"},
        "automobile": {"sports car", "convertible", "cab", "racer", "beach wagon", "limousine", "minivan", "jeep",
                       "car wheel", "grille", "Model T", "pickup", "police van"},
        "bird": set(names[7:25]) | set(names[80:101]) | set(names[127:147]),
        "cat": {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx", "cougar"},
        "deer": {"hartebeest", "impala", "gazelle", "ibex", "bighorn"},
        "dog": set(names[151:269]),
        "frog": {"bullfrog", "tree frog", "tailed frog"},
        "horse": {"sorrel"},
        "ship": {"container ship", "liner", "speedboat", "fireboat", "lifeboat", "schooner", "yawl", "catamaran",
                 "trimaran", "wreck", "aircraft carrier", "submarine", "pirate"},
        "truck": {"moving van", "trailer truck", "fire engine", "garbage truck", "tow truck", "pickup", "police van",
                  "tractor"},
    }


def test_surrogate_on_real_cifar_photos(tiny_cifar10: Path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs richkd[surrogate]")
    from richkd.data import load_dataset
    from richkd.teachers.surrogate import imagenet_class_names

    ds = load_dataset("imagefolder", tiny_cifar10, "test", cache_dir=tiny_cifar10.parent / "dscache")
    vlm = load_vlm("surrogate")
    assert vlm.kind == "surrogate" and "not CLIP" in vlm.label and vlm.embed_dim == 384
    names = imagenet_class_names()
    groups = _imagenet_groups(names)
    x = ds.images.float() / 255
    top5 = vlm.imagenet_logits(x).topk(5, dim=1).indices  # type: ignore[attr-defined]
    # ImageNet's index order is right if photos land in their class's ImageNet neighbours: 45 % of these 80 do
    # (24-29 % with the names list shifted by one or two places, 1 % shifted by 333)
    labels = ds.labels.tolist()
    hits = [bool(groups[ds.classes[y]] & {names[i] for i in row.tolist()}) for row, y in zip(top5, labels, strict=True)]
    assert sum(hits) / len(hits) >= 0.36
    emb = vlm.encode_images(x[:4])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))


def test_cli_cache_fit_scale_zeroshot(tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("richkd.data.augment")
    from richkd.caches.target import TargetCache
    from richkd.cli import main

    data = ["--dataset", "imagefolder", "--root", str(tiny_cifar10), "--limit", "40", "--threads", "1"]
    out = tmp_path / "cache"
    rc = main(["vlm", "cache", *data, "--split", "train", "--teacher", "random:1", "--out", str(out),
               "--views", "1", "--batch-size", "16", "--no-bf16"])
    assert rc == 0
    cache = TargetCache.open(out)
    assert cache.meta.n_rows == 40 and cache.meta.view_names == ("plain", "flip", "aug0")
    assert cache.meta.model_kind == "random" and cache.meta.class_names[3] == "cat"
    rc = main(["vlm", "fit-scale", *data, "--split", "train", "--cache", str(out), "--out", str(tmp_path / "s.json")])
    assert rc == 0
    fitted = json.loads((tmp_path / "s.json").read_text())
    assert fitted["logit_scale"] > 0 and fitted["nll_at_fit"] <= fitted["nll_at_1"] + 1e-6
    rc = main(["vlm", "zeroshot", *data, "--teacher", "random:1", "--logit-scale", "1", "--logit-scale", "50",
               "--out", str(tmp_path / "zs.json"), "--batch-size", "16"])
    assert rc == 0
    result = json.loads((tmp_path / "zs.json").read_text())
    assert [(r["prompts"][:8], r["logit_scale"]) for r in result["results"]] == [
        ("ensemble", 1.0), ("ensemble", 50.0), ("single (", 1.0), ("single (", 50.0)]
    assert "not CLIP" in capsys.readouterr().out
    # a cache for another split is refused with a one-line fix
    rc = main(["vlm", "fit-scale", *data, "--split", "test", "--cache", str(out)])
    assert rc == 2
    assert "rebuild it with `richkd vlm cache" in capsys.readouterr().err
