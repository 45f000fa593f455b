"""End to end through the real CLI on a small slice of real CIFAR-10 images: train a teacher, make a target
cache, distil with RichKD-L+F, stop and resume to the same result, evaluate; and bad input fails cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from richkd.caches.target import write_random_cache
from richkd.data import load_dataset

pytestmark = pytest.mark.shared_data
CACHE_HOME = Path(os.environ.get("PYTEST_RICHKD_CACHE", "/tmp/richkd-test-cache"))  # keeps tests out of ~/.cache

COMMON = [
    "train.batch_size=32",
    "train.eval_batch_size=64",
    "train.threads=1",
    "train.progress=false",
    "data.name=imagefolder",
    "optim.lr=0.02",
    "optim.schedule=cosine",
]


def richkd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RICHKD_CACHE": str(CACHE_HOME)}
    proc = subprocess.run(
        [sys.executable, "-m", "richkd", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"richkd {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_cifar10: Path) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("e2e")
    data = [f"data.root={tiny_cifar10}", f"data.cache_dir={base / 'dc'}"]
    richkd(
        "train",
        *COMMON,
        *data,
        "model.student=resnet8",
        "distill.method=vanilla",
        "train.epochs=2",
        f"out_dir={base / 'teacher'}",
    )
    train = load_dataset("imagefolder", tiny_cifar10, "train", cache_dir=base / "dc")
    cache = base / "cache"
    make_cache(cache, train.name, train.split, len(train), list(train.classes))
    return {"base": base, "archive": tiny_cifar10, "teacher": base / "teacher", "cache": cache}


def make_cache(path: Path, dataset: str, split: str, n_rows: int, classes: list[str]) -> None:
    write_random_cache(path, dataset=dataset, split=split, n_rows=n_rows, class_names=classes)


def distil_args(work: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        *COMMON,
        f"data.root={work['archive']}",
        f"data.cache_dir={work['base'] / 'dc'}",
        "model.student=resnet8",
        "model.teacher=resnet8",
        f"model.teacher_checkpoint={work['teacher'] / 'model_last.pt'}",
        "distill.method=richkd",
        "fusion.mode=vlm",
        "distill.nce_k=64",
        f"vlm.cache={work['cache']}",
        "train.epochs=3",
        f"out_dir={out}",
        *extra,
    ]


def _cli_cache(work: dict[str, Path], name: str, *, seed: int) -> Path:
    """A plain target cache of the training images built by `richkd vlm cache` (a seeded random teacher)."""
    cache = work["base"] / name
    richkd("vlm", "cache", "--dataset", "imagefolder", "--root", str(work["archive"]), "--split", "train",
           "--teacher", f"random:{seed}", "--out", str(cache), "--threads", "1", "--batch-size", "64")
    return cache


def _short_distil_args(work: dict[str, Path]) -> list[str]:
    """Data, models and the trained teacher of a short resnet8 -> resnet8 run on 40 test images."""
    return [
        *COMMON,
        f"data.root={work['archive']}",
        f"data.cache_dir={work['base'] / 'dc'}",
        "data.test_limit=40",
        "model.student=resnet8",
        "model.teacher=resnet8",
        f"model.teacher_checkpoint={work['teacher'] / 'model_last.pt'}",
    ]


def test_teacher_run_directory(work: dict[str, Path]) -> None:
    run = work["teacher"]
    for name in (
        "config.yaml",
        "run.json",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.pt",
        "model_last.pt",
        "model_best.pt",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert {"best_top1", "last_top1", "best_epoch"} <= set(summary)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_richkd_stop_resume_matches_uninterrupted_and_eval(work: dict[str, Path]) -> None:
    straight, resumed = work["base"] / "straight", work["base"] / "resumed"
    richkd("train", *distil_args(work, straight))
    first = richkd("train", *distil_args(work, resumed, "train.stop_after=1"))
    assert not (resumed / "summary.json").exists(), first.stdout
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 1
    richkd("train", *distil_args(work, resumed), "--resume")
    a = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        for key in ("train/loss_ce", "train/loss_kd", "train/loss_feat", "test/top1", "test/nll"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key
    run = json.loads((straight / "run.json").read_text())
    assert "KD" in run["loss"] and run["target_cache"]["n_rows"] == 160
    summary = json.loads((straight / "summary.json").read_text())
    ev = richkd(
        "eval",
        "--checkpoint",
        str(straight / "model_last.pt"),
        "--dataset",
        "imagefolder",
        "--root",
        str(work["archive"]),
        "--threads",
        "1",
    )
    result = json.loads(ev.stdout)
    assert result["top1"] == pytest.approx(summary["last_top1"])


def test_same_seed_same_first_loss_and_teacher_only_control(work: dict[str, Path]) -> None:
    out1, out2 = work["base"] / "seed_a", work["base"] / "seed_b"
    args = ["train.epochs=1", "train.max_steps_per_epoch=2", "fusion.mode=control", "vlm.cache=null"]
    richkd("train", *distil_args(work, out1, *args))
    richkd("train", *distil_args(work, out2, *args))
    la = json.loads((out1 / "metrics.jsonl").read_text().splitlines()[0])
    lb = json.loads((out2 / "metrics.jsonl").read_text().splitlines()[0])
    assert la["train/loss"] == lb["train/loss"]
    assert json.loads((out1 / "run.json").read_text())["target_cache"] is None


def test_existing_run_needs_resume(work: dict[str, Path]) -> None:
    proc = richkd(
        "train",
        *COMMON,
        f"data.root={work['archive']}",
        f"data.cache_dir={work['base'] / 'dc'}",
        "model.student=resnet8",
        "train.epochs=2",
        f"out_dir={work['teacher']}",
        check=False,
    )
    assert proc.returncode == 2 and "--resume" in proc.stderr


def _fails_cleanly(proc: subprocess.CompletedProcess[str], out: Path, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("richkd: error:"), proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists(), f"{out} was created by a failing run"


def test_bad_inputs_fail_in_one_line_without_files(work: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "never"
    base = distil_args(work, out)
    _fails_cleanly(richkd("train", *base, "data.root=/no/such/archive.tar.gz", check=False), out, "/no/such")
    _fails_cleanly(richkd("train", *base, "model.student=resnet9000", check=False), out, "resnet9000")
    _fails_cleanly(richkd("train", *base, "distill.temperature=-1", check=False), out, "temperature")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    _fails_cleanly(richkd("train", *base, f"model.teacher_checkpoint={corrupt}", check=False), out, "corrupt")
    _fails_cleanly(richkd("train", *base, "model.teacher=resnet14", check=False), out, "resnet")
    train = load_dataset("imagefolder", work["archive"], "train", cache_dir=work["base"] / "dc")
    wrong_ds = tmp_path / "cache_other"
    make_cache(wrong_ds, "cifar100", "train", len(train), list(train.classes))
    _fails_cleanly(richkd("train", *base, f"vlm.cache={wrong_ds}", check=False), out, "cifar100")
    wrong_rows = tmp_path / "cache_rows"
    make_cache(wrong_rows, train.name, "train", len(train) - 1, list(train.classes))
    _fails_cleanly(richkd("train", *base, f"vlm.cache={wrong_rows}", check=False), out, "rows")
    wrong_classes = tmp_path / "cache_classes"
    make_cache(wrong_classes, train.name, "train", len(train), list(reversed(train.classes)))
    _fails_cleanly(richkd("train", *base, f"vlm.cache={wrong_classes}", check=False), out, "class")


def test_models_command_lists_zoo() -> None:
    proc = richkd("models")
    assert "resnet32x4" in proc.stdout and "7.43" in proc.stdout


def test_overfits_64_samples(work: dict[str, Path]) -> None:
    """The whole path learns: a small student memorises 64 real images (train accuracy near 100 %)."""
    out = work["base"] / "overfit"
    torch.manual_seed(0)
    richkd(
        "train",
        *COMMON,
        f"data.root={work['archive']}",
        f"data.cache_dir={work['base'] / 'dc'}",
        "model.student=resnet8",
        "distill.method=vanilla",
        "data.augment=false",
        "data.train_limit=64",
        "train.epochs=60",
        "train.batch_size=16",
        "optim.schedule=step",
        "optim.milestones=[100]",
        "optim.lr=0.1",
        "optim.weight_decay=0",
        f"out_dir={out}",
    )
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train/top1"] >= 95.0, last


def test_richkd_from_a_cache_built_by_the_cli_with_matched_views(work: dict[str, Path]) -> None:
    """`richkd vlm cache` on the real images, then RichKD-L+F serving each student crop its cached view."""
    cache = work["base"] / "cli_cache"
    richkd(
        "vlm",
        "cache",
        "--dataset",
        "imagefolder",
        "--root",
        str(work["archive"]),
        "--split",
        "train",
        "--teacher",
        "random:1",
        "--views",
        "2",
        "--out",
        str(cache),
        "--threads",
        "1",
        "--batch-size",
        "64",
    )
    out = work["base"] / "matched"
    richkd("train", *distil_args(work, out, f"vlm.cache={cache}", "vlm.view_mode=matched", "train.epochs=1"))
    run = json.loads((out / "run.json").read_text())
    assert run["target_cache"]["model_kind"] == "random"
    assert run["target_cache"]["view_names"] == ["plain", "flip", "aug0", "aug1"]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train/loss_feat"] > 0 and record["train/loss_kd"] > 0
    bad_pad = richkd(
        "train",
        *distil_args(work, work["base"] / "badpad", f"vlm.cache={cache}", "vlm.view_mode=matched", "data.pad=2"),
        check=False,
    )
    _fails_cleanly(bad_pad, work["base"] / "badpad", "pad")


def test_dkd_and_ls_kd_on_fused_targets_from_a_cli_cache(work: dict[str, Path]) -> None:
    """Fusion is a switch of every distiller: DKD+fusion and LS-KD+fusion through `richkd train --method`."""
    cache = _cli_cache(work, "cli_cache_plain", seed=2)
    common = [
        *_short_distil_args(work),
        f"vlm.cache={cache}",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
    ]
    for method, extra, loss_key, described in (
        ("dkd-fusion", [], "dkd", "DKD(alpha=1.0, beta=8.0, T=4.0"),
        ("kd-ls", ["fusion.mode=vlm"], "kd", "9.0*LS-KD(T=2.0)"),
    ):
        out = work["base"] / method
        richkd("train", "--method", method, *common, *extra, f"out_dir={out}")
        run = json.loads((out / "run.json").read_text())
        assert run["teacher_targets"].startswith("logits: z_F = 0.7*z_T + 0.3*1.0*z_C"), run["teacher_targets"]
        assert described in run["loss"] and run["target_cache"]["model_kind"] == "random"
        assert run["config_layers"][0] == "dataset:cifar100" and f"method:{method}" in run["config_layers"]
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert first[f"train/loss_{loss_key}"] > 0
        saved = (out / "config.yaml").read_text()
        assert "mode: vlm" in saved and "base:" not in saved  # the fully resolved config, no layers left


def test_richkd_l_plus_a_feature_method_through_the_cli(work: dict[str, Path]) -> None:
    """A feature distiller added to a fused logit distiller in one run: RichKD-L + FitNet on real images."""
    out = work["base"] / "richkd_l_fitnet"
    args = distil_args(work, out, "train.epochs=1", "train.max_steps_per_epoch=2", "data.test_limit=40")
    args = [a for a in args if not a.startswith("distill.")]
    richkd("train", "--method", "richkd-l", *args, "feature.method=fitnet", "feature.weight=50")
    run = json.loads((out / "run.json").read_text())
    assert run["loss"].endswith(" + 50*FitNet(hint=2)"), run["loss"]
    assert "3.0*KD(T=3.0)" in run["loss"]
    assert run["teacher_targets"].startswith("logits: z_F = 0.7*z_T + 0.3*1.0*z_C")
    assert run["teacher_targets"].endswith("FitNet(hint=2): the teacher's own features (never fused)")
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train/loss_fitnet"] > 0 and first["train/loss_kd"] > 0 and first["train/loss_ce"] > 0


def test_mlkd_fusion_dist_ls_and_ctkd_through_the_cli(work: dict[str, Path]) -> None:
    """Issue 22 end to end on the real images: MLKD + fusion from a `richkd vlm cache` cache (both views fused),
    DIST + logit standardisation, and CTKD's learned temperature logged per epoch."""
    cache = _cli_cache(work, "cli_cache_logit", seed=3)
    common = [*_short_distil_args(work), "train.max_steps_per_epoch=2"]
    out = work["base"] / "mlkd-fusion"
    richkd("train", "--method", "mlkd-fusion", *common, f"vlm.cache={cache}", "train.epochs=1", f"out_dir={out}")
    run = json.loads((out / "run.json").read_text())
    assert run["teacher_targets"].startswith("logits: z_F = 0.7*z_T + 0.3*1.0*z_C"), run["teacher_targets"]
    assert "strong view" in run["teacher_targets"] and "MLKD(T=4.0" in run["loss"]
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert all(first[f"train/loss_{k}"] > 0 for k in ("ce", "kd", "cc", "bc")), first

    out = work["base"] / "dist-ls"
    richkd("train", "--method", "dist", *common, "distill.logit_standardize=true", "train.epochs=1", f"out_dir={out}")
    run = json.loads((out / "run.json").read_text())
    assert "1.0*LS-DIST(beta=2.0, gamma=2.0, tau=4.0)" in run["loss"], run["loss"]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train/loss_dist"] > 0

    out = work["base"] / "ctkd"
    richkd("train", "--method", "ctkd", *common, "train.epochs=2", "distill.ctkd_loops=1", f"out_dir={out}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["ctkd/lambda"] for r in records] == [-1.0, -1.0]  # loops = 1 epoch: fully reversed from epoch 1
    temps = [r["ctkd/temperature"] for r in records]
    assert all(1.0 < t < 21.0 for t in temps) and temps[0] != temps[1], temps  # learned, inside [1, 21]
    assert "CTKD(" in json.loads((out / "run.json").read_text())["loss"]


@pytest.mark.parametrize(
    "method, feature, key, label",
    [("richkd-l", "reviewkd", "reviewkd", " + 5*ReviewKD(warmup=0)"), ("kd", "ofd", "ofd", " + 0.001*OFD")],
)
def test_pre_activation_feature_methods_through_the_cli(
    work: dict[str, Path], method: str, feature: str, key: str, label: str
) -> None:
    """OFD and ReviewKD read the loaded teacher's pre-ReLU maps (and, for OFD, its BN statistics) on real images.
    No warm-up, so the ReviewKD term is on from the first step."""
    out = work["base"] / f"{method}_{feature}"
    args = distil_args(work, out, "train.epochs=1", "train.max_steps_per_epoch=2", "data.test_limit=40")
    args = [a for a in args if not a.startswith("distill.")]
    richkd("train", "--method", method, *args, f"feature.method={feature}", "feature.reviewkd_warmup_epochs=0")
    run = json.loads((out / "run.json").read_text())
    assert run["loss"].endswith(label), run["loss"]
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first[f"train/loss_{key}"] > 0 and first["train/loss_ce"] > 0
