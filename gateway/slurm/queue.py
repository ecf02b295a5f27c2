"""The calling user's jobs, in the queue and after it: squeue, sacct and scancel.

Argv builders and parsers for status (``squeue_argv`` and ``parse_squeue``;
``sacct_argv`` and ``parse_sacct`` once a job has left squeue), for
cancelling (``scancel_by_name_argv``, whose bash program is
``scancel_by_name.sh`` beside this file), and for finding a job whose
submission answer was lost: by its token in squeue's comments, or by its
Slurm job name with ``sacct_by_name_argv``.

Field separators. Job names, comments and even reasons are free text: Slurm
passes ``|``, tabs, newlines and control bytes through unchanged (a name with a
newline was recorded). So squeue output uses ASCII unit separator (0x1F) between
fields and ASCII record separator (0x1E) at the end of every record, and puts
the free-text fields last with the name at the very end, split with maxsplit:
a stray separator or newline in a name cannot shift the fields of any record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from gateway.slurm.jobs import (
    _JOB_ID_RE,
    _RAW_JOB_ID_RE,
    JobRecord,
    SlurmOutputError,
    _checked_job_ids,
    _exit_status_for,
    _text_or_empty,
    _text_or_none,
    decode_exit_code_pair,
    decode_wait_status,
    normalize_state,
)

FIELD_SEPARATOR = "\x1f"
RECORD_END = "\x1e"

COMMENT_PREFIX = "aif:"


# --- squeue -----------------------------------------------------------------

# -O ("--Format") because exit_code has no -o letter. A field spec with only a
# suffix ("Name:<sep>") prints the full value: no padding, no truncation
# (checked with an 80-character name).
SQUEUE_FIELDS: tuple[str, ...] = (
    "JobID",  # raw unique id; the array's own id for its pending range
    "JobArrayID",  # 12 / 12_3 / 12_[4-9%2]
    "ArrayJobID",  # the array's id, or the job's own id when not an array
    "ArrayTaskID",  # N/A / 3 / 4-9%2
    "State",
    "Partition",
    "NodeList",
    "SubmitTime",
    "StartTime",
    "EndTime",
    "exit_code",  # raw wait status: 768 means exit 3
    # free text last, the most arbitrary (the name) at the very end
    "Reason",
    "Comment",
    "Name",
)


def squeue_format() -> str:
    """The ``-O`` value: every field ends with a unit separator, the record with 0x1E."""
    specs = [f"{name}:{FIELD_SEPARATOR}" for name in SQUEUE_FIELDS[:-1]]
    specs.append(f"{SQUEUE_FIELDS[-1]}:{RECORD_END}")
    return ",".join(specs)


def squeue_argv(job_ids: Sequence[str] | None = None) -> list[str]:
    """One squeue for the calling user's jobs, in every state Slurm still shows.

    With no ids (recommended for pollers) it asks for ``--me`` (Slurm >= 20.11)
    and the caller picks its jobs with ``select_jobs``: that never fails
    because a job already left the queue. With ids it adds ``-j``; then note
    that squeue exits 1 with ``slurm_load_jobs error: Invalid job id
    specified`` when *none* of the ids is still known (0 if at least one is),
    see ``squeue_found_no_jobs``. ``-t all`` is needed in both cases: without
    it squeue (even with -j) hides jobs that ended less than MinJobAge ago.
    Not tested: squeue also reads filters such as SQUEUE_PARTITION from the
    environment, so a site login profile setting one would narrow this query
    (the options given here override SQUEUE_STATES and SQUEUE_FORMAT2).
    """
    argv = ["squeue", "--me", "--noheader", "--states=all", f"--Format={squeue_format()}"]
    if job_ids is not None:
        argv.append("--jobs=" + ",".join(_checked_job_ids(job_ids)))
    return argv


def squeue_found_no_jobs(returncode: int, stderr: str) -> bool:
    """True when ``squeue -j`` failed only because none of the ids is known any more."""
    return returncode == 1 and "Invalid job id specified" in stderr


def parse_squeue(stdout: str) -> list[JobRecord]:
    """Records from ``squeue_argv`` output, in squeue's order.

    Raises SlurmOutputError for output that is not in our format.
    """
    records: list[JobRecord] = []
    chunks = stdout.split(RECORD_END)
    # Whatever follows the last record end is just squeue's newline.
    if chunks[-1].strip():
        raise SlurmOutputError(f"squeue output is not in aif's format: {chunks[-1][:200]!r}")
    for chunk in chunks[:-1]:
        # Each record but the first starts with the newline squeue printed
        # after the previous record end; names may contain newlines, so
        # remove exactly one.
        if chunk.startswith("\n"):
            chunk = chunk[1:]
        records.append(_parse_squeue_record(chunk))
    return records


def _parse_squeue_record(chunk: str) -> JobRecord:
    fields = chunk.split(FIELD_SEPARATOR, len(SQUEUE_FIELDS) - 1)
    if len(fields) != len(SQUEUE_FIELDS):
        raise SlurmOutputError(f"squeue record has {len(fields)} fields: {chunk[:200]!r}")
    (
        raw_job_id,
        array_id,
        array_job_id,
        array_task_id,
        raw_state,
        partition,
        nodelist,
        submit_time,
        start_time,
        end_time,
        wait_status_text,
        reason,
        comment,
        name,
    ) = fields
    if not _RAW_JOB_ID_RE.match(raw_job_id) or not _JOB_ID_RE.match(array_id):
        raise SlurmOutputError(f"squeue record has no job id: {chunk[:200]!r}")
    state = normalize_state(raw_state)
    try:
        exit_status, signal = decode_wait_status(int(wait_status_text))
    except ValueError:
        exit_status, signal = None, None
    exit_status, signal = _exit_status_for(state, exit_status, signal)
    task = _text_or_none(array_task_id)
    return JobRecord(
        job_id=array_id,
        array_job_id=array_job_id if task is not None else None,
        name=name,
        state=state,
        raw_state=raw_state,
        reason=_text_or_empty(reason),
        comment=_text_or_empty(comment),
        exit_code=exit_status,
        partition=partition,
        nodelist=_text_or_empty(nodelist),
        submit_time=_text_or_none(submit_time),
        start_time=_text_or_none(start_time),
        end_time=_text_or_none(end_time),
        raw_job_id=raw_job_id,
        array_task_id=task,
        exit_signal=signal,
    )


# --- sacct ------------------------------------------------------------------

SACCT_FIELDS: tuple[str, ...] = (
    "JobID",  # 12 / 12_3 (slurmdbd); the raw id under sacct -c
    "JobIDRaw",
    "State",
    "ExitCode",  # exit:signal
    "Partition",
    "NodeList",
    "Submit",
    "Start",
    "End",
    "Reason",  # always empty under sacct -c
    "Comment",  # always empty under sacct -c (jobcomp does not store it)
    "JobName",  # free text last
)

SacctSource = Literal["slurmdbd", "jobcomp"]


def sacct_argv(job_ids: Sequence[str], source: SacctSource) -> list[str]:
    """sacct for jobs that already left squeue (after MinJobAge).

    ``slurmdbd``: normal accounting, ``-X`` (allocations only, no steps).
    ``jobcomp``: ``sacct -c``, reading the JobCompType=jobcomp/filetxt file
    (sites without slurmdbd). Found on 22.05 for jobcomp:

    - ``-j`` filtering works, at any age (the file is not filtered by time).
      Array tasks are only known by their raw ids (``-j 7_0`` returns job 7,
      not the task) and stderr gets ``sacct: error: Unknown type ArrayJobId``
      noise, rc 0; so ask for tasks by ``JobRecord.raw_job_id``.
    - Every completion event is a line of its own: a requeued job shows
      NODE_FAIL/PENDING/FAILED records before its final one
      (``parse_sacct`` keeps the last per job).
    - A job name containing a newline breaks the file: any ``sacct -c`` that
      prints Start/End/Submit for that line segfaults (rc 139). ``-j`` keeps
      other users' broken lines out, so always pass ids (this function does).
    - A job name containing a space cuts the name there and leaves State
      empty (-> UNKNOWN): aif's job names should avoid spaces.
    - Comment and Reason are always empty; Submit shows the start time; the
      exit code of CANCELLED, TIMEOUT and PREEMPTED jobs is ``0:0`` (squeue
      said signal 15); a submission sbatch rejected ("Requested node
      configuration is not available") still appears, as FAILED ``0:1``.
    - Without read access to the file: ``sacct: fatal: open ...: Permission
      denied``; without slurmdbd, plain sacct says ``Slurm accounting storage
      is disabled`` (rc 1).
    """
    return [*_sacct_base(source), "--jobs=" + ",".join(_checked_job_ids(job_ids))]


def _sacct_base(source: SacctSource) -> list[str]:
    """sacct in aif's format, from the site's accounting source."""
    if source not in ("jobcomp", "slurmdbd"):
        raise ValueError(f"unknown sacct source: {source!r}")
    return [
        "sacct",
        "--completion" if source == "jobcomp" else "--allocations",
        "--noheader",
        "--parsable2",
        f"--delimiter={FIELD_SEPARATOR}",
        "--format=" + ",".join(SACCT_FIELDS),
    ]


def sacct_by_name_argv(names: Sequence[str], source: SacctSource, since: str) -> list[str]:
    """sacct for finished jobs by their Slurm job names (aif's carry the aif id), from ``since``.

    The second way to find a job whose submission answer was lost, once it
    left squeue: ``--name`` works for ``sacct -c`` too (checked on 22.05).
    ``since`` (``YYYY-MM-DD``) matters with slurmdbd, where sacct without
    ``-j`` only looks at jobs from midnight on.
    """
    for name in names:
        if not name or any(c in name for c in ", \n\t\0"):
            raise ValueError(f"not a Slurm job name aif gives: {name!r}")
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", since):
        raise ValueError(f"not a date: {since!r}")
    return [*_sacct_base(source), "--name=" + ",".join(names), f"--starttime={since}"]


def parse_sacct(stdout: str) -> list[JobRecord]:
    """Records from ``sacct_argv`` output: the last record per job (id and name), in order.

    sacct has no record terminator; a line that does not start a record (a
    job name with a newline in it) continues the previous record's name.
    """
    latest: dict[tuple[str, str], JobRecord] = {}
    records: list[list[str]] = []
    for line in stdout.split("\n"):
        fields = line.split(FIELD_SEPARATOR, len(SACCT_FIELDS) - 1)
        if len(fields) == len(SACCT_FIELDS) and _RAW_JOB_ID_RE.match(fields[1]):
            records.append(fields)
        elif records and line:
            records[-1][-1] += "\n" + line
    for fields in records:
        record = _sacct_record(fields)
        if record is not None:
            # Later lines are later events of the same job: the last one wins. The
            # name is part of the key: after a reinstall or MaxJobId wrap, one id
            # names several jobs, and only the name can tell them apart.
            key = (record.raw_job_id, record.name)
            latest.pop(key, None)
            latest[key] = record
    return list(latest.values())


def _sacct_record(fields: list[str]) -> JobRecord | None:
    (
        job_id,
        raw_job_id,
        raw_state,
        exit_text,
        partition,
        nodelist,
        submit_time,
        start_time,
        end_time,
        reason,
        comment,
        name,
    ) = fields
    # A line broken by a newline in a name shows up as a record of job 0.
    if raw_job_id == "0" or not _JOB_ID_RE.match(job_id):
        return None
    state = normalize_state(raw_state)
    exit_status, signal = _exit_status_for(state, *decode_exit_code_pair(exit_text))
    base, sep, task = job_id.partition("_")
    return JobRecord(
        job_id=job_id,
        array_job_id=base if sep else None,
        name=name,
        state=state,
        raw_state=raw_state,
        reason=_text_or_empty(reason),
        comment=_text_or_empty(comment),
        exit_code=exit_status,
        partition=partition,
        nodelist=_text_or_empty(nodelist),
        submit_time=_text_or_none(submit_time),
        start_time=_text_or_none(start_time),
        end_time=_text_or_none(end_time),
        raw_job_id=raw_job_id,
        array_task_id=task.strip("[]") if sep else None,
        exit_signal=signal,
    )


# --- scancel ----------------------------------------------------------------


# One scancel per job, each filtered by the job's name: the controller itself
# checks that the id still names that job, so an id reused since aif last
# looked is never signalled (recorded on 22.05: `scancel --name=wrong 1` leaves
# job 1 alone, rc 0; `--name` takes one name, a comma list matches nothing;
# with a base id and its name, every task of an array is cancelled).
# Also recorded: scancel's exit status proves nothing (an unknown or finished
# id exits 0 silently, another user's job rc 210, controller down rc 8), so
# aif confirms with squeue; no --me filter (`scancel --me 39_3` cancelled all
# pending tasks 39_[1-5]); a pending array task cancelled by id leaves no
# trace at all (no CANCELLED record, no jobcomp line). Neither does --name
# single out a task: `scancel --name=NAME 8_4` with task 4 still pending
# cancelled every pending task of array 8 ("Terminating job 8_[0-2,4-5]"),
# though a running task's own record is filtered right. So a task of an
# array of specs (an id ARRAYID_TASK) is cancelled by its id alone, right
# after the program checked with squeue that the array still has its name.
# Runs as: bash -c PROGRAM aif-cancel NAME ID [NAME ID ...]
_SCANCEL_BY_NAME_PROGRAM = Path(__file__).with_name("scancel_by_name.sh").read_text(encoding="utf-8")


def scancel_by_name_argv(targets: Sequence[tuple[str, str]]) -> list[str]:
    """One command that cancels each ``(job id, Slurm name)`` only while that id has that name.

    A '' name (a job of an older aif) is cancelled by id alone. A task
    ``ARRAYID_TASK`` is cancelled alone, never its array, after a squeue of
    the array (once per array, so put one array's tasks together) shows
    every record still named ``name``; a task without a name is never signalled.
    """
    if not targets:
        raise ValueError("scancel needs at least one job id")
    argv = ["bash", "-c", _SCANCEL_BY_NAME_PROGRAM, "aif-cancel"]
    for job_id, name in targets:
        [checked] = _checked_job_ids([job_id])
        if any(c in name for c in ", \n\t\0"):
            raise ValueError(f"not a Slurm job name aif gives: {name!r}")
        argv += [name, checked]
    return argv


_SCANCEL_ERROR_RE = re.compile(r"Kill job error on job id (\S+): (.*)")


def parse_scancel_errors(stderr: str) -> dict[str, str]:
    """Per-job errors scancel printed: ``{"12": "Invalid job id specified"}``."""
    return {m.group(1): m.group(2).strip() for m in _SCANCEL_ERROR_RE.finditer(stderr)}


# ---------------------------------------------------------------------------
# Finding a job by its submission token (idempotent retry)
# ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def submission_comment(token: str) -> str:
    """The ``--comment`` value that marks a job with its submission token."""
    if not _TOKEN_RE.match(token):
        raise ValueError(f"not a submission token: {token!r}")
    return COMMENT_PREFIX + token


def find_by_comment_argv() -> list[str]:
    """squeue of our jobs in every state; match with ``parse_find_by_comment``.

    squeue cannot filter by comment server-side, so this is ``squeue_argv()``
    and the same answer can serve status polling too. It only finds jobs
    still in squeue (up to MinJobAge, default 300 s, after they end).
    Finished jobs are not findable under ``sacct -c``: jobcomp/filetxt does
    not store the comment (its Comment column is always empty; recorded on
    22.05). It does store JobName and WorkDir, so a token carried there
    (no spaces: see ``sacct_argv``) would be findable with a ``sacct -c``
    over the whole file. With slurmdbd, ``sacct -o Comment`` only has it if
    the site sets ``AccountingStoreFlags=job_comment``; not verified here
    (no slurmdbd).
    """
    return squeue_argv()


def find_all_by_comment(stdout: str, token: str) -> list[str]:
    """Every job id (arrays as their base id) carrying the token, oldest first.

    More than one means a retry already duplicated a submission.
    """
    wanted = submission_comment(token)
    found = {
        record.array_job_id or record.job_id for record in parse_squeue(stdout) if record.comment == wanted
    }
    return sorted(found, key=int)


def find_tokens_in_queue(records: Iterable[JobRecord], tokens: Iterable[str]) -> dict[str, str]:
    """token -> the Slurm id (an array's base id) of the oldest job carrying it; one pass."""
    wanted = {submission_comment(token): token for token in tokens}
    found: dict[str, str] = {}
    for record in records:
        token = wanted.get(record.comment)
        if token is None:
            continue
        job_id = record.array_job_id or record.job_id
        if token not in found or int(job_id) < int(found[token]):
            found[token] = job_id
    return found


def parse_find_by_comment(stdout: str, token: str) -> str | None:
    """The job id (what ``sbatch --parsable`` printed) carrying the token, or None."""
    found = find_all_by_comment(stdout, token)
    return found[0] if found else None
