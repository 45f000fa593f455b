"""Streamed ImageNet-scale target caches: sharded builds, merge refusals, resume, packaged ImageNet facts."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from imagenet_layout import CLASSES, make_split
from richkd.caches.target import TargetCache
from richkd.cli import main
from richkd.errors import RichKDError

torch.set_num_threads(1)
ARRAYS = ("cosines.npy", "image_emb.npy", "aug_params.npy", "class_emb.npy")
COMMON = ["vlm", "cache", "--dataset", "imagenet", "--teacher", "random:3", "--classes", ",".join(CLASSES),
          "--threads", "1", "--no-bf16", "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    make_split(root, "train", per_class=4, n_shards=2)  # 12 rows: root/train and root/shards/train
    return root


@pytest.fixture(scope="module")
def one_go(data: Path) -> Path:
    out = data / "one_go"
    assert main([*COMMON, "--root", str(data / "train"), "--batch-size", "5", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def parts(data: Path) -> Path:
    """Both parts of a 2-way sharded build of the tar shards, not merged."""
    out = data / "parts_only"
    for i, workers in ((0, "2"), (1, "0")):
        assert main([*COMMON, "--root", str(data / "shards" / "train"), "--batch-size", "2", "--workers", workers,
                     "--shard", f"{i}/2", "--no-merge", "--out", str(out)]) == 0
    return out / "parts"


def fails(capsys: pytest.CaptureFixture[str], pattern: str, argv: list[str]) -> None:
    """The CLI refuses with exit 2 and one error line matching `pattern`."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(pattern, err[0]), err


def assert_same_cache(a: TargetCache, b: TargetCache) -> None:
    for name in ARRAYS:
        x, y = np.asarray(a._np[name], dtype=np.float64), np.asarray(b._np[name], dtype=np.float64)
        # image_emb: fp16 roundings of two fp32 evaluations (other batch splits) differ by at most one float16 gap,
        # 2^-11 below 1, when the fp32 values straddle a rounding boundary: 2^-10 allows 2 gaps; cosines are fp32
        # dot products of unit vectors (E = 16: <= 2 * gamma_16 = 2e-6) plus the encoder's round-off, inside 1e-5
        atol = 2.0**-10 if name == "image_emb.npy" else 1e-5
        np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=name)
    assert dataclasses.replace(a.meta, created="") == dataclasses.replace(b.meta, created="")


def test_one_go_cache_serves_rows_by_stable_id(data: Path, one_go: Path) -> None:
    from richkd.caches.stream import vlm_view
    from richkd.data.stream import FolderSource
    from richkd.data.stream.transforms import decode_rgb
    from richkd.teachers.vlm import load_vlm

    cache = TargetCache.open(one_go)
    m = cache.meta
    assert (m.dataset, m.split, m.n_rows, m.class_names, m.view_names, m.pad) == (
        "imagenet", "train", 12, CLASSES, ("plain", "flip"), 0)
    assert cache._np["image_emb.npy"].dtype == np.float16
    assert isinstance(cache._np["cosines.npy"], np.memmap)
    vlm = load_vlm("random:3")
    source = FolderSource(data / "train", classes=CLASSES)
    rows = torch.tensor([11, 0, 6])
    images = torch.stack([vlm_view(decode_rgb(source.read(int(r)).data, ""), 16, "bicubic") for r in rows])
    for view, x in ((0, images), (1, images.flip(-1))):
        want = vlm.encode_images(x.float() / 255)  # [3, E]
        got = cache.lookup(rows, torch.full((3,), view)).image_emb
        # float16 storage of unit vectors (half a float16 gap: <= 2^-12 = 2.4e-4) plus the encoder's fp32 round-off
        # between the builder's batches and this one (~1e-7 a coordinate): inside 2e-3
        torch.testing.assert_close(got, want, atol=2e-3, rtol=0)
    cache.validate(dataset="imagenet", split="train", n_rows=12, class_names=CLASSES)
    with pytest.raises(RichKDError, match="class order differs"):
        cache.validate(dataset="imagenet", split="train", n_rows=12, class_names=CLASSES[::-1])
    names = (one_go / "prompt_classes.tsv").read_text().splitlines()
    assert names == ["n01440764\ttench", "n01443537\tgoldfish", "n01484850\tgreat white shark"]


def test_two_shards_auto_merge_equals_one_go(data: Path, one_go: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = data / "sharded"
    shards = str(data / "shards" / "train")
    assert main([*COMMON, "--root", shards, "--batch-size", "2", "--shard", "1/2", "--out", str(out)]) == 0
    assert not (out / "meta.json").exists()  # one part is not a cache
    with pytest.raises(RichKDError, match="no meta.json"):
        TargetCache.open(out)
    assert main([*COMMON, "--root", shards, "--batch-size", "3", "--workers", "2", "--shard", "0/2",
                 "--out", str(out)]) == 0
    assert "ImageNet's 1,281,167 train rows at this recipe" in capsys.readouterr().out
    assert_same_cache(TargetCache.open(out), TargetCache.open(one_go))


def test_merge_command_and_refusals(
    data: Path, parts: Path, one_go: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p0, p1 = sorted(parts.iterdir())
    assert main(["vlm", "cache-merge", str(p1), str(p0), "--out", str(tmp_path / "merged")]) == 0
    assert_same_cache(TargetCache.open(tmp_path / "merged"), TargetCache.open(one_go))
    merge, to = ["vlm", "cache-merge"], ["--out", str(tmp_path / "refused")]
    fails(capsys, r"rows 6\.\.11 are in no part", [*merge, str(p0), *to])
    fails(capsys, r"rows 0\.\.5 are in no part", [*merge, str(p1), *to])
    fails(capsys, r"repeats rows 0\.\.5", [*merge, str(p0), str(p0), str(p1), *to])
    other = tmp_path / "other"  # the same part, built with CLIP's 80 templates
    assert main([*COMMON, "--root", str(data / "shards" / "train"), "--templates", "imagenet80", "--shard", "1/2",
                 "--no-merge", "--out", str(other)]) == 0
    other_part = next((other / "parts").iterdir())
    fails(capsys, r"another recipe .*\(templates differs\)", [*merge, str(p0), str(other_part), *to])
    unfinished = tmp_path / "unfinished"
    shutil.copytree(p1, unfinished)
    (unfinished / "build.json").unlink()
    (unfinished / "progress.json").write_text(json.dumps({"meta": {}, "rows_done": 2}))
    fails(capsys, r"unfinished \(2 rows done\)", [*merge, str(p0), str(unfinished), *to])
    assert not (tmp_path / "refused").exists()


class Interrupted(RuntimeError):
    pass


class FailingVLM:
    """Delegates to `inner` but raises after `fail_after` image batches, like a killed build."""

    def __init__(self, inner: Any, fail_after: int) -> None:
        self.inner, self.fail_after, self.calls = inner, fail_after, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_images(self, images: Tensor) -> Tensor:
        self.calls += 1
        if self.calls > self.fail_after:
            raise Interrupted
        return self.inner.encode_images(images)  # type: ignore[no-any-return]


def test_killed_shard_resumes_where_it_stopped(data: Path, parts: Path) -> None:
    from richkd.caches.stream import build_stream_cache, make_recipe, open_source
    from richkd.teachers.imagenet_names import resolve_templates, wnid_to_name
    from richkd.teachers.vlm import load_vlm
    from richkd.teachers.zero_shot import class_embeddings

    source = open_source(data / "shards" / "train", CLASSES)
    vlm = load_vlm("random:3")
    names = [wnid_to_name()[c] for c in CLASSES]
    class_emb = class_embeddings(vlm, names, resolve_templates(None), clean_names=True)

    def build(model: Any, out: Path) -> Path:
        recipe = make_recipe(model, source, dataset="imagenet", split="train", classes=CLASSES, prompt_names=names,
                             templates=resolve_templates(None), clean_names=True, include_flip=True, embed_dim=16)
        return build_stream_cache(model, source, out, recipe, class_emb=class_emb, part=(1, 2), batch_size=2,
                                  checkpoint_seconds=0, auto_merge=False)

    out = data / "resumed"
    with pytest.raises(Interrupted):
        build(FailingVLM(vlm, fail_after=2), out)  # rows 6..11 in batches of 2: dies in the 3rd
    part = out / "parts" / "part-0001-of-0002"
    assert json.loads((part / "progress.json").read_text())["rows_done"] == 4
    counting = FailingVLM(vlm, fail_after=10**6)
    build(counting, out)
    assert counting.calls == 1  # only rows 10..11 were left
    assert not (part / "progress.json").exists()
    for name in ARRAYS:
        np.testing.assert_array_equal(np.load(part / name), np.load(parts / part.name / name), err_msg=name)
    again = FailingVLM(vlm, fail_after=0)
    build(again, out)  # complete: nothing is recomputed


def test_build_killed_before_meta_json_is_finished_on_rerun(data: Path, one_go: Path) -> None:
    out = data / "no_meta"
    shutil.copytree(one_go, out)
    (out / "meta.json").unlink()  # a one-go build killed between build.json and meta.json
    with pytest.raises(RichKDError, match="no meta.json"):
        TargetCache.open(out)
    assert main([*COMMON, "--root", str(data / "train"), "--batch-size", "5", "--out", str(out)]) == 0
    assert_same_cache(TargetCache.open(out), TargetCache.open(one_go))


def test_size_is_stated_and_a_full_disk_refused(
    data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from richkd.caches.stream_layout import cache_bytes

    # 1.28 M rows, plain + flip, 1000 classes, ViT-L/14's 768-d: float32 cosines, fp16 embeddings, int16 params
    assert cache_bytes(1_281_167, 2, 1000, 768) == 1_281_167 * 2 * (4000 + 1536 + 6) + 4 * 1000 * 768
    usage = shutil.disk_usage(data)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=100))
    argv = [*COMMON, "--root", str(data / "train"), "--out", str(data / "full_disk")]
    fails(capsys, r"needs 0\.00 GiB but .* has 0\.00 GiB free", argv)


def test_bad_input_is_one_line(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(data / "x")]
    fails(capsys, "needs --root", [*COMMON, *out])
    base = [*COMMON, "--root", str(data / "train"), *out]
    fails(capsys, "drop --views", [*base, "--views", "2"])
    fails(capsys, "--shard '2/2'", [*base, "--shard", "2/2"])
    fails(capsys, "not an ImageNet-1k wnid", [*base, "--classes", "n01440764,cat"])
    fails(capsys, "neither a template set", [*base, "--templates", "imagenet81"])


def test_packaged_imagenet_facts() -> None:
    from richkd.teachers.imagenet_names import (
        imagenet_class_names,
        imagenet_wnids,
        resolve_templates,
        subset_wnids,
    )
    from richkd.teachers.prompts import DEFAULT_TEMPLATES

    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids) and wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    assert imagenet_class_names("clip")[:2] == ("tench", "goldfish")
    assert imagenet_class_names("torchvision")[4] == "hammerhead" != imagenet_class_names("clip")[4]
    templates = resolve_templates("imagenet80")
    assert len(set(templates)) == 80
    assert (templates[0], templates[-1]) == ("a bad photo of a {}.", "a tattoo of the {}.")
    assert resolve_templates("richkd12") == DEFAULT_TEMPLATES
    for name in ("imagenet-r", "imagenet-a"):
        subset = subset_wnids(name)
        assert len(set(subset)) == 200 and set(subset) <= set(wnids)
    assert len(set(subset_wnids("imagenet-r")) & set(subset_wnids("imagenet-a"))) < 200
