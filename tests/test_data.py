"""Dataset loading (official CIFAR pickles, idx files, image folders + cache), batching and device data."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from richkd.data import cifar, folder
from richkd.data.datasets import load_dataset
from richkd.data.fashion_mnist import CLASSES as FASHION_CLASSES
from richkd.data.fashion_mnist import DEFAULT_ROOT as FASHION_ROOT
from richkd.data.fashion_mnist import read_idx
from richkd.data.loader import DeviceData, epoch_batches, reference_loader
from richkd.data.stats import DATASET_STATS, compute_mean_std
from richkd.errors import RichKDError

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"


# ---------------------------------------------------------------- CIFAR (official python pickles, faked)
class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes what Python 2's cPickle wrote for the official files: native strings as BINSTRING (bytes on
    load) and numpy globals under their pre-2.0 module names."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        short = len(data) < 256
        head = pickle.SHORT_BINSTRING + bytes([len(data)]) if short else pickle.BINSTRING + struct.pack("<i", len(data))
        self.write(head + data)
        self.memoize(obj)

    def save_py2_global(self, obj: type, name: str | None = None) -> None:
        name = name or obj.__qualname__
        module = "numpy.core.multiarray" if name == "_reconstruct" else obj.__module__.replace("._core", "")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str
    dispatch[type] = save_py2_global


def _pickle(path: Path, obj: object, *, py2: bool = True) -> None:
    with open(path, "wb") as f:
        if py2:
            _Py2Pickler(f, protocol=2).dump(obj)
        else:  # how a copy re-saved from Python 3 looks (bytes via _codecs.encode)
            pickle.dump(obj, f, protocol=2)


def _fake_cifar10(root: Path) -> dict[str, np.ndarray]:
    folder_ = root / "cifar-10-batches-py"
    folder_.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (13, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, 13)
    for i in range(5):
        rows = slice(2 * i, 2 * i + 2)
        _pickle(folder_ / f"data_batch_{i + 1}", {b"data": data[rows], b"labels": labels[rows].tolist()})
    _pickle(folder_ / "test_batch", {b"data": data[10:], b"labels": labels[10:].tolist()})
    _pickle(folder_ / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return {"data": data, "labels": labels}


def test_cifar10_official_layout(tmp_path: Path) -> None:
    fake = _fake_cifar10(tmp_path)
    train = load_dataset("cifar10", tmp_path, "train")
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.images.is_contiguous()
    # rows are 1024 red bytes, then green, then blue, row-major
    assert torch.equal(train.images[3, 1].flatten(), torch.from_numpy(fake["data"][3, 1024:2048]))
    assert train.labels.tolist() == fake["labels"][:10].tolist()
    assert train.classes == tuple(f"c{i}" for i in range(10))
    assert (train.mean, train.std) == DATASET_STATS["cifar10"]
    test = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", "test")  # root may be the folder itself
    assert len(test) == 3 and test.labels.tolist() == fake["labels"][10:].tolist()


def test_cifar100_fine_labels_and_names(tmp_path: Path) -> None:
    folder_ = tmp_path / "cifar-100-python"
    folder_.mkdir()
    data = np.arange(4 * 3072, dtype=np.int64).astype(np.uint8).reshape(4, 3072)
    for split in ("train", "test"):
        batch = {b"data": data, b"fine_labels": [5, 99, 0, 7], b"coarse_labels": [1, 2, 3, 4]}
        _pickle(folder_ / split, batch, py2=False)
    names = [f"fine{i}".encode() for i in range(100)]
    _pickle(folder_ / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"x"] * 20}, py2=False)
    ds = load_dataset("cifar100", tmp_path, "test")
    assert ds.labels.tolist() == [5, 99, 0, 7]
    assert len(ds.classes) == 100 and ds.classes[99] == "fine99"
    assert (ds.mean, ds.std) == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def test_cifar_pickle_may_not_run_code(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": os.getcwd})  # any non-numpy global
    with pytest.raises(RichKDError, match="refusing"):
        load_dataset("cifar10", tmp_path, "test")


def test_missing_cifar_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(RichKDError) as info:
        load_dataset("cifar100", tmp_path / "nowhere", "train")
    message = str(info.value)
    assert "CIFAR-100 not found under" in message and str(tmp_path / "nowhere") in message
    assert "data.root=" in message and "data.download=true" in message and "\n" not in message


def test_cifar_download_checks_md5_and_extracts_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    spec = dataclasses.replace(cifar.CIFAR_SPECS["cifar10"], url=archive.as_uri(), md5="0" * 32)
    monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar10", spec)
    with pytest.raises(RichKDError, match="md5"):
        load_dataset("cifar10", tmp_path / "dl", "train", download=True)
    assert not (tmp_path / "dl" / "cifar-10-batches-py").exists() and not list((tmp_path / "dl").iterdir())
    monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar10", dataclasses.replace(spec, md5=md5))
    assert len(load_dataset("cifar10", tmp_path / "dl", "train", download=True)) == 10
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["cifar-10-batches-py"]  # no temp files left
    offline = dataclasses.replace(spec, url=(tmp_path / "absent.tar.gz").as_uri())
    monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar10", offline)
    with pytest.raises(RichKDError, match="could not download CIFAR-10"):
        load_dataset("cifar10", tmp_path / "dl2", "train", download=True)


@pytest.mark.parametrize(
    ("name", "split", "match"),
    [("svhn", "train", "unknown dataset 'svhn'"), ("cifar10", "val", "no split 'val'")],
)
def test_bad_name_or_split(tmp_path: Path, name: str, split: str, match: str) -> None:
    _fake_cifar10(tmp_path)
    with pytest.raises(RichKDError, match=match):
        load_dataset(name, tmp_path, split)


# ---------------------------------------------------------------- Fashion-MNIST
def test_read_idx_fake_file(tmp_path: Path) -> None:
    raw = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(np.array([2051, 2, 3, 4], dtype=">u4").tobytes() + raw.tobytes()))
    assert np.array_equal(read_idx(path, 2051), raw)
    with pytest.raises(RichKDError, match="magic"):
        read_idx(path, 2049)


@pytest.mark.skipif(not FASHION_ROOT.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_files() -> None:
    train = load_dataset("fashion_mnist", None, "train")
    assert train.images.shape == (60000, 3, 32, 32) and train.labels.shape == (60000,)
    assert train.classes == FASHION_CLASSES and len(train.classes) == 10
    assert (train.images[:, :, :2] == 0).all() and (train.images[:, :, :, -2:] == 0).all()  # 2 px padding
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grey replicated
    assert train.labels.bincount().tolist() == [6000] * 10
    mean, std = compute_mean_std(train.images.numpy())
    assert np.allclose(mean, DATASET_STATS["fashion_mnist"][0], atol=1e-4)
    assert np.allclose(std, DATASET_STATS["fashion_mnist"][1], atol=1e-4)
    assert len(load_dataset("fashion_mnist", None, "test")) == 10000


# ---------------------------------------------------------------- image folders
def _png(seed: int, size: tuple[int, int] = (6, 5)) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # lossless, so decoded pixels are checkable
    return buffer.getvalue(), pixels


TREE = ["train/dog/b.png", "train/cat/z.png", "train/cat/a.png", "train/dog/a.png", "test/dog/q.png", "test/cat/q.png"]


def _tree_tar(tmp_path: Path, files: dict[str, bytes] | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """A .tar.gz in ImageFolder layout, written in unsorted order, with a macOS resource-fork decoy."""
    pixels: dict[str, np.ndarray] = {}
    blobs = dict(files or {})
    for i, name in enumerate(TREE):
        if name not in blobs:
            blobs[name], pixels[name] = _png(i)
    blobs["train/cat/._a.png"] = b"not an image"
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"tiny/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return archive, pixels


def test_imagefolder_tar_sorted_rows_labels_and_stats(tmp_path: Path) -> None:
    archive, pixels = _tree_tar(tmp_path)
    train = load_dataset("imagefolder", archive, "train", cache_dir=tmp_path / "cache")
    order = sorted(p.removeprefix("train/") for p in TREE if p.startswith("train/"))
    assert order == ["cat/a.png", "cat/z.png", "dog/a.png", "dog/b.png"]
    assert train.classes == ("cat", "dog") and train.labels.tolist() == [0, 0, 1, 1]
    for row, rel in enumerate(order):
        assert np.array_equal(train.images[row].permute(1, 2, 0).numpy(), pixels[f"train/{rel}"])
    assert train.images.shape == (4, 3, 5, 6) and train.source == str(archive.resolve())
    assert np.allclose(train.mean, train.images.float().div(255).mean(dim=(0, 2, 3)).numpy())
    test = load_dataset("imagefolder", archive, "test", cache_dir=tmp_path / "cache")
    assert test.labels.tolist() == [0, 1] and (test.mean, test.std) == (train.mean, train.std)


def test_imagefolder_cache_is_reused_and_rebuilt_when_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = _tree_tar(tmp_path)
    cache = tmp_path / "cache"
    first = load_dataset("imagefolder", archive, "train", cache_dir=cache)
    (meta,) = cache.glob("*/meta.json")
    stamp = meta.stat().st_mtime_ns
    real_decode = folder.decode_tree

    def no_decode(*args: object, **kwargs: object) -> object:
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(folder, "decode_tree", no_decode)
    again = load_dataset("imagefolder", archive, "train", cache_dir=cache)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert meta.stat().st_mtime_ns == stamp and not list(cache.glob("*/.*.tmp"))
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))  # the archive changed: rebuild
    calls: list[Path] = []
    monkeypatch.setattr(folder, "decode_tree", lambda src, **kw: calls.append(src) or real_decode(src, **kw))
    load_dataset("imagefolder", archive, "train", cache_dir=cache)
    assert calls == [archive.resolve()]


def test_imagefolder_directory_equals_archive(tmp_path: Path) -> None:
    archive, _ = _tree_tar(tmp_path)
    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    from_tar = load_dataset("imagefolder", archive, "train", cache_dir=tmp_path / "c")
    from_dir = load_dataset("imagefolder", tmp_path / "x" / "tiny", "train", cache_dir=tmp_path / "c")
    assert torch.equal(from_tar.images, from_dir.images) and torch.equal(from_tar.labels, from_dir.labels)


def test_imagefolder_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    archive, _ = _tree_tar(tmp_path, {"train/dog/b.png": _png(9, size=(7, 7))[0]})
    with pytest.raises(RichKDError, match="image_size"):
        load_dataset("imagefolder", archive, "train", cache_dir=tmp_path / "c")
    resized = load_dataset("imagefolder", archive, "train", cache_dir=tmp_path / "c", image_size=4)
    assert resized.images.shape == (4, 3, 4, 4)


def test_imagefolder_errors(tmp_path: Path) -> None:
    archive, _ = _tree_tar(tmp_path)
    with pytest.raises(RichKDError, match="no val/ split"):
        load_dataset("imagefolder", archive, "val", cache_dir=tmp_path / "c")
    with pytest.raises(RichKDError, match="does not exist"):
        load_dataset("imagefolder", tmp_path / "missing.tar.gz", "train", cache_dir=tmp_path / "c")
    with pytest.raises(RichKDError, match="data.root"):
        load_dataset("imagefolder", None, "train", cache_dir=tmp_path / "c")


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_CIFAR10.is_file(), reason=f"{SHARED_CIFAR10} is absent (repo not beside shared/)")
def test_shared_cifar10_jpeg_archive(tmp_path: Path) -> None:
    start = time.perf_counter()
    train = load_dataset("imagefolder", SHARED_CIFAR10, "train", cache_dir=tmp_path)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    test = load_dataset("imagefolder", SHARED_CIFAR10, "test", cache_dir=tmp_path)
    cached_s = time.perf_counter() - start
    print(f"\ncifar10-jpeg: first decode {decode_s:.1f} s, cached load {cached_s:.2f} s")
    assert train.images.shape == (50000, 3, 32, 32) and len(test) == 10000
    assert len(train.classes) == 10 and train.classes[0] == "airplane" and train.classes[-1] == "truck"
    assert train.labels.bincount().tolist() == [5000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    assert np.allclose(train.mean, DATASET_STATS["cifar10"][0], atol=0.005)  # JPEG copies of the same images


# ---------------------------------------------------------------- batching
def test_epoch_batches_cover_every_row_once_and_are_seeded() -> None:
    batches = epoch_batches(103, 10, shuffle=True, drop_last=False, generator=torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert sorted(torch.cat(batches).tolist()) == list(range(103))
    again = epoch_batches(103, 10, shuffle=True, drop_last=False, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = epoch_batches(103, 10, shuffle=True, drop_last=False, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(torch.cat(batches), torch.cat(other))
    dropped = epoch_batches(103, 10, shuffle=False, drop_last=True, generator=None)
    assert len(dropped) == 10 and torch.equal(torch.cat(dropped), torch.arange(100))


@pytest.mark.parametrize("world_size", [2, 4])
def test_epoch_batches_rank_slices_partition_the_global_batch(world_size: int) -> None:
    def run(rank: int, ws: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(7)
        return epoch_batches(101, 16, shuffle=True, drop_last=False, generator=g, rank=rank, world_size=ws)

    single = run(0, 1)
    per_rank = [run(r, world_size) for r in range(world_size)]
    assert len({len(p) for p in per_rank}) == 1
    for step, global_rows in enumerate(single):
        parts = [p[step] for p in per_rank]
        assert len({len(x) for x in parts}) == 1
        union = torch.cat(parts)
        assert len(set(union.tolist())) == len(union)  # disjoint
        if len(global_rows) == 16:
            assert torch.equal(union, global_rows)
        else:  # the last partial batch is trimmed to a multiple of world_size
            assert torch.equal(union, global_rows[: len(global_rows) // world_size * world_size])
    with pytest.raises(ValueError, match="divisible"):
        epoch_batches(10, 5, shuffle=False, drop_last=False, generator=None, rank=0, world_size=2)


def _tiny_dataset(n: int = 12):  # type: ignore[no-untyped-def]
    from richkd.data.arrays import ArrayDataset

    g = torch.Generator().manual_seed(0)
    return ArrayDataset(
        images=torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
        labels=torch.arange(n) % 3,
        classes=("a", "b", "c"),
        name="tiny",
        split="train",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        source="memory",
    )


def test_device_data_gather() -> None:
    ds = _tiny_dataset()
    data = DeviceData(ds, "cpu")
    rows = torch.tensor([5, 0, 5])
    images, labels = data.gather(rows)
    assert len(data) == 12 and torch.equal(images, ds.images[rows]) and torch.equal(labels, ds.labels[rows])


def test_reference_loader_yields_augmented_normalised_batches() -> None:
    ds = _tiny_dataset()
    images, labels, indices = next(iter(reference_loader(ds, 12, num_workers=0, pad=0)))
    assert images.shape == (12, 3, 8, 8) and images.dtype == torch.float32
    raw = ds.images[indices].float() / 255
    restored = images * 0.25 + 0.5
    same = torch.isclose(restored, raw, atol=1e-5).flatten(1).all(1)
    flipped = torch.isclose(restored, raw.flip(-1), atol=1e-5).flatten(1).all(1)
    assert bool((same | flipped).all()) and torch.equal(labels, ds.labels[indices])
