"""The local ledger: every submission aif ever made, in one SQLite file.

The ledger lives at ``aif_home() / "ledger.sqlite"``. Several aif processes
may use it at once: opening it, its schema and its transactions (WAL, one
``BEGIN IMMEDIATE`` per write, :meth:`Ledger.batch`) are ``gateway.ledger_store``'s.
Here are the writes. Ids and submission tokens are random (``os.urandom``, what
``secrets`` reads) and additionally checked against the table inside the write's
transaction, with ``UNIQUE`` constraints as the last guard.

Nothing secret is stored here: no environment values, no keys, no passwords;
only what aif decided and what the scheduler answered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from gateway.errors import UsageError
from gateway.ledger_errors import ledger_error
from gateway.ledger_reads import _chunks
from gateway.ledger_records import (
    _JOB_COLUMNS,
    _STATE_BY_VALUE,
    BUSY_TIMEOUT_SECONDS,
    ID_PREFIX,
    ID_TOKEN_LENGTH,
    LEDGER_FILENAME,
    SUMMARY_FIELDS,
    TOKEN_BYTES,
    LedgerJob,
    StateChange,
    _check_hash,
    _check_intent,
    _now,
    _slurm_state,
    _unresolved,
    default_ledger_path,
    new_job_id,
    new_submission_token,
    spec_sha256,
)
from gateway.ledger_schema import SCHEMA_VERSION, Migration
from gateway.ledger_store import LedgerStore
from gateway.states import (
    NOT_SUBMITTED_STATES,
    JobState,
    is_terminal,
)

__all__ = [
    "BUSY_TIMEOUT_SECONDS",
    "ID_PREFIX",
    "ID_TOKEN_LENGTH",
    "LEDGER_FILENAME",
    "SCHEMA_VERSION",
    "SUMMARY_FIELDS",
    "TOKEN_BYTES",
    "Ledger",
    "LedgerJob",
    "Migration",
    "StateChange",
    "default_ledger_path",
    "is_terminal",
    "ledger_error",
    "new_job_id",
    "new_submission_token",
    "spec_sha256",
]


# --------------------------------------------------------------------------
# The ledger
# --------------------------------------------------------------------------


class Ledger(LedgerStore):
    """The local record of every submission. Use as a context manager."""

    # -- helpers (call inside _write) ----------------------------------------

    def _fresh(self, column: str, make: Callable[[], str]) -> str:
        # column is one of our own literals, never user input.
        while True:
            value = make()
            taken = self._conn.execute(f"SELECT 1 FROM jobs WHERE {column} = ?", (value,)).fetchone()
            if taken is None:
                return value

    def _insert(
        self,
        *,
        site: str,
        name: str,
        spec_path: str,
        spec_hash: str,
        state: JobState,
        message: str,
        workdir: str,
        outputs: Sequence[str],
        stdout_path: str,
        array_size: int | None,
        depends_on: str | None,
        submission_key: str = "",
        item: str = "",
        claim_gen: int = 0,
        journal_dir: str = "",
        slurm_name: str = "",
        placement: str = "",
        array_token: str = "",
        array_task: int | None = None,
        job_id: str | None = None,
        token: str | None = None,
        slurm_job_id: str | None = None,
    ) -> str:
        """One new row; ``job_id`` and ``token`` are fresh unless given (an adopted job keeps its own)."""
        conn = self._conn
        if depends_on is not None and self._row(depends_on) is None:
            raise UsageError(f"no job {depends_on} in the ledger (given as a dependency)")
        job_id = job_id or self._fresh("id", new_job_id)
        token = token or self._fresh("token", new_submission_token)
        now = _now()
        conn.execute(
            f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                site,
                slurm_job_id,
                name,
                spec_path,
                spec_hash,
                token,
                state.value,
                message,
                workdir,
                json.dumps(list(outputs)),
                stdout_path,
                array_size,
                depends_on,
                now,
                now,
                submission_key,
                item,
                claim_gen,
                journal_dir,
                slurm_name,
                placement,
                array_token,
                array_task,
            ),
        )
        conn.execute(
            "INSERT INTO state_changes (job_id, state, reason, at) VALUES (?, ?, '', ?)",
            (job_id, state.value, now),
        )
        return job_id

    def _set_state(
        self,
        job: LedgerJob,
        state: JobState,
        reason: str,
        *,
        slurm_job_id: str | None = None,
        message: str | None = None,
    ) -> StateChange | None:
        """Write a new state (and the extra fields given); history only on change."""
        now = _now()
        self._conn.execute(
            "UPDATE jobs SET state = ?, reason = ?, updated_at = ?, "
            "slurm_job_id = COALESCE(?, slurm_job_id), message = COALESCE(?, message) "
            "WHERE id = ?",
            (state.value, reason, now, slurm_job_id, message, job.id),
        )
        if state == job.state and reason == job.reason:
            return None
        self._conn.execute(
            "INSERT INTO state_changes (job_id, state, reason, at) VALUES (?, ?, ?, ?)",
            (job.id, state.value, reason, now),
        )
        return StateChange(job_id=job.id, state=state, reason=reason, at=now)

    # -- writes ------------------------------------------------------------

    def record_intent(
        self,
        *,
        site: str,
        name: str,
        spec_path: str,
        spec_hash: str,
        workdir: str,
        outputs: Sequence[str],
        stdout_path: str,
        array_size: int | None,
        depends_on: str | None,
    ) -> LedgerJob:
        """Record a submission about to be made: state SUBMITTING, fresh id and token.

        Call this BEFORE sending anything to the site, and pass the returned
        ``token`` to Slurm (``--comment``): if the answer to sbatch is lost,
        the job can still be found at the site by that token.
        """
        [job] = self.record_intents(
            [
                {
                    "site": site,
                    "name": name,
                    "spec_path": spec_path,
                    "spec_hash": spec_hash,
                    "workdir": workdir,
                    "outputs": outputs,
                    "stdout_path": stdout_path,
                    "array_size": array_size,
                    "depends_on": depends_on,
                }
            ]
        )
        return job

    def record_intents(self, intents: Sequence[dict[str, Any]]) -> list[LedgerJob]:
        """Many :meth:`record_intent` calls in one transaction (one fsync for a batch).

        Each item takes the keyword arguments of :meth:`record_intent`.
        """
        for intent in intents:
            _check_intent(intent)
        with self._write():
            ids = [self._insert(state=JobState.SUBMITTING, message="", **intent) for intent in intents]
            made = self._require_many(ids)
            return [made[job_id] for job_id in ids]

    def record_paths(self, paths: Iterable[tuple[Any, ...]]) -> None:
        """Set ``(job_id, workdir, stdout_path[, slurm_name[, array_token, array_task]])`` of jobs
        still SUBMITTING, in one transaction.

        The workdir and Slurm name contain the job's own id, so they are known
        only after :meth:`record_intents` gave the id, and before anything is sent.
        A job sent on its own (no array token given) is no array's task.
        """
        updates = []
        for job_id, workdir, stdout_path, *rest in paths:
            array_token = str(rest[1]) if len(rest) > 1 else ""
            array_task = int(rest[2]) if len(rest) > 2 and array_token else None
            updates.append((workdir, stdout_path, rest[0] if rest else None, array_token, array_task, job_id))
        with self._write():
            before = self._conn.total_changes
            self._conn.executemany(
                "UPDATE jobs SET workdir = ?, stdout_path = ?, slurm_name = COALESCE(?, slurm_name), "
                "array_token = ?, array_task = ? WHERE id = ? AND state = ?",
                [(*update, JobState.SUBMITTING.value) for update in updates],
            )
            if self._conn.total_changes - before != len(updates):
                # Some job is not there or not SUBMITTING any more: say which, change nothing.
                jobs = self._require_many([update[-1] for update in updates])
                stuck = next((job for job in jobs.values() if job.state != JobState.SUBMITTING), None)
                what = f"job {stuck.id} is {stuck.state}" if stuck else "a job is listed twice"
                raise ValueError(f"{what}; its paths are fixed")

    def mark_submitted_many(self, submitted: Iterable[tuple[str, str]]) -> None:
        """:meth:`mark_submitted` for ``(job_id, slurm_job_id)`` pairs, in one transaction (the jobs
        are not read back: a batch's caller reads them once, when it needs them)."""
        pairs = list(submitted)
        with self._write():
            jobs = self._require_many([job_id for job_id, _ in pairs])
            for job_id, slurm_job_id in pairs:
                job = jobs.pop(job_id, None) or self._require(job_id)  # a job given twice: as it is now
                if job.slurm_job_id == slurm_job_id:
                    continue
                if not job.unresolved:
                    raise ValueError(f"job {job_id} is {job.state}, not Slurm job {slurm_job_id}")
                self._set_state(job, JobState.PENDING, "", slurm_job_id=slurm_job_id)

    def record_invalid(
        self,
        *,
        spec_path: str,
        spec_hash: str,
        message: str,
        site: str = "",
        name: str = "",
    ) -> LedgerJob:
        """Record a spec that was refused before anything was submitted (INVALID)."""
        _check_hash(spec_hash)
        with self._write():
            job_id = self._insert(
                site=site,
                name=name,
                spec_path=spec_path,
                spec_hash=spec_hash,
                state=JobState.INVALID,
                message=message,
                workdir="",
                outputs=(),
                stdout_path="",
                array_size=None,
                depends_on=None,
            )
            return self._require(job_id)

    def mark_submitted(self, job_id: str, slurm_job_id: str, state: JobState = JobState.PENDING) -> LedgerJob:
        """The site accepted the job as ``slurm_job_id``; it is now in ``state``.

        Idempotent when the job already carries this Slurm id.
        """
        if not slurm_job_id:
            raise ValueError("mark_submitted needs the Slurm job id")
        state = _slurm_state(state)
        with self._write():
            job = self._require(job_id)
            if job.slurm_job_id == slurm_job_id:
                return job
            if not job.unresolved:
                raise ValueError(
                    f"job {job_id} is {job.state}"
                    + (f" as Slurm job {job.slurm_job_id}" if job.slurm_job_id else "")
                    + f", it cannot become Slurm job {slurm_job_id}"
                )
            self._set_state(job, state, "", slurm_job_id=slurm_job_id)
            return self._require(job_id)

    def mark_not_submitted(self, job_id: str, state: JobState, message: str) -> LedgerJob:
        """Nothing was submitted, and that is proven: the scheduler refused (REJECTED),
        the site could not be reached (UNREACHABLE), or the submission stopped
        before this job was sent (NOT_SENT). ``message`` says what happened."""
        if state not in (JobState.REJECTED, JobState.UNREACHABLE, JobState.NOT_SENT):
            raise ValueError(f"mark_not_submitted takes REJECTED, UNREACHABLE or NOT_SENT, not {state!r}")
        state = JobState(state)
        with self._write():
            job = self._require(job_id)
            if job.state == state and job.message == message:
                return job
            if not job.unresolved:
                raise ValueError(f"job {job_id} is {job.state}, it cannot become {state}")
            self._set_state(job, state, "", message=message)
            return self._require(job_id)

    def mark_unresolved(self, job_id: str, reason: str) -> LedgerJob:
        """The job may have been sent, and the site cannot confirm it yet: UNKNOWN, with why.

        It stays resolvable: a later lookup by token (or the site's record)
        may still find it (:meth:`mark_submitted`) or prove it never sent.
        """
        with self._write():
            job = self._require(job_id)
            if not job.unresolved:
                raise ValueError(f"job {job_id} is {job.state}, it is not awaiting resolution")
            self._set_state(job, JobState.UNKNOWN, reason)
            return self._require(job_id)

    def record_adopted(
        self, intent: dict[str, Any], *, job_id: str, token: str, slurm_job_id: str | None
    ) -> LedgerJob:
        """A job another aif (another machine, or a lost ledger) submitted, found in the site's record.

        It keeps its own aif id and token; with no Slurm id it is UNKNOWN (sent, not yet confirmed).
        """
        _check_intent(intent)
        with self._write():
            existing = self._row(job_id)
            if existing is not None:
                return existing
            state = JobState.PENDING if slurm_job_id else JobState.UNKNOWN
            self._insert(
                state=state, message="", job_id=job_id, token=token, slurm_job_id=slurm_job_id, **intent
            )
            return self._require(job_id)

    def update_states(
        self, changes: Iterable[tuple[str, str, str]], *, unchanged_since: Mapping[str, str] | None = None
    ) -> list[StateChange]:
        """Apply ``(job_id, state, reason)`` updates from the scheduler, all at once.

        One transaction for the whole batch (an unknown job id rolls it all
        back): one read of the rows concerned, one write of what changed. A
        history row is added only when state or reason changed.
        Terminal states are sticky: a stale non-terminal state never replaces
        a terminal one, and jobs that were never submitted (REJECTED,
        UNREACHABLE, INVALID) are left alone. A terminal state may still be
        refined by another terminal state from Slurm (FAILED -> OUT_OF_MEMORY).
        ``unchanged_since`` (job id -> its ``updated_at`` when the caller read
        it): a job another process changed since is left alone, so an answer
        older than that process's (e.g. a shared one) never overwrites what it
        wrote. Returns the changes actually recorded.
        """
        batch = [(str(j), _slurm_state(s), str(r)) for j, s, r in changes]
        applied: list[StateChange] = []
        if not batch:
            return applied
        read_at = unchanged_since or {}
        with self._write():
            current = self._current_states({job_id for job_id, _, _ in batch})
            updates: list[tuple[str, str, str, str]] = []
            for job_id, state, reason in batch:
                if job_id not in current:
                    raise UsageError(f"no job {job_id} in the ledger")
                was, was_reason, has_slurm_id, updated_at = current[job_id]
                if was in NOT_SUBMITTED_STATES or _unresolved(was, has_slurm_id):
                    continue  # the scheduler cannot know about it (yet)
                if is_terminal(was) and not is_terminal(state):
                    continue  # stale
                if was == state and was_reason == reason:
                    continue
                if job_id in read_at and updated_at != read_at[job_id]:
                    continue  # changed by another process since the caller read it
                now = _now()
                current[job_id] = (state, reason, has_slurm_id, now)
                updates.append((state.value, reason, now, job_id))
                applied.append(StateChange(job_id=job_id, state=state, reason=reason, at=now))
            self._conn.executemany(
                "UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE id = ?", updates
            )
            self._conn.executemany(
                "INSERT INTO state_changes (job_id, state, reason, at) VALUES (?, ?, ?, ?)",
                [(c.job_id, c.state.value, c.reason, c.at) for c in applied],
            )
        return applied

    def _current_states(self, job_ids: Iterable[str]) -> dict[str, tuple[JobState, str, bool, str]]:
        """id -> (state, reason, has a Slurm id, updated_at) of these jobs, in a few queries."""
        found: dict[str, tuple[JobState, str, bool, str]] = {}
        for chunk in _chunks(list(job_ids)):
            rows = self._conn.execute(
                "SELECT id, state, reason, slurm_job_id IS NOT NULL, updated_at FROM jobs "
                f"WHERE id IN ({', '.join('?' for _ in chunk)})",
                chunk,
            )
            for job_id, state, reason, has_slurm_id, updated_at in rows:
                found[job_id] = (_STATE_BY_VALUE[state], reason, bool(has_slurm_id), updated_at)
        return found

    # -- attempts and failover ----------------------------------------------

    def record_attempts(self, attempts: Iterable[tuple[str, str, str, str]]) -> None:
        """``(job_id, site, outcome, detail)`` of submission attempts, in one transaction (one fsync
        for a batch), for ``aif explain``."""
        now = _now()
        rows = [(job_id, site, now, outcome, detail) for job_id, site, outcome, detail in attempts]
        with self._write():
            # A job that is not in the ledger fails the foreign key: nothing of the batch is kept.
            self._conn.executemany(
                "INSERT INTO attempts (job_id, site, at, outcome, detail) VALUES (?, ?, ?, ?, ?)", rows
            )

    def reassign(
        self, job_id: str, *, site: str, journal_dir: str, workdir: str, stdout_path: str
    ) -> LedgerJob:
        """Fail a job over to another site: allowed only while nothing was sent anywhere (proven).

        The job keeps its id and token (never two live jobs for one aif id);
        it goes back to SUBMITTING at ``site``, with that site's paths.
        """
        with self._write():
            job = self._require(job_id)
            if job.slurm_job_id is not None or job.state not in (
                JobState.SUBMITTING,
                JobState.UNREACHABLE,
                JobState.NOT_SENT,
            ):
                raise ValueError(f"job {job_id} is {job.state}: it cannot move to another site")
            self._conn.execute(
                "UPDATE jobs SET site = ?, journal_dir = ?, workdir = ?, stdout_path = ?, message = '', "
                "array_token = '', array_task = NULL WHERE id = ?",
                (site, journal_dir, workdir, stdout_path, job_id),
            )
            self._set_state(self._require(job_id), JobState.SUBMITTING, f"failed over to {site}")
            return self._require(job_id)
