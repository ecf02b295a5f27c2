"""The ledger's reads: one job, many, listings and counts, a job's history and attempts.

``Ledger`` (gateway.ledger) is these reads plus its writes; every read maps sqlite's errors
to one clear aif error (``ledger_error``), as every write does in ``Ledger._write``.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from gateway.errors import UsageError
from gateway.ledger_errors import ledger_error
from gateway.ledger_records import (
    _JOB_COLUMNS,
    _MIN_PREFIX_TOKEN_CHARS,
    _SUMMARY_COLUMNS,
    ID_PREFIX,
    LedgerJob,
    StateChange,
    _job_from_row,
)
from gateway.states import (
    ACTIVE_STATES,
    JobState,
)

_Read = TypeVar("_Read")
_Args = ParamSpec("_Args")


def _sqlite_errors_mapped(
    read: Callable[Concatenate[LedgerReads, _Args], _Read],
) -> Callable[Concatenate[LedgerReads, _Args], _Read]:
    """A read of the ledger whose sqlite errors become :func:`ledger_error` (writes: ``_write``)."""

    @functools.wraps(read)
    def mapped(self: LedgerReads, /, *args: _Args.args, **kwargs: _Args.kwargs) -> _Read:
        try:
            return read(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise ledger_error(self.path, exc) from exc

    return mapped


class LedgerReads:
    """The reads of a ledger; ``Ledger`` adds opening, migrating and writing."""

    path: Path
    _conn: sqlite3.Connection

    def _row(self, job_id: str) -> LedgerJob | None:
        row = self._conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job_from_row(row)

    def _require(self, job_id: str) -> LedgerJob:
        job = self._row(job_id)
        if job is None:
            raise UsageError(f"no job {job_id} in the ledger")
        return job

    def _rows_by_id(self, job_ids: Sequence[str]) -> dict[str, LedgerJob]:
        """The jobs with exactly these ids (those found), in a few queries."""
        rows: dict[str, LedgerJob] = {}
        for chunk in _chunks(list(dict.fromkeys(job_ids))):
            for row in self._conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id IN ({', '.join('?' for _ in chunk)})", chunk
            ):
                job = _job_from_row(row)
                rows[job.id] = job
        return rows

    def _require_many(self, job_ids: Sequence[str]) -> dict[str, LedgerJob]:
        """:meth:`_require` for many exact ids, in a few queries (a batch's jobs, read once)."""
        rows = self._rows_by_id(job_ids)
        missing = [job_id for job_id in job_ids if job_id not in rows]
        if missing:
            raise UsageError(f"no job {missing[0]} in the ledger")
        return rows

    @_sqlite_errors_mapped
    def get(self, job_id: str) -> LedgerJob:
        """The job with this id, or the only one whose id starts with it."""
        job = self._row(job_id)
        if job is not None:
            return job
        if job_id.startswith(ID_PREFIX) and len(job_id) >= len(ID_PREFIX) + _MIN_PREFIX_TOKEN_CHARS:
            rows = self._conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE substr(id, 1, ?) = ? ORDER BY seq LIMIT 6",
                (len(job_id), job_id),
            ).fetchall()
            if len(rows) == 1:
                return _job_from_row(rows[0])
            if rows:
                shown = ", ".join(str(r[0]) for r in rows[:5])
                more = ", ..." if len(rows) > 5 else ""
                raise UsageError(f"{job_id} matches several jobs in the ledger: {shown}{more}")
        raise UsageError(f"no job {job_id} in the ledger")

    @_sqlite_errors_mapped
    def get_many(self, job_ids: Sequence[str]) -> list[LedgerJob]:
        """The jobs with these ids, in the order given, in a few queries (a prefix or an
        unknown id is looked up as :meth:`get` does, with its errors)."""
        rows = self._rows_by_id(job_ids)
        return [rows[job_id] if job_id in rows else self.get(job_id) for job_id in job_ids]

    @_sqlite_errors_mapped
    def list_jobs(
        self,
        limit: int | None = None,
        site: str | None = None,
        active_only: bool = False,
        *,
        include_invalid: bool = True,
    ) -> list[LedgerJob]:
        """Jobs, newest first; optionally only one site's, only unfinished ones, no INVALID ones."""
        where: list[str] = []
        params: list[Any] = []
        if not include_invalid:
            where.append("state != ?")
            params.append(JobState.INVALID.value)
        if site is not None:
            where.append("site = ?")
            params.append(site)
        if active_only:
            active = sorted(s.value for s in ACTIVE_STATES)
            where.append(f"state IN ({', '.join('?' for _ in active)})")
            params.extend(active)
        return [_job_from_row(r) for r in self._newest_first(_JOB_COLUMNS, where, params, limit)]

    @_sqlite_errors_mapped
    def summaries(self, limit: int | None = None, *, include_invalid: bool = True) -> list[tuple[Any, ...]]:
        """The newest jobs as plain rows of :data:`SUMMARY_FIELDS`, newest first: what
        ``aif list --json`` prints, without building a :class:`LedgerJob` per row."""
        where = [] if include_invalid else ["state != ?"]
        params: list[Any] = [] if include_invalid else [JobState.INVALID.value]
        return self._newest_first(_SUMMARY_COLUMNS, where, params, limit)

    def _newest_first(
        self, columns: str, where: list[str], params: list[Any], limit: int | None
    ) -> list[tuple[Any, ...]]:
        """``columns`` of the jobs matching every ``where`` clause, newest first, at most ``limit``."""
        sql = f"SELECT {columns} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            if limit < 0:
                raise ValueError(f"limit must not be negative, not {limit}")
            sql += " LIMIT ?"
            params = [*params, limit]
        return self._conn.execute(sql, params).fetchall()

    @_sqlite_errors_mapped
    def count_jobs(self, *, include_invalid: bool = True) -> int:
        """How many rows the ledger holds (without INVALID ones unless asked)."""
        if include_invalid:
            row = self._conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
        else:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state != ?", (JobState.INVALID.value,)
            ).fetchone()
        return int(row[0])

    @_sqlite_errors_mapped
    def history(self, job_id: str) -> list[StateChange]:
        """Every state the job went through, oldest first."""
        job = self.get(job_id)
        rows = self._conn.execute(
            "SELECT job_id, state, reason, at FROM state_changes WHERE job_id = ? ORDER BY seq",
            (job.id,),
        ).fetchall()
        return [
            StateChange(job_id=str(j), state=JobState(str(s)), reason=str(r), at=str(a))
            for j, s, r, a in rows
        ]

    @_sqlite_errors_mapped
    def jobs_with_key(self, submission_key: str) -> list[LedgerJob]:
        """Every job of one submission (``aif submit --key``), oldest first."""
        rows = self._conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE submission_key = ? ORDER BY seq", (submission_key,)
        ).fetchall()
        return [_job_from_row(r) for r in rows]

    @_sqlite_errors_mapped
    def attempts(self, job_id: str) -> list[tuple[str, str, str, str]]:
        """(site, at, outcome, detail) of every attempt, oldest first."""
        rows = self._conn.execute(
            "SELECT site, at, outcome, detail FROM attempts WHERE job_id = ? ORDER BY seq", (job_id,)
        ).fetchall()
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    @_sqlite_errors_mapped
    def find_by_token(self, token: str) -> LedgerJob | None:
        row = self._conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE token = ?", (token,)).fetchone()
        return None if row is None else _job_from_row(row)

    @_sqlite_errors_mapped
    def unfinished_by_site(self) -> dict[str, list[LedgerJob]]:
        """Submitted jobs not yet in a terminal state, grouped by site (oldest first),
        so a status poller can ask each site once about all of its jobs."""
        active = sorted(s.value for s in ACTIVE_STATES)
        rows = self._conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE slurm_job_id IS NOT NULL "
            f"AND state IN ({', '.join('?' for _ in active)}) ORDER BY site, seq",
            active,
        ).fetchall()
        result: dict[str, list[LedgerJob]] = {}
        for row in rows:
            job = _job_from_row(row)
            result.setdefault(job.site, []).append(job)
        return result


# SQLite allows 999 host parameters per statement in old versions (32766 since 3.32).
_CHUNK = 900


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
