"""Batched crop/flip/normalise: identity, exactness against per-sample slicing, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from richkd.data.augment import CropFlip, apply_crop_flip, identity_crop_flip, normalize, sample_crop_flip
from richkd.data.stats import DATASET_STATS


def _images(b: int = 16, h: int = 8, w: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def _one_by_one(images: torch.Tensor, params: CropFlip, pad: int) -> torch.Tensor:
    """The obvious per-sample implementation the batched one must equal."""
    h, w = images.shape[2:]
    out = []
    for i in range(images.shape[0]):
        padded = F.pad(images[i], (pad, pad, pad, pad))
        y, x = int(params.dy[i]), int(params.dx[i])
        crop = padded[:, y : y + h, x : x + w]
        out.append(crop.flip(-1) if params.flip[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_identity_params_leave_images_unchanged(dtype: torch.dtype) -> None:
    images = _images().to(dtype)
    out = apply_crop_flip(images, identity_crop_flip(len(images), pad=4), pad=4)
    assert out.dtype == dtype
    assert torch.equal(out, images)


def test_flip_only_matches_torch_flip() -> None:
    images = _images()
    n = len(images)
    params = CropFlip(torch.full((n,), 4), torch.full((n,), 4), torch.ones(n, dtype=torch.bool))
    assert torch.equal(apply_crop_flip(images, params, pad=4), images.flip(-1))


def test_crop_matches_hand_computed_slice() -> None:
    images = _images(b=2)
    params = CropFlip(dx=torch.tensor([0, 7]), dy=torch.tensor([8, 1]), flip=torch.tensor([False, False]))
    out = apply_crop_flip(images, params, pad=4)
    padded = F.pad(images, (4, 4, 4, 4))
    assert torch.equal(out[0], padded[0, :, 8:16, 0:10])
    assert torch.equal(out[1], padded[1, :, 1:9, 7:17])
    assert (out[0, :, :, :4] == 0).all() and (out[0, :, 4:, :] == 0).all()  # shifted in zero padding


@pytest.mark.parametrize("pad", [0, 1, 4])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_batched_equals_per_sample_loop(pad: int, dtype: torch.dtype) -> None:
    images = _images(b=64).to(dtype)
    params = sample_crop_flip(64, pad=pad, generator=torch.Generator().manual_seed(1), device="cpu")
    assert torch.equal(apply_crop_flip(images, params, pad=pad), _one_by_one(images, params, pad))


def test_sample_crop_flip_ranges_and_determinism() -> None:
    a = sample_crop_flip(4096, pad=4, generator=torch.Generator().manual_seed(3), device="cpu")
    b = sample_crop_flip(4096, pad=4, generator=torch.Generator().manual_seed(3), device="cpu")
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert a.dx.dtype == torch.int64 and a.flip.dtype == torch.bool
    assert set(a.dx.tolist()) == set(range(9)) and set(a.dy.tolist()) == set(range(9))
    assert 0.45 < a.flip.float().mean().item() < 0.55


def test_empty_batch() -> None:
    images = _images(b=0)
    assert apply_crop_flip(images, sample_crop_flip(0, generator=None, device="cpu")).shape == images.shape


def test_normalize_matches_formula() -> None:
    images = _images()
    mean, std = DATASET_STATS["cifar100"]
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    last = normalize(images, mean, std, dtype=torch.bfloat16, channels_last=True)
    assert last.dtype == torch.bfloat16 and last.is_contiguous(memory_format=torch.channels_last)
    # bfloat16 keeps 8 significant bits: rounding moves a value by <= 2^-9 relative, <= 5e-3 for |x| <= 2.5
    torch.testing.assert_close(last.float(), expected, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError):
        normalize(images.float(), mean, std)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    images = _images(b=256, h=32, w=32)
    params = sample_crop_flip(256, generator=torch.Generator().manual_seed(5), device="cuda")
    assert params.dx.is_cuda
    out = apply_crop_flip(images.cuda(), params)
    assert torch.equal(out.cpu(), apply_crop_flip(images, CropFlip(*(p.cpu() for p in params))))
    mean, std = DATASET_STATS["cifar10"]
    torch.testing.assert_close(normalize(out, mean, std).cpu(), normalize(out.cpu(), mean, std))
