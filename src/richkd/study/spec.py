"""The study spec: one YAML file read and checked once, here, into frozen dataclasses.

Every problem (unknown key, wrong type, an arm without argv, `compare` naming no arm, an argv the runner could
not pass on) is one RichKDError naming the key and the fix. Paths in the spec (`out`, config files, `creates`) are
relative to the current working directory, as they are for `richkd train`; `{out}` in any argv or path is the
study's output folder, and in an arm's argv `{arm}` and `{seed}` are its name and seed. docs/study.md describes
the format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from richkd.config import SEED_MAX
from richkd.errors import RichKDError
from richkd.study.metrics import DEFAULT_HEADLINE_METRIC, METRICS

__all__ = ["AnalysisSpec", "ArmSpec", "HeadlineSpec", "PrepareSpec", "ResourcesSpec", "RobustnessSpec",
           "StudySpec", "load_spec",
           "parse_spec", "split_argv"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
RUNNER_KEYS = ("seed", "out_dir")  # the runner sets these on every arm's run
RESERVED_PREFIXES = ("prepare_", "predict_", "robustness_", "analysis_")


@dataclass(frozen=True)
class PrepareSpec:
    """A richkd command run once before the arms (a teacher, a target cache); skipped once `creates` exists."""

    name: str
    argv: tuple[str, ...]
    creates: str


@dataclass(frozen=True)
class ArmSpec:
    """One arm: the `richkd train` arguments of its runs (the runner adds seed=S and out_dir=...)."""

    name: str
    title: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class HeadlineSpec:
    """A comparison the study was designed to answer: `arm` − `against` on `metric`, paired by seed. The headline
    comparisons form the family that Holm's correction covers; every other comparison is exploratory."""

    arm: str
    against: str
    metric: str = DEFAULT_HEADLINE_METRIC


@dataclass(frozen=True)
class RobustnessSpec:
    """`richkd robustness` of every run's model_last.pt on a stratified test subset (same corrupted images)."""

    limit: int | None = None
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    corruptions: tuple[str, ...] | None = None  # None: all 19
    seed: int = 0
    checkpoints: Mapping[str, str] = field(default_factory=dict)  # extra models for the report, e.g. the teacher


@dataclass(frozen=True)
class AnalysisSpec:
    """What runs after training: predictions and analyses of every run, robustness, the report's extras."""

    predict: bool = True
    tau: float = 0.5  # confidence threshold of the quadrants (confident-correct / confidently-wrong)
    device: str = "cpu"
    threads: int | None = None  # torch threads of the predictions and robustness steps; None: every core
    predictors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # name -> `richkd predict` args
    flows: tuple[str, ...] = ()  # FROM:TO predictor or arm names, for the report's analysis
    agreement: tuple[str, ...] = ()  # REF:OTHER
    semantic: str | None = None  # vlm:SPEC | cache:DIR
    report_seed: int | None = None  # seed whose students the report's figures show (default: the first seed)
    robustness: RobustnessSpec | None = None


@dataclass(frozen=True)
class ResourcesSpec:
    """What each SLURM job of the study asks for (`executor: slurm`); `gpus` > 1 runs the job's training as DDP."""

    partition: str | None = None  # None: the cluster's default partition
    gpus: int = 0  # per job (one node)
    cpus: int = 1  # per job
    mem_gb: float | None = None
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    sbatch: tuple[str, ...] = ()  # extra `#SBATCH` options, each --key=value or --flag


@dataclass(frozen=True)
class StudySpec:
    name: str
    out: str
    seeds: tuple[int, ...]
    arms: Mapping[str, ArmSpec]
    title: str | None = None
    parallel: int = 1
    threads: int | None = None  # train.threads of each run; None: cores // parallel
    common: tuple[str, ...] = ()
    prepare: tuple[PrepareSpec, ...] = ()
    compare: tuple[str, ...] = ()
    headline: tuple[HeadlineSpec, ...] = ()
    alpha: float = 0.05  # family-wise error rate of the headline family
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    executor: str = "local"  # local | slurm
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    def shown_seed(self) -> int:
        """The seed whose students stand for their arm in the report's figures."""
        return self.analysis.report_seed if self.analysis.report_seed is not None else self.seeds[0]


class _Reader:
    """Typed access to one mapping of the spec, every error naming the key's full path."""

    def __init__(self, source: str, raw: Any, where: str, keys: Sequence[str], required: Sequence[str] = ()) -> None:
        self.source, self.where = source, where
        if not isinstance(raw, Mapping):
            raise self.error(f"{where or 'the file'} must be a mapping of keys ({', '.join(keys)})")
        unknown = [str(k) for k in raw if k not in keys]
        if unknown:
            raise self.error(f"unknown key {self.path(unknown[0])!r}; valid keys{self.at()}: {', '.join(keys)}")
        missing = [k for k in required if raw.get(k) is None]
        if missing:
            raise self.error(f"missing key {self.path(missing[0])!r}")
        self.raw = raw

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def at(self) -> str:
        return f" in {self.where}" if self.where else ""

    def error(self, text: str) -> RichKDError:
        return RichKDError(f"study spec {self.source}: {text}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, what: str) -> Any:
        value = self.raw.get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) and kind is not bool and not (isinstance(kind, tuple) and bool in kind):
            raise self.error(f"{self.path(key)} must be {what}, got {value!r}")
        if not isinstance(value, kind):
            raise self.error(f"{self.path(key)} must be {what}, got {value!r}")
        return value

    def strings(self, key: str, value: Any = None) -> tuple[str, ...]:
        value = self.raw.get(key) if value is None else value
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                                  for v in value):
            raise self.error(f"{self.path(key)} must be a list of strings, e.g. [-c, configs/x.yaml, train.epochs=2]")
        return tuple(str(v) for v in value)


def _check_name(reader: _Reader, key: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or re.search(r"_s\d+$", name):
        raise reader.error(f"{reader.path(key)} name {name!r}: use letters, digits, '_', '-' or '.' (not ending "
                           "in _s<digits>, the seed suffix)")
    return name


def _check_placeholders(reader: _Reader, key: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    for value in values:
        for name in _PLACEHOLDER.findall(value):
            if name not in allowed:
                raise reader.error(f"{reader.path(key)}: unknown placeholder {{{name}}} in {value!r}; "
                                   f"known here: {', '.join('{' + a + '}' for a in allowed)}")


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(options with their values, key=value overrides, stray tokens) of `richkd train` arguments.

    The runner puts options first and overrides after them: argparse accepts the overrides of `richkd train` only
    as one block, so an override between two options would otherwise be refused. An option's value is the next
    token unless that one is an option or an override.
    """
    options: list[str] = []
    overrides: list[str] = []
    stray: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("-"):
            options.append(token)
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if "=" not in token and nxt is not None and not nxt.startswith("-") and not _OVERRIDE.match(nxt):
                options.append(nxt)
                i += 1
        elif _OVERRIDE.match(token):
            overrides.append(token)
        else:
            stray.append(token)
        i += 1
    return options, overrides, stray


def _check_train_argv(reader: _Reader, key: str, argv: Sequence[str], *, options_allowed: bool,
                      runner_keys: bool = True) -> None:
    options, overrides, stray = split_argv(argv)
    if stray:
        raise reader.error(f"{reader.path(key)}: {stray[0]!r} is neither an option (-c FILE) nor a key=value "
                           "override")
    if options and not options_allowed:
        raise reader.error(f"{reader.path(key)}: only key=value overrides go here, not {options[0]!r}; put options "
                           "in each arm's argv")
    if "--resume" in options:
        raise reader.error(f"{reader.path(key)}: drop --resume, the runner resumes unfinished runs itself")
    for item in overrides if runner_keys else ():
        if item.split("=", 1)[0] in RUNNER_KEYS:
            raise reader.error(f"{reader.path(key)}: drop {item!r}; the runner sets seed=S and "
                               "out_dir={out}/runs/<arm>/s<S> on every run")


def _robustness(reader: _Reader, raw: Any) -> RobustnessSpec | None:
    if raw is None or raw is False:
        return None
    r = _Reader(reader.source, raw, reader.path("robustness"),
                ("limit", "severities", "corruptions", "seed", "checkpoints"))
    limit = r.get("limit", int, None, "a positive integer (test images)")
    if limit is not None and limit < 1:
        raise r.error(f"{r.path('limit')} must be >= 1, got {limit}")
    severities = r.get("severities", list, [1, 2, 3, 4, 5], "a list of severities in 1..5")
    if not severities or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 5
                                 for s in severities):
        raise r.error(f"{r.path('severities')} must be a non-empty list of integers in 1..5, got {severities!r}")
    corruptions = r.get("corruptions", list, None, "a list of corruption names")
    if corruptions is not None:
        from richkd.robustness.corruptions import CORRUPTIONS

        unknown = [c for c in corruptions if c not in CORRUPTIONS]
        if unknown or not corruptions:
            raise r.error(f"{r.path('corruptions')}: unknown corruption {unknown[0] if unknown else None!r}; "
                          f"known: {', '.join(CORRUPTIONS)}")
    checkpoints = r.get("checkpoints", dict, {}, "a mapping NAME: model file")
    for name, path in checkpoints.items():
        _check_name(r, "checkpoints", name)
        if not isinstance(path, str):
            raise r.error(f"{r.path('checkpoints')}.{name} must be a path, got {path!r}")
    _check_placeholders(r, "checkpoints", list(checkpoints.values()), ("out",))
    return RobustnessSpec(limit=limit, severities=tuple(severities),
                          corruptions=None if corruptions is None else tuple(corruptions),
                          seed=r.get("seed", int, 0, "an integer"), checkpoints=dict(checkpoints))


def _analysis(reader: _Reader, raw: Any, arms: Mapping[str, ArmSpec], seeds: Sequence[int]) -> AnalysisSpec:
    if raw is None:
        return AnalysisSpec()
    a = _Reader(reader.source, raw, "analysis", ("predict", "tau", "device", "threads", "predictors", "flows",
                                                 "agreement", "semantic", "report_seed", "robustness"))
    threads = a.get("threads", int, None, "an integer >= 1")
    if threads is not None and threads < 1:
        raise a.error(f"analysis.threads must be >= 1, got {threads}")
    tau = float(a.get("tau", (int, float), 0.5, "a number in (0, 1]"))
    if not 0.0 < tau <= 1.0:
        raise a.error(f"analysis.tau must be in (0, 1], got {tau}")
    predictors_raw = a.get("predictors", dict, {}, "a mapping NAME: [richkd predict args]")
    predictors = {}
    for name, args in predictors_raw.items():
        _check_name(a, "predictors", name)
        if name in arms:
            raise a.error(f"analysis.predictors.{name}: the name is an arm's; give the predictor another name")
        predictors[name] = a.strings(f"predictors.{name}", args)
        if not predictors[name]:
            raise a.error(f"analysis.predictors.{name} needs `richkd predict` args, e.g. [--checkpoint, FILE]")
        _check_placeholders(a, f"predictors.{name}", predictors[name], ("out",))
    pairs = {}
    for key in ("flows", "agreement"):
        pairs[key] = a.strings(key)
        for pair in pairs[key]:
            ends = pair.split(":")
            bad = [e for e in ends if e not in arms and e not in predictors]
            if len(ends) != 2 or bad:
                raise a.error(f"analysis.{key} {pair!r} must be A:B with arm or analysis.predictors names"
                              + (f" ({bad[0]!r} is neither)" if bad and len(ends) == 2 else ""))
    report_seed = a.get("report_seed", int, None, "one of the seeds")
    if report_seed is not None and report_seed not in seeds:
        raise a.error(f"analysis.report_seed {report_seed} is not one of seeds {list(seeds)}")
    semantic = a.get("semantic", str, None, "vlm:SPEC or cache:DIR")
    if semantic is not None:
        _check_placeholders(a, "semantic", [semantic], ("out",))
    return AnalysisSpec(
        predict=a.get("predict", bool, True, "true or false"), tau=tau, device=a.get("device", str, "cpu", "a device"),
        threads=threads,
        predictors=predictors, flows=pairs["flows"], agreement=pairs["agreement"], semantic=semantic,
        report_seed=report_seed, robustness=_robustness(a, a.raw.get("robustness")),
    )


def _arms(r: _Reader) -> dict[str, ArmSpec]:
    raw = r.raw["arms"]
    if not isinstance(raw, Mapping) or not raw:
        raise r.error("arms must be a mapping NAME: {argv: [richkd train args]} with at least one arm")
    arms = {}
    for name, body in raw.items():
        _check_name(r, "arms", name)
        if name.startswith(RESERVED_PREFIXES):
            raise r.error(f"arms.{name}: arm names may not start with {', '.join(RESERVED_PREFIXES)} (the names of "
                          "the runner's own logs and steps)")
        a = _Reader(r.source, body, f"arms.{name}", ("title", "argv"))
        if "argv" not in a.raw or a.raw["argv"] is None:
            raise a.error(f"arms.{name} has no argv: give its `richkd train` arguments, e.g. "
                          "argv: [-c, configs/cifar10/kd/resnet56_resnet20.yaml]")
        argv = a.strings("argv")
        _check_train_argv(a, "argv", argv, options_allowed=True)
        _check_placeholders(a, "argv", argv, ("out", "arm", "seed"))
        arms[name] = ArmSpec(name=name, title=str(a.get("title", str, name, "a string")), argv=argv)
    return arms


def _prepare(r: _Reader) -> tuple[PrepareSpec, ...]:
    raw = r.raw.get("prepare") or []
    if not isinstance(raw, list):
        raise r.error("prepare must be a list of {name, argv, creates}")
    steps: list[PrepareSpec] = []
    for i, body in enumerate(raw):
        p = _Reader(r.source, body, f"prepare[{i}]", ("name", "argv", "creates"), required=("name", "argv",
                                                                                              "creates"))
        name = _check_name(p, "name", p.raw["name"])
        if any(s.name == name for s in steps):
            raise p.error(f"prepare step name {name!r} is used twice")
        argv = p.strings("argv")
        if not argv:
            raise p.error(f"prepare[{i}].argv is empty: give a richkd command, e.g. [train, -c, FILE, out_dir=...]")
        if argv[0] == "train":
            _check_train_argv(p, "argv", argv[1:], options_allowed=True, runner_keys=False)
        creates = p.get("creates", str, None, "a path")
        _check_placeholders(p, "argv", [*argv, creates], ("out",))
        steps.append(PrepareSpec(name=name, argv=argv, creates=creates))
    return tuple(steps)


def _headline(r: _Reader, arms: Mapping[str, ArmSpec]) -> tuple[HeadlineSpec, ...]:
    """`headline: [[ARM, AGAINST], [ARM, AGAINST, METRIC], ...]`: each pair of arms and a metric, at most once."""
    raw = r.raw.get("headline")
    if raw is None:
        return ()
    usage = ("headline must be a list of [ARM, AGAINST] or [ARM, AGAINST, METRIC], e.g. "
             "[[richkd_l, control_l], [richkd_l, kd, ece]]")
    if not isinstance(raw, list):
        raise r.error(usage)
    found: list[HeadlineSpec] = []
    for i, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) in (2, 3) and all(isinstance(v, str) for v in item)):
            raise r.error(f"headline[{i}] is {item!r}: {usage}")
        arm, against, *rest = item
        for name in (arm, against):
            if name not in arms:
                raise r.error(f"headline[{i}] names {name!r}, which is not an arm; arms: {', '.join(arms)}")
        if arm == against:
            raise r.error(f"headline[{i}] compares {arm!r} with itself; name two different arms")
        metric = rest[0] if rest else DEFAULT_HEADLINE_METRIC
        if metric not in METRICS:
            raise r.error(f"headline[{i}]: unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
        entry = HeadlineSpec(arm=arm, against=against, metric=metric)
        if entry in found:
            raise r.error(f"headline[{i}] repeats {arm} vs {against} on {metric}")
        found.append(entry)
    return tuple(found)


TOP_KEYS = ("name", "title", "out", "seeds", "parallel", "threads", "common", "prepare", "arms", "compare", "headline",
            "alpha", "analysis", "executor", "resources")
EXECUTORS = ("local", "slurm")


def _resources(reader: _Reader, raw: Any) -> ResourcesSpec:
    if raw is None:
        return ResourcesSpec()
    r = _Reader(reader.source, raw, "resources", ("partition", "gpus", "cpus", "mem_gb", "time_min", "account", "qos",
                                                  "sbatch"))
    counts = {key: r.get(key, int, default, "an integer") for key, default in
              (("gpus", 0), ("cpus", 1), ("time_min", 60))}
    if counts["gpus"] < 0 or counts["cpus"] < 1 or counts["time_min"] < 1:
        raise r.error(f"resources: gpus must be >= 0, cpus and time_min >= 1, got {counts}")
    mem = r.get("mem_gb", (int, float), None, "a number of GB")
    if mem is not None and mem <= 0:
        raise r.error(f"resources.mem_gb must be > 0, got {mem}")
    sbatch = r.strings("sbatch")
    bad = [line for line in sbatch if not re.fullmatch(r"--[A-Za-z][A-Za-z0-9-]*(=\S.*)?", line)]
    if bad:
        raise r.error(f"resources.sbatch {bad[0]!r}: give each extra sbatch option as --key=value or --flag")
    return ResourcesSpec(partition=r.get("partition", str, None, "a partition name"), gpus=counts["gpus"],
                         cpus=counts["cpus"], mem_gb=None if mem is None else float(mem), time_min=counts["time_min"],
                         account=r.get("account", str, None, "an account name"),
                         qos=r.get("qos", str, None, "a QOS name"), sbatch=sbatch)


def parse_spec(raw: Any, source: str) -> StudySpec:
    """The checked spec from the parsed YAML `raw` (`source` names it in errors)."""
    r = _Reader(source, raw, "", TOP_KEYS, required=("name", "out", "seeds", "arms"))
    name = _check_name(r, "name", r.raw["name"])
    out = r.get("out", str, None, "a folder path").rstrip("/") or "/"
    seeds = r.get("seeds", list, None, "a list of integers")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= SEED_MAX for s in seeds):
        raise r.error(f"seeds must be a non-empty list of integers in [0, 2**63 - 1], got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise r.error(f"seeds {seeds!r} repeat a seed")
    parallel = r.get("parallel", int, 1, "an integer >= 1")
    threads = r.get("threads", int, None, "an integer >= 1")
    if parallel < 1 or (threads is not None and threads < 1):
        raise r.error("parallel and threads must be >= 1")
    common = r.strings("common")
    _check_train_argv(r, "common", common, options_allowed=False)
    _check_placeholders(r, "common", common, ("out",))
    arms = _arms(r)
    compare = r.strings("compare")
    for arm in compare:
        if arm not in arms:
            raise r.error(f"compare names {arm!r}, which is not an arm; arms: {', '.join(arms)}")
    alpha = float(r.get("alpha", (int, float), 0.05, "a number in (0, 1)"))
    if not 0.0 < alpha < 1.0:
        raise r.error(f"alpha must be in (0, 1), got {alpha}")
    executor = r.get("executor", str, "local", "local or slurm")
    if executor not in EXECUTORS:
        raise r.error(f"executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    return StudySpec(
        executor=executor, resources=_resources(r, r.raw.get("resources")),
        name=name, out=out, seeds=tuple(seeds), arms=arms, title=r.get("title", str, None, "a string"),
        parallel=parallel, threads=threads, common=common, prepare=_prepare(r), compare=compare,
        headline=_headline(r, arms), alpha=alpha, analysis=_analysis(r, r.raw.get("analysis"), arms, seeds),
    )


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study spec file."""
    path = Path(path)
    if not path.is_file():
        raise RichKDError(f"study spec {path} not found; give the path of a study YAML file (docs/study.md)")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RichKDError(f"study spec {path} is not valid YAML ({first}); fix the file") from None
    return parse_spec(raw, str(path))


def substitute(value: str, **values: object) -> str:
    """Fill the {out}/{arm}/{seed} placeholders (the spec was checked, so every name is known)."""
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
