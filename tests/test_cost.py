"""`richkd cost` and analysis.cost: FLOPs and parameters of hand-countable models, timings, cost.json."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from richkd.analysis.cost import count_flops, count_params, measure_cost
from richkd.cli import build_parser
from richkd.engine.checkpoint import save_model
from richkd.errors import RichKDError
from richkd.models import create_model
from richkd.report.inputs import load_result

CPU = torch.device("cpu")


def _cli(argv: list[str]) -> int:
    """`richkd ARGV` in process, RichKDError propagating (pytest.raises checks the message)."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def test_flops_and_params_of_hand_countable_models() -> None:
    linear = nn.Linear(10, 5)
    assert count_params(linear) == 10 * 5 + 5
    assert count_flops(linear, (10,), CPU) == 2 * 10 * 5  # one multiply-add per weight = 2 FLOPs
    conv = nn.Conv2d(3, 4, kernel_size=3, padding=1, bias=False)
    assert count_params(conv) == 4 * 3 * 3 * 3
    # 4 output channels x 8 x 8 positions x (3 x 3 x 3) multiply-adds x 2
    assert count_flops(conv, (3, 8, 8), CPU) == 2 * 4 * 8 * 8 * 27


def test_measure_cost_reports_medians_and_restores_mode() -> None:
    model = nn.Sequential(nn.Linear(10, 5))
    model.train()
    result = measure_cost(model, input_shape=(10,), device=CPU, batch_sizes=(1, 4), repeats=3, warmup=1)
    assert set(result) == {"params", "flops", "latency_ms_b1", "throughput_b1_img_s", "latency_ms_b4",
                           "throughput_b4_img_s"}
    assert (result["params"], result["flops"]) == (55, 100)
    for batch in (1, 4):  # throughput and latency are two views of the same median
        assert result[f"throughput_b{batch}_img_s"] * result[f"latency_ms_b{batch}"] / 1000 == pytest.approx(batch)
    assert model.training, "the model goes back to the mode it came in"
    with pytest.raises(RichKDError, match="repeats must be"):
        measure_cost(model, input_shape=(10,), device=CPU, repeats=0, warmup=0)


def test_cost_command_writes_what_the_report_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model_last.pt"
    save_model(path, create_model("resnet8", 10), arch="resnet8", num_classes=10, classes=tuple("abcdefghij"))
    out = tmp_path / "cost"
    assert _cli(["cost", "--checkpoint", f"student={path}", "--repeats", "1", "--warmup", "0", "--threads", "1",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(out / "cost.json")
    cost = load_result(out / "cost.json", "cost")  # the report's own format check
    entry = cost["models"]["student"]
    assert (cost["version"], cost["threads"], cost["input"], cost["device"]) == (1, 1, [3, 32, 32], "cpu")
    assert cost["cpu"] and entry["arch"] == "resnet8" and len(entry["checkpoint_sha256"]) == 64
    assert entry["params"] == 78042, "resnet8 with 10 classes (the zoo's parameter count)"
    assert entry["flops"] > 2 * entry["params"], "a conv net reuses each weight at many positions"


def test_cost_command_rejects_bad_checkpoints(tmp_path: Path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save(nn.Linear(2, 2).state_dict(), bare)
    out = str(tmp_path / "o")
    for argv, message in [
        (["--checkpoint", str(bare)], r"write NAME=PATH"),
        (["--checkpoint", f"a={bare}", "--checkpoint", f"a={bare}"], r"'a' is given twice"),
        (["--checkpoint", f"a={tmp_path / 'missing.pt'}"], r"missing.pt not found"),
        (["--checkpoint", f"a={bare}"], r"does not record its architecture"),
    ]:
        with pytest.raises(RichKDError, match=message):
            _cli(["cost", *argv, "--out", out])
    assert not (tmp_path / "o" / "cost.json").exists()
