"""The ledger's sqlite errors, turned into one clear aif error each."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.errors import AifError, ConfigError, HomeUnusable
from gateway.ledger_records import BUSY_TIMEOUT_SECONDS

# sqlite's primary result codes (the sqlite3 module names them only from Python 3.11).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26


def ledger_error(path: Path, exc: sqlite3.Error, *, opening: bool = False) -> AifError:
    """One clear error for a failure of the ledger file, with what to do.

    Only a ledger that is damaged or not aif's is invalid input (exit 3); a
    read-only, full or failing file system is exit 1 (:class:`HomeUnusable`).
    """
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None

    def says(*fragments: str) -> bool:
        return any(fragment in text for fragment in fragments)

    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or says("malformed", "not a database"):
        return ConfigError(
            f"cannot use the ledger {path}: {text} (it is damaged, or not an aif ledger); "
            "move it away and aif starts a new one"
        )
    if primary in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_CANTOPEN) or says("readonly", "unable to open"):
        return HomeUnusable(
            f"cannot write the ledger {path}: {text}; make it and {path.parent} writable by you, "
            "or set AIF_HOME to a directory you can write"
        )
    if primary == _SQLITE_FULL or says("disk is full"):
        return HomeUnusable(
            f"cannot write the ledger {path}: {text}; free space on its file system, "
            "or set AIF_HOME to a directory on another one"
        )
    if primary == _SQLITE_IOERR or says("disk I/O error"):
        return HomeUnusable(
            f"cannot read or write the ledger {path}: {text} (is its file system full or failing?)"
        )
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or says("locked"):
        return AifError(
            f"the ledger {path} stayed locked by another aif process for {BUSY_TIMEOUT_SECONDS:g} s: {text}; "
            "try again"
        )
    if opening:
        return ConfigError(f"cannot use the ledger {path}: {text}")
    return AifError(f"the ledger {path}: {text}")
