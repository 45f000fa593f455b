"""Property test of config parsing and overrides: any key=value either resolves to a valid config or fails with
exit code 2 and one line — never a traceback."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import types
import typing

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from richkd.cli import main
from richkd.config import (
    DISTILL_CONFIGS,
    RunConfig,
    coerce_override,
    config_to_dict,
    load_config,
    override_field_type,
)
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


# --------------------------------------------------------------------------- issue 27 item 6: typed overrides

def _field_types() -> list[tuple[str, typing.Any, dict[str, str]]]:
    """(key, declared type, the tree that selects its distill class) of every leaf key of every method."""
    found = []
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            sub = typing.get_type_hints(hints[f.name])
            found += [(f"{f.name}.{g.name}", sub[g.name], {}) for g in dataclasses.fields(hints[f.name])]
        elif f.name != "distill":
            found.append((f.name, hints[f.name], {}))
    for method, cls in DISTILL_CONFIGS.items():
        sub = typing.get_type_hints(cls)
        found += [(f"distill.{g.name}", sub[g.name], {"method": method}) for g in dataclasses.fields(cls)]
    return found


FIELDS = _field_types()
TRICKY = ["1e3", "010", "1:20", "0x10", "1_000", "true", "no", "2026-01-01", ".inf", "nan", "[1, 2]", "{a: 1}", "-"]
BOOLS = {"true": True, "True": True, "yes": True, "on": True, "false": False, "FALSE": False, "no": False,
         "off": False}


def _text_and_value(tp: typing.Any) -> st.SearchStrategy[tuple[str, typing.Any]]:
    """Override texts of type `tp` with the value each must become, written out here from the type alone."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [_text_and_value(a) for a in args if a is not type(None)]
        if type(None) in args:
            members.append(st.sampled_from([("null", None), ("~", None)]))
        return st.one_of(members)
    if origin is typing.Literal:
        return st.sampled_from([(a, a) for a in args])
    if origin is tuple and typing.get_origin(args[0]) is typing.Literal:  # train.loggers: a list of names
        names = st.lists(st.sampled_from(typing.get_args(args[0])), max_size=4)
        return st.one_of(names.map(lambda v: ("[" + ", ".join(v) + "]", tuple(v))),
                         names.filter(bool).map(lambda v: (",".join(v), tuple(v))))
    if origin is tuple:
        ints = st.lists(st.integers(-10**6, 10**6), max_size=4)
        return st.one_of(ints.map(lambda v: ("[" + ", ".join(map(str, v)) + "]", tuple(v))),
                         ints.filter(bool).map(lambda v: (",".join(map(str, v)), tuple(v))))
    if tp is bool:
        return st.sampled_from(sorted(BOOLS.items()))
    if tp is int:
        return st.integers(-10**12, 10**12).map(lambda i: (str(i), i))
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False).map(lambda x: (repr(x), x))
    if tp is str:
        plain = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=12).filter(
            lambda s: not (len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"") and s not in ("null", "Null", "NULL", "~"))
        return st.one_of(st.sampled_from(TRICKY), plain).map(lambda s: (s, s))
    raise AssertionError(f"no strategy for {tp}")


@pytest.mark.parametrize("key, tp, distill", FIELDS, ids=[f"{k}[{d.get('method', '')}]" for k, tp, d in FIELDS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_key_coerces_by_its_declared_type(key: str, tp: typing.Any, distill: dict[str, str],
                                                data: st.DataObject) -> None:
    """Every config key: a text of its type becomes exactly that value (str stays the text); a text of another
    type is refused in one line naming key, value and the expected type."""
    tree = {"distill": distill} if distill else {}
    assert override_field_type(key, tree) == tp  # the key resolves to its dataclass field
    text, expected = data.draw(_text_and_value(tp))
    value = coerce_override(key, text, tp)
    assert value == expected and type(value) is type(expected)
    if tp is int or tp == (int | None):
        bad = data.draw(st.sampled_from(["1e3", "2.0", "0x10", "ten", "true", "[1]"]))
        with pytest.raises(RichKDError) as err:
            coerce_override(key, bad, tp)
        assert f"{key}={bad}" in str(err.value) and "int" in str(err.value) and "\n" not in str(err.value)
