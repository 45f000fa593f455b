"""Which view is plain is one property of a cache (issue 27 item 1): a `--views all` cache and a plain cache of the
same images give the same `richkd predict --cache` and `richkd vlm fit-scale` results."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from richkd.analysis.predictions import read_predictions
from richkd.caches.target import TargetCache
from richkd.cli import main

CLASSES = ("bird", "cat", "dog")


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("plain_view")
    mp = pytest.MonkeyPatch()
    mp.setenv("RICHKD_CACHE", str(base / "richkd-cache"))
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (base / "data" / "train" / cls).mkdir(parents=True)
        for i in range(3):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
            (base / "data" / "train" / cls / f"{i}.png").write_bytes(buffer.getvalue())
    data = ["--dataset", "imagefolder", "--root", str(base / "data"), "--split", "train"]
    common = [*data, "--teacher", "random:0", "--no-bf16", "--checkpoint-every", "0"]
    assert main(["vlm", "cache", *common, "--views", "all", "--batch-size", "2", "--out", str(base / "all")]) == 0
    assert main(["vlm", "cache", *common, "--no-flip", "--batch-size", "4", "--out", str(base / "plain")]) == 0
    yield {"base": base, "all": base / "all", "plain": base / "plain", "data": data}  # type: ignore[misc]
    mp.undo()


def test_the_plain_view_is_a_property_of_the_cache(caches: dict[str, Path]) -> None:
    exact, plain = TargetCache.open(caches["all"]), TargetCache.open(caches["plain"])
    assert exact.meta.n_views == 162 and exact.meta.plain_view == 40  # pad 4: (dx, dy) = (4, 4), no flip
    assert exact.meta.view_names[exact.meta.plain_view] == "dx4dy4"
    assert plain.meta.n_views == 1 and plain.meta.plain_view == 0
    # view 0 of the exact cache is the (0, 0) crop, not the image: the bug this guards against
    rows = torch.arange(9)
    assert not torch.allclose(exact.lookup(rows, torch.zeros_like(rows)).cosines,
                              plain.lookup(rows, torch.zeros_like(rows)).cosines, atol=1e-3)


def test_predict_from_either_cache_is_the_same(caches: dict[str, Path]) -> None:
    out = {}
    for name in ("all", "plain"):
        path = caches["base"] / f"{name}.preds.safetensors"
        assert main(["predict", *caches["data"], "--cache", str(caches[name]), "--vlm-scale", "100",  # type: ignore[list-item]
                     "--out", str(path)]) == 0
        out[name] = read_predictions(path)
    # both caches encode the same 16x16 images in float32 (bf16 off), in different batches: the logits agree to
    # float32 rounding of the encoder's sums (cosines <= 1, ~1e-7 relative, times scale 100)
    torch.testing.assert_close(out["all"].logits, out["plain"].logits, rtol=0, atol=1e-4)
    assert out["all"].provenance["view"] == "plain"
    assert out["all"].provenance["cache_view"] == "dx4dy4" and out["all"].provenance["cache_view_index"] == 40
    assert out["plain"].provenance["cache_view"] == "plain" and out["plain"].provenance["cache_view_index"] == 0


def test_fit_scale_from_either_cache_is_the_same(caches: dict[str, Path]) -> None:
    fitted = {}
    for name in ("all", "plain"):
        path = caches["base"] / f"{name}.scale.json"
        assert main(["vlm", "fit-scale", *caches["data"], "--cache", str(caches[name]),  # type: ignore[list-item]
                     "--out", str(path)]) == 0
        fitted[name] = json.loads(path.read_text())
    # the fitted scale minimises NLL of the same cosines (to float32 rounding): the same to the optimiser's tolerance
    assert fitted["all"]["logit_scale"] == pytest.approx(fitted["plain"]["logit_scale"], rel=1e-4)
    assert fitted["all"]["nll_at_1"] == pytest.approx(fitted["plain"]["nll_at_1"], rel=1e-5)
    assert fitted["all"]["view_index"] == 40 and fitted["plain"]["view_index"] == 0


def test_fit_scale_on_a_subset_cache_without_limit_uses_every_row_it_holds(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    sub, full = tmp_path / "sub", tmp_path / "full.json"
    data = caches["data"]
    assert main(["vlm", "cache", *data, "--teacher", "random:0", "--no-bf16", "--no-flip", "--limit", "6",  # type: ignore[list-item]
                 "--out", str(sub)]) == 0
    assert main(["vlm", "fit-scale", *data, "--cache", str(sub), "--out", str(tmp_path / "sub.json")]) == 0  # type: ignore[list-item]
    assert main(["vlm", "fit-scale", *data, "--cache", str(caches["plain"]), "--limit", "6",  # type: ignore[list-item]
                 "--out", str(full)]) == 0
    a, b = json.loads((tmp_path / "sub.json").read_text()), json.loads(full.read_text())
    # the same 6 rows (2 per class) whether the cache holds only them or the rows are picked from a full cache
    assert a["nll_at_1"] == pytest.approx(b["nll_at_1"], rel=1e-5)
