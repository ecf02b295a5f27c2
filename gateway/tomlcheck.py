"""Reading TOML documents strictly: typed getters, unknown keys refused.

Every error names the file, the key path, the bad value and what is allowed,
on one line, so that a user (or a script reading stderr) can act on it.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from gateway.errors import InvalidInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

E = TypeVar("E", bound=InvalidInput)

_MISSING = object()
_PRINTABLE_INT_BITS = 4000  # about 1200 decimal digits: repr() is fine, and the text is cut anyway
UTF8_BOM = b"\xef\xbb\xbf"


def show_value(value: object, limit: int = 60) -> str:
    """A short, one-line rendering of a user's value (hostile newlines included)."""
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int) and value.bit_length() > _PRINTABLE_INT_BITS:
        # Python refuses to print an int of more than 4300 decimal digits (TOML's hex has no limit).
        text = f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "[" + ", ".join(show_value(v, 20) for v in value[:4]) + (", ...]" if len(value) > 4 else "]")
    else:
        text = repr(value)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_key(key: str) -> str:
    """A key as it appears in a key path: bare when TOML allows it bare, else quoted and escaped."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else show_value(key)


def suggest(word: str, options: Sequence[str]) -> str | None:
    """The option the user most likely meant: a close spelling, else a prefix or part of it."""
    import difflib  # only a mistake needs it: not imported at start-up

    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return close[0]
    lowered = word.lower()
    partial = [o for o in options if lowered and (o.lower().startswith(lowered) or lowered in o.lower())]
    if partial:
        return partial[0]
    loose = difflib.get_close_matches(word, options, n=1, cutoff=0.4)
    return loose[0] if loose else None


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """'did you mean 'x'? ' or ''."""
    hint = suggest(word, options)
    return f"did you mean {hint!r}? " if hint else ""


def type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def load_toml_file(path: Path, error: type[E]) -> dict[str, object]:
    """Parse a TOML file, turning every failure into ``error`` with the file name."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_toml_bytes(raw, str(path), error)


def parse_toml_bytes(raw: bytes, source: str, error: type[E]) -> dict[str, object]:
    """Parse a TOML document; a UTF-8 byte-order mark at the start is accepted and dropped.

    Editors on Windows write one, and the TOML grammar has no place for it.
    """
    start = len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not valid UTF-8 (byte {start + exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: not valid TOML: {exc}") from None
    except ValueError as exc:
        # int() refuses more than sys.get_int_max_str_digits() (4300) decimal digits.
        raise error(f"{source}: not valid TOML: a number is too long ({exc})") from None
    except RecursionError:
        raise error(f"{source}: not valid TOML: arrays or tables are nested too deeply") from None


class Table:
    """A TOML table being read: typed getters record which keys were used.

    Call :meth:`done` at the end: any key that was not read is unknown and
    refused with a did-you-mean.
    """

    def __init__(
        self,
        data: Mapping[str, object],
        *,
        source: str,
        path: str,
        error: type[InvalidInput],
        allowed: Sequence[str],
    ) -> None:
        self._data = data
        self.source = source
        self.path = path
        self.error = error
        self._allowed = tuple(allowed)
        self._check_unknown()

    # -- errors -----------------------------------------------------------
    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, message: str) -> NoReturn:
        raise self.error(f"{self.source}: {self.key_path(key)}: {message}")

    def bad_value(self, key: str, value: object, allowed: str) -> NoReturn:
        self.fail(key, f"{show_value(value)} is not allowed; {allowed}")

    def _check_unknown(self) -> None:
        for key in self._data:
            if key not in self._allowed:
                maybe = did_you_mean(key, self._allowed)
                where = f"in [{self.path}]" if self.path else "at the top level"
                self.fail(
                    show_key(key),
                    f"unknown key, {maybe}(allowed {where}: {', '.join(self._allowed)})",
                )

    # -- getters ----------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str) -> object:
        return self._data.get(key, _MISSING)

    def _absent(self, key: str, default: object) -> bool:
        """True when the key is absent and a default applies; fails when it is required."""
        if key in self._data:
            return False
        if default is _MISSING:
            self.fail(key, "is required")
        return True

    def string(
        self,
        key: str,
        default: object = _MISSING,
        *,
        pattern: str | None = None,
        choices: Sequence[str] | None = None,
        allowed: str = "",
        max_length: int | None = None,
    ) -> str:
        if self._absent(key, default):
            return default  # type: ignore[return-value]
        value = self._data[key]
        if not isinstance(value, str):
            self.fail(key, f"{show_value(value)} is {type_name(value)}; expected a string")
        if "\x00" in value:
            self.bad_value(key, value, "NUL characters are not allowed")
        self.check_length(key, value, max_length)
        if choices is not None and value not in choices:
            maybe = did_you_mean(value, choices)
            self.bad_value(key, value, f"{maybe}expected one of: {', '.join(choices)}")
        if pattern is not None and not re.fullmatch(pattern, value):
            self.bad_value(key, value, allowed or f"expected a value matching {pattern}")
        return value

    def check_length(self, key: str, value: str, max_length: int | None) -> None:
        """Refuse a string longer than ``max_length`` characters (None: no bound)."""
        if max_length is not None and len(value) > max_length:
            self.fail(
                key, f"{show_value(value)} is {len(value)} characters long; at most {max_length} allowed"
            )

    def check_bytes(self, key: str, value: str, max_bytes: int) -> None:
        """Refuse a string whose UTF-8 encoding is longer than ``max_bytes``."""
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            self.fail(key, f"{show_value(value)} is {size} bytes (UTF-8); at most {max_bytes} allowed")

    def check_count(self, key: str, count: int, max_items: int | None) -> None:
        if max_items is not None and count > max_items:
            self.fail(key, f"{count} entries; at most {max_items} allowed")

    def optional_string(self, key: str, **kwargs: object) -> str | None:
        if key not in self._data:
            return None
        return self.string(key, **kwargs)  # type: ignore[arg-type]

    def integer(self, key: str, default: object = _MISSING, *, minimum: int = 0, maximum: int = 2**31) -> int:
        if self._absent(key, default):
            return default  # type: ignore[return-value]
        value = self._data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"{show_value(value)} is {type_name(value)}; expected an integer")
        if not minimum <= value <= maximum:
            self.bad_value(key, value, f"expected an integer from {minimum} to {maximum}")
        return value

    def optional_integer(self, key: str, *, minimum: int = 0, maximum: int = 2**31) -> int | None:
        if key not in self._data:
            return None
        return self.integer(key, minimum=minimum, maximum=maximum)

    def boolean(self, key: str, default: object = _MISSING) -> bool:
        if self._absent(key, default):
            return default  # type: ignore[return-value]
        value = self._data[key]
        if not isinstance(value, bool):
            self.fail(key, f"{show_value(value)} is {type_name(value)}; expected true or false")
        return value

    def string_list(
        self,
        key: str,
        default: object = _MISSING,
        *,
        pattern: str | None = None,
        allowed: str = "",
        non_empty: bool = False,
        max_items: int | None = None,
        max_length: int | None = None,
    ) -> tuple[str, ...]:
        if self._absent(key, default):
            return tuple(default)  # type: ignore[arg-type]
        value = self._data[key]
        if not isinstance(value, list):
            self.fail(key, f"{show_value(value)} is {type_name(value)}; expected an array of strings")
        if non_empty and not value:
            self.fail(key, "must not be empty")
        self.check_count(key, len(value), max_items)
        for index, item in enumerate(value):
            item_key = f"{key}[{index}]"
            if not isinstance(item, str):
                self.fail(item_key, f"{show_value(item)} is {type_name(item)}; expected a string")
            if "\x00" in item:
                self.bad_value(item_key, item, "NUL characters are not allowed")
            self.check_length(item_key, item, max_length)
            if pattern is not None and not re.fullmatch(pattern, item):
                self.bad_value(item_key, item, allowed or f"expected a value matching {pattern}")
        return tuple(value)

    def string_map(
        self, key: str, *, key_pattern: str, key_allowed: str, max_items: int | None = None
    ) -> tuple[tuple[str, str], ...]:
        value = self._data.get(key, {})
        if not isinstance(value, dict):
            self.fail(key, f"{show_value(value)} is {type_name(value)}; expected a table")
        self.check_count(key, len(value), max_items)
        pairs: list[tuple[str, str]] = []
        for name, item in value.items():
            item_key = f"{key}.{show_key(name)}"
            if not re.fullmatch(key_pattern, name):
                self.fail(item_key, f"{show_value(name)} is not allowed as a name; {key_allowed}")
            if not isinstance(item, str):
                self.fail(item_key, f"{show_value(item)} is {type_name(item)}; expected a string")
            if "\x00" in item:
                self.bad_value(item_key, item, "NUL characters are not allowed")
            pairs.append((name, item))
        return tuple(pairs)

    def table(self, key: str, allowed: Sequence[str], *, required: bool = False) -> Table:
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            if required:
                self.fail(key, "is required (a table)")
            value = {}
        if not isinstance(value, dict):
            self.fail(key, f"{show_value(value)} is {type_name(value)}; expected a table")
        return Table(value, source=self.source, path=self.key_path(key), error=self.error, allowed=allowed)

    def tables(self, key: str, allowed: Sequence[str]) -> list[Table]:
        value = self._data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(key, f"{show_value(value)} is {type_name(value)}; expected an array of tables")
        return [
            Table(v, source=self.source, path=f"{self.key_path(key)}[{i}]", error=self.error, allowed=allowed)
            for i, v in enumerate(value)
        ]


SIZE_PATTERN = r"[1-9][0-9]{0,8}[KMGT]?"
SIZE_ALLOWED = 'expected a size like "500M", "120G" or "2T" (K, M, G, T; plain numbers are MiB)'
_SIZE_FACTOR_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}

WALLTIME_PATTERN = r"(?:([0-9]{1,3})-)?([0-9]{1,2}):([0-5][0-9]):([0-5][0-9])"
WALLTIME_ALLOWED = 'expected [D-]HH:MM:SS, e.g. "02:00:00" or "1-12:00:00", longer than zero'


def size_to_mb(text: str) -> int:
    """'120G' -> 122880 (MiB); rounds K up to a whole MiB."""
    unit = text[-1] if text[-1] in _SIZE_FACTOR_MB else "M"
    number = int(text[:-1] if text[-1] in _SIZE_FACTOR_MB else text)
    return max(1, int(-(-number * _SIZE_FACTOR_MB[unit] // 1)))


def walltime_to_seconds(text: str) -> int:
    match = re.fullmatch(WALLTIME_PATTERN, text)
    if match is None:
        raise ValueError(text)
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def format_walltime(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def read_size(table: Table, key: str) -> tuple[str, int] | None:
    text = table.optional_string(key, pattern=SIZE_PATTERN, allowed=SIZE_ALLOWED)
    return None if text is None else (text, size_to_mb(text))


def read_walltime(table: Table, key: str, default: object = _MISSING) -> tuple[str, int]:
    text = table.string(key, default, pattern=WALLTIME_PATTERN, allowed=WALLTIME_ALLOWED)
    seconds = walltime_to_seconds(text)
    if seconds <= 0:
        table.bad_value(key, text, WALLTIME_ALLOWED)
    return text, seconds
