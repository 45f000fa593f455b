"""Argument types for every numeric CLI option: a bad value is refused while parsing, before any file is read or
written, as one line (`richkd: error: argument --threads: ...`) instead of a traceback from deep in torch.

Each type is an argparse `type=` callable; argparse turns its ArgumentTypeError into `parser.error`, which
`OneLineParser` prints as a single line with exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from richkd.config import SEED_MAX  # the config's `seed` and every --seed share one range

if TYPE_CHECKING:
    from richkd.data.folder import FolderOptions


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, `richkd: error: ...`, exit code 2 (the CLI's rule for
    every expected failure); `--help` is unchanged. Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("richkd").strip()
        where = f"{command}: " if command else ""
        print(f"richkd: error: {where}{message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (high None = no upper bound)."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < low or (high is not None and value > high):
            span = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text}")
        return value

    parse.__name__ = f"int>={low}"
    parse.bounds = (low, high)  # type: ignore[attr-defined]  # read by tests/test_bad_inputs.py
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)
seed_int = int_at_least(0, SEED_MAX)


def float_in(low: float, high: float | None = None, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] ((low, high] with low_open; high None = no upper bound)."""

    def parse(text: str) -> float:
        value = _float(text)
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            left = "(" if low_open else "["
            span = f"in {left}{low:g}, {high:g}]" if high is not None else (f"> {low:g}" if low_open else
                                                                            f">= {low:g}")
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text}")
        return value

    parse.__name__ = "float"
    parse.bounds = (low, high, low_open)  # type: ignore[attr-defined]  # read by tests/test_bad_inputs.py
    return parse


positive_float = float_in(0.0, low_open=True)
nonneg_float = float_in(0.0)
unit_float = float_in(0.0, 1.0)

# Upper bounds: values past these are typos, and would otherwise end in an overflow inside torch or numpy
# ("Overflow when unpacking long") or an allocation no machine has.
COUNT_MAX = 2**31 - 1  # rows, batch sizes, repeats, bins: torch indexes with 64-bit ints, but no split is this big
threads_int = int_at_least(1, 4096)  # torch.set_num_threads(0) raises; no CPU has more than a few hundred cores
count_int = int_at_least(1, COUNT_MAX)
nonneg_count_int = int_at_least(0, COUNT_MAX)
image_size_int = int_at_least(1, 4096)  # pixels per side
pad_int = int_at_least(0, 1024)  # random-crop padding in pixels
workers_int = int_at_least(0, 1024)  # decode worker processes


def check_out_file(path: Path, flag: str = "--out") -> None:
    """An output *file*: its folder must be writable and the name must not be a folder (the atomic rename onto a
    folder fails only after the work is done)."""
    from richkd.engine.io import check_writable
    from richkd.errors import RichKDError

    if path.is_dir():
        raise RichKDError(f"{flag} {path} is a folder; name the file to write, e.g. {path / 'result.json'}")
    check_writable(path.parent, flag)


FOLDER_KEYS = ("image_size", "resize", "split_fraction", "split_seed", "skip_bad", "class_names")


def add_allow_code(p: argparse.ArgumentParser) -> None:
    """`--allow-code`: the one explicit opt-in that a model named module:PKG.MOD:FACTORY may be built by importing
    and running that code (never because a file or a config names it)."""
    p.add_argument("--allow-code", action="store_true",
                   help="let a model named module:PKG.MOD:FACTORY be built by importing and running that code")


def add_folder_args(p: argparse.ArgumentParser) -> None:
    """--dataset imagefolder: the run's data.* folder policy, so this command reads the same rows at the same size
    (a command given a run's checkpoint takes them from its config.yaml when these are not passed)."""
    g = p.add_argument_group("image folders (--dataset imagefolder; the same values as the run's data.* keys)")
    g.add_argument("--image-size", type=image_size_int, default=None, help="data.image_size: resize to N x N")
    g.add_argument("--resize", choices=("shorter", "squash"), default=None,
                   help="data.resize: shorter side + centre crop (default) or squash the whole image")
    g.add_argument("--split-fraction", type=float_in(0.0, 1.0, low_open=True), default=None,
                   help="data.split_fraction: without a test/ folder, hold out this seeded stratified fraction")
    g.add_argument("--split-seed", type=int_at_least(0, SEED_MAX), default=None, help="data.split_seed (default 0)")
    g.add_argument("--skip-bad", action="store_true", default=None,
                   help="data.skip_bad: use the decodable images, skipping unreadable files")
    g.add_argument("--class-names-file", dest="folder_class_names", default=None, metavar="FILE",
                   help="data.class_names: TSV/CSV or YAML, folder name -> display name")


def folder_values(args: argparse.Namespace, recorded: Callable[[str], object] | None = None) -> dict[str, object]:
    """The folder policy as data.* values: each option given here, else the run's recorded value (`recorded`:
    dotted config key -> value or None), else unset (the loader's default)."""
    given = {
        "image_size": getattr(args, "image_size", None), "resize": getattr(args, "resize", None),
        "split_fraction": getattr(args, "split_fraction", None), "split_seed": getattr(args, "split_seed", None),
        "skip_bad": getattr(args, "skip_bad", None), "class_names": getattr(args, "folder_class_names", None),
    }
    out: dict[str, object] = {}
    for key, value in given.items():
        if value is None and recorded is not None:
            value = recorded(f"data.{key}")
        if value is not None:
            out[key] = value
    return out


def folder_for(args: argparse.Namespace, checkpoint: str | Path | None = None) -> FolderOptions | None:
    """The FolderOptions a command reads --dataset imagefolder with: its own options over the policy recorded
    with `checkpoint` (a run's config.yaml beside a model file, or an exported model's card); None otherwise."""
    from richkd.data.folder import folder_options
    from richkd.errors import RichKDError

    if args.dataset != "imagefolder":
        if folder_values(args):
            raise RichKDError("--image-size, --resize, --split-*, --skip-bad, --class-names-file are for "
                              f"--dataset imagefolder, not {args.dataset}")
        return None
    return folder_options(folder_values(args, _recorded(Path(checkpoint)) if checkpoint else None))


def _recorded(checkpoint: Path) -> Callable[[str], object] | None:
    from richkd.export.card import CARD_NAME, read_run

    if checkpoint.suffix == ".safetensors":
        import json

        try:
            card = json.loads(checkpoint.with_name(CARD_NAME).read_text())
        except (OSError, ValueError):
            return None
        data = card.get("data") if isinstance(card, dict) else None
        return (lambda key: data.get(key.split(".", 1)[1])) if isinstance(data, dict) else None
    run = read_run(checkpoint)
    return run.get if run.get("data.name") == "imagefolder" else None
