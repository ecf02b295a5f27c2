"""The ledger's records: job ids and submission tokens, one job's row (``LedgerJob``), its
state changes, how a row of the ``jobs`` table is read (columns, summary fields), and the
checks of what the ledger's writes are given."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.home import aif_home
from gateway.record import Record
from gateway.states import (
    SLURM_STATES,
    JobState,
    is_terminal,
)

LEDGER_FILENAME = "ledger.sqlite"
BUSY_TIMEOUT_SECONDS = 30.0

ID_PREFIX = "aif-"
ID_TOKEN_LENGTH = 10
TOKEN_BYTES = 16
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower case: 32 = 2**5
_MIN_PREFIX_TOKEN_CHARS = 3
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def default_ledger_path() -> Path:
    return aif_home() / LEDGER_FILENAME


def spec_sha256(path: Path | str) -> str:
    """The sha256 hex digest of a spec file's bytes, as stored in ``spec_hash``."""
    import hashlib  # here, not at the top: commands that only read the ledger start faster

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def new_job_id() -> str:
    """A fresh random federated id, such as ``aif-k3x9q2mzta`` (50 random bits).

    Uniqueness within a ledger is enforced by ``Ledger``, not by luck alone.
    """
    # 32 letters, 5 bits each: 50 bits of the system's random source (what `secrets` reads,
    # without importing it and the modules it brings) are exactly uniform over the ids.
    bits = int.from_bytes(os.urandom(8), "big") >> (64 - 5 * ID_TOKEN_LENGTH)
    return ID_PREFIX + "".join(_ID_ALPHABET[(bits >> (5 * i)) & 31] for i in range(ID_TOKEN_LENGTH))


def new_submission_token() -> str:
    """A fresh random submission token (passed to Slurm as ``--comment``)."""
    return "aif-tok-" + os.urandom(TOKEN_BYTES).hex()  # as secrets.token_hex


def _now() -> str:
    """Now, as a UTC ISO-8601 string with microseconds (the only time format used)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class LedgerJob(Record):
    """One submission (or attempted submission), as the ledger holds it.

    Times are UTC ISO-8601 strings (``2025-01-31T12:00:00.000000+00:00``).
    """

    id: str
    site: str
    slurm_job_id: str | None
    name: str
    spec_path: str
    spec_hash: str
    token: str
    state: JobState
    reason: str
    message: str
    workdir: str
    outputs: tuple[str, ...]
    stdout_path: str
    array_size: int | None
    depends_on: str | None
    created_at: str
    updated_at: str
    # The submission this job belongs to (``aif submit --key``), the spec's
    # content label within it, and the claim generation at the site.
    submission_key: str = ""
    item: str = ""
    claim_gen: int = 0
    # Where the site keeps its own record of the submission (absolute, at the site).
    journal_dir: str = ""
    # Slurm's job name for it, which carries the aif id: the proof of identity
    # that Slurm's records of finished jobs keep ('' for jobs of older aif).
    slurm_name: str = ""
    # Why it went where it went: the federation's ranking as JSON ('' if none).
    placement: str = ""
    # Sent as one task of an array of specs (``gateway.arrays``): the token the array
    # carries in Slurm (its comment) and the task that is this job ('' and None otherwise).
    # ``slurm_job_id`` is then Slurm's ``ARRAYID_TASK`` and ``slurm_name`` the array's.
    array_token: str = ""
    array_task: int | None = None

    @property
    def claim(self) -> str:
        """The claim file's name in the site's record: ``ITEM.GEN``."""
        # The journal (and the Slurm parsers it needs) is loaded only by what submits or settles.
        from gateway.journal import claim_name

        return claim_name(self.item, self.claim_gen) if self.item else ""

    @property
    def terminal(self) -> bool:
        return is_terminal(self.state)

    @property
    def unresolved(self) -> bool:
        """Maybe sent, no Slurm id known yet: SUBMITTING, or UNKNOWN without a Slurm id."""
        return _unresolved(self.state, self.slurm_job_id is not None)


class StateChange(Record):
    """One entry of a job's history: it entered ``state`` (for ``reason``) at ``at``."""

    job_id: str
    state: JobState
    reason: str
    at: str


_JOB_COLUMNS = (
    "id, site, slurm_job_id, name, spec_path, spec_hash, token, state, reason, message, "
    "workdir, outputs, stdout_path, array_size, depends_on, created_at, updated_at, "
    "submission_key, item, claim_gen, journal_dir, slurm_name, placement, array_token, array_task"
)


# What `aif list --json` prints of each job, in this order (the CLI names them).
SUMMARY_FIELDS = (
    "id",
    "site",
    "slurm_job_id",
    "state",
    "reason",
    "name",
    "message",
    "key",
    "submitted_at",
    "updated_at",
)
_SUMMARY_COLUMNS = (
    "id, site, slurm_job_id, state, reason, name, message, submission_key, created_at, updated_at"
)

_STATE_BY_VALUE = {state.value: state for state in JobState}


def _job_from_row(row: Sequence[Any]) -> LedgerJob:
    # Called once per row of every listing (10,000 rows in one `aif list --all`):
    # sqlite already returns str/int/None for these columns, so no conversions,
    # a dict lookup for the state and no JSON parse for the usual empty outputs.
    (
        job_id,
        site,
        slurm_job_id,
        name,
        spec_path,
        spec_hash,
        token,
        state,
        reason,
        message,
        workdir,
        outputs,
        stdout_path,
        array_size,
        depends_on,
        created_at,
        updated_at,
        submission_key,
        item,
        claim_gen,
        journal_dir,
        slurm_name,
        placement,
        array_token,
        array_task,
    ) = row
    return LedgerJob(
        id=job_id,
        site=site,
        slurm_job_id=slurm_job_id,
        name=name,
        spec_path=spec_path,
        spec_hash=spec_hash,
        token=token,
        state=_STATE_BY_VALUE.get(state) or JobState(state),
        reason=reason,
        message=message,
        workdir=workdir,
        outputs=() if outputs == "[]" else tuple(str(o) for o in json.loads(outputs)),
        stdout_path=stdout_path,
        array_size=array_size,
        depends_on=depends_on,
        created_at=created_at,
        updated_at=updated_at,
        submission_key=submission_key,
        item=item,
        claim_gen=claim_gen,
        journal_dir=journal_dir,
        slurm_name=slurm_name,
        placement=placement,
        array_token=array_token,
        array_task=array_task,
    )


# -- checks of what the ledger is given (its writes call them) ----------------------


def _slurm_state(state: str) -> JobState:
    if state not in SLURM_STATES:
        raise ValueError(f"{state!r} is not a Slurm job state")
    return JobState(state)


def _check_intent(intent: dict[str, Any]) -> None:
    if not intent.get("site"):
        raise ValueError("record_intent needs a site")
    _check_hash(str(intent.get("spec_hash", "")))
    array_size = intent.get("array_size")
    if array_size is not None and array_size < 1:
        raise ValueError(f"array_size must be at least 1, not {array_size}")
    if isinstance(intent.get("outputs"), str):
        raise TypeError("outputs must be a sequence of paths, not one string")


def _check_hash(spec_hash: str) -> None:
    if not _SHA256_HEX.fullmatch(spec_hash):
        raise ValueError(f"spec_hash must be a lower-case sha256 hex digest, not {spec_hash!r}")


def _unresolved(state: JobState, has_slurm_id: bool) -> bool:
    """Maybe sent, no Slurm id known yet (:attr:`LedgerJob.unresolved`, also for a row's
    state and whether it has a Slurm id)."""
    return state == JobState.SUBMITTING or (state == JobState.UNKNOWN and not has_slurm_id)
