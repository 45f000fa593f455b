"""Official CIFAR-C loader, evaluate_robustness on models whose answers are known, `richkd robustness` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from richkd.cli import build_parser
from richkd.errors import RichKDError
from richkd.models.output import ModelOutput
from richkd.robustness import evaluate, evaluate_robustness, load_official_c


def write_official(folder: Path, n: int = 4, side: int = 8, name: str = "fog") -> None:
    """The official layout: <name>.npy uint8 [5*n, side, side, 3] (severity s holds 10*s + i) and labels.npy."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.zeros((5 * n, side, side, 3), dtype=np.uint8)
    for s in range(5):
        for i in range(n):
            images[s * n + i] = 10 * (s + 1) + i
    np.save(folder / f"{name}.npy", images)
    np.save(folder / "labels.npy", np.tile(np.arange(n) % 2, 5).astype(np.uint8))


def test_official_loader_returns_one_severity(tmp_path: Path) -> None:
    write_official(tmp_path)
    images, labels = load_official_c(tmp_path, "fog", 3)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 8, 8)
    assert images[:, 0, 0, 0].tolist() == [30, 31, 32, 33] and labels.tolist() == [0, 1, 0, 1]
    assert labels.dtype == torch.int64


def test_official_loader_rejects_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(RichKDError, match="not found"):
        load_official_c(tmp_path, "fog", 1)
    write_official(tmp_path)
    np.save(tmp_path / "fog.npy", np.zeros((6, 8, 8, 3), dtype=np.uint8))  # not 5 severities
    with pytest.raises(RichKDError, match="five severities"):
        load_official_c(tmp_path, "fog", 1)
    np.save(tmp_path / "fog.npy", np.zeros((20, 8, 8, 3), dtype=np.float32))
    with pytest.raises(RichKDError, match="uint8"):
        load_official_c(tmp_path, "fog", 1)
    np.save(tmp_path / "fog.npy", np.zeros((10, 8, 8, 3), dtype=np.uint8))  # labels.npy still has 20
    with pytest.raises(RichKDError, match="labels"):
        load_official_c(tmp_path, "fog", 1)
    (tmp_path / "fog.npy").write_bytes(b"not numpy")
    with pytest.raises(RichKDError, match="readable"):
        load_official_c(tmp_path, "fog", 1)
    with pytest.raises(RichKDError, match="severity"):
        load_official_c(tmp_path, "fog", 6)


class BrightIsOne(nn.Module):
    """Predicts class 1 when the mean input exceeds `level` (inputs are pixel/255 with mean 0, std 1)."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: Tensor) -> ModelOutput:
        score = x.mean(dim=(1, 2, 3)) - self.level
        logits = torch.stack([-score, score], dim=1)
        return ModelOutput(logits, logits, ())


class AlwaysOne(BrightIsOne):
    def forward(self, x: Tensor) -> ModelOutput:
        logits = torch.tensor([[0.0, 1.0]]).expand(x.shape[0], 2)
        return ModelOutput(logits, logits, ())


def dark_images(n: int = 4) -> tuple[Tensor, Tensor]:
    return torch.full((n, 3, 8, 8), 20, dtype=torch.uint8), torch.zeros(n, dtype=torch.long)


def test_evaluate_robustness_on_models_with_known_answers() -> None:
    images, labels = dark_images(4)
    labels[3] = 1
    models: dict[str, nn.Module] = {"bright": BrightIsOne(60 / 255), "one": AlwaysOne(0.0)}
    result = evaluate_robustness(
        models, images, labels, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        corruptions=["brightness", "contrast"], severities=[1, 2, 3, 4, 5], batch_size=3,
    )  # fmt: skip
    bright = result["bright"]
    # brightness adds 0.05/0.1/0.15/0.2/0.3 * 255 to a grey 20: 32, 45, 58 stay dark; 71, 96 look bright.
    assert bright["clean_top1"] == 75.0  # rows 0-2 dark and labelled 0; row 3 labelled 1 but dark
    assert bright["per_corruption"] == {"brightness": [75.0, 75.0, 75.0, 25.0, 25.0], "contrast": [75.0] * 5}
    assert bright["mean_corruption_accuracy"] == pytest.approx(65.0)
    assert bright["relative_robustness"] == pytest.approx(65.0 / 75.0)
    one = result["one"]
    assert one["clean_top1"] == 25.0 and one["per_corruption"]["brightness"] == [25.0] * 5
    assert one["relative_robustness"] == pytest.approx(1.0)


def test_each_batch_is_corrupted_once_for_all_models(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    real = evaluate.corrupt

    def counting(images: Tensor, name: str, severity: int, **kw: object) -> Tensor:
        calls.append((name, severity))
        return real(images, name, severity, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluate, "corrupt", counting)
    images, labels = dark_images(5)
    models: dict[str, nn.Module] = {"a": BrightIsOne(0.1), "b": AlwaysOne(0.0), "c": BrightIsOne(0.5)}
    evaluate_robustness(models, images, labels, mean=(0.0,) * 3, std=(1.0,) * 3,  # type: ignore[arg-type]
                        corruptions=["fog", "snow"], severities=[2, 4], batch_size=5)
    assert calls == [("fog", 2), ("fog", 4), ("snow", 2), ("snow", 4)]


def test_batch_size_does_not_change_noisy_results() -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(30, 90, size=(6, 3, 8, 8), dtype=np.uint8))
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    kw = {"mean": (0.0,) * 3, "std": (1.0,) * 3, "corruptions": ["gaussian_noise"], "severities": [5], "seed": 3}
    models: dict[str, nn.Module] = {"m": BrightIsOne(60 / 255)}
    small = evaluate_robustness(models, images, labels, batch_size=2, **kw)  # type: ignore[arg-type]
    large = evaluate_robustness(models, images, labels, batch_size=6, **kw)  # type: ignore[arg-type]
    assert small == large


# ---- CLI end to end ----


def write_folder(root: Path, n_per_class: int = 3) -> None:
    """<root>/{train,test}/{cat,dog}/*.png: cats dark, dogs bright, 32x32."""
    for split in ("train", "test"):
        for label, (cls, level) in enumerate((("cat", 40), ("dog", 200))):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                Image.fromarray(np.full((32, 32, 3), level + 5 * i + label, dtype=np.uint8)).save(folder / f"{i}.png")


def run_cli(argv: list[str]) -> int:
    """`richkd ARGV` in process, RichKDError propagating (pytest.raises checks the message)."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


@pytest.fixture
def folder_and_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    from richkd.engine.checkpoint import save_model
    from richkd.models import create_model

    monkeypatch.setenv("RICHKD_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "data")
    model = create_model("resnet8", 2)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():  # always "dog": 50 % on the balanced folder, whatever the corruption
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 1.0]))
    model_path = tmp_path / "model.pt"
    save_model(model_path, model, arch="resnet8", num_classes=2, classes=("cat", "dog"))
    return tmp_path / "data", model_path


def test_cli_end_to_end(
    tmp_path: Path, folder_and_model: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, model = folder_and_model
    out = tmp_path / "out"
    argv = ["robustness", "--checkpoint", f"a={model}", "--checkpoint", f"b={model}", "--dataset", "imagefolder",
            "--root", str(data), "--limit", "4", "--corruptions", "gaussian_noise,fog", "--severities", "1,5",
            "--shift", f"same={data}", "--batch-size", "3", "--out", str(out)]  # fmt: skip
    assert run_cli(argv) == 0
    result = json.loads((out / "robustness.json").read_text())
    assert result["version"] == 1 and result["source"] == "generated" and result["n_images"] == 4
    assert result["corruptions"] == ["gaussian_noise", "fog"] and result["severities"] == [1, 5]
    a, b = result["models"]["a"], result["models"]["b"]
    assert a["arch"] == "resnet8" and len(a["checkpoint_sha256"]) == 64
    assert a["per_corruption"] == b["per_corruption"] and len(a["per_corruption"]["fog"]) == 2
    cells = [v for accs in a["per_corruption"].values() for v in accs]
    assert a["clean_top1"] == 50.0 and cells == [50.0] * 4 and a["relative_robustness"] == 1.0
    assert result["shift"]["same"] == {"a": 50.0, "b": 50.0}
    table = (out / "robustness.md").read_text()
    assert "| fog |" in table and "mean corruption acc." in table and table in capsys.readouterr().out


def test_shift_folder_of_a_model_trained_with_display_names(
    tmp_path: Path, folder_and_model: tuple[Path, Path]
) -> None:
    """A run with data.class_names records display names as its classes; a shift set has the same class folders
    (cat/, dog/), so it is read through the same mapping instead of being refused as "other classes"."""
    from richkd.engine.checkpoint import read_model_file, save_model
    from richkd.models import create_model

    data, plain = folder_and_model
    names = tmp_path / "names.tsv"
    names.write_text("cat\tKitty\ndog\tDoggo\n")
    model = create_model("resnet8", 2)
    model.load_state_dict(read_model_file(plain)[0])  # the always-"dog" head: 50 % on the balanced folder
    named = tmp_path / "named.pt"
    save_model(named, model, arch="resnet8", num_classes=2, classes=("Kitty", "Doggo"))
    out = tmp_path / "out"
    argv = ["robustness", "--checkpoint", f"m={named}", "--dataset", "imagefolder", "--root", str(data),
            "--class-names-file", str(names), "--corruptions", "fog", "--severities", "1", "--shift", f"same={data}",
            "--out", str(out)]  # fmt: skip
    assert run_cli(argv) == 0
    assert json.loads((out / "robustness.json").read_text())["shift"]["same"] == {"m": 50.0}


def test_cli_official_files_equal_to_clean_give_clean_accuracy(
    tmp_path: Path, folder_and_model: tuple[Path, Path]
) -> None:
    from richkd.data import load_dataset

    data, model = folder_and_model
    ds = load_dataset("imagefolder", data, "test")
    official = tmp_path / "official"
    official.mkdir()
    np.save(official / "contrast.npy", np.tile(ds.images.permute(0, 2, 3, 1).numpy(), (5, 1, 1, 1)))
    np.save(official / "labels.npy", np.tile(ds.labels.numpy(), 5).astype(np.uint8))
    out = tmp_path / "out"
    argv = ["robustness", "--checkpoint", f"m={model}", "--dataset", "imagefolder", "--root", str(data),
            "--corruptions", "contrast", "--official-c", str(official), "--shift", f"same={data}",
            "--out", str(out)]  # fmt: skip
    assert run_cli(argv) == 0
    result = json.loads((out / "robustness.json").read_text())
    m = result["models"]["m"]
    assert result["source"] == "official" and result["shift"]["same"]["m"] == m["clean_top1"]
    assert m["per_corruption"]["contrast"] == [m["clean_top1"]] * 5 and m["relative_robustness"] == pytest.approx(1.0)


def test_cli_fails_early_on_bad_input(tmp_path: Path, folder_and_model: tuple[Path, Path]) -> None:
    data, model = folder_and_model
    base = ["robustness", "--dataset", "imagefolder", "--root", str(data)]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RichKDError, match="not a folder"):
        run_cli([*base, "--checkpoint", f"m={model}", "--out", str(blocker / "sub")])
    with pytest.raises(RichKDError, match="NAME=PATH"):
        run_cli([*base, "--checkpoint", str(model), "--out", str(tmp_path / "o")])
    with pytest.raises(RichKDError, match="unknown corruption"):
        run_cli([*base, "--checkpoint", f"m={model}", "--corruptions", "rain", "--out", str(tmp_path / "o")])
    with pytest.raises(RichKDError, match="not found"):
        run_cli([*base, "--checkpoint", f"m={tmp_path / 'missing.pt'}", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "robustness.json").exists()
