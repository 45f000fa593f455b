"""CPU launcher: `python -m richkd.launch [options] -- <richkd arguments>`.

Re-executes `richkd` with tcmalloc preloaded (when installed) and one thread setting for every library, and
with `--nproc N > 1` under torchrun (one process per core group, DDP over gloo). Examples::

    python -m richkd.launch -- train --dataset cifar100 --pair resnet32x4-resnet8x4 --method richkd-lf
    python -m richkd.launch --nproc 2 --threads 8 -- train -c ... train.sync_bn=true
    python -m richkd.launch --dry-run -- train ...      # print what would run

Why not `python -m torch.backends.xeon.run_cpu`: it looks only for `libtcmalloc.so` (no `.so.4`, no
multiarch directory such as /usr/lib/x86_64-linux-gnu, where Debian/Ubuntu's libtcmalloc-minimal4 puts
it), and it wants a script path, not `-m richkd`. See docs/speed.md for the measured effect.
"""

from __future__ import annotations

import argparse
import ctypes.util
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
_LAUNCHED = "RICHKD_LAUNCHED"  # set in the child, so a launched process never re-launches itself


def _library_dirs(env: Mapping[str, str]) -> list[Path]:
    dirs = [Path(env[k]) / "lib" for k in ("CONDA_PREFIX", "VIRTUAL_ENV") if env.get(k)]
    dirs.append(Path(sys.prefix) / "lib")
    machine = os.uname().machine
    dirs += [Path(f"/usr/lib/{machine}-linux-gnu"), Path("/usr/local/lib"), Path("/usr/lib64"), Path("/usr/lib")]
    return dirs


def find_tcmalloc(env: Mapping[str, str] | None = None) -> str | None:
    """Path of an installed tcmalloc (`RICHKD_TCMALLOC` wins when set; "" disables), else None."""
    env = os.environ if env is None else env
    if "RICHKD_TCMALLOC" in env:
        return env["RICHKD_TCMALLOC"] or None
    for directory in _library_dirs(env):
        for name in TCMALLOC_NAMES:
            if (directory / name).is_file():
                return str(directory / name)
    found = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    return found  # a bare soname: the dynamic loader resolves it in LD_PRELOAD


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def launch_plan(
    richkd_args: Sequence[str],
    *,
    nproc: int = 1,
    threads: int | None = None,
    tcmalloc: bool = True,
    env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(command, environment changes) to run `richkd <richkd_args>`.

    Threads per process: `threads`, else the caller's OMP_NUM_THREADS, else the CPUs this process may use
    divided by `nproc`. More threads than cores slows PyTorch's CPU kernels down (oversubscription).
    """
    env = os.environ if env is None else env
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if threads is None:
        preset = env.get("OMP_NUM_THREADS", "")
        threads = int(preset) if preset.isdigit() else max(1, available_cpus() // nproc)
    changes = {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        _LAUNCHED: "1",
    }
    lib = find_tcmalloc(env) if tcmalloc else None
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    if lib is not None and not any("tcmalloc" in p for p in preload):
        changes["LD_PRELOAD"] = ":".join([lib, *preload])
    if nproc == 1:
        command = [sys.executable, "-m", "richkd", *richkd_args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "richkd",
            *richkd_args,
        ]
    return command, changes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m richkd.launch",
        description="Run richkd on CPUs with tcmalloc and sensible thread settings (optionally N processes).",
    )
    parser.add_argument("--nproc", type=int, default=1, help="processes (torchrun + DDP over gloo); default 1")
    parser.add_argument("--threads", type=int, default=None, help="threads per process; default CPUs / nproc")
    parser.add_argument("--no-tcmalloc", action="store_true", help="keep the default allocator")
    parser.add_argument("--dry-run", action="store_true", help="print the command and environment, run nothing")
    parser.add_argument("richkd_args", nargs=argparse.REMAINDER, help="-- then the richkd command line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rest = list(args.richkd_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if not rest:
        print("richkd.launch: error: give the richkd command after --, e.g. -- train -c cfg.yaml", file=sys.stderr)
        return 2
    if os.environ.get(_LAUNCHED) == "1":
        print("richkd.launch: error: already running under richkd.launch", file=sys.stderr)
        return 2
    command, changes = launch_plan(rest, nproc=args.nproc, threads=args.threads, tcmalloc=not args.no_tcmalloc)
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in changes.items()) + " " + shlex.join(command)
    if args.dry_run:
        print(shown)
        return 0
    if not args.no_tcmalloc and find_tcmalloc() is None:
        print(
            "richkd.launch: tcmalloc not found (apt install libtcmalloc-minimal4); default allocator", file=sys.stderr
        )
    print(f"richkd.launch: {shown}", file=sys.stderr)
    sys.stderr.flush()
    os.execve(command[0], command, {**os.environ, **changes})


if __name__ == "__main__":
    sys.exit(main())
