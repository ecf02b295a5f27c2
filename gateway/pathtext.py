"""Paths as text: what pathlib gives, without importing it (POSIX).

Importing pathlib costs about a tenth of importing click (it imports
urllib.parse, which imports ipaddress). ``aif render`` and the home check
every command makes only read files, so they handle paths as ``str`` with
these functions, which give exactly the text pathlib's would
(``tests/unit/test_pathtext.py`` compares them).
"""

from __future__ import annotations

import os


def path_text(path: str | os.PathLike[str]) -> str:
    """``str(pathlib.Path(path))`` (POSIX), without importing pathlib.

    Empty and ``.`` parts and a trailing slash are dropped; a root of exactly
    two slashes is kept, as POSIX allows it a meaning of its own.
    """
    text = os.fspath(path)
    root = "//" if text[:2] == "//" and text[2:3] != "/" else "/" if text[:1] == "/" else ""
    parts = [part for part in text.split("/") if part and part != "."]
    return root + "/".join(parts) if root or parts else "."


def child_text(directory: str, name: str) -> str:
    """``str(pathlib.Path(directory) / name)`` for a relative ``name``, without pathlib."""
    base = path_text(directory)  # ends with a slash only when it is a root
    return path_text(base + name if base.endswith("/") else f"{base}/{name}")


def expand_user_text(text: str) -> str:
    """``str(pathlib.Path(text).expanduser())``: a leading ``~`` or ``~user`` part expanded."""
    text = path_text(text)
    if text[:1] != "~":
        return text
    first, _, rest = text.partition("/")
    home = os.path.expanduser(first)
    if home[:1] == "~":
        raise RuntimeError("Could not determine home directory.")  # pathlib's own error
    return child_text(home, rest) if rest else path_text(home)


def file_stem(path: str) -> str:
    """``pathlib.Path(path).stem``: the last part without its last suffix (``.x`` has none)."""
    name = path.rpartition("/")[2] if path != "." else ""  # "." is pathlib's empty path
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def toml_files(directory: str) -> list[str]:
    """``sorted(pathlib.Path(directory).glob("*.toml"))`` as text: every entry whose name ends
    in ``.toml`` (hidden ones too), none when ``directory`` is not a readable directory."""
    if not os.path.isdir(directory):
        return []
    try:
        names = os.listdir(directory)
    except PermissionError:
        return []
    return sorted(child_text(directory, name) for name in names if name.endswith(".toml"))
