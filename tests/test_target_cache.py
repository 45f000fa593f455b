"""TargetCache format, lookup, validation and refusals; the resumable cache builder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from numerics import float16_spacing
from richkd.caches.target import CacheMeta, TargetCache, write_target_cache
from richkd.errors import RichKDError

N, V, C, E = 12, 3, 4, 8
CLASSES = ("apple", "bee", "cat", "dog")


def make_meta(**kw: object) -> CacheMeta:
    base: dict[str, object] = dict(
        dataset="toy", split="train", n_rows=N, class_names=CLASSES, n_views=V,
        view_names=("plain", "flip", "aug0"), model_id="random:0", model_kind="random",
        model_label="random (untrained test model) — not CLIP", weights_sha256="0" * 64,
        templates=("a photo of a {}",), templates_sha256="1" * 64, clean_names=True, embed_dim=E, image_size=16,
    )
    base.update(kw)
    return CacheMeta(**base)  # type: ignore[arg-type]


@pytest.fixture
def arrays() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(N, V, E, generator=gen), dim=-1).half()
    aug = torch.randint(0, 9, (N, V, 3), generator=gen, dtype=torch.int16)
    aug[..., 2] %= 2
    return {
        "cosines": torch.randn(N, V, C, generator=gen),
        "image_emb": emb,
        "aug_params": aug,
        "class_emb": F.normalize(torch.randn(C, E, generator=gen), dim=-1),
    }


@pytest.fixture
def cache_dir(tmp_path: Path, arrays: dict[str, Tensor]) -> Path:
    path = tmp_path / "cache"
    write_target_cache(path, meta=make_meta(), **arrays)
    return path


def test_meta_json_round_trip() -> None:
    meta = make_meta()
    assert CacheMeta.from_json(meta.to_json()) == meta
    assert json.loads(meta.to_json())["format_version"] == 1
    with pytest.raises(RichKDError, match="model_kind"):
        make_meta(model_kind="magic")
    with pytest.raises(RichKDError, match="view names"):
        make_meta(n_views=2)


@pytest.mark.parametrize("on_device", [False, True])
def test_lookup_returns_exact_rows_and_views(cache_dir: Path, arrays: dict[str, Tensor], on_device: bool) -> None:
    cache = TargetCache.open(cache_dir)
    assert cache.n_views == V and cache.meta == make_meta()
    if on_device:
        cache.to_device("cpu")
    gen = torch.Generator().manual_seed(1)
    idx = torch.randperm(N, generator=gen)
    views = torch.randint(0, V, (N,), generator=gen)
    t = cache.lookup(idx, views)
    assert t.cosines.shape == (N, C) and t.cosines.dtype == torch.float32
    assert torch.equal(t.cosines, arrays["cosines"][idx, views])
    assert t.image_emb.dtype == torch.float32
    want = arrays["image_emb"][idx, views].float()
    assert bool(((t.image_emb - want).abs() <= 0.5 * float16_spacing(want)).all())  # stored as float16: rounding
    torch.testing.assert_close(t.image_emb.norm(dim=-1), torch.ones(N))
    # the view is honoured: same rows at another view give that view's row
    other = (views + 1) % V
    assert torch.equal(cache.lookup(idx, other).cosines, arrays["cosines"][idx, other])
    torch.testing.assert_close(cache.class_emb, arrays["class_emb"])
    torch.testing.assert_close(cache.all_cosines(1), arrays["cosines"][:, 1])


def test_aug_params_round_trip(cache_dir: Path, arrays: dict[str, Tensor]) -> None:
    pytest.importorskip("richkd.data.augment")
    cache = TargetCache.open(cache_dir)
    idx = torch.tensor([5, 0, 11, 5])
    views = torch.tensor([2, 1, 0, 0])
    for _ in range(2):
        p = cache.aug_params(idx, views)
        want = arrays["aug_params"][idx, views].long()
        assert torch.equal(p.dx.long(), want[:, 0]) and torch.equal(p.dy.long(), want[:, 1])
        assert torch.equal(p.flip.bool(), want[:, 2].bool())
        cache.to_device("cpu")


def test_validate_accepts_and_refuses(cache_dir: Path) -> None:
    cache = TargetCache.open(cache_dir)
    cache.validate(dataset="toy", split="train", n_rows=N, class_names=list(CLASSES))
    cases = {
        "built for toy/train": dict(dataset="cifar10"),
        "run uses toy/test": dict(split="test"),
        f"toy/train \\({N + 1} rows\\)": dict(n_rows=N + 1),
        "class order differs": dict(class_names=("bee", "apple", "cat", "dog")),
        "class names differ": dict(class_names=("apple", "bee", "cat", "emu")),
    }
    for pattern, change in cases.items():
        kw: dict[str, object] = dict(dataset="toy", split="train", n_rows=N, class_names=CLASSES)
        kw.update(change)
        with pytest.raises(RichKDError, match=pattern) as err:
            cache.validate(**kw)  # type: ignore[arg-type]
        assert "richkd vlm cache" in str(err.value) and "\n" not in str(err.value)


def test_write_is_atomic_and_overwrites(cache_dir: Path, arrays: dict[str, Tensor]) -> None:
    arrays = dict(arrays, cosines=arrays["cosines"] + 1)
    write_target_cache(cache_dir, meta=make_meta(), **arrays)
    assert torch.equal(TargetCache.open(cache_dir).all_cosines(), arrays["cosines"])
    assert [p.name for p in cache_dir.parent.iterdir()] == ["cache"]
    with pytest.raises(RichKDError, match="shape"):
        write_target_cache(cache_dir, meta=make_meta(n_rows=N + 1), **arrays)


def test_open_refuses_missing_incomplete_corrupt(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RichKDError, match="does not exist"):
        TargetCache.open(tmp_path / "nope")
    meta = (cache_dir / "meta.json").read_text()
    (cache_dir / "meta.json").unlink()
    with pytest.raises(RichKDError, match="no meta.json"):
        TargetCache.open(cache_dir)
    (cache_dir / "progress.json").write_text("{}")
    with pytest.raises(RichKDError, match="unfinished build"):
        TargetCache.open(cache_dir)
    (cache_dir / "meta.json").write_text("{not json")
    with pytest.raises(RichKDError, match="not valid JSON"):
        TargetCache.open(cache_dir)
    (cache_dir / "meta.json").write_text(meta.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(RichKDError, match="version 99"):
        TargetCache.open(cache_dir)
    (cache_dir / "meta.json").write_text(meta)
    TargetCache.open(cache_dir)
    raw = (cache_dir / "cosines.npy").read_bytes()
    (cache_dir / "cosines.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RichKDError, match="corrupt"):
        TargetCache.open(cache_dir)
    np.save(cache_dir / "cosines.npy", np.zeros((N, V, C + 1), np.float32))
    with pytest.raises(RichKDError, match="shape"):
        TargetCache.open(cache_dir)
    np.save(cache_dir / "cosines.npy", np.zeros((N, V, C), np.float64))
    with pytest.raises(RichKDError, match="expected float32"):
        TargetCache.open(cache_dir)
    np.save(cache_dir / "cosines.npy", np.zeros((N, V, C), np.float32))
    (cache_dir / "image_emb.npy").unlink()
    with pytest.raises(RichKDError, match="image_emb.npy is missing"):
        TargetCache.open(cache_dir)


# ---------------------------------------------------------------------------------------------- builder


def tiny_dataset(n: int = 21, size: int = 16):  # type: ignore[no-untyped-def]
    from richkd.data.arrays import ArrayDataset

    gen = torch.Generator().manual_seed(0)
    return ArrayDataset(
        images=torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8),
        labels=torch.arange(n) % 3, classes=("red_fox", "owl", "tree frog"), name="toy", split="train",
        mean=(0.5,) * 3, std=(0.25,) * 3, source="memory",
    )


class Interrupted(RuntimeError):
    pass


class FailingVLM:
    """Delegates to `inner` but raises after `fail_after` image batches, like a killed build."""

    def __init__(self, inner: object, fail_after: int) -> None:
        self.inner = inner
        self.fail_after = fail_after
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def encode_images(self, images: Tensor) -> Tensor:
        self.calls += 1
        if self.calls > self.fail_after:
            raise Interrupted
        return self.inner.encode_images(images)  # type: ignore[attr-defined, no-any-return]


def build(vlm: object, out: Path, **kw: object) -> Path:
    from richkd.caches.build_target import build_target_cache

    opts: dict[str, object] = dict(
        templates=("a photo of a {}", "a {}"), batch_size=4, bf16=False, progress=False, checkpoint_seconds=0
    )
    opts.update(kw)
    return build_target_cache(vlm, tiny_dataset(), out, **opts)  # type: ignore[arg-type]


def test_builder_plain_and_flip_views_match_direct_encoding(tmp_path: Path) -> None:
    pytest.importorskip("richkd.data.augment")
    from richkd.teachers.random_vlm import RandomVLM
    from richkd.teachers.zero_shot import class_embeddings

    vlm = RandomVLM(seed=0)
    cache = TargetCache.open(build(vlm, tmp_path / "c"))
    ds = tiny_dataset()
    cache.validate(dataset="toy", split="train", n_rows=len(ds), class_names=ds.classes)
    m = cache.meta
    assert m.view_names == ("plain", "flip") and m.model_kind == "random" and "not CLIP" in m.model_label
    assert m.clean_names and m.templates == ("a photo of a {}", "a {}") and m.weights_sha256 == vlm.fingerprint()
    w = class_embeddings(vlm, ds.classes, m.templates, clean_names=True)
    torch.testing.assert_close(cache.class_emb, w)
    x = ds.images.float() / 255
    idx = torch.arange(len(ds))
    for view, images in ((0, x), (1, x.flip(-1))):
        emb = vlm.encode_images(images)
        t = cache.lookup(idx, torch.full_like(idx, view))
        # the builder ran other batch shapes: fp32 round-off only. Cosines of unit vectors: <= 2 * gamma_16 = 2e-6
        # for the dot products (E = 16) plus the encoder's round-off (~1e-7 a coordinate), inside 1e-5. Embeddings:
        # stored as float16, half a float16 gap (<= 2^-12 below 1) plus that round-off, inside 2e-3.
        torch.testing.assert_close(t.cosines, emb @ w.t(), atol=1e-5, rtol=0)
        torch.testing.assert_close(t.image_emb, emb, atol=2e-3, rtol=0)
    p = cache.aug_params(idx, torch.ones_like(idx))
    assert (p.dx == 4).all() and (p.dy == 4).all() and p.flip.all()


def test_builder_aug_views_are_seeded_and_applied(tmp_path: Path) -> None:
    pytest.importorskip("richkd.data.augment")
    from richkd.data.augment import CropFlip, apply_crop_flip
    from richkd.teachers.random_vlm import RandomVLM

    vlm = RandomVLM(seed=1)
    a = TargetCache.open(build(vlm, tmp_path / "a", n_aug_views=2, include_flip=False, seed=5))
    b = TargetCache.open(build(vlm, tmp_path / "b", n_aug_views=2, include_flip=False, seed=5, batch_size=7))
    c = TargetCache.open(build(vlm, tmp_path / "c", n_aug_views=2, include_flip=False, seed=6))
    assert a.meta.view_names == ("plain", "aug0", "aug1")
    aug = a._np["aug_params.npy"]
    assert np.array_equal(aug, b._np["aug_params.npy"])  # batch size does not change the views
    assert not np.array_equal(aug, c._np["aug_params.npy"])
    assert aug[..., :2].min() >= 0 and aug[..., :2].max() <= 8 and set(np.unique(aug[..., 2])) <= {0, 1}
    assert (aug[:, 0] == (4, 4, 0)).all()
    ds = tiny_dataset()
    idx = torch.arange(len(ds))
    view = torch.full_like(idx, 2)
    p = a.aug_params(idx, view)
    images = apply_crop_flip(ds.images, CropFlip(dx=p.dx, dy=p.dy, flip=p.flip), pad=4)
    emb = vlm.encode_images(images.float() / 255)
    torch.testing.assert_close(a.lookup(idx, view).image_emb, emb, atol=2e-3, rtol=0)


def test_builder_resumes_after_interruption(tmp_path: Path) -> None:
    pytest.importorskip("richkd.data.augment")
    from richkd.teachers.random_vlm import RandomVLM

    vlm = RandomVLM(seed=2)
    whole = TargetCache.open(build(vlm, tmp_path / "whole", n_aug_views=1))
    out = tmp_path / "resumed"
    flaky = FailingVLM(RandomVLM(seed=2), fail_after=2)
    with pytest.raises(Interrupted):
        build(flaky, out, n_aug_views=1)
    assert json.loads((out / "progress.json").read_text())["rows_done"] == 8  # 2 batches of 4
    with pytest.raises(RichKDError, match="unfinished build"):
        TargetCache.open(out)
    with pytest.raises(RichKDError, match="different recipe"):
        build(RandomVLM(seed=2), out, n_aug_views=2)
    counting = FailingVLM(RandomVLM(seed=2), fail_after=10**6)
    build(counting, out, n_aug_views=1)
    assert counting.calls == 4  # rows 8..20 in batches of 4: the finished rows were not redone
    resumed = TargetCache.open(out)
    assert not (out / "progress.json").exists()
    for name in ("cosines.npy", "image_emb.npy", "aug_params.npy", "class_emb.npy"):
        np.testing.assert_allclose(resumed._np[name], whole._np[name], atol=1e-6)
    assert dataclasses.replace(resumed.meta, created="") == dataclasses.replace(whole.meta, created="")
    # a finished cache is not rebuilt for the same recipe, and is refused for another
    again = FailingVLM(RandomVLM(seed=2), fail_after=0)
    build(again, out, n_aug_views=1)
    with pytest.raises(RichKDError, match="built differently"):
        build(RandomVLM(seed=3), out, n_aug_views=1)


def test_builder_refuses_a_foreign_folder(tmp_path: Path) -> None:
    from richkd.teachers.random_vlm import RandomVLM

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RichKDError, match="not a target cache"):
        build(RandomVLM(), out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_to_device_keeps_the_stored_dtypes_and_serves_the_same_bits(cache_dir: Path) -> None:
    """Issue 27 item 4: nothing is upcast when loaded; every batch equals the old load-upcast-normalise path's."""
    cache = TargetCache.open(cache_dir)
    # the old path, reimplemented: the whole array upcast to float32 and normalised once, then gathered
    old_emb = F.normalize(torch.from_numpy(np.load(cache_dir / "image_emb.npy")).float(), dim=-1)
    old_cos = torch.from_numpy(np.load(cache_dir / "cosines.npy"))
    old_aug = torch.from_numpy(np.load(cache_dir / "aug_params.npy")).long()
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, N, (b,), generator=gen), torch.randint(0, V, (b,), generator=gen)) for b in (1, 5, 32)]
    for resident in (False, True):
        if resident:
            cache.to_device("cpu")
        assert cache.resident == resident
        for idx, views in batches:
            t = cache.lookup(idx, views)
            assert torch.equal(t.cosines, old_cos[idx, views]) and torch.equal(t.image_emb, old_emb[idx, views])
            p = cache.aug_params(idx, views)
            assert torch.equal(torch.stack([p.dx, p.dy, p.flip.long()], -1), old_aug[idx, views])
    # resident bytes: N V (4 C + 2 E + 2 * 3) as stored, where the old path held N V (4 C + 4 E + 8 * 3)
    assert cache.resident_nbytes == N * V * (4 * C + 2 * E + 2 * 3) == cache.meta.nbytes


def test_fits_uses_the_shared_memory_guard(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import richkd.caches.residency as residency

    cache = TargetCache.open(cache_dir)
    need = N * V * (4 * C + 2 * E + 2 * 3)
    monkeypatch.setattr(residency, "memory_available", lambda device: 2 * need)
    assert cache.fits("cpu")  # exactly half of what is available
    monkeypatch.setattr(residency, "memory_available", lambda device: 2 * need - 1)
    assert not cache.fits("cpu")


def test_a_cache_larger_than_half_the_free_memory_is_served_from_disk(
    cache_dir: Path, arrays: dict[str, Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    import richkd.caches.residency as residency
    from richkd.build import open_cache
    from richkd.config import config_from_dict
    from richkd.data.arrays import ArrayDataset

    cfg = config_from_dict({"vlm": {"cache": str(cache_dir)}})
    train = ArrayDataset(name="toy", split="train", images=torch.zeros(N, 3, 4, 4, dtype=torch.uint8),
                         labels=torch.arange(N) % C, classes=CLASSES, mean=(0.5,) * 3, std=(0.25,) * 3,
                         source="test")
    for available, resident in ((10**12, True), (100, False)):
        monkeypatch.setattr(residency, "memory_available", lambda device, a=available: a)
        cache = open_cache(cfg, train, torch.device("cpu"))
        assert cache.resident == resident
        assert torch.equal(cache.lookup(torch.tensor([3]), torch.tensor([2])).cosines, arrays["cosines"][3, 2][None])


def test_a_cache_built_before_subset_rule_was_recorded_is_still_complete(tmp_path: Path) -> None:
    """Rerunning the command of a whole-split cache from before issue 27 (meta.json without subset_rule) finds it
    complete instead of refusing it as another recipe: the rule is provenance, the rows are pinned otherwise."""
    from richkd.teachers.random_vlm import RandomVLM

    out = build(RandomVLM(seed=0), tmp_path / "c")
    meta = json.loads((out / "meta.json").read_text())
    del meta["subset_rule"]
    (out / "meta.json").write_text(json.dumps(meta))
    before = (out / "cosines.npy").stat().st_mtime_ns
    assert build(RandomVLM(seed=0), out) == out
    assert (out / "cosines.npy").stat().st_mtime_ns == before and TargetCache.open(out).meta.subset_rule == 1
