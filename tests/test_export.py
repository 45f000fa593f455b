"""Deployment end to end on real CIFAR-10 JPEGs, in-process through the real CLI: train a teacher and a KD
student, export (safetensors + card + ONNX, checked, benchmarked), then `richkd classify` from the checkpoint,
the safetensors and the ONNX file agrees image by image with `richkd eval` / `richkd predict` on the same
images. Also: ONNX Runtime matches PyTorch to 1e-4 for every CIFAR zoo student; bad input fails cleanly."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from numerics import assert_within_roundoff
from richkd.analysis.predictions import read_predictions
from richkd.cli import main
from richkd.data import load_dataset
from richkd.export.images import InputSpec, decode_image
from richkd.models import create_model

ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install 'richkd[export]'")

STUDENTS = (  # the CIFAR zoo's students (CRD / mdistiller)
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet8x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "vgg8",
    "mobilenetv2", "shufflev1", "shufflev2",
)  # fmt: skip
TRAIN = [
    "data.name=imagefolder",
    "train.batch_size=32",
    "train.eval_batch_size=64",
    "train.threads=1",
    "train.progress=false",
    "train.epochs=1",
    "optim.lr=0.02",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_cifar10: Path) -> Iterator[dict[str, Path]]:
    """A resnet14 teacher and a KD resnet8 student (1 epoch on 160 real images), exported with ONNX + bench."""
    base = tmp_path_factory.mktemp("export")
    mp = pytest.MonkeyPatch()
    mp.setenv("RICHKD_CACHE", str(base / "cache"))
    data = [f"data.root={tiny_cifar10}", f"data.cache_dir={base / 'dc'}"]
    torch.manual_seed(0)
    teacher, student = base / "teacher", base / "student"
    assert main(["train", *TRAIN, *data, "model.student=resnet14", "distill.method=vanilla", f"out_dir={teacher}"]) == 0
    kd = ["model.teacher=resnet14", f"model.teacher_checkpoint={teacher / 'model_last.pt'}", "distill.method=kd"]
    assert main(["train", *TRAIN, *data, "model.student=resnet8", *kd, f"out_dir={student}"]) == 0
    images = base / "images"
    with tarfile.open(tiny_cifar10) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.startswith("test/")]
        tf.extractall(images, members=members, filter="data")
    out = base / "exported"
    code = main(["export", str(student / "model_last.pt"), "--out", str(out), "--onnx", "--check",
                 str(images / "test"), "--bench", "--bench-repeats", "1", "--bench-warmup", "0", "--threads", "1"])
    assert code == 0
    yield {"base": base, "archive": tiny_cifar10, "student": student, "teacher": teacher,
           "images": images / "test", "out": out}
    mp.undo()


def classify(model: Path, *inputs: Path | str, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    """(exit code, stdout) of `richkd classify --format jsonl`."""
    out = Path(str(model) + ".classified.jsonl")
    code = main(["classify", str(model), *map(str, inputs), "--format", "jsonl", "--top-k", "3",
                 "--batch-size", "32", "--threads", "1", "--out", str(out), *extra])
    text = out.read_text() if out.exists() else ""
    out.unlink(missing_ok=True)
    return code, text


def top_k(jsonl: str) -> dict[str, list[tuple[str, float]]]:
    """relative path "class/file.jpg" -> [(class, probability)] most probable first."""
    rows = [json.loads(line) for line in jsonl.splitlines()]
    return {"/".join(Path(r["image"]).parts[-2:]): [(t["class"], t["prob"]) for t in r["top"]] for r in rows}


def assert_same(a: dict[str, list[tuple[str, float]]], b: dict[str, list[tuple[str, float]]], tol: float) -> None:
    assert a.keys() == b.keys()
    for path in a:
        assert [c for c, _ in a[path]] == [c for c, _ in b[path]], path
        assert [p for _, p in a[path]] == pytest.approx([p for _, p in b[path]], abs=tol), path


def evaluate(work: dict[str, Path], model: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(model), "--dataset", "imagefolder", "--root", str(work["archive"]),
                 "--threads", "1"]) == 0
    result: dict[str, float] = json.loads(capsys.readouterr().out)
    return result


def test_export_writes_card_weights_onnx_and_bench(work: dict[str, Path]) -> None:
    out = work["out"]
    card = json.loads((out / "model_card.json").read_text())
    summary = json.loads((work["student"] / "summary.json").read_text())
    train = load_dataset("imagefolder", work["archive"], "train", cache_dir=work["base"] / "dc")
    assert card["arch"] == "resnet8" and card["classes"] == list(train.classes) and card["num_classes"] == 10
    assert card["input"]["size"] == [32, 32] and card["input"]["channels"] == 3
    assert card["input"]["mean"] == pytest.approx(train.mean) and card["input"]["std"] == pytest.approx(train.std)
    assert card["training"]["method"] == "kd" and card["training"]["teacher"] == "resnet14"
    assert "KD" in card["training"]["loss"]
    assert card["accuracy"]["last_top1"] == summary["last_top1"] and card["run"]["id"] == "student"
    weights = (out / "model.safetensors").read_bytes()
    header = json.loads(weights[8 : 8 + int.from_bytes(weights[:8], "little")])  # safetensors: no pickle
    assert header["__metadata__"]["arch"] == "resnet8"
    import hashlib

    assert card["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    check = card["onnx"]["check"]
    assert check["inputs"] == "80 real images" and check["top1_agreement"] == 1.0
    assert check["max_abs_logit_diff"] < 1e-4 < check["max_abs_logit"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch axis is dynamic
        (logits,) = session.run(None, {"images": np.zeros((batch, 3, 32, 32), np.float32)})
        assert logits.shape == (batch, 10)
    bench = json.loads((out / "bench.json").read_text())
    rows = {(r["role"], r["runtime"]) for r in bench["rows"]}
    assert rows == {(role, rt) for role in ("student", "teacher") for rt in ("onnxruntime", "pytorch")}
    assert all(r["latency_ms_b1"] > 0 and r["throughput_b256_img_s"] > 0 for r in bench["rows"])


def test_classify_matches_eval_from_pytorch_and_onnx(work: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Per image, the checkpoint, the safetensors and ONNX Runtime give the same top-3 classes and
    probabilities as `richkd predict`'s logits on the dataset rows (so classify and eval see identical
    pixels), and the same top-1 accuracy as `richkd eval`. Probabilities, not just top-1: a 1-epoch student
    predicts nearly one class, which would make a top-1-only comparison weak."""
    ckpt, out = work["student"] / "model_last.pt", work["out"]
    by_model = {}
    for model in (ckpt, out / "model.safetensors", out / "model.onnx"):
        code, text = classify(model, work["images"])
        assert code == 0
        by_model[model.suffix] = top_k(text)
    assert len(by_model[".pt"]) == 80
    assert_same(by_model[".pt"], by_model[".safetensors"], 1e-6)
    assert_same(by_model[".pt"], by_model[".onnx"], 1e-4)

    preds_path = work["base"] / "student.preds.safetensors"
    assert main(["predict", "--checkpoint", str(ckpt), "--dataset", "imagefolder", "--root", str(work["archive"]),
                 "--split", "test", "--threads", "1", "--out", str(preds_path)]) == 0
    preds = read_predictions(preds_path)
    classes = preds.provenance["classes"]
    probs, idx = torch.softmax(preds.logits.double(), 1).topk(3, dim=1)
    rel_paths = sorted(by_model[".pt"])  # dataset rows are in sorted relative-path order
    from_eval = {p: [(classes[i], q) for i, q in zip(idx[r].tolist(), probs[r].tolist(), strict=True)]
                 for r, p in enumerate(rel_paths)}
    assert_same(by_model[".pt"], from_eval, 1e-5)

    accuracy = {s: 100 * np.mean([top[0][0] == path.split("/")[0] for path, top in by_model[s].items()])
                for s in by_model}
    for model in (ckpt, out / "model.safetensors"):
        top1 = evaluate(work, model, capsys)["top1"]
        assert top1 == pytest.approx(accuracy[".pt"], abs=1e-4) and top1 == pytest.approx(accuracy[".onnx"], abs=1e-4)


def _calibrated(name: str) -> torch.nn.Module:
    """Random weights with BatchNorm statistics of its own activations, so logits have a trained-like scale
    (raw random init gives logits from 1e-8 to 1e7 across the zoo, which would make an absolute tolerance
    meaningless)."""
    torch.manual_seed(0)
    model = create_model(name, 100)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(32, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("name", STUDENTS)
def test_onnx_matches_pytorch_for_every_zoo_student(name: str, tmp_path: Path) -> None:
    from richkd.export.onnx_export import export_onnx, open_session, run_session

    model = _calibrated(name)
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, input_size=(32, 32), card={})
    session = open_session(path, threads=1)
    x = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).logits
        exact = copy.deepcopy(model).double()(x.double()).logits
    got = run_session(session, x)
    assert expected.abs().max() > 0.1, f"{name}: logits too small for the check to mean anything"
    # onnxruntime's kernels against PyTorch's fp32 round-off, both from float64 (measured here, AMD Zen 4:
    # onnxruntime has 0.8x to 1.8x PyTorch's error over these students, at most 1.5e-5 on logits up to 2.9)
    assert_within_roundoff(got, exact, expected, name)
    # the same top class wherever float64's top two are further apart than both paths' round-off
    top2 = exact.topk(2, dim=1).values
    roundoff = float((got.double() - exact).abs().max() + (expected.double() - exact).abs().max())
    clear = (top2[:, 0] - top2[:, 1]) > 2 * roundoff
    assert clear.sum() >= 5, f"{name}: too many near-ties for the check to mean anything"
    assert torch.equal(got.argmax(1)[clear], exact.argmax(1)[clear])
    assert torch.equal(expected.argmax(1)[clear], exact.argmax(1)[clear])


def _one_error_line(capsys: pytest.CaptureFixture[str], needle: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("richkd: error:") and needle in err[0], err


def test_undecodable_image_is_named_and_the_others_classified(
    work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(work["images"] / "cat", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    capsys.readouterr()
    code, text = classify(work["out"] / "model.onnx", folder)
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.jpg" in err and err.count("warning") == 1
    assert len(text.splitlines()) == 8  # the 8 good cat images


def test_bad_models_and_inputs_fail_in_one_line(
    work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = work["images"]
    for name, blob in (("m.pt", b"not a checkpoint"), ("m.onnx", b"not onnx")):
        (tmp_path / name).write_bytes(blob)
        assert classify(tmp_path / name, images)[0] == 2
        _one_error_line(capsys, "corrupt")
    broken = tmp_path / "broken"
    shutil.copytree(work["out"], broken)
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert classify(broken / "model.safetensors", images)[0] == 2
    _one_error_line(capsys, "corrupt")

    wrong = tmp_path / "wrong_card"
    shutil.copytree(work["out"], wrong)
    card = json.loads((wrong / "model_card.json").read_text())
    card["classes"], card["num_classes"] = card["classes"][:9], 9
    (wrong / "model_card.json").write_text(json.dumps(card))
    for model in ("model.safetensors", "model.onnx"):
        assert classify(wrong / model, images)[0] == 2
        _one_error_line(capsys, "9 classes")
    assert main(["eval", "--checkpoint", str(wrong / "model.safetensors"), "--dataset", "imagefolder",
                 "--root", str(work["archive"])]) == 2
    _one_error_line(capsys, "9 classes")

    model = work["out"] / "model.onnx"
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    for inputs, needle in (([tmp_path / "missing.jpg"], "does not exist"), ([empty], "holds no images"),
                           ([str(tmp_path / "*.png")], "matches no image")):
        assert classify(model, *inputs)[0] == 2
        _one_error_line(capsys, needle)


def test_missing_extra_is_one_line(
    work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert main(["export", str(work["student"] / "model_last.pt"), "--out", str(tmp_path / "x"), "--onnx"]) == 2
    _one_error_line(capsys, "pip install 'richkd[export]'")
    assert classify(work["out"] / "model.onnx", work["images"])[0] == 2
    _one_error_line(capsys, "pip install 'richkd[export]'")


def test_core_imports_without_the_extra() -> None:
    code = (
        "import sys; sys.modules['onnx'] = sys.modules['onnxruntime'] = None\n"
        "import richkd.cli, richkd.cli.export\n"
        "from richkd.export import bench, card, classify, exporter, images, load, onnx_export\n"
        "richkd.cli.build_parser()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def test_decoding_follows_the_input_spec(tmp_path: Path) -> None:
    """Grey models (Fashion-MNIST: luma, 28 px + 2 px zero border) and non-square inputs."""
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(photo)
    grey = decode_image(photo, InputSpec(size=(32, 32), mean=(0.2,) * 3, std=(0.3,) * 3, color="grey", pad=2))
    assert isinstance(grey, np.ndarray) and grey.shape == (3, 32, 32) and grey.dtype == np.uint8
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()
    assert not grey[:, :2].any() and not grey[:, :, -2:].any() and grey[:, 2:-2, 2:-2].any()
    wide = decode_image(photo, InputSpec(size=(16, 24), mean=(0.5,) * 3, std=(0.5,) * 3))
    assert isinstance(wide, np.ndarray) and wide.shape == (3, 16, 24)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    assert isinstance(decode_image(tmp_path / "bad.png", InputSpec((32, 32), (0.5,) * 3, (0.5,) * 3)), str)
