"""decode_rgb's optional simplejpeg path gives the same pixels as PIL's Image.open(...).convert("RGB"), and falls
back to PIL for what simplejpeg cannot match (CMYK, PNG, corrupt files)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from richkd.data.stream import transforms
from richkd.data.stream.transforms import decode_rgb
from richkd.errors import RichKDError


def _image(seed: int, width: int = 173, height: int = 131) -> Image.Image:
    """Noise plus a smooth gradient: hard for the DCT and chroma upsampling, so any decoder difference shows."""
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize((width, height))
    noise = rng.integers(-60, 61, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(smooth, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, **kwargs: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", **kwargs)
    return out.getvalue()


def _pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


CASES = {
    "ycbcr-420": lambda img: _jpeg(img, quality=90, subsampling=2),
    "ycbcr-422": lambda img: _jpeg(img, quality=75, subsampling=1),
    "ycbcr-444": lambda img: _jpeg(img, quality=95, subsampling=0),
    "greyscale": lambda img: _jpeg(img.convert("L"), quality=85),
    "progressive": lambda img: _jpeg(img, quality=80, progressive=True, subsampling=2),
    "odd-size": lambda img: _jpeg(img.crop((0, 0, 33, 17)), quality=60, subsampling=2),
    "low-quality": lambda img: _jpeg(img, quality=10),
    "cmyk": lambda img: _jpeg(img.convert("CMYK"), quality=90),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_rgb_matches_pil_bit_for_bit(case: str) -> None:
    for seed in range(3):
        data = CASES[case](_image(seed, 173 + 16 * seed, 131 + 9 * seed))
        out = decode_rgb(data, case)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), _pil_rgb(data))


def test_simplejpeg_path_is_taken_and_matches_pil() -> None:
    """With the `imagenet` extra, YCbCr/greyscale JPEGs go through simplejpeg; CMYK is refused (PIL decodes it)."""
    pytest.importorskip("simplejpeg")
    assert transforms.JPEG_DECODER == "simplejpeg"
    img = _image(7)
    for data in (CASES["ycbcr-420"](img), CASES["greyscale"](img), CASES["progressive"](img)):
        fast = transforms._decode_simplejpeg(data)
        assert fast is not None and fast.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(fast), _pil_rgb(data))
    assert transforms._decode_simplejpeg(CASES["cmyk"](img)) is None


def test_simplejpeg_cmyk_would_differ() -> None:
    """Why CMYK falls back: simplejpeg's own CMYK->RGB is off by one against PIL's (guards the colour-space filter)."""
    simplejpeg = pytest.importorskip("simplejpeg")
    data = CASES["cmyk"](_image(1))
    ours = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)
    assert not np.array_equal(ours, _pil_rgb(data))


def test_non_jpeg_and_corrupt_input() -> None:
    img = _image(3)
    png = io.BytesIO()
    img.save(png, format="PNG")
    np.testing.assert_array_equal(np.asarray(decode_rgb(png.getvalue(), "a.png")), np.asarray(img))
    rgba = io.BytesIO()
    img.convert("RGBA").save(rgba, format="PNG")
    assert decode_rgb(rgba.getvalue(), "b.png").mode == "RGB"
    with pytest.raises(RichKDError, match="cannot decode image bad.JPEG"):
        decode_rgb(b"\xff\xd8\xff\xe0 not really a jpeg", "bad.JPEG")
    truncated = CASES["ycbcr-420"](img)[:300]
    assert transforms._decode_simplejpeg(truncated) is None  # strict simplejpeg refuses; PIL decides
    with pytest.raises(RichKDError, match="cannot decode image cut.JPEG"):
        decode_rgb(truncated, "cut.JPEG")


def test_pil_only_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transforms, "_simplejpeg", None)
    data = CASES["ycbcr-420"](_image(4))
    assert transforms._decode_simplejpeg(data) is None
    np.testing.assert_array_equal(np.asarray(decode_rgb(data, "x.JPEG")), _pil_rgb(data))
