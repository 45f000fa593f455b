"""Issue 20 item 2: every subcommand, fed bad values and hostile files, answers one line `richkd: error: ...` with
exit code 2: no traceback, no output path created, and no file a user supplies executes code.

The subcommands come from the argparse parser itself, so a new subcommand without cases here fails
`test_every_subcommand_has_hostile_cases`; every numeric option is found the same way and must use a bounded
type from richkd.cli.args (a bare `type=int` fails `test_every_numeric_option_is_bounded`).
"""

from __future__ import annotations

import argparse
import errno
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from richkd.cli import build_parser, main


@pytest.fixture(autouse=True)
def _cache_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RICHKD_CACHE", str(tmp_path_factory.getbasetemp() / "bad-inputs-cache"))


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command words, parser) of every runnable subcommand, nested ones (`vlm cache`) included."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, child in subs[0].choices.items():
        yield from leaf_commands(child, (*prefix, name))


PARSER = build_parser()
LEAVES = dict(leaf_commands(PARSER))


def one_line_error(code: int | str | None, err: str, argv: list[str]) -> str:
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("richkd: error:"), (argv, err)
    return lines[0]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------------------- numeric options


def _numeric_actions() -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    for words, parser in LEAVES.items():
        for action in parser._actions:
            if action.option_strings and action.type is not None and action.nargs in (None, "?"):
                yield words, action


def _bad_values(action: argparse.Action) -> list[str]:
    """Values outside the option's declared range, from the bounds its type carries (not a list kept here)."""
    values = ["nan", "inf", "-1e400", "abc", ""]
    bounds = getattr(action.type, "bounds", None)
    if bounds is None:  # --views: a count or `all`
        return [*values, "-1", "99999999999999999999999"]
    if len(bounds) == 2:  # integers in [low, high]
        low, high = bounds
        values += [str(low - 1), "2.5", "99999999999999999999999" if high is None else str(high + 1)]
    else:  # floats in [low, high] or (low, high]
        low, high, low_open = bounds
        values += [str(low) if low_open else str(low - 0.5)]
        if high is not None:
            values.append(str(high + 0.5))
    return values


def test_every_numeric_option_is_bounded() -> None:
    """Every option parsed as a number uses a richkd.cli.args type (bounded, finite); none is a bare int/float."""
    found = list(_numeric_actions())
    assert len(found) >= 50, len(found)  # the walk reaches the nested parsers (vlm cache, teacher cache, ...)
    bare = [(" ".join(w), a.option_strings[0]) for w, a in found if a.type in (int, float)]
    assert not bare, f"use a bounded type from richkd.cli.args for {bare}"


def test_bad_numbers_are_one_line_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    """--threads 0, --batch-size 0, --limit -1, --top-k 0, --alpha 1.5, a seed past 64 bits, NaN, inf, ... on every
    command. Parsed with the CLI's own parser (as main does; building it per call would cost 0.3 s each)."""
    checked = 0
    for words, action in _numeric_actions():
        option = action.option_strings[0]
        for value in _bad_values(action):
            argv = [*words, f"{option}={value}"]
            with pytest.raises(SystemExit) as stop:
                PARSER.parse_args(argv)
            line = one_line_error(stop.value.code, capsys.readouterr().err, argv)
            assert option in line, (argv, line)
            checked += 1
    assert checked > 300, checked


@pytest.mark.parametrize("argv", [
    ["eval", "--checkpoint", "m.pt", "--dataset", "cifar10", "--threads", "0"],
    ["eval", "--checkpoint", "m.pt", "--dataset", "cifar10", "--batch-size", "0"],
    ["predict", "--checkpoint", "m.pt", "--alpha", "1.5", "--dataset", "cifar10", "--out", "p.preds.safetensors"],
    ["robustness", "--checkpoint", "a=m.pt", "--dataset", "cifar10", "--seed", str(2**64), "--out", "r"],
    ["classify", "m.pt", "x.png", "--top-k", "0"],
    ["demo", "--scale", "-1"],
    ["vlm", "cache", "--dataset", "cifar10", "--threads", "0", "--out", "c"],
    ["teacher", "cache", "--checkpoint", "m.pt", "--arch", "resnet8", "--dataset", "cifar10", "--threads", "0",
     "--out", "t"],
    ["cost", "--checkpoint", "a=m.pt", "--threads", "0", "--out", "c"],
    ["models", "--no-such-option"],
    ["no-such-command"],
])
def test_main_turns_argument_errors_into_one_line(argv: list[str], capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run(argv, capsys)
    one_line_error(code, err, argv)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("override, needle", [
    ("train.threads=0", "train.threads"),
    (f"seed={2**64}", "seed"),
    ("seed=-1", "seed"),
    ("optim.lr=nan", "optim.lr"),
    ("fusion.logit_alpha=1.5", "fusion.logit_alpha"),
    ("vlm.logit_scale=-1", "vlm.logit_scale"),
    ("train.batch_size=0", "train.batch_size"),
    ("optim.lr=1e308", "optim.lr"),  # finite in float64, inf in the float32 tensors it becomes
    ("train.max_steps_per_epoch=99999999999999999999", "train.max_steps_per_epoch"),  # past int64
])
def test_bad_config_values_are_one_line(override: str, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["config", "show", override], capsys)
    assert needle in one_line_error(code, err, [override])


def test_all_loss_weights_zero_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was a raw ValueError traceback from the distiller's constructor."""
    argv = ["train", "distill.method=kd", "distill.ce_weight=0", "distill.kd_weight=0", "model.teacher=resnet8",
            f"model.teacher_checkpoint={tmp_path / 't.pt'}", f"out_dir={tmp_path / 'run'}"]
    code, err = run(argv, capsys)
    line = one_line_error(code, err, argv)
    assert "distill.ce_weight" in line and "distill.kd_weight" in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------- hostile files


class Evil:
    """A pickle that would create MARKER when unpickled by a loader that executes code."""

    marker = ""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files a user might hand over by mistake, or an attacker on purpose."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("hostile")
    files = {
        "empty": d / "empty.pt",
        "random": d / "random.pt",
        "trunc_st": d / "trunc.safetensors",
        "huge_st": d / "huge.safetensors",
        "evil_pt": d / "evil.pt",
        "directory": d / "folder.pt",
        "non_utf8": d / "latin1.yaml",
        "yaml_list": d / "list.yaml",
        "json_list": d / "list.json",
    }
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(bytes(range(256)) * 16)
    save_file({"w": torch.zeros(64)}, str(d / "whole.safetensors"))
    whole = (d / "whole.safetensors").read_bytes()
    files["trunc_st"].write_bytes(whole[: len(whole) // 2])
    files["huge_st"].write_bytes(struct.pack("<Q", 2**62) + b"{}")  # header length far past the file
    Evil.marker = str(d / "PWNED")
    torch.save({"model": Evil()}, files["evil_pt"])
    files["directory"].mkdir()
    files["non_utf8"].write_bytes(b"\xff\xfe data: \x80\x81\n")
    files["yaml_list"].write_text("- a\n- b\n")
    files["json_list"].write_text("[1, 2, 3]\n")
    return files


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-class image folder (train/ and test/, 2 images each): enough for every command to reach its files."""
    root = tmp_path_factory.mktemp("imgs")
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


# command -> (argv with {f} = the hostile file, {imgs} = the image folder, {out} = an output path; which files)
MODEL_FILES = ("empty", "random", "trunc_st", "huge_st", "evil_pt", "directory", "non_utf8", "json_list")
TEXT_FILES = ("non_utf8", "yaml_list", "json_list", "directory", "random", "huge_st")
DIR_CONTENT = ("non_utf8", "json_list", "random", "empty")  # written as the folder's meta/build json
DATA = ["--dataset", "imagefolder", "--root", "{imgs}"]
TRAIN = ["data.name=imagefolder", "data.root={imgs}", "model.student=resnet8", "train.epochs=1",
         "train.threads=1", "train.progress=false", "out_dir={out}"]
HOSTILE_CASES: dict[str, list[tuple[list[str], tuple[str, ...]]]] = {
    "train": [(["-c", "{f}", *TRAIN], TEXT_FILES),
              ([*TRAIN, "distill.method=kd", "model.teacher=resnet8", "model.teacher_checkpoint={f}"], MODEL_FILES)],
    "eval": [(["--checkpoint", "{f}", *DATA, "--out", "{out}.json"], MODEL_FILES)],
    "models": [(["--bogus", "{f}"], ("empty",))],
    "recipes": [(["--bogus", "{f}"], ("empty",))],
    "doctor": [(["--bogus", "{f}"], ("empty",))],
    "config show": [(["-c", "{f}"], TEXT_FILES)],
    "config keys": [(["--bogus", "{f}"], ("empty",))],
    "demo": [(["--root", "{f}", "--out", "{out}"], MODEL_FILES)],
    "vlm zeroshot": [([*DATA, "--teacher", "random:0", "--templates", "{f}", "--out", "{out}.json"],
                      ("non_utf8", "directory", "empty"))],
    "vlm cache": [([*DATA, "--teacher", "random:0", "--templates", "{f}", "--out", "{out}"],
                   ("non_utf8", "directory", "empty"))],
    "vlm cache-merge": [(["{dir}", "--out", "{out}"], DIR_CONTENT)],
    "vlm fit-scale": [([*DATA, "--cache", "{dir}", "--out", "{out}.json"], DIR_CONTENT)],
    "predict": [(["--checkpoint", "{f}", *DATA, "--out", "{out}.preds.safetensors"], MODEL_FILES),
                (["--cache", "{dir}", "--vlm-scale", "100", *DATA, "--out", "{out}.preds.safetensors"], DIR_CONTENT)],
    "analyze": [(["{f}", "--out", "{out}"], MODEL_FILES)],
    "robustness": [(["--checkpoint", "a={f}", *DATA, "--out", "{out}"], MODEL_FILES)],
    "shift": [(["--set", "a={imgs}", "--checkpoint", "a={f}", "--out", "{out}"], MODEL_FILES),
              (["--set", "a={imgs}", "--teacher", "random:0", "--classes", "{f}", "--out", "{out}"],
               ("non_utf8", "empty", "random"))],
    "report": [(["{f}", "--out", "{out}"], MODEL_FILES)],
    "cost": [(["--checkpoint", "a={f}", "--out", "{out}"], MODEL_FILES)],
    "export": [(["{f}", "--out", "{out}"], MODEL_FILES)],
    "classify": [(["{f}", "{imgs}", "--out", "{out}.txt"], MODEL_FILES)],
    "study": [(["{f}"], TEXT_FILES)],
    "teacher cache": [(["--checkpoint", "{f}", "--arch", "resnet8", *DATA, "--out", "{out}"], MODEL_FILES)],
}


def test_every_subcommand_has_hostile_cases() -> None:
    """A new subcommand must bring its own bad inputs here (its inputs are files the user names)."""
    assert set(HOSTILE_CASES) == {" ".join(words) for words in LEAVES}


@pytest.mark.parametrize("command", sorted(HOSTILE_CASES))
def test_hostile_files_are_one_line_and_leave_nothing(
    command: str, hostile: dict[str, Path], images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for template, kinds in HOSTILE_CASES[command]:
        for kind in kinds:
            folder = tmp_path / f"dir-{kind}"  # a cache/part folder whose json is the hostile file
            if not folder.exists():
                folder.mkdir()
                for name in ("meta.json", "build.json"):
                    target = folder / name
                    source = hostile[kind]
                    target.write_bytes(b"" if source.is_dir() else source.read_bytes())
            subst = {"{f}": str(hostile[kind]), "{imgs}": str(images), "{out}": str(work / "out"),
                     "{dir}": str(folder)}
            argv = command.split()
            for word in template:
                for key, value in subst.items():
                    word = word.replace(key, value)
                argv.append(word)
            code, err = run(argv, capsys)
            one_line_error(code, err, argv)
            assert list(work.iterdir()) == [], (argv, list(work.iterdir()))
    assert not (hostile["evil_pt"].parent / "PWNED").exists(), "a malicious pickle ran"


def test_a_file_where_a_folder_is_expected(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv in (
        ["vlm", "fit-scale", "--dataset", "imagefolder", "--root", str(images), "--cache", str(blocker)],
        ["eval", "--checkpoint", str(blocker), "--dataset", "imagefolder", "--root", str(images), "--out",
         str(blocker / "m.json")],
        ["eval", "--checkpoint", str(blocker), "--dataset", "imagefolder", "--root", str(blocker)],
        ["report", str(blocker)],
    ):
        code, err = run(argv, capsys)
        one_line_error(code, err, argv)


def test_out_naming_a_folder_fails_before_the_work(images: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """eval --out DIR used to evaluate first and fail in the final rename."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    argv = ["eval", "--checkpoint", str(tmp_path / "none.pt"), "--dataset", "imagefolder", "--root", str(images),
            "--out", str(folder)]
    assert "is a folder" in one_line_error(*run(argv, capsys), argv)


# ------------------------------------------------------------------------------------- the edge itself


@pytest.mark.parametrize("raised, needles", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/model.pt"), ("/data/run/model.pt", "no space")),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/home/u/out"), ("/home/u/out", "quota")),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), ("/mnt/ro/x", "read-only")),
    (PermissionError(errno.EACCES, "Permission denied", "/root/secret"), ("/root/secret", "permission")),
    (ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime"), ("pip install 'richkd[export]'",)),
    (ModuleNotFoundError("No module named 'open_clip'", name="open_clip"), ("pip install 'richkd[openclip]'",)),
    (ImportError("cannot import name 'x' from 'transformers'", name="transformers"), ("richkd[hf]",)),
])
def test_expected_failures_become_one_line(raised: BaseException, needles: tuple[str, ...],
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk, a read-only folder, a missing extra: one line naming the path or the pip command."""
    def fail(args: argparse.Namespace) -> int:
        raise raised

    monkeypatch.setattr("richkd.cli.app.cmd_models", fail)
    line = one_line_error(*run(["models"], capsys), ["models"])
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize("raised", [
    ValueError("a bug"), KeyError("x"), RuntimeError("set_num_threads"), ModuleNotFoundError("nope", name="nope"),
    FileNotFoundError(errno.ENOENT, "internal lookup"),  # no file name: not a path the user gave
])
def test_programming_errors_keep_their_traceback(raised: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise raised

    monkeypatch.setattr("richkd.cli.app.cmd_models", fail)
    with pytest.raises(type(raised)):
        main(["models"])


# ------------------------------------------------------------------------------- --resume of another student


def test_resume_with_another_student_names_both(images: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    base = ["train", "data.name=imagefolder", f"data.root={images}", "train.epochs=2", "train.stop_after=1",
            "train.batch_size=4", "train.threads=1", "train.progress=false", f"out_dir={out}"]
    code, err = run([*base, "model.student=resnet8"], capsys)
    assert code == 0, err
    code, err = run([*base, "model.student=resnet14", "--resume"], capsys)
    line = one_line_error(code, err, base)
    assert "resnet8" in line and "resnet14" in line, line
    (out / "config.yaml").unlink()  # the run's config lost: the checkpoint's own record still catches it
    code, err = run([*base, "model.student=resnet14", "--resume"], capsys)
    line = one_line_error(code, err, base)
    assert "resnet8" in line and "resnet14" in line, line
    assert not (out / "config.yaml").exists()  # nothing of the run was rewritten


# ------------------------------------------------------------------------------------- the real entry point


@pytest.mark.parametrize("argv", [
    ["eval", "--checkpoint", "m.pt", "--dataset", "cifar10", "--threads", "0"],
    ["cost", "--checkpoint", "a={huge}", "--out", "{out}"],
])
def test_real_entry_point(argv: list[str], hostile: dict[str, Path], tmp_path: Path) -> None:
    """`python -m richkd` (the console script's path): the same one line and exit code 2."""
    argv = [a.replace("{huge}", str(hostile["huge_st"])).replace("{out}", str(tmp_path / "out")) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "richkd", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RICHKD_CACHE": str(tmp_path / "cache")})
    one_line_error(proc.returncode, proc.stderr, argv)
    assert not (tmp_path / "out").exists()



def test_official_c_files_are_checked_before_the_first_evaluation(
    hostile: dict[str, Path], images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pickled object array as a CIFAR-C file: refused unread (allow_pickle=False), before any progress or output."""
    import numpy as np

    from richkd.engine.checkpoint import save_model
    from richkd.models import create_model

    model = tmp_path / "m.pt"
    save_model(model, create_model("resnet8", 2), arch="resnet8", num_classes=2, classes=("cat", "dog"))
    folder = tmp_path / "c"
    folder.mkdir()
    np.save(folder / "gaussian_noise.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    np.save(folder / "labels.npy", np.zeros(5, dtype=np.int64))
    out = tmp_path / "rob"
    argv = ["robustness", "--checkpoint", f"m={model}", "--dataset", "imagefolder", "--root", str(images),
            "--official-c", str(folder), "--corruptions", "gaussian_noise", "--out", str(out)]
    line = one_line_error(*run(argv, capsys), argv)
    assert "gaussian_noise.npy" in line
    assert not out.exists()
    assert not (hostile["evil_pt"].parent / "PWNED").exists()


def test_study_spec_seed_past_64_bits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each run would fail alone (exit 1 after the whole grid); the spec is refused up front instead."""
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\nout: {tmp_path / 'out'}\nseeds: [{2**64}]\narms:\n  a: {{argv: [--method, kd]}}\n")
    argv = ["study", str(spec), "--dry-run"]
    assert "seeds" in one_line_error(*run(argv, capsys), argv)
    assert not (tmp_path / "out").exists()


def test_malicious_cifar_pickles_are_refused_unexecuted(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The official CIFAR files are pickles: every one is read with an allow-list unpickler, never executed."""
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    payload = pickle.dumps(Evil())
    for name in ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))):
        (folder / name).write_bytes(payload)
    for argv in (["eval", "--checkpoint", str(hostile["evil_pt"]), "--dataset", "cifar10", "--root", str(tmp_path),
                  "--arch", "resnet8"],
                 ["vlm", "zeroshot", "--dataset", "cifar10", "--root", str(tmp_path), "--teacher", "random:0"]):
        one_line_error(*run(argv, capsys), argv)
    assert not (hostile["evil_pt"].parent / "PWNED").exists(), "a malicious pickle ran"
