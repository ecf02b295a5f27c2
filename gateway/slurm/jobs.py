"""Jobs as Slurm names and reports them: states, ids, exit codes, one record per job.

The base of ``gateway.slurm``: the map from every state name squeue and sacct
print to a ``JobState`` (the vocabulary itself is ``gateway.states``), job ids
and the checks that keep them out of option syntax, exit codes, and
``JobRecord``, which the squeue and sacct parsers (``gateway.slurm.queue``)
fill. Shared by the whole package: ``SlurmOutputError`` (output not in the
format aif asked for) and ``is_controller_unreachable`` (any client's error
text).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from gateway.errors import AifError
from gateway.record import Record
from gateway.states import JobState


class SlurmOutputError(AifError):
    """Slurm printed something that is not what the command we built produces."""


def is_controller_unreachable(text: str) -> bool:
    """True if a Slurm command's error text says slurmctld could not be reached.

    Every client prints it this way (recorded for sbatch, squeue, sinfo and
    scancel); callers turn it into ``SiteUnreachable`` rather than a rejection.
    """
    return "Unable to contact slurm controller" in text


# ---------------------------------------------------------------------------
# Job states
# ---------------------------------------------------------------------------


# Every name squeue and sacct print (long form and squeue's %t compact form).
# Slurm prints a state *flag* instead of the base state while the flag is set
# (job_state_string()), so the flags are here too, mapped to what the job is
# doing from the user's point of view.
_STATE_MAP: Mapping[str, JobState] = {
    # base states
    "PENDING": JobState.PENDING,
    "PD": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "R": JobState.RUNNING,
    # Suspended/stopped jobs keep their allocation and will continue.
    "SUSPENDED": JobState.RUNNING,
    "S": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "CD": JobState.COMPLETED,
    "CANCELLED": JobState.CANCELLED,
    "CA": JobState.CANCELLED,
    "FAILED": JobState.FAILED,
    "F": JobState.FAILED,
    "TIMEOUT": JobState.TIMEOUT,
    "TO": JobState.TIMEOUT,
    # DEADLINE: killed because its --deadline passed: a time-limit ending.
    "DEADLINE": JobState.TIMEOUT,
    "DL": JobState.TIMEOUT,
    "NODE_FAIL": JobState.NODE_FAIL,
    "NF": JobState.NODE_FAIL,
    # BOOT_FAIL: the allocated node never came up: a node failure.
    "BOOT_FAIL": JobState.NODE_FAIL,
    "BF": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
    "PR": JobState.PREEMPTED,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "OOM": JobState.OUT_OF_MEMORY,
    # flags shown while set: the job holds (or is getting) its allocation
    "COMPLETING": JobState.RUNNING,  # script done, epilog/cleanup still running
    "CG": JobState.RUNNING,
    "CONFIGURING": JobState.RUNNING,  # allocated, nodes booting
    "CF": JobState.RUNNING,
    "POWER_UP_NODE": JobState.RUNNING,  # newer Slurm's name for the same wait
    "RESIZING": JobState.RUNNING,
    "RS": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,  # being sent a signal (e.g. before its end)
    "SI": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,  # SIGSTOPped, keeps its allocation
    "ST": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,  # burst-buffer stage-out: not finished yet
    "SO": JobState.RUNNING,
    # flags of jobs going back into the queue
    "REQUEUED": JobState.PENDING,
    "RQ": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RF": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "RH": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RD": JobState.PENDING,
    # SPECIAL_EXIT: the script exited with a RequeueExitHold code and sits held
    # until someone releases it; for a gateway that is a failed run, and
    # waiting for it would hang forever.
    "SPECIAL_EXIT": JobState.FAILED,
    "SE": JobState.FAILED,
    # REVOKED: a federated sibling started elsewhere; it will not run here.
    "REVOKED": JobState.CANCELLED,
    "RV": JobState.CANCELLED,
}


def normalize_state(raw: str) -> JobState:
    """Map any squeue/sacct state text to a JobState; anything else is UNKNOWN.

    Copes with sacct's decorations: ``CANCELLED by 1001``, a ``+`` where
    sacct truncated a column (``CANCELLED+``), and comma lists such as
    ``RUNNING,COMPLETING`` (the first known name wins).
    """
    for part in raw.strip().upper().split(","):
        words = part.split()
        if not words:
            continue
        name = words[0].rstrip("+")
        state = _STATE_MAP.get(name)
        if state is not None:
            return state
    return JobState.UNKNOWN


# ---------------------------------------------------------------------------
# Job ids, exit codes and small field helpers
# ---------------------------------------------------------------------------

# "12", "12_3", and squeue's pending-array form "12_[0-9]" / "12_[1-2,4-5%2]".
_JOB_ID_RE = re.compile(r"^[0-9]+(?:_(?:[0-9]+|\[[0-9,%:\-]+\]))?$")
_RAW_JOB_ID_RE = re.compile(r"^[0-9]+$")


def is_job_id(text: str) -> bool:
    """True if ``text`` is a Slurm job id aif may put on a command line."""
    return bool(_JOB_ID_RE.match(text))


def _checked_job_ids(job_ids: Iterable[str]) -> list[str]:
    # Ids go straight into argv: one that looked like an option
    # ("--user=bob") would change what the command does, so refuse it.
    checked = list(job_ids)
    for job_id in checked:
        if not isinstance(job_id, str) or not is_job_id(job_id):
            raise ValueError(f"not a Slurm job id: {job_id!r}")
    if not checked:
        raise ValueError("no job ids given")
    return checked


def decode_wait_status(status: int) -> tuple[int | None, int | None]:
    """Split the raw wait status squeue's ``exit_code`` prints into (exit, signal).

    squeue shows ``768`` for ``exit 3`` and ``15`` for a job killed by SIGTERM
    (recorded); sacct/scontrol show the same as ``3:0`` and ``0:15``.
    """
    signal = status & 0x7F
    if signal:
        return None, signal
    return (status >> 8) & 0xFF, None


def decode_exit_code_pair(text: str) -> tuple[int | None, int | None]:
    """Decode sacct's ``exit:signal`` (``3:0`` -> (3, None), ``0:15`` -> (None, 15)).

    When a signal ended the job the exit part is meaningless (Slurm prints 0),
    so it is reported as None rather than as a misleading success.
    """
    exit_text, _, signal_text = text.strip().partition(":")
    try:
        exit_status = int(exit_text)
        signal = int(signal_text) if signal_text else 0
    except ValueError:
        return None, None
    if signal:
        return None, signal
    return exit_status, None


_UNSET_WORDS = frozenset({"", "(null)", "N/A", "None", "Unknown", "None assigned"})


def _text_or_empty(value: str) -> str:
    return "" if value.strip() in _UNSET_WORDS else value


def _text_or_none(value: str) -> str | None:
    return None if value.strip() in _UNSET_WORDS else value.strip()


# ---------------------------------------------------------------------------
# Job records (squeue and sacct)
# ---------------------------------------------------------------------------


class JobRecord(Record):
    """One job (or array task, or a pending array's unstarted tasks) at a site.

    ``job_id`` is how users and ``--parsable`` name it: ``"12"``, ``"12_3"``,
    or squeue's ``"12_[4-9]"`` for the array tasks that have not started yet
    (that one record stands for all of them; see ``array_task_ids``).
    ``raw_job_id`` is Slurm's unique number for this record (an array task has
    its own, e.g. 16 for 7_0); ``sacct -c`` knows array tasks *only* by it.
    ``exit_code`` is the job script's exit status once the job has ended,
    None while it has not, or when a signal ended it (then ``exit_signal``).
    Times are Slurm's text, unparsed (a pending job's start time is Slurm's
    estimate).
    """

    job_id: str
    array_job_id: str | None
    name: str
    state: JobState
    raw_state: str
    reason: str
    comment: str
    exit_code: int | None
    partition: str
    nodelist: str
    submit_time: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    raw_job_id: str = ""
    array_task_id: str | None = None
    exit_signal: int | None = None

    @property
    def is_pending_array_range(self) -> bool:
        """True for squeue's one record standing for several unstarted array tasks."""
        return self.job_id.endswith("]")

    @property
    def array_task_ids(self) -> tuple[int, ...]:
        """The task ids this record stands for: one, many (pending range) or none."""
        if self.array_task_id is None:
            return ()
        return tuple(expand_array_tasks(self.array_task_id))

    def stands_for_task(self, task: int) -> bool:
        """True if this record is array task ``task`` or a pending range holding it."""
        if self.array_task_id is None:
            return False
        return any(task in tasks for tasks in _array_task_ranges(self.array_task_id))


def _array_task_ranges(spec: str) -> list[range]:
    # Slurm prints task lists as "1-2,4-5%2" (%N: at most N at once); the
    # input syntax also allows steps, "0-15:4".
    ranges: list[range] = []
    for part in spec.split("%", 1)[0].split(","):
        part = part.strip()
        if not part:
            continue
        bounds, _, step_text = part.partition(":")
        first_text, _, last_text = bounds.partition("-")
        try:
            first = int(first_text)
            last = int(last_text) if last_text else first
            step = int(step_text) if step_text else 1
        except ValueError as exc:
            raise SlurmOutputError(f"unreadable array task list {spec!r}") from exc
        if step < 1 or last < first:
            raise SlurmOutputError(f"unreadable array task list {spec!r}")
        ranges.append(range(first, last + 1, step))
    return ranges


def expand_array_tasks(spec: str) -> list[int]:
    """``"1-2,4-5%2"`` -> [1, 2, 4, 5]; also ``"0-15:4"`` steps. ``%N`` is a throttle."""
    return [task for tasks in _array_task_ranges(spec) for task in tasks]


def count_array_tasks(spec: str) -> int:
    """How many tasks ``spec`` names, without building the list (arrays can be huge)."""
    return sum(len(tasks) for tasks in _array_task_ranges(spec))


def select_jobs(records: Iterable[JobRecord], job_ids: Iterable[str]) -> list[JobRecord]:
    """The records that answer for ``job_ids``, in their original order.

    ``"12"`` matches job 12, every task of array 12 and its pending range,
    and a record whose raw id is 12 (how ``sacct -c`` names array tasks).
    ``"12_3"`` matches task 3 of array 12, or the pending-range record of
    array 12 when task 3 has not started yet.
    """
    wanted_plain: set[str] = set()
    wanted_tasks: dict[str, set[int]] = {}
    for job_id in job_ids:
        base, sep, task = job_id.partition("_")
        if sep and task.isdigit():
            wanted_tasks.setdefault(base, set()).add(int(task))
        else:
            wanted_plain.add(job_id)
    selected: list[JobRecord] = []
    for record in records:
        base = record.array_job_id or record.job_id
        if (
            record.job_id in wanted_plain
            or record.raw_job_id in wanted_plain
            or (record.array_job_id is not None and record.array_job_id in wanted_plain)
            or any(record.stands_for_task(task) for task in wanted_tasks.get(base, ()))
        ):
            selected.append(record)
    return selected


def _exit_status_for(
    state: JobState, exit_status: int | None, signal: int | None
) -> tuple[int | None, int | None]:
    # A job that has not ended has no exit status yet; squeue still prints
    # the previous run's status for a requeued job (recorded: 15), drop it.
    if not state.terminal:
        return None, None
    return exit_status, signal
