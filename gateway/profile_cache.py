"""Profiles as they were last read, kept in ``$AIF_HOME/cache``: a profile is parsed once per change.

Reading a profile (TOML, then every key checked) is about a seventh of
``aif render``'s start-up above importing click; profiles rarely change. The
profile a file gave is kept in ``$AIF_HOME/cache/profile-NAME.marshal``
(mode 0600) with what it was read from, and used again only when all of it is
unchanged:

- the file: its path, size, inode and device, modification and change times
  (the change time cannot be set back, and a file that changed within the
  last two seconds is not kept, so that a change in the same clock tick as the
  reading is never missed);
- the code that read it: aif's version, Python's, and the size and
  modification time of the modules whose rules the reading applies.

Anything else (no home, a cache that cannot be read or written, another
format) means reading the file, exactly as without a cache: the cache is
never an error. Only usable profiles are kept; a broken one is read again
each time, so that its error is always today's. Kept as ``marshal`` data
(built into Python, nothing to import): a profile's records become lists
``[class name, field values...]``, all its other sequences being tuples.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from gateway import __version__
from gateway.home import FILE_MODE, HOME_MODE, aif_home_text
from gateway.pathtext import child_text
from gateway.record import Record

FORMAT = 1
CACHE_DIR = "cache"
# A file changed this recently may change again within the same timestamp tick: not kept.
SETTLED_S = 2.0
# The modules whose rules decide what a profile file gives (see gateway.profiles).
READERS = ("profiles", "tomlcheck", "spec", "config", "record")

Key = tuple[Any, ...]
_readers: list[Key] = []  # this process's readers_key(), once computed


def file_key(path: str) -> Key:
    """What a kept profile is checked against: take it before reading the file."""
    info = os.stat(path)
    return (path, info.st_size, info.st_ino, info.st_dev, info.st_mtime_ns, info.st_ctime_ns)


def readers_key() -> Key:
    """The cache's format, aif's and Python's versions, and the size and time of each reader."""
    if not _readers:
        package = os.path.dirname(os.path.abspath(__file__))
        stamps: list[object] = [FORMAT, __version__, sys.version]
        for module in READERS:
            info = os.stat(os.path.join(package, f"{module}.py"))
            stamps += [info.st_size, info.st_mtime_ns]
        _readers.append(tuple(stamps))
    return _readers[0]


def cache_file(name: str) -> str:
    return child_text(child_text(aif_home_text(), CACHE_DIR), f"profile-{name}.marshal")


def cached_profile(name: str, path: str, classes: Mapping[str, Callable[..., Any]]) -> Any | None:
    """The profile ``path`` gave when last read, if nothing it depends on changed; else None.

    ``classes``: the record classes a profile is made of, by name.
    """
    try:
        with open(cache_file(name), "rb") as file:
            key, plain = marshal.loads(file.read())
        if key != (readers_key(), file_key(path)):
            return None
        return _rebuilt(plain, classes)
    except Exception:  # no cache, or one this aif did not write: the file is read
        return None


def keep_profile(name: str, path: str, before: Key, profile: Record) -> None:
    """Keep the profile ``path`` gave, read while the file was as ``before`` (:func:`file_key`)."""
    try:
        if file_key(path) != before or time.time() - max(before[4], before[5]) / 1e9 < SETTLED_S:
            return  # it changed while being read, or may yet change unseen
        home = aif_home_text()
        if not os.path.isdir(home):
            return  # the cache never creates the home
        with contextlib.suppress(FileExistsError):
            os.mkdir(child_text(home, CACHE_DIR), HOME_MODE)
        target = cache_file(name)
        partial = f"{target}.{os.getpid()}.partial"  # each writer its own: aif processes run side by side
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), FILE_MODE)
                out.write(marshal.dumps(((readers_key(), before), _plain(profile))))
            os.replace(partial, target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(partial)  # left only when the write failed
    except Exception:  # a home that cannot be written: the file is read next time too
        return


def _plain(value: object) -> Any:
    """``value`` as marshal data: a record becomes ``[class name, *field values]``."""
    if isinstance(value, Record):
        return [type(value).__name__, *(_plain(getattr(value, f.name)) for f in fields(value))]  # type: ignore[arg-type]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value


def _rebuilt(value: object, classes: Mapping[str, Callable[..., Any]]) -> object:
    if isinstance(value, list):
        make = classes[value[0]]  # KeyError: not a class of a profile (caught by the caller)
        return make(*(_rebuilt(item, classes) for item in value[1:]))
    if isinstance(value, tuple):
        return tuple(_rebuilt(item, classes) for item in value)
    return value
