"""Property test of config parsing and overrides: any key=value either resolves to a valid config or fails with
exit code 2 and one line — never a traceback."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import typing

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from richkd.cli import main
from richkd.config import DISTILL_CONFIGS, RunConfig, config_to_dict, load_config
from richkd.errors import RichKDError


def _known_keys() -> list[str]:
    keys: list[str] = []
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(hints[f.name])]
        elif f.name != "distill":
            keys.append(f.name)
    for cls in DISTILL_CONFIGS.values():
        keys += [f"distill.{g.name}" for g in dataclasses.fields(cls)]
    return sorted(set(keys))


KNOWN = _known_keys()
keys = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(KNOWN).map(lambda k: k + ".x"),
    st.sampled_from(["data", "train", "optim", "distill", "fusion", "", ".", "a..b", "seed.x"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz._=", min_size=0, max_size=12),
)
values = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "null", "~", "[]", "[1, 2]", "{a: 1}", "nan", ".inf", "-.inf", "1e999",
                     "kd", "dkd", "crd", "richkd", "vanilla", "cosine", "step", "plain", "matched", "cpu", "[",
                     "'", '"', ": x", "2026-01-01", "0x10", "1_000", "- a"]),
    st.text(max_size=12),
)
override = st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(override, min_size=1, max_size=4))
@example(["distill.method.x=0"])  # found by this test: a mapping as the method name raised TypeError
def test_overrides_resolve_or_fail_with_one_line(overrides: list[str]) -> None:
    try:
        cfg = load_config(None, overrides)
    except RichKDError as err:
        assert "\n" not in str(err) and str(err)
        return
    cfg.validate()  # a config that loaded is valid
    for value in _floats(config_to_dict(cfg)):
        assert math.isfinite(value)


def _floats(tree: typing.Any) -> typing.Iterator[float]:
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _floats(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _floats(v)
    elif isinstance(tree, float):
        yield tree


@settings(max_examples=60, deadline=None)
@given(st.lists(override, min_size=1, max_size=3))
def test_config_show_exit_codes(overrides: list[str]) -> None:
    """Through the CLI: exit 0 with YAML, or exit 2 with a single 'richkd: error:' line."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["config", "show", "--", *overrides])
    assert code in (0, 2)
    if code == 2:
        text = err.getvalue().strip()
        assert text.startswith("richkd: error:") and "\n" not in text and "Traceback" not in text
