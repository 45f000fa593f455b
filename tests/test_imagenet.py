"""The ImageNet path: streaming folder / tar-shard data (row ids, rank sharding, transforms) and the ImageNet
models (torchvision / mdistiller state-dict names, parameter counts, 224 px forward)."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_layout import CLASSES, make_split
from richkd.data.stream import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FolderSource,
    ShardSource,
    StreamDataset,
    build_stream_loader,
)
from richkd.data.stream.transforms import eval_view, random_resized_crop_box, to_normalized_tensor, train_view
from richkd.engine.checkpoint import load_model_file
from richkd.errors import RichKDError
from richkd.models import create_model

PER_CLASS = 4
IMAGENET_MODELS = ("resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet", "mobilenetv1_imagenet")


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train/<wnid>/*.JPEG (4 per class, one greyscale) and root/shards/train/shard-00000{0,1}.tar."""
    root = tmp_path_factory.mktemp("imagenet")
    make_split(root, "train", CLASSES, PER_CLASS, n_shards=2)
    return root


def _rows_labels(ds: StreamDataset) -> list[tuple[int, int]]:
    return [(s.row, s.label) for s in ds.iter_raw()]


def test_folder_and_shards_give_the_same_rows_labels_and_images(imagenet_tree: Path) -> None:
    folder = FolderSource(imagenet_tree / "train")
    shards = ShardSource(imagenet_tree / "shards" / "train")
    assert folder.classes == CLASSES
    assert len(folder) == len(shards) == len(CLASSES) * PER_CLASS
    assert [p.name for p in shards.shards] == ["shard-000000.tar", "shard-000001.tar"]
    expected = [(row, row // PER_CLASS) for row in range(len(folder))]  # sorted path order = class-major
    assert _rows_labels(StreamDataset(folder, train=False)) == expected
    assert _rows_labels(StreamDataset(shards, train=False)) == expected

    by_row: dict[str, dict[int, torch.Tensor]] = {}
    for name, source in (("folder", folder), ("shards", shards)):
        loader = build_stream_loader(StreamDataset(source, train=False), batch_size=5, workers=2)
        by_row[name] = {}
        for images, labels, rows in loader:
            assert images.shape[1:] == (3, 224, 224) and images.dtype == torch.float32
            assert labels.tolist() == [r // PER_CLASS for r in rows.tolist()]
            by_row[name].update(zip(rows.tolist(), images, strict=True))
    assert sorted(by_row["folder"]) == list(range(len(folder)))
    for row, image in by_row["folder"].items():
        assert torch.equal(image, by_row["shards"][row])


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_two_ranks_read_every_row_exactly_once_per_epoch(imagenet_tree: Path, kind: str) -> None:
    source = FolderSource(imagenet_tree / "train") if kind == "folder" else ShardSource(imagenet_tree / "shards/train")
    orders = []
    for epoch in (0, 1):
        seen: list[int] = []
        for rank in (0, 1):
            ds = StreamDataset(source, train=True, rank=rank, world_size=2, seed=3, shuffle_buffer=4)
            ds.set_epoch(epoch)
            rank_rows = [s.row for s in ds.iter_raw()]
            assert all(r % 2 == rank for r in rank_rows) and len(rank_rows) == len(ds) == 6
            seen += rank_rows
        assert sorted(seen) == list(range(len(source)))
        orders.append(seen)
    assert orders[0] != orders[1], "training order is reshuffled each epoch"

    ds = StreamDataset(source, train=True, rank=1, world_size=2, seed=3)  # the same through 2 worker processes
    rows = torch.cat([r for _, _, r in build_stream_loader(ds, batch_size=4, workers=2)])
    assert sorted(rows.tolist()) == [1, 3, 5, 7, 9, 11]


def test_transforms_give_normalised_224_px_float_images(imagenet_tree: Path) -> None:
    folder = FolderSource(imagenet_tree / "train")
    sample = folder.read(5)
    train = StreamDataset(folder, train=True, seed=1)
    evaluate = StreamDataset(folder, train=False)
    image, label, row = train.transform(sample)
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and (label, row) == (1, 5)
    assert torch.equal(train.transform(sample)[0], image), "a row's augmentation is a function of (seed, epoch)"
    train.set_epoch(1)
    assert not torch.equal(train.transform(sample)[0], image)
    assert torch.equal(evaluate.transform(sample)[0], evaluate.transform(sample)[0])
    assert evaluate.transform(folder.read(6))[0].shape == (3, 224, 224)  # the greyscale one

    flat = Image.new("RGB", (300, 260), (255, 0, 128))
    x = to_normalized_tensor(eval_view(flat))
    want = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    torch.testing.assert_close(x.mean(dim=(1, 2)), torch.tensor(want), rtol=0, atol=1e-5)
    assert train_view(flat, random.Random(0)).size == (224, 224)


def test_eval_view_resizes_the_short_side_to_256_then_crops_the_centre() -> None:
    ramp = np.tile((np.arange(480) // 2).astype(np.uint8)[None, :], (256, 1))  # 480 x 256: short side already 256
    out = np.asarray(eval_view(Image.fromarray(ramp).convert("RGB")))
    assert out.shape == (224, 224, 3)
    assert (int(out[0, 0, 0]), int(out[0, -1, 0])) == (128 // 2, (128 + 223) // 2)  # columns 128..351
    tall = eval_view(Image.new("RGB", (300, 900)))
    assert tall.size == (224, 224)


def test_random_resized_crop_box_stays_inside_and_in_range() -> None:
    rng = random.Random(0)
    for _ in range(300):
        w, h = rng.randint(1, 600), rng.randint(1, 600)
        left, top, bw, bh = random_resized_crop_box(w, h, rng)
        assert 0 <= left and 0 <= top and 0 < bw and 0 < bh and left + bw <= w and top + bh <= h
    left, top, bw, bh = random_resized_crop_box(1000, 10, random.Random(0))  # never fits: centred fallback
    assert (bw, bh) == (13, 10) and left == (1000 - 13) // 2
    areas = [random_resized_crop_box(400, 400, random.Random(s))[2:] for s in range(200)]
    assert all(0.05 <= bw * bh / 160000 <= 1 and 0.7 <= bw / bh <= 1.45 for bw, bh in areas)


def test_bad_inputs_raise_one_line_errors(imagenet_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(RichKDError, match="does not exist"):
        FolderSource(tmp_path / "nope")
    with pytest.raises(RichKDError, match="no \\*.tar shards"):
        ShardSource(tmp_path)
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tar:
        info = tarfile.TarInfo("a/x.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(RichKDError, match="lacks a .cls member"):
        ShardSource(tmp_path)
    with pytest.raises(RichKDError, match="rank"):
        StreamDataset(FolderSource(imagenet_tree / "train"), train=True, rank=2, world_size=2)
    with pytest.raises(RichKDError, match="not in the class list"):
        FolderSource(imagenet_tree / "train", classes=CLASSES[:2])


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_imagenet_models_run_at_224_px(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.logits.shape == (2, 10) and out.pooled.shape == (2, model.feature_dim)
    assert tuple(s.shape[1] for s in out.stages) == model.stage_channels
    assert out.stages[-1].shape[-2:] == (7, 7)
    assert torch.isfinite(out.logits).all()


# torchvision's published sizes; MobileNetV1 as mdistiller's models/imagenet/mobilenetv1.py defines it
# (stem 3->32, 13 depthwise-separable blocks to 1024, fc 1024->1000): 4,231,976, the "4.2 M" of Howard et al.
PARAMS_1000 = {
    "resnet18_imagenet": 11_689_512,
    "resnet34_imagenet": 21_797_672,
    "resnet50_imagenet": 25_557_032,
    "mobilenetv1_imagenet": 4_231_976,
}


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_parameter_counts_match_the_references(name: str) -> None:
    assert sum(p.numel() for p in create_model(name, 1000).parameters()) == PARAMS_1000[name]


def test_cifar_names_are_unchanged() -> None:
    assert create_model("resnet50", 100).feature_dim == 2048
    assert not hasattr(create_model("resnet50", 100), "fc"), "plain resnet50 stays the CIFAR model"


def test_mobilenetv1_state_dict_names_are_mdistillers() -> None:
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    want = {"model.0.0.weight", *(f"model.0.1.{k}" for k in bn), "fc.weight", "fc.bias"}
    for i in range(1, 14):
        want |= {f"model.{i}.0.weight", f"model.{i}.3.weight"}
        want |= {f"model.{i}.{j}.{k}" for j in (1, 4) for k in bn}
    assert set(create_model("mobilenetv1_imagenet", 1000).state_dict()) == want


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_checkpoints_in_legacy_and_mdistiller_formats_load(tmp_path: Path) -> None:
    """torchvision's original weights predate num_batches_tracked; mdistiller saves {'model': sd} from DDP."""
    source = create_model("resnet18_imagenet", 1000).eval()
    _randomise_bn(source)
    x = torch.randn(1, 3, 64, 64)
    legacy = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(legacy, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    wrapped = {"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 100}
    torch.save(wrapped, tmp_path / "mdistiller.pth")
    with torch.no_grad():
        want = source(x).logits
        for path in (tmp_path / "legacy.pth", tmp_path / "mdistiller.pth"):
            target = create_model("resnet18_imagenet", 1000).eval()
            load_model_file(path, target, arch="resnet18_imagenet", num_classes=1000)
            assert torch.equal(target(x).logits, want)
    with pytest.raises(RichKDError, match="does not fit"):
        load_model_file(tmp_path / "legacy.pth", create_model("resnet34_imagenet", 1000), arch="r34", num_classes=1000)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_state_dicts_load_strictly_with_identical_logits(name: str, tmp_path: Path) -> None:
    models = pytest.importorskip("torchvision.models", reason="torchvision is an optional extra")
    torch.manual_seed(0)
    reference = getattr(models, name)().eval()
    _randomise_bn(reference)
    torch.save(reference.state_dict(), tmp_path / f"{name}.pth")
    ours = create_model(f"{name}_imagenet", 1000).eval()
    load_model_file(tmp_path / f"{name}.pth", ours, arch=f"{name}_imagenet", num_classes=1000)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want, got = reference(x), ours(x)
    torch.testing.assert_close(got.logits, want, rtol=0, atol=0)
