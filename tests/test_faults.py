"""Fault injection through the real CLI (in process): every bad input or interruption a new user met ends in one
line on stderr with exit code 2 (130 for Ctrl-C), no traceback, and the file system as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from richkd.caches.target import TargetCache
from richkd.cli import main
from richkd.data import load_dataset
from richkd.data.subset import limited, stratified_rows

pytestmark = pytest.mark.shared_data

COMMON = [
    "data.name=imagefolder",
    "model.student=resnet8",
    "train.epochs=1",
    "train.batch_size=32",
    "train.threads=1",
    "train.progress=false",
]


@pytest.fixture(autouse=True)
def _cache_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RICHKD_CACHE", str(tmp_path_factory.getbasetemp() / "richkd-cache"))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("richkd: error:"), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ----------------------------------------------------------------------------------------------- data roots


def test_not_an_archive_and_truncated_archive(
    tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "notes.tar.gz"
    fake.write_text("this is not an archive\n")
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(tiny_cifar10.read_bytes()[: tiny_cifar10.stat().st_size // 2])
    plain_file = tmp_path / "data.txt"
    plain_file.write_text("x")
    before = snapshot(tmp_path)
    for root, needle in ((fake, "not a readable tar or zip archive"), (truncated, "not a readable tar or zip archive"),
                         (plain_file, "neither a folder nor")):
        out = tmp_path / "run"
        code, _, err = run(["train", *COMMON, f"data.root={root}", f"out_dir={out}"], capsys)
        one_line_error(code, err, needle)
        assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------- read-only outputs


def test_read_only_outputs_fail_before_work(
    tiny_cifar10: Path, read_only_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the expensive step ran before the output was checked")

    monkeypatch.setattr("richkd.data.datasets.load_imagefolder", never)
    code, _, err = run(["train", *COMMON, f"data.root={tiny_cifar10}", f"out_dir={read_only_dir / 'run'}"], capsys)
    one_line_error(code, err, "not writable")
    code, _, err = run(["vlm", "cache", "--dataset", "imagefolder", "--root", str(tiny_cifar10), "--teacher",
                        "random:0", "--out", str(read_only_dir / "cache")], capsys)
    one_line_error(code, err, "not writable")
    code, _, err = run(["eval", "--checkpoint", "/nonexistent.pt", "--dataset", "imagefolder", "--root",
                        str(tiny_cifar10), "--out", str(read_only_dir / "m.json")], capsys)
    one_line_error(code, err, "not writable")


def test_output_under_a_file(tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["train", *COMMON, f"data.root={tiny_cifar10}", f"out_dir={blocker / 'run'}"], capsys)
    one_line_error(code, err, "is a file")


# ------------------------------------------------------------------------------------------------ devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_on_a_cpu_machine(tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, _, err = run(["train", *COMMON, f"data.root={tiny_cifar10}", "train.device=cuda", f"out_dir={out}"], capsys)
    one_line_error(code, err, "train.device=cuda")
    assert not out.exists()
    code, _, err = run(["eval", "--checkpoint", "x.pt", "--dataset", "imagefolder", "--root", str(tiny_cifar10),
                        "--device", "cuda"], capsys)
    one_line_error(code, err, "--device=cuda")
    code, _, err = run(["vlm", "zeroshot", "--dataset", "imagefolder", "--root", str(tiny_cifar10),
                        "--teacher", "random:0", "--device", "cuda:3"], capsys)
    one_line_error(code, err, "--device=cuda:3")
    code, _, err = run(["train", *COMMON, "train.device=gpu0", f"out_dir={out}"], capsys)
    one_line_error(code, err, "not a device")
    model = tmp_path / "m.pt"
    _save_resnet8(model, tiny_cifar10)
    code, _, err = run(["robustness", "--checkpoint", f"m={model}", "--dataset", "imagefolder", "--root",
                        str(tiny_cifar10), "--device", "cuda", "--out", str(tmp_path / "rob")], capsys)
    one_line_error(code, err, "--device=cuda")
    code, _, err = run(["cost", "--checkpoint", f"m={model}", "--device", "cuda", "--out", str(tmp_path / "c")],
                       capsys)
    one_line_error(code, err, "--device=cuda")
    assert not (tmp_path / "rob" / "robustness.json").exists() and not (tmp_path / "c" / "cost.json").exists()


# ------------------------------------------------------------------------------------------ config values


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.momentum=nan", "optim.momentum"),
        ("optim.momentum=1.5", "optim.momentum"),
        ("optim.weight_decay=-1", "optim.weight_decay"),
        ("train.threads=0", "train.threads"),
        ("fusion.logit_alpha=1e999", "fusion.logit_alpha"),
    ],
)
def test_bad_numbers_name_their_key(
    override: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, _, err = run(["train", *COMMON, override, f"out_dir={out}"], capsys)
    one_line_error(code, err, needle)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- --resume


def test_resume_needs_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    code, _, err = run(["train", *COMMON, f"out_dir={missing}", "--resume"], capsys)
    one_line_error(code, err, "does not exist")
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text("seed: 0\n")
    code, _, err = run(["train", *COMMON, f"out_dir={empty}", "--resume"], capsys)
    one_line_error(code, err, "no checkpoint.pt")
    assert snapshot(empty) == {"config.yaml"}


def test_an_existing_empty_folder_is_a_fine_place_for_outputs(
    tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20: an empty out_dir starts a run (and stays after a refusal); a file output (`--out`) naming an
    empty folder is one line (old main: IsADirectoryError from the atomic rename), with nothing written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["train", *COMMON, "data.root=/nonexistent/data", f"out_dir={empty}"], capsys)
    assert code == 2 and snapshot(empty) == set(), err  # refused: the folder is as it was, no lock file left
    code, _, err = run(["train", *COMMON, f"data.root={tiny_cifar10}", f"data.cache_dir={tmp_path / 'dc'}",
                        f"out_dir={empty}"], capsys)
    assert code == 0, err
    assert {"summary.json", "metrics.jsonl", "checkpoint.pt"} <= snapshot(empty)
    assert not any(name.startswith(".") for name in snapshot(empty))  # no lock or temp file
    folder = tmp_path / "eval-out"
    folder.mkdir()
    code, _, err = run(["eval", "--checkpoint", str(empty / "model_last.pt"), "--dataset", "imagefolder",
                        "--root", str(tiny_cifar10), "--limit", "20", "--threads", "1", "--out", str(folder)], capsys)
    # eval prints one progress line before it evaluates; the error is the one line after it, no traceback
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("richkd: error:") and "is a folder" in err, err
    assert snapshot(folder) == set()


def test_failure_before_first_checkpoint_leaves_no_run_dir(
    tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loss that blows up in epoch 1 (lr far too high) leaves no half-made run directory."""
    out = tmp_path / "run"
    code, _, err = run(["train", *COMMON, f"data.root={tiny_cifar10}", f"data.cache_dir={tmp_path / 'dc'}",
                        "optim.lr=1e30", f"out_dir={out}"], capsys)
    one_line_error(code, err, "optim.lr")
    assert not out.exists()

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("richkd.engine.trainer.fit", interrupt)
    code, _, err = run(["train", *COMMON, f"data.root={tiny_cifar10}", f"data.cache_dir={tmp_path / 'dc'}",
                        f"out_dir={out}"], capsys)
    assert code == 130 and "nothing was kept" in err and "--resume" not in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ Ctrl-C


def test_interrupt_messages_fit_the_command(
    tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("richkd.caches.build_target.build_target_cache", interrupt)
    code, _, err = run(["vlm", "cache", "--dataset", "imagefolder", "--root", str(tiny_cifar10), "--teacher",
                        "random:0", "--out", str(tmp_path / "c")], capsys)
    assert code == 130 and "run the same command again" in err and "--resume" not in err, err
    monkeypatch.setattr("richkd.engine.evaluate.evaluate_model", interrupt)
    model = tmp_path / "m.pt"
    _save_resnet8(model, tiny_cifar10)
    code, _, err = run(["eval", "--checkpoint", str(model), "--dataset", "imagefolder", "--root",
                        str(tiny_cifar10), "--out", str(tmp_path / "m.json")], capsys)
    assert code == 130 and "nothing was written" in err and "--resume" not in err, err
    assert not (tmp_path / "m.json").exists()


def _save_resnet8(path: Path, archive: Path) -> None:
    from richkd.engine.checkpoint import save_model
    from richkd.models import create_model

    classes = load_dataset("imagefolder", archive, "test").classes
    save_model(path, create_model("resnet8", len(classes)), arch="resnet8", num_classes=len(classes),
               classes=classes)


# ------------------------------------------------------------------------------------- subsets that mean it


def test_limit_is_stratified_everywhere(tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test = load_dataset("imagefolder", tiny_cifar10, "test")
    part, rows = limited(test, 20)
    assert rows is not None and torch.bincount(part.labels, minlength=10).tolist() == [2] * 10
    assert torch.equal(rows.rows, stratified_rows(test.labels, 20))
    out = tmp_path / "zs.json"
    code, stdout, err = run(["vlm", "zeroshot", "--dataset", "imagefolder", "--root", str(tiny_cifar10),
                             "--teacher", "random:0", "--limit", "20", "--threads", "1", "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["rows"] == 20 and "stratified" in result["subset"] and "stratified" in stdout


def test_subset_cache_serves_the_same_subset_only(
    tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vlm cache --limit 40` records its rows; a run with data.train_limit=40 uses it, one with 80 is refused."""
    cache = tmp_path / "cache40"
    code, _, err = run(["vlm", "cache", "--dataset", "imagefolder", "--root", str(tiny_cifar10), "--teacher",
                        "random:0", "--limit", "40", "--threads", "1", "--out", str(cache)], capsys)
    assert code == 0, err
    meta = TargetCache.open(cache).meta
    assert (meta.n_rows, meta.split_rows, meta.subset_limit) == (40, 160, 40)
    teacher = tmp_path / "teacher.pt"
    _save_resnet8(teacher, tiny_cifar10)
    distil = [*COMMON, f"data.root={tiny_cifar10}", f"data.cache_dir={tmp_path / 'dc'}", "model.teacher=resnet8",
              f"model.teacher_checkpoint={teacher}", "distill.method=richkd", "fusion.mode=vlm",
              "distill.nce_k=16", f"vlm.cache={cache}"]
    code, _, err = run(["train", *distil, "data.train_limit=40", f"out_dir={tmp_path / 'ok'}"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ok" / "run.json").read_text())["target_cache"]["subset_limit"] == 40
    code, _, err = run(["train", *distil, "data.train_limit=80", f"out_dir={tmp_path / 'bad'}"], capsys)
    one_line_error(code, err, "outside it")
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------ what users see


def test_help_and_logs_say_what_they_mean(tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          caplog: pytest.LogCaptureFixture) -> None:
    code, stdout, _ = run([], capsys)
    assert code == 0 and "train" in stdout and "usage" in stdout
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    for key in ("data.train_limit", "optim.lr", "fusion.logit_alpha", "distill.method=richkd", "vlm.cache"):
        assert key in help_text, key
    code, stdout, _ = run(["config", "show", "optim.lr=0.2"], capsys)
    assert code == 0 and "lr: 0.2" in stdout and "train_limit: null" in stdout
    caplog.set_level("INFO", logger="richkd")
    code, _, err = run(["train", *COMMON, f"data.root={tiny_cifar10}", f"data.cache_dir={tmp_path / 'dc'}",
                        "train.max_steps_per_epoch=1", f"out_dir={tmp_path / 'r'}"], capsys)
    assert code == 0, err
    epoch_line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1"))
    assert "train_top1=" in epoch_line and "test_top1=" in epoch_line
    code, _, err = run(["eval", "--checkpoint", str(tmp_path / "r" / "model_last.pt"), "--dataset",
                        "imagefolder", "--root", str(tiny_cifar10), "--threads", "1"], capsys)
    assert code == 0 and "evaluating resnet8" in err


def test_killed_after_the_last_checkpoint_still_finishes(
    tiny_cifar10: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL between the final checkpoint and metrics.jsonl/summary.json: --resume completes the run."""
    out = tmp_path / "run"
    args = ["train", *COMMON, "train.epochs=2", "train.max_steps_per_epoch=2", f"data.root={tiny_cifar10}",
            f"data.cache_dir={tmp_path / 'dc'}", f"out_dir={out}"]
    assert run(args, capsys)[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "summary.json").unlink()  # the state such a kill leaves behind
    (out / "metrics.jsonl").write_text(lines[0] + "\n")
    code, _, err = run([*args, "--resume"], capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["last_top1"] == summary["last_top1"]
    assert (out / "metrics.jsonl").read_text().splitlines() == lines
    code, _, err = run([*args, "--resume"], capsys)  # a finished run is still refused
    one_line_error(code, err, "already finished")
