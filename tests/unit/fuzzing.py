"""Random TOML documents for the no-traceback properties: specs, profiles and config files.

One set of strategies for every loader: random values (``scalars``, ``values``),
documents built from a table/key schema (``documents_from_schema``), and
mutations of the real files (``mutated_documents``: structured edits of the
parsed document, then serialised; ``mutated_texts``: edits of the raw text).

How many examples each fuzz test runs is a Hypothesis settings profile:
``FUZZ`` is "aif-fuzz-quick" (part of ``make test``) unless
``AIF_FUZZ_EXAMPLES`` is set (``make fuzz`` sets 10000): then "aif-fuzz".
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]

SPEC_FILES = sorted([*REPO.glob("examples/*.toml"), *REPO.glob("tests/data/specs/*.toml")])
PROFILE_FILES = sorted(
    [
        *REPO.glob("profiles/*.toml"),
        *REPO.glob("tests/golden/sandbox/sandbox-*.toml"),
        *REPO.glob("tests/data/profiles/*.toml"),
    ]
)
CONFIG_FILES = sorted(REPO.glob("tests/golden/sandbox/config.d-*.toml"))

_QUICK_EXAMPLES = 100
settings.register_profile(
    "aif-fuzz-quick",
    max_examples=_QUICK_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "aif-fuzz",
    max_examples=int(os.environ.get("AIF_FUZZ_EXAMPLES") or _QUICK_EXAMPLES),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
FUZZ = settings.get_profile("aif-fuzz" if os.environ.get("AIF_FUZZ_EXAMPLES") else "aif-fuzz-quick")

# -- values -------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "",
    " ",
    "hello",
    "01:00:00",
    "0-00:00:00",
    "99-99:99:99",
    "120G",
    "0G",
    "health",
    "public",
    "secret",
    "{name}",
    "{id}",
    "{user}",
    "{nope}",
    "../x",
    "/abs",
    "a\nb",
    "a\r\nb",
    "\x1b[31mred",
    "\u2028",
    "\ufeff",
    "$(id)",
    "`id`",
    "'; rm -rf ~",
    "\\",
    "é" * 40,
    "x" * 300,
    "a/" * 200,
    "lumi",
    "lumii",
    "sandbox-north",
    "FI",
    "slurm",
    "gres",
    "ssh",
    "local",
    "pyslurm",
    "[",
    "(",
    "*",
    "+",
    ".*",
    "(a+)+$",
    "a{4294967296}",
    "(?<",
]
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**31 + 1, 2**63 - 1, 100_001, 65_536]),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.5]),
    st.text(max_size=30),
    st.sampled_from(HOSTILE_STRINGS),
)


class RawToml(str):
    """A TOML literal written as is: values Python cannot hold as a plain value in a document."""


# TOML that parses into values at the edges of what Python and the loaders handle.
EDGE_LITERALS = [
    RawToml("9" * 5000),  # more decimal digits than int() converts by default (4300)
    RawToml("0x" + "f" * 5000),  # the same size in hex: parses, but cannot be printed in decimal
    RawToml("[" * 3000 + "]" * 3000),  # nesting deeper than Python's recursion limit
    RawToml("{a = " * 3000 + "1" + "}" * 3000),
    RawToml("[" * 300 + "1" + "]" * 300),  # deep, but parses
    RawToml("1e99999"),  # inf
    RawToml("-0.0"),
    RawToml("1979-05-27T07:32:00.999999-07:00"),
]
dates = st.one_of(
    st.datetimes(timezones=st.sampled_from([None, dt.timezone.utc])),
    st.dates(),
    st.times(),
)
values = st.one_of(
    scalars,
    dates,
    st.sampled_from(EDGE_LITERALS),
    st.lists(scalars, max_size=4),
    st.dictionaries(st.text(max_size=8), scalars, max_size=3),
)
# Keys: mostly near the real ones (so mutations get past "unknown key"), sometimes anything.
_JUNK_KEYS = st.one_of(st.text(max_size=12), st.sampled_from(["a\nb", "", " ", "x.y", "\x00", "é"]))


def toml_value(value: object) -> str:
    """``value`` as a TOML value; tables become inline tables, so any document is one key per line."""
    if isinstance(value, RawToml):
        return str.__str__(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_string(text: str) -> str:
    """A TOML basic string holding exactly ``text`` (control characters escaped, the rest as is)."""
    escaped = "".join(
        f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else "\\" + c if c in '"\\' else c for c in text
    )
    return f'"{escaped}"'


def to_toml(document: dict[str, Any]) -> str:
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in document.items())


# -- documents from a schema (see test_spec.KNOWN_KEYS) ----------------------------------------


@st.composite
def documents_from_schema(draw: st.DrawFn, schema: dict[str, list[str]]) -> str:
    lines: list[str] = []
    for table in draw(st.lists(st.sampled_from([*schema, "extra"]), unique=True, max_size=len(schema) + 1)):
        lines.append(f"[{table}]")
        keys = [*schema.get(table, []), "bogus", "nme"]
        for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=6)):
            lines.append(f"{key} = {toml_value(draw(values))}")
    return "\n".join(lines) + "\n"


# -- mutations of the real files ---------------------------------------------------------------


def parse_files(files: Sequence[Path]) -> list[dict[str, Any]]:
    return [tomllib.loads(path.read_text()) for path in files]


def _collect(node: object, where: str, keys: dict[str, set[str]], leaves: dict[str, list[object]]) -> None:
    """The keys seen in each table (by path, array indexes dropped) and the values seen for each key."""
    if isinstance(node, dict):
        for key, value in node.items():
            keys.setdefault(where, set()).add(key)
            if not isinstance(value, (dict, list)):
                leaves.setdefault(key, []).append(value)
            _collect(value, f"{where}.{key}", keys, leaves)
    elif isinstance(node, list):
        for item in node:
            if not isinstance(item, (dict, list)):
                leaves.setdefault(where.rsplit(".", 1)[-1], []).append(item)
            _collect(item, where, keys, leaves)


def mutated_documents(files: Sequence[Path]) -> st.SearchStrategy[str]:
    """A real document with 1 to 3 random edits (replace, delete, rename, add, duplicate), as TOML.

    Edits mostly use what the real files hold at that place (the keys of that
    table, values seen for that key), so many documents stay valid or fail
    deep in validation, not only at "unknown key".
    """
    originals = parse_files(files)
    keys: dict[str, set[str]] = {}
    leaves: dict[str, list[object]] = {}
    for document in originals:
        _collect(document, "", keys, leaves)
    every_leaf = [value for seen in leaves.values() for value in seen]

    def key_names(where: str) -> st.SearchStrategy[str]:
        known = sorted(keys.get(where, set())) or sorted({k for ks in keys.values() for k in ks})
        return st.one_of(st.sampled_from(known), st.sampled_from(known), st.sampled_from(known), _JUNK_KEYS)

    def new_values(key: object) -> st.SearchStrategy[object]:
        same_key = leaves.get(key, []) if isinstance(key, str) else []
        options = [values, st.sampled_from(every_leaf)]
        if same_key:
            options += [st.sampled_from(same_key)] * 2
        return st.one_of(*options)

    @st.composite
    def mutated(draw: st.DrawFn) -> str:
        document = copy.deepcopy(draw(st.sampled_from(originals)))
        for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):  # one edit mostly: get deep
            _mutate(draw, document, key_names, new_values)
        return to_toml(document)

    return mutated()


def _mutate(
    draw: st.DrawFn,
    document: dict[str, Any],
    key_names: Any,
    new_values: Any,
) -> None:
    node: dict[str, Any] | list[Any] = document
    where, last_key = "", None
    while True:  # walk down to a random table or array
        inner = [k for k, v in _items(node) if isinstance(v, (dict, list)) and v]
        if not inner or draw(st.integers(min_value=0, max_value=3)) == 0:  # mostly deeper
            break
        step = draw(st.sampled_from(inner))
        if isinstance(node, dict):
            where, last_key = f"{where}.{step}", step
        node = node[step]  # type: ignore[index]
    operation = draw(
        st.sampled_from(["replace"] * 5 + ["delete"] * 2 + ["rename", "add"] + ["duplicate"] * 2)
    )
    slots = [k for k, _ in _items(node)]
    if isinstance(node, dict):
        if not slots or operation == "add":
            key = draw(key_names(where))
            node[key] = draw(new_values(key))
            return
        key = draw(st.sampled_from(slots))
        if operation == "delete":
            del node[key]
        elif operation == "rename":
            node[draw(key_names(where))] = node.pop(key)
        elif operation == "duplicate":
            node[draw(key_names(where))] = copy.deepcopy(node[key])
        else:
            node[key] = draw(new_values(key))
        return
    if not slots or operation == "add":
        node.append(draw(new_values(last_key)))
        return
    index = draw(st.sampled_from(slots))
    if operation == "delete":
        del node[index]
    elif operation == "duplicate":
        node.append(copy.deepcopy(node[index]))
    else:
        node[index] = draw(new_values(last_key))


def _items(node: dict[str, Any] | list[Any]) -> list[tuple[Any, Any]]:
    return list(node.items()) if isinstance(node, dict) else list(enumerate(node))


def mutated_texts(files: Sequence[Path]) -> st.SearchStrategy[bytes]:
    """A real file's bytes with raw edits: inserted bytes or text, a cut, a repeated line, a BOM."""
    originals = [path.read_bytes() for path in files]

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = draw(st.sampled_from(originals))
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            at = draw(st.integers(min_value=0, max_value=len(data)))
            edit = draw(st.sampled_from(["insert", "cut", "repeat", "bom"]))
            if edit == "insert":
                piece = draw(
                    st.one_of(
                        st.binary(max_size=8),
                        st.text(max_size=8).map(str.encode),
                        st.sampled_from(
                            [b"\n", b"[", b"]", b'"', b"'''", b"=", b"\\u", b"\xef\xbb\xbf", b"\x00"]
                        ),
                    )
                )
                data = data[:at] + piece + data[at:]
            elif edit == "cut":
                data = data[:at] + data[at + draw(st.integers(min_value=1, max_value=40)) :]
            elif edit == "repeat":
                lines = data.split(b"\n")
                line = draw(st.integers(min_value=0, max_value=len(lines) - 1))
                data = b"\n".join([*lines[: line + 1], lines[line], *lines[line + 1 :]])
            else:
                data = b"\xef\xbb\xbf" + data
        return data

    return mutated()


def documents(files: Sequence[Path]) -> st.SearchStrategy[str | bytes]:
    """Everything a loader of these files should survive: mutations, then plain noise."""
    return st.one_of(
        mutated_documents(files),
        mutated_documents(files),
        mutated_texts(files),
        st.text(max_size=200),
        st.binary(max_size=100),
    )


def write_document(path: Path, document: str | bytes) -> None:
    if isinstance(document, str):
        path.write_text(document, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(document)
