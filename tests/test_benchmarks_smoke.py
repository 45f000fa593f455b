"""The benchmark scripts run end to end (tiny sizes, CPU) and write the JSON their docs quote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, out: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# Tolerances for "the same loss on the same batch" (the benchmark's `first_step_loss`, one un-augmented batch):
# - fp32 path vs reference loop: both compute in float32 and differ only in summation order (channels_last
#   kernels, the teacher's BatchNorm folded into its convolutions). Unit roundoff u32 = 2^-24 = 6e-8; a dot product
#   of length n errs by at most n * u32 relative (Higham, Thm 3.1), n <= 3*3*64 = 576 in resnet8's convolutions:
#   3.4e-5 for one layer, so a relative 1e-4 on the loss (measured: 1e-7). A different loss, seed, memory bank or
#   target changes it by orders of magnitude more.
# - bf16 path vs reference loop: bf16 rounds each operand and output to 8 significant bits, u = 2^-8 = 3.9e-3 per
#   rounding. The errors of the ~16 rounding stages (teacher + student layers) are independent with zero mean and
#   the loss averages them over B * C logits and B embeddings, so its expected relative error is about
#   u * sqrt(16 / B) <= u for B >= 16: tolerance u relative (measured: 6e-5).
FP32_REL = 1e-4
BF16_REL = 2.0**-8


def _assert_same_first_step_loss(losses: dict[str, float], fast: str, fast_fp32: str, ref: str = "ref") -> None:
    assert set(losses) == {fast, fast_fp32, ref}, losses
    assert abs(losses[fast_fp32] - losses[ref]) <= FP32_REL * abs(losses[ref]), losses
    assert abs(losses[fast] - losses[ref]) <= BF16_REL * abs(losses[ref]), losses
    assert losses[ref] > 0


def test_train_step_benchmark_runs(tmp_path: Path) -> None:
    result = _run(
        "train_step.py",
        *("--pair", "resnet8:resnet8", "--rows", "256", "--classes", "10", "--batch", "16", "--nce-k", "32"),
        *("--windows", "2", "--steps", "1", "--warmup", "1", "--threads", "1", "--workers", "0"),
        out=tmp_path / "step.json",
    )
    assert set(result["median_images_per_s"]) == {"ours", "ref"}
    assert all(len(v) == 2 for v in result["images_per_s"].values())
    assert result["speedup_ours_over_ref"] > 0
    # The speed-up compares like with like only if both paths compute the same loss on the same batch.
    _assert_same_first_step_loss(result["first_step_loss"], "ours", "ours_without_bf16")
    assert result["environment"]["command"]


def test_gpu_epoch_time_script_runs_on_cpu(tmp_path: Path) -> None:
    result = _run(
        "gpu_epoch_time.py",
        *("--tiny", "--device", "cpu", "--pair", "resnet8:resnet8", "--teacher", "online,cached", "--build-rows", "2"),
        out=tmp_path / "gpu.json",
    )
    assert result["epochs_run"] == 2 and len(result["train_s_per_epoch_measured"]) == 2
    assert set(result["runs"]) == {"online", "cached"} and result["cached_over_online_train_images_per_s"] > 0
    assert result["runs"]["cached"]["goal_240_epochs_min"] == 5 and result["cache_build_views_per_s"] > 0
    assert result["train_images_per_s"] > 0 and result["projected_240_epochs_min"] > 0
    assert result["bf16"] and result["channels_last"]


def test_teacher_cache_benchmark_runs(tmp_path: Path) -> None:
    result = _run(
        "teacher_cache.py",
        *("--pair", "resnet8:resnet8", "--rows", "256", "--nce-k", "32", "--threads", "1", "--workers", "0"),
        *("--windows", "1", "--steps", "1", "--warmup", "0", "--build-rows", "2"),
        out=tmp_path / "tc.json",
    )
    assert set(result["median_images_per_s"]) == {"cached", "online", "ref"}
    assert result["cached_over_ref"] > 0 and result["build_views_per_s"] > 0
    if result["bf16"]:
        _assert_same_first_step_loss(result["first_step_loss"], "online", "online_without_bf16")
    else:  # no fast bf16 on this CPU: online runs in float32
        assert set(result["first_step_loss"]) == {"online", "ref"}
        online, ref = result["first_step_loss"]["online"], result["first_step_loss"]["ref"]
        assert abs(online - ref) <= FP32_REL * abs(ref) and ref > 0


def test_cpu_roofline_counts_flops_by_hand_and_states_the_target(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    import torch
    from cpu_roofline import flops_per_image

    conv = 2 * 3 * 4 * 9 * 8 * 8  # multiply-adds x 2 of a 3->4 3x3 'same' conv on 8x8, per image
    teacher = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    student = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    flops = flops_per_image(teacher, student, batch=2, size=8)
    # the student's backward computes the weight gradient only (the input needs none): one more conv's worth
    assert flops == {"teacher_forward": conv, "student_forward_backward": 2 * conv, "reference_step": 3 * conv}

    step = tmp_path / "step.json"
    step.write_text(json.dumps({"median_images_per_s": {"ref": 10.0, "cached": 20.0, "online": 12.0}}))
    result = _run(
        "cpu_roofline.py",
        *("--pair", "resnet8:resnet8", "--classes", "10", "--threads", "1", "--n", "128", "--repeats", "1"),
        *("--windows", "1", "--target", "5", "--step-json", str(step)),
        out=tmp_path / "roof.json",
    )
    per_image = result["gflop_per_image"]
    assert result["target_cached_images_per_s"] == 50.0
    assert abs(result["target_gflops"] - 50.0 * per_image["student_forward_backward"]) < 1e-9
    ratio = per_image["reference_step"] / per_image["student_forward_backward"]
    assert abs(result["ceiling_ratio_by_flops"] - ratio) < 1e-9
    assert result["matmul_gflops_fp32_median"] > 0 and set(result["cpu_flags"]) >= {"avx2", "amx_bf16"}


def test_mlkd_step_benchmark_runs(tmp_path: Path) -> None:
    result = _run(
        "mlkd_step.py",
        *("--pair", "resnet8:resnet8", "--rows", "64", "--classes", "10", "--batch", "8"),
        *("--windows", "2", "--steps", "1", "--warmup", "0", "--threads", "1"),
        out=tmp_path / "mlkd.json",
    )
    assert set(result["ms_per_batch"]) == {"strong_aug", "student_step", "kd_step", "mlkd_step"}
    assert result["strong_aug_over_student_step"] > 0 and result["mlkd_step_over_kd_step"] > 0
    assert result["environment"]["cpu"]


def test_feature_step_benchmark_adds_only_the_feature_term(tmp_path: Path) -> None:
    """KD and KD + X on the same batch: KD's own terms are identical (the same student forward), X's term is
    positive, and the counted FLOPs only grow (the connector's work is added, nothing is removed)."""
    result = _run(
        "feature_step.py",
        *("--pair", "resnet8:resnet8", "--methods", "fitnet,at", "--batch", "8"),
        *("--windows", "2", "--steps", "1", "--warmup", "0", "--threads", "1"),
        out=tmp_path / "feature.json",
    )
    for method in ("fitnet", "at"):
        entry = result["methods"][method]
        kd, combined = entry["first_step_terms"]["kd"], entry["first_step_terms"][f"kd+{method}"]
        assert set(combined) == {*kd, method} and combined[method] > 0
        assert all(combined[k] == kd[k] for k in kd), (kd, combined)
        assert entry["flop_ratio"] >= 1.0 and entry["time_ratio"] > 0
    # resnet8 stage 2 has 32 channels: a 1x1 conv 32->32 with bias, then BN (weight + bias)
    assert result["methods"]["fitnet"]["connector_parameters"] == 32 * 32 + 32 + 2 * 32

