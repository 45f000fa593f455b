"""The faster surrogate image path (issue 12, item 4) computes what the builder computed before, on real images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.teachers.preprocess import ImageSpec, preprocess_images
from richkd.teachers.surrogate import _pad_inside

torch.set_num_threads(1)


def _old_encode(vlm: Any, images: Tensor) -> tuple[Tensor, Tensor]:
    """The surrogate's image path as the builder ran it before: published module, one forward, out-of-place
    preprocessing. Returns (ImageNet logits, ConSE embedding)."""
    spec = vlm.image_spec
    x = F.interpolate(images.float(), size=(spec.size, spec.size), mode="bicubic", align_corners=False,
                      antialias=True).clamp(0.0, 1.0)
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    logits = vlm.image_model(x.contiguous(memory_format=torch.channels_last)).float()
    probs = torch.softmax(logits / 3.0, dim=-1)
    return logits, F.normalize(probs @ vlm.name_emb, dim=-1)


@pytest.fixture(scope="module")
def surrogate_and_images(tiny_cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs richkd[surrogate]")
    from richkd.data.folder import load_imagefolder
    from richkd.teachers.vlm import load_vlm

    ds = load_imagefolder(tiny_cifar10, "train", cache_dir=tmp_path_factory.mktemp("dscache"))
    return load_vlm("surrogate"), ds


def test_fast_surrogate_matches_the_published_network_on_real_images(
    surrogate_and_images: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from richkd.teachers import surrogate

    vlm, ds = surrogate_and_images
    monkeypatch.setattr(surrogate, "FORWARD_CHUNK_PER_THREAD", 4)  # 1 thread, 10 images: 2 chunks + a remainder
    images = ds.images[:10].float() / 255.0
    with torch.inference_mode():
        old_logits, old_emb = _old_encode(vlm, images)
        new_logits, new_emb = vlm.imagenet_logits(images), vlm.encode_images(images)
    assert old_logits.abs().max() > 1.0  # real logits, not a degenerate network
    torch.testing.assert_close(new_logits, old_logits, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(new_emb, old_emb, atol=1e-5, rtol=1e-4)
    # the published module is untouched (its state dict is the fingerprint); only the copy is rewritten
    assert any(isinstance(m, nn.BatchNorm2d) for m in vlm.image_model.modules())
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ZeroPad2d)) for m in vlm.fast_model.modules())


def test_builder_batch_matches_the_old_path(surrogate_and_images: tuple[Any, Any]) -> None:
    """`_encode_batch` (plain + flip + two random crops) gives the old path's cosines and embeddings."""
    from richkd.caches.build_target import _encode_batch
    from richkd.teachers.prompts import DEFAULT_TEMPLATES
    from richkd.teachers.zero_shot import class_embeddings

    vlm, ds = surrogate_and_images
    rows = ds.images[:6]
    params = torch.tensor([[4, 4, 0], [4, 4, 1], [0, 7, 1], [8, 2, 0]]).expand(len(rows), 4, 3)
    with torch.inference_mode():
        class_emb = class_embeddings(vlm, ds.classes, DEFAULT_TEMPLATES[:2])

        class Old:
            def encode_images(self, x: Tensor) -> Tensor:
                return _old_encode(vlm, x)[1]

        old_cos, old_emb = _encode_batch(Old(), rows, params, 4, class_emb, False)  # type: ignore[arg-type]
        new_cos, new_emb = _encode_batch(vlm, rows, params, 4, class_emb, False)
    assert old_cos.shape == (6, 4, len(ds.classes)) and old_emb.shape == (6, 4, vlm.embed_dim)
    torch.testing.assert_close(new_cos, old_cos, atol=1e-4, rtol=0)
    torch.testing.assert_close(new_emb, old_emb, atol=1e-4, rtol=0)
    assert (old_emb[:, 0] - old_emb[:, 1]).abs().max() > 1e-3  # the flip is a different view


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"), [
    (3, 2, (0, 1, 0, 1), 16), (5, 2, (1, 2, 1, 2), 16), (3, 2, (0, 1, 0, 1), 15), (3, 1, (1, 1, 1, 1), 9),
    (5, 1, (2, 2, 2, 2), 8), (3, 2, (1, 1, 0, 1), 10),
])
def test_padding_moved_into_the_conv_is_exact(
    kernel: int, stride: int, padding: tuple[int, int, int, int], size: int
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, kernel, stride=stride, groups=3, bias=True)
    pad = nn.ZeroPad2d(padding)
    x = torch.randn(2, 6, size, size + 1)
    expected = conv(pad(x))
    # Both are fp32 sums of n = (6 / 3) * k * k products plus the bias, in whatever order the kernel takes; each
    # is within gamma_(n+1) * (|W| * |x| + |b|) of the exact sum (Higham, Accuracy and Stability, eq. 3.5),
    # whatever the CPU, so they are within twice that of each other. Padding adds exact zeros to the sums.
    with torch.no_grad():
        magnitude = F.conv2d(pad(x).abs(), conv.weight.abs(), conv.bias.abs(), stride=stride, groups=3)
    n = conv.weight.shape[1] * kernel * kernel + 1
    unit = float(torch.finfo(torch.float32).eps) / 2
    bound = 2 * n * unit / (1 - n * unit) * magnitude
    conv.static_padding = pad
    _pad_inside(conv, pad)
    assert isinstance(conv.static_padding, nn.Identity)
    with torch.no_grad():
        got = conv(x)
    assert got.shape == expected.shape and bool(((got - expected).abs() <= bound).all())


def test_padding_that_is_not_same_style_is_left_alone() -> None:
    conv, pad = nn.Conv2d(2, 2, 3), nn.ZeroPad2d((2, 0, 0, 0))
    conv.static_padding = pad
    _pad_inside(conv, pad)
    assert conv.static_padding is pad and conv.padding == (0, 0)


def test_preprocess_channels_last_same_values_and_input_untouched() -> None:
    torch.manual_seed(0)
    spec = ImageSpec(size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    for images in (torch.rand(3, 3, 8, 8), torch.rand(3, 3, 16, 16), torch.rand(2, 3, 16, 20)):
        before = images.clone()
        plain, last = preprocess_images(images, spec), preprocess_images(images, spec, channels_last=True)
        assert last.is_contiguous(memory_format=torch.channels_last) and plain.is_contiguous()
        assert torch.equal(plain, last) and plain.shape == (images.shape[0], 3, 16, 16)
        assert torch.equal(images, before)  # in-place steps only touch tensors preprocess made itself
