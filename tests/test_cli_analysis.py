"""`richkd predict` and `richkd analyze` end to end on a tiny image folder, in-process; bad input fails cleanly."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from numerics import assert_within_roundoff
from richkd.analysis.predictions import read_predictions
from richkd.caches.target import write_random_cache
from richkd.cli import main
from richkd.data.augment import normalize
from richkd.engine.checkpoint import save_model
from richkd.models import create_model

CLASSES = ("bird", "cat", "dog")  # folder names, sorted
N_TEST = 4  # images per class in test/


def run_cli(argv: Sequence[str]) -> int:
    return main(list(argv))


def _png(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("cli_analysis")
    mp = pytest.MonkeyPatch()
    mp.setenv("RICHKD_CACHE", str(base / "richkd-cache"))  # decoded datasets stay inside the test
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", N_TEST)):
        for cls in CLASSES:
            (base / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                (base / "data" / split / cls / f"{i}.png").write_bytes(_png(rng))
    torch.manual_seed(0)
    for name in ("teacher", "student"):
        save_model(base / f"{name}.pt", create_model("resnet8", 3), arch="resnet8", num_classes=3, classes=CLASSES)
    n_rows = len(CLASSES) * N_TEST
    write_random_cache(base / "cache", dataset="imagefolder", split="test", n_rows=n_rows, class_names=CLASSES)
    write_random_cache(base / "cache_reordered", dataset="imagefolder", split="test", n_rows=n_rows,
                       class_names=CLASSES[::-1])
    yield {"base": base, "data": base / "data", "teacher": base / "teacher.pt", "student": base / "student.pt",
           "cache": base / "cache", "cache_reordered": base / "cache_reordered"}
    mp.undo()


def predict(work: dict[str, Path], out: str, *extra: str) -> list[str]:
    return ["predict", "--dataset", "imagefolder", "--root", str(work["data"]), "--split", "test",
            "--batch-size", "5", "--out", str(work["base"] / out), *extra]


def test_predict_all_kinds_then_analyze(work: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    t, c = str(work["teacher"]), str(work["cache"])
    assert run_cli(predict(work, "teacher.preds.safetensors", "--checkpoint", t, "--kind", "teacher",
                           "--features")) == 0
    assert run_cli(predict(work, "student.preds.safetensors", "--checkpoint", str(work["student"]))) == 0
    assert run_cli(predict(work, "clip.preds.safetensors", "--cache", c, "--vlm-scale", "10", "--features")) == 0
    assert run_cli(predict(work, "fused.preds.safetensors", "--checkpoint", t, "--cache", c, "--alpha", "0.7")) == 0
    assert run_cli(predict(work, "control.preds.safetensors", "--checkpoint", t, "--alpha", "0.7", "--no-vlm")) == 0
    assert run_cli(predict(work, "zs.preds.safetensors", "--vlm", "random:0", "--bf16")) == 0
    preds = {n: read_predictions(work["base"] / f"{n}.preds.safetensors")
             for n in ("teacher", "student", "clip", "fused", "control", "zs")}

    teacher = preds["teacher"]
    assert teacher.provenance["kind"] == "teacher" and teacher.provenance["arch"] == "resnet8"
    assert teacher.rows.tolist() == list(range(12)) and teacher.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(teacher.provenance["checkpoint_sha256"]) == 64 and teacher.features is not None
    assert teacher.features.shape[0] == 12
    # the teacher's logits are the model's, on the images normalised with the split's stats
    from richkd.data import load_dataset

    ds = load_dataset("imagefolder", work["data"], "test")
    model = create_model("resnet8", 3)
    model.load_state_dict(torch.load(work["teacher"], weights_only=True)["model"])
    x = normalize(ds.images, ds.mean, ds.std)
    with torch.no_grad():
        expected = model.eval()(x).logits
        exact = copy.deepcopy(model).double()(x.double()).logits
    assert_within_roundoff(teacher.logits, exact, expected, "teacher")  # the CLI's batches: other conv kernels

    cosines = torch.from_numpy(np.load(work["cache"] / "cosines.npy")[:, 0])  # [12, 3], view 0
    assert preds["clip"].provenance["kind"] == "cache" and preds["clip"].provenance["vlm_scale"] == 10.0
    assert torch.allclose(preds["clip"].logits, 10.0 * cosines, atol=1e-6)
    assert preds["clip"].features is not None and preds["clip"].features.shape == (12, 16)
    fused = preds["fused"]
    assert fused.provenance["kind"] == "fused" and fused.provenance["alpha"] == 0.7
    assert fused.provenance["vlm_scale"] == 1.0  # the reference's s = 1 by default when fused
    assert [s["kind"] for s in fused.provenance["sources"]] == ["checkpoint", "cache"]
    assert torch.allclose(fused.logits, 0.7 * teacher.logits + 0.3 * cosines, atol=1e-5)
    assert preds["control"].provenance["kind"] == "scaled_teacher"
    assert torch.allclose(preds["control"].logits, 0.7 * teacher.logits, atol=1e-6)
    assert preds["zs"].provenance["kind"] == "vlm" and preds["zs"].provenance["vlm_scale"] == 100.0
    assert preds["zs"].provenance["arch"].startswith("random:0")

    capsys.readouterr()
    out = work["base"] / "analysis"
    files = [str(work["base"] / f"{n}.preds.safetensors") for n in ("teacher", "student", "fused", "control", "clip")]
    assert run_cli(["analyze", *files, "--agreement", "teacher:student", "--flow", "teacher:control",
                    "--semantic", f"cache:{c}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Flow teacher → fused" in printed and "## Flow teacher → control" in printed
    result = json.loads((out / "analysis.json").read_text())
    assert (out / "analysis.md").read_text() == printed
    assert result["version"] == 1 and result["n"] == 12 and result["classes"] == list(CLASSES)
    assert list(result["predictors"]) == ["teacher", "student", "fused", "control", "clip"]
    assert [(f["from"], f["to"]) for f in result["flows"]] == [("teacher", "fused"), ("teacher", "control")]
    # α·z_T only softens the teacher: same argmax, so every sample stays correct or wrong
    control_flow = result["flows"][1]["counts"]
    assert control_flow[0][2] == control_flow[0][3] == control_flow[3][0] == control_flow[3][1] == 0
    assert sum(map(sum, control_flow)) == 12
    assert result["predictors"]["teacher"]["consistency"]["reference_spearman"] == pytest.approx(1.0)
    assert "target cache" in result["semantic_similarity"]["source"]
    assert result["agreement"][0]["reference"] == "teacher" and 0 <= result["agreement"][0]["top1_agreement"] <= 100
    assert result["predictors"]["teacher"]["provenance"]["kind"] == "teacher"


def test_limit_keeps_full_split_row_ids(work: dict[str, Path]) -> None:
    out = work["base"] / "limited.preds.safetensors"
    assert run_cli(predict(work, out.name, "--cache", str(work["cache"]), "--vlm-scale", "1", "--limit", "6")) == 0
    p = read_predictions(out)
    # 2 per class: rows 0, 1 (bird), 4, 5 (cat), 8, 9 (dog) of the 12-row split
    assert p.rows.tolist() == [0, 1, 4, 5, 8, 9] and p.provenance["n_rows_split"] == 12
    cosines = torch.from_numpy(np.load(work["cache"] / "cosines.npy")[:, 0])
    assert torch.allclose(p.logits, cosines[[0, 1, 4, 5, 8, 9]], atol=1e-6)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], message: str) -> None:
    capsys.readouterr()
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("richkd: error: ") and message in err, err


def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    work: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    t = str(work["teacher"])
    out = tmp_path / "x.preds.safetensors"
    common = ["--dataset", "imagefolder", "--root", str(work["data"]), "--out", str(out)]
    _fails(["predict", "--cache", str(work["cache_reordered"]), "--vlm-scale", "1", *common], capsys,
           "class order differs")
    _fails(["predict", "--checkpoint", t, "--cache", str(work["cache_reordered"]), "--alpha", "0.5", *common],
           capsys, "class order differs")
    _fails(["predict", "--checkpoint", str(tmp_path / "missing.pt"), *common], capsys, "not found")
    _fails(["predict", "--cache", str(tmp_path / "no-cache"), "--vlm-scale", "1", *common], capsys, "does not exist")
    _fails(["predict", "--checkpoint", t, "--cache", str(work["cache"]), *common], capsys, "needs --alpha")
    _fails(["predict", "--vlm", "random", "--cache", str(work["cache"]), *common], capsys, "not both")
    _fails(["predict", "--cache", str(work["cache"]), *common], capsys, "--vlm-scale")
    _fails(["predict", "--checkpoint", t, "--alpha", "1.5", "--no-vlm", *common], capsys,
           "--alpha: must be a number in [0, 1]")
    (tmp_path / "a-file").write_text("x")
    _fails(["predict", "--checkpoint", t, "--dataset", "imagefolder", "--root", str(work["data"]),
            "--out", str(tmp_path / "a-file" / "x.preds.safetensors")], capsys, "is a file")
    assert not out.exists()

    bad = tmp_path / "corrupt.preds.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    analysis = tmp_path / "analysis"
    _fails(["analyze", str(bad), "--out", str(analysis)], capsys, str(bad))
    full = str(work["base"] / "teacher.preds.safetensors")
    limited = work["base"] / "limited.preds.safetensors"
    if not limited.exists():
        run_cli(predict(work, limited.name, "--cache", str(work["cache"]), "--vlm-scale", "1", "--limit", "6"))
    _fails(["analyze", full, str(limited), "--out", str(analysis)], capsys, "cover different rows")
    _fails(["analyze", full, full, "--out", str(analysis)], capsys, "repeat")
    _fails(["analyze", full, "--flow", "teacher:nobody", "--out", str(analysis)], capsys, "not a predictor")
    _fails(["analyze", full, "--semantic", f"cache:{work['cache_reordered']}", "--out", str(analysis)], capsys,
           "class order")
    _fails(["analyze", full, "--semantic", "clip", "--out", str(analysis)], capsys, "vlm:SPEC")
    assert not analysis.exists()
