"""The ledger's connection: opening the SQLite file, its schema, its transactions.

Several aif processes may use the ledger at once (a ``submit`` while a
``watch`` polls), so:

* the database runs in WAL mode with a generous ``busy_timeout``: readers never
  block writers, and a writer waits for another one instead of failing;
* every write runs in its own ``BEGIN IMMEDIATE`` transaction (or, inside
  :meth:`LedgerStore.batch`, as a savepoint of the batch's one transaction),
  which takes the write lock up front; reads made inside it (is this id free?
  what is the current state?) therefore cannot be invalidated by another
  process before the transaction commits.

The schema is versioned with ``PRAGMA user_version`` and an ordered list of
migrations (``gateway.ledger_schema``, version N is the N-th entry). Opening an older
ledger applies the missing migrations in one transaction; opening a ledger
written by a newer aif is refused with a ``ConfigError``. The writes themselves
are ``gateway.ledger.Ledger``'s.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from gateway.errors import ConfigError
from gateway.home import ensure_home, ensure_private_file, make_private
from gateway.ledger_errors import ledger_error
from gateway.ledger_reads import LedgerReads
from gateway.ledger_records import BUSY_TIMEOUT_SECONDS, default_ledger_path
from gateway.ledger_schema import _MIGRATIONS, SCHEMA_VERSION

_Store = TypeVar("_Store", bound="LedgerStore")


class LedgerStore(LedgerReads):
    """The open ledger file with its reads; :class:`gateway.ledger.Ledger` adds the writes."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_ledger_path()
        self._batched = False  # inside batch(): each write is a savepoint of its transaction
        ensure_home(self.path.parent)
        # sqlite creates the -wal and -shm files with the ledger's own mode.
        ensure_private_file(self.path)
        for companion in ("-wal", "-shm"):
            make_private(self.path.with_name(self.path.name + companion))
        try:
            self._conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            )
        except sqlite3.Error as exc:
            raise ledger_error(self.path, exc, opening=True) from exc
        try:
            self._configure()
            self._migrate()
        except sqlite3.Error as exc:
            self._conn.close()
            raise ledger_error(self.path, exc, opening=True) from exc
        except BaseException:
            self._conn.close()
            raise

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _configure(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        # Switching a fresh file to WAL needs a brief exclusive lock; when
        # several processes create the ledger at once, one may see "locked".
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise ConfigError(f"the ledger {self.path} cannot use WAL mode (got {mode!r})")
        # FULL: a committed intent (with its token) survives even a power loss.
        conn.execute("PRAGMA synchronous = FULL")

    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _check_not_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"the ledger {self.path} has schema version {version}, but this aif only "
                f"knows versions up to {SCHEMA_VERSION}: upgrade aif to use it"
            )

    def _migrate(self) -> None:
        version = self.schema_version()
        self._check_not_newer(version)
        if version == SCHEMA_VERSION:
            return
        with self._write(opening=True):
            # Re-read under the write lock: another process may have migrated.
            version = self.schema_version()
            self._check_not_newer(version)
            for migration in _MIGRATIONS[version:]:
                migration(self._conn)
            # PRAGMA takes no parameters; SCHEMA_VERSION is our own int.
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            problems = self._conn.execute("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise ConfigError(f"the ledger {self.path} is inconsistent after migration: {problems[:5]}")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make the writes inside ONE transaction, committed (one fsync) when the block ends.

        Each write inside is a savepoint: one that fails is undone alone, as if it had been a
        transaction of its own, and the others stay if the caller catches its error inside the
        block (the sender does, per site); an exception out of the block undoes all.
        For writes that are one step (the intents of a submission and the paths rendered with
        their ids; the answers and the attempts): nothing may be sent inside the block, since
        nothing in it is durable before it ends.
        """
        if self._batched:
            yield
            return
        with self._write():
            self._batched = True
            try:
                yield
            finally:
                self._batched = False

    @contextmanager
    def _write(self, *, opening: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the write lock from its first statement (a savepoint
        of the batch's transaction inside :meth:`batch`)."""
        conn = self._conn
        if self._batched:
            try:
                conn.execute("SAVEPOINT write")
                try:
                    yield conn
                    conn.execute("RELEASE write")
                except BaseException:
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                    raise
            except sqlite3.Error as exc:
                raise ledger_error(self.path, exc, opening=opening) from exc
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise ledger_error(self.path, exc, opening=opening) from exc
