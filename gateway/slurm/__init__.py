"""The Slurm dialect: the argv lists aif runs at a site, and parsers for what comes back.

Pure: no I/O, no subprocess. Transports run the argv lists (quoting them where a
shell stands in between) and hand back stdout/stderr; this module reads them.

Everything here was checked against real Slurm 22.05; the recordings the unit
tests replay are in ``tests/data/slurm/`` (its README says how each was made).

Field separators. Job names, comments and even reasons are free text: Slurm
passes ``|``, tabs, newlines and control bytes through unchanged (a name with a
newline was recorded). So squeue output uses ASCII unit separator (0x1F) between
fields and ASCII record separator (0x1E) at the end of every record, and puts
the free-text fields last with the name at the very end, split with maxsplit:
a stray separator or newline in a name cannot shift the fields of any record.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
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
    count_array_tasks,
    decode_exit_code_pair,
    decode_wait_status,
    expand_array_tasks,
    is_controller_unreachable,
    is_job_id,
    normalize_state,
    select_jobs,
)
from gateway.states import JobState

__all__ = [
    "CLAIMED_RC",
    "COMMENT_PREFIX",
    "FIELD_SEPARATOR",
    "RECORD_END",
    "RECORD_FAILED_RC",
    "SACCT_FIELDS",
    "SINFO_FIELDS",
    "SQUEUE_FIELDS",
    "SUBMISSION_SETUP_FAILED",
    "JobRecord",
    "JobState",
    "Outcome",
    "PartitionLoad",
    "QueueDepth",
    "SacctSource",
    "SlurmOutputError",
    "SubmissionItem",
    "SubmissionOutcome",
    "build_submission_bundle",
    "classify_sbatch",
    "count_array_tasks",
    "decode_exit_code_pair",
    "decode_wait_status",
    "expand_array_tasks",
    "find_all_by_comment",
    "find_by_comment_argv",
    "find_tokens_in_queue",
    "gres_count",
    "is_controller_unreachable",
    "is_job_id",
    "normalize_state",
    "parse_find_by_comment",
    "parse_queue_depth",
    "parse_sacct",
    "parse_scancel_errors",
    "parse_sinfo",
    "parse_slurm_duration",
    "parse_squeue",
    "parse_submission_output",
    "queue_depth_argv",
    "sacct_argv",
    "sacct_by_name_argv",
    "scancel_by_name_argv",
    "select_jobs",
    "sinfo_argv",
    "squeue_argv",
    "squeue_format",
    "squeue_found_no_jobs",
    "submission_argv",
    "submission_comment",
    "submission_program",
]

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
# trace at all (no CANCELLED record, no jobcomp line).
_SCANCEL_BY_NAME_PROGRAM = r"""set -u
failed=0
while [ "$#" -ge 2 ]; do
    if [ -n "$1" ]; then
        scancel --name="$1" -- "$2" || failed=$?
    else
        scancel -- "$2" || failed=$?
    fi
    shift 2
done
exit "$failed"
"""


def scancel_by_name_argv(targets: Sequence[tuple[str, str]]) -> list[str]:
    """One command that cancels each ``(job id, Slurm name)`` only while that id has that name.

    A '' name (a job of an older aif) is cancelled by id alone.
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
# Partition load (sinfo) and queue depth (squeue, all users)
# ---------------------------------------------------------------------------

SINFO_FIELDS: tuple[str, ...] = (
    "Partition",  # with a trailing * on the default partition
    "Available",  # up / down / drain / inact
    "StateLong",  # node state of this line's group: idle, mixed, drained, down*...
    "Nodes",
    "CPUsState",  # allocated/idle/other/total
    "Gres",  # per node: gpu:4, gpu:a100:4(S:0-1), (null)
    "GresUsed",  # per node too: gpu:1, gpu:a100:2(IDX:0-1)
    "Memory",  # MB per node
    "Time",  # partition MaxTime: 2-00:00:00, 1:00:00, infinite
)


@dataclass(frozen=True)
class PartitionLoad:
    """What one partition has and uses right now, summed over sinfo's node groups.

    ``available`` is sinfo's word (up/down/drain/inact). ``nodes_by_state``
    counts nodes by sinfo's long state (idle, mixed, allocated, draining,
    drained, down*...). ``cpus_other`` are CPUs of drained/down nodes.
    ``memory_mb`` is the largest node's memory; ``timelimit`` is the
    partition's MaxTime as printed, ``timelimit_seconds`` None if infinite.
    """

    partition: str
    default: bool
    available: str
    nodes_total: int
    nodes_by_state: Mapping[str, int] = field(hash=False)
    cpus_alloc: int
    cpus_idle: int
    cpus_other: int
    cpus_total: int
    gpus_total: int
    gpus_used: int
    gres: tuple[str, ...]
    memory_mb: int | None
    timelimit: str
    timelimit_seconds: int | None

    @property
    def up(self) -> bool:
        return self.available == "up"


def sinfo_argv() -> list[str]:
    """sinfo, one line per group of alike nodes in a partition.

    sinfo groups a partition's nodes whose state, configuration and GRES use
    are the same, and splits them otherwise (so two nodes using 1 and 2 GPUs
    make two lines). Every field is an admin-chosen name or a number, so a
    plain ``|`` separator is safe here.
    """
    fmt = ",".join(f"{name}:|" for name in SINFO_FIELDS)
    return ["sinfo", "--noheader", f"--Format={fmt}"]


def parse_sinfo(stdout: str) -> list[PartitionLoad]:
    """PartitionLoad per partition, in sinfo's order."""
    groups: dict[str, list[list[str]]] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        # the last spec also ends in "|", so there is one empty field more
        if len(fields) != len(SINFO_FIELDS) + 1 or fields[-1].strip():
            raise SlurmOutputError(f"sinfo line is not in aif's format: {line[:200]!r}")
        groups.setdefault(fields[0], []).append(fields[:-1])
    return [_partition_load(lines) for lines in groups.values()]


def _partition_load(lines: list[list[str]]) -> PartitionLoad:
    first = lines[0]
    name = first[0]
    nodes_by_state: dict[str, int] = {}
    cpus = [0, 0, 0, 0]
    nodes_total = gpus_total = gpus_used = 0
    gres: list[str] = []
    memory: int | None = None
    for _, _, node_state, nodes_text, cpus_text, gres_text, gres_used_text, mem_text, _ in lines:
        try:
            nodes = int(nodes_text)
            cpu_counts = [int(x) for x in cpus_text.split("/")]
        except ValueError as exc:
            raise SlurmOutputError(f"sinfo numbers unreadable: {nodes_text!r} {cpus_text!r}") from exc
        if len(cpu_counts) != 4:
            raise SlurmOutputError(f"sinfo CPU counts unreadable: {cpus_text!r}")
        nodes_total += nodes
        nodes_by_state[node_state] = nodes_by_state.get(node_state, 0) + nodes
        cpus = [a + b for a, b in zip(cpus, cpu_counts, strict=True)]
        # Gres and GresUsed are both per node: sinfo only groups nodes whose
        # usage is the same (recorded: two nodes using 1 GPU each print
        # Nodes=2, CPUsState summed 2/126/0/128, but GresUsed gpu:1).
        gpus_total += gres_count(gres_text, "gpu") * nodes
        gpus_used += gres_count(gres_used_text, "gpu") * nodes
        if _text_or_none(gres_text) is not None and gres_text not in gres:
            gres.append(gres_text)
        node_memory = _leading_int(mem_text)
        if node_memory is not None:
            memory = node_memory if memory is None else max(memory, node_memory)
    timelimit = first[8]
    return PartitionLoad(
        partition=name.rstrip("*"),
        default=name.endswith("*"),
        available=first[1],
        nodes_total=nodes_total,
        nodes_by_state=MappingProxyType(nodes_by_state),
        cpus_alloc=cpus[0],
        cpus_idle=cpus[1],
        cpus_other=cpus[2],
        cpus_total=cpus[3],
        gpus_total=gpus_total,
        gpus_used=gpus_used,
        gres=tuple(gres),
        memory_mb=memory,
        timelimit=timelimit,
        timelimit_seconds=parse_slurm_duration(timelimit),
    )


def _leading_int(text: str) -> int | None:
    match = re.match(r"\s*([0-9]+)", text)
    return int(match.group(1)) if match else None


def gres_count(gres: str, kind: str = "gpu") -> int:
    """Sum the counts of one GRES kind: ``gpu:a100:2(IDX:0-1),gpu:v100:1`` -> 3."""
    total = 0
    # Commas also appear inside "(S:0,2)" socket/index lists: drop those first.
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] != kind:
            continue
        if len(parts) == 1:
            total += 1  # "gpu" alone means one
            continue
        count = _leading_int(parts[-1])
        total += count if count is not None else 0
    return total


def parse_slurm_duration(text: str) -> int | None:
    """Slurm time text to seconds; None for ``infinite``/``UNLIMITED``/unreadable.

    Forms: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``.
    """
    text = text.strip()
    days = 0
    if "-" in text:
        day_text, _, text = text.partition("-")
        if not day_text.isdigit():
            return None
        days = int(day_text)
        parts = text.split(":")
        if not all(p.isdigit() for p in parts) or len(parts) > 3:
            return None
        hours, minutes, seconds = ([int(p) for p in parts] + [0, 0])[:3]
    else:
        parts = text.split(":")
        if not all(p.isdigit() for p in parts) or len(parts) > 3:
            return None
        numbers = [int(p) for p in parts]
        if len(numbers) == 1:
            hours, minutes, seconds = 0, numbers[0], 0
        elif len(numbers) == 2:
            hours, minutes, seconds = 0, numbers[0], numbers[1]
        else:
            hours, minutes, seconds = numbers
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass(frozen=True)
class QueueDepth:
    """Pending work waiting for one partition (all users), array tasks counted one by one."""

    partition: str
    pending_jobs: int
    pending_cpus: int


def queue_depth_argv() -> list[str]:
    """squeue of every user's pending jobs: partition, CPUs, array tasks. No free text."""
    return [
        "squeue",
        "--noheader",
        "--states=PENDING",
        "--Format=Partition:|,NumCPUs:|,ArrayTaskID:|",
    ]


def parse_queue_depth(stdout: str) -> list[QueueDepth]:
    """Pending jobs and CPUs per partition; a job pending for ``a,b`` counts in both."""
    jobs: dict[str, int] = {}
    cpus: dict[str, int] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 4 or fields[3].strip():
            raise SlurmOutputError(f"squeue line is not in aif's format: {line[:200]!r}")
        partitions, cpu_text, tasks_text, _ = fields
        tasks = 1 if _text_or_none(tasks_text) is None else count_array_tasks(tasks_text)
        job_cpus = _leading_int(cpu_text) or 0
        for partition in partitions.split(","):
            jobs[partition] = jobs.get(partition, 0) + tasks
            cpus[partition] = cpus.get(partition, 0) + tasks * job_cpus
    return [QueueDepth(name, jobs[name], cpus[name]) for name in jobs]


# ---------------------------------------------------------------------------
# Batched submission: one exec, a tar stream of scripts, one line per item
# ---------------------------------------------------------------------------

SUBMISSION_SETUP_FAILED = 97
"""Exit status of the submission program when it submitted nothing at all
(mktemp or tar failed); the reason is on its stderr."""

# Also Slurm's default job name when the script sets none; the program names it too.
_SCRIPT_FILE = "aif-job.sh"
_MAX_ITEMS = 1_000_000  # six-digit directory names

# Runs as: bash -c PROGRAM aif-submit  (stdin: the tar from build_submission_bundle).
# Every value (workdir, sbatch arguments, the record's paths) is read from files as
# data: nothing an item carries is ever part of this text, so no value can run anything.
# Written for bash >= 3.2 (no mapfile -d, which needs 4.4).
_SUBMISSION_PROGRAM = r"""set -u
# noclobber: `>` creates a claim only if it does not exist yet (O_EXCL), so two
# submissions can never both claim one item of the site's record.
set -C
# No umask change: sbatch hands the current umask to the job (SLURM_UMASK),
# and mkdir -p below creates the user's directories. mktemp -d is 0700 anyway.
workspace=$(mktemp -d "${TMPDIR:-/tmp}/aif-submit.XXXXXXXXXX") || {
    echo "aif-submit: cannot create a temporary directory" >&2
    exit 97
}
# Always remove the scripts, also when the connection drops.
trap 'rm -rf -- "$workspace"' EXIT
# bash runs these only once the running command (sbatch) returns: they only note
# the signal, so the answer of an sbatch that ran is still written to the record.
stop=
trap 'stop=129' HUP
trap 'stop=130' INT
trap 'stop=141' PIPE
trap 'stop=143' TERM
if ! tar -x -f - -C "$workspace" --no-same-owner 2>|"$workspace/tar-errors"; then
    echo "aif-submit: cannot unpack the submission bundle: $(cat -- "$workspace/tar-errors")" >&2
    exit 97
fi
one_line() {
    message=${1//$'\r'/}
    message=${message//$'\n'/ / }
    message=${message//$'\t'/ }
}
journal=
[ -f "$workspace/journal" ] && IFS= read -r -d '' journal <"$workspace/journal"
# Every workdir (and the record's directory) first, in ONE mkdir: a fork per job
# would cost more than its sbatch.
workdirs=()
count=0
while :; do
    printf -v item '%s/%06d' "$workspace" "$count"
    [ -d "$item" ] || break
    workdir=
    IFS= read -r -d '' workdir <"$item/workdir"
    workdirs[count]=$workdir
    count=$((count + 1))
done
wanted=()
[ -n "$journal" ] && [ ! -d "$journal" ] && wanted+=("$journal")
for workdir in ${workdirs[@]+"${workdirs[@]}"}; do
    [ -n "$workdir" ] && [ ! -d "$workdir" ] && wanted+=("$workdir")
done
if [ "${#wanted[@]}" -gt 0 ]; then
    mkdir -p -- "${wanted[@]}" 2>|"$workspace/mkdir-errors" </dev/null || true
fi
index=0
while [ "$index" -lt "$count" ] && [ -z "$stop" ]; do
    printf -v item '%s/%06d' "$workspace" "$index"
    index=$((index + 1))
    workdir=${workdirs[index - 1]}
    sbatch_args=()
    while IFS= read -r -d '' arg; do
        sbatch_args+=("$arg")
    done <"$item/args"
    record=
    if [ -f "$item/claim" ]; then
        { IFS= read -r -d '' claim; IFS= read -r -d '' token; IFS= read -r -d '' aif_id; } <"$item/claim"
        record=$journal/$claim
        # The intent, BEFORE sbatch: an item with no intent was provably never sent.
        if ! printf 'intent\t%s\t%s\n' "$token" "$aif_id" 2>/dev/null >"$record"; then
            held=
            if [ -f "$record" ]; then
                IFS= read -r held <"$record" || true
                one_line "$held"
                printf '%d\t%d\t%s\n' "$((index - 1))" -2 "$message"
            else
                printf '%d\t%d\t%s\n' "$((index - 1))" -3 \
                    "cannot write the site record $record: not submitted"
            fi
            continue
        fi
    fi
    # Not cd-ing anywhere: sbatch's working directory becomes the job's
    # submit directory, and the temporary directory is about to vanish.
    # Files instead of $(...) for the answers: one fork less per item.
    rc=0
    if [ -n "$workdir" ] && [ ! -d "$workdir" ]; then
        # The batch mkdir failed for this one: say why, for this item only.
        mkdir -p -- "$workdir" 2>|"$workspace/errors" </dev/null || rc=$?
    fi
    if [ "$rc" -eq 0 ]; then
        sbatch --parsable ${sbatch_args[@]+"${sbatch_args[@]}"} "$item/aif-job.sh" \
            >|"$workspace/output" 2>|"$workspace/errors" </dev/null || rc=$?
    fi
    output=
    if [ "$rc" -eq 0 ]; then
        IFS= read -r output <"$workspace/output"
    else
        output=$(cat -- "$workspace/errors")
        [ -n "$output" ] || output="exited with status $rc"
    fi
    one_line "$output"
    # The answer goes to the site's record first, then to us.
    [ -z "$record" ] || printf 'answer\t%d\t%s\n' "$rc" "$message" >>"$record"
    printf '%d\t%d\t%s\n' "$((index - 1))" "$rc" "$message"
done
[ -z "$stop" ] || exit "$stop"
exit 0
"""

# Answer codes the program uses besides sbatch's own exit status.
CLAIMED_RC = -2  # the item is already claimed in the site's record: not sent by us
RECORD_FAILED_RC = -3  # the site's record could not be written: not sent


@dataclass(frozen=True)
class SubmissionItem:
    """One job script to submit, with what sbatch needs around it.

    ``workdir``: absolute directory to ``mkdir -p`` before sbatch ('' for none).
    ``extra_args``: sbatch options in ``--name=value`` form, e.g.
    ``("--dependency=afterok:12",)``; each must start with ``-`` (a bare word
    would become sbatch's script argument).
    ``claim``: the item's file in the site's record (``ITEM.GEN``, see
    ``gateway.journal``), with the job's ``token`` and ``aif_id``; '' to
    submit without a record.
    """

    script: str
    workdir: str
    extra_args: tuple[str, ...] = ()
    claim: str = ""
    token: str = ""
    aif_id: str = ""


class Outcome(str, Enum):
    """What became of one submitted item, as the dialect classifies it."""

    ACCEPTED = "accepted"  # sbatch gave a job id
    REFUSED = "refused"  # the scheduler refused it (Slurm's words in ``error``): not submitted
    SITE_DOWN = "site down"  # the controller could not be reached: not submitted, retryable
    UNKNOWN = "unknown"  # maybe submitted: resolve by token before anything else
    CLAIMED = "claimed"  # another submission with the same key holds this item: not sent by us


@dataclass(frozen=True)
class SubmissionOutcome:
    """What became of one SubmissionItem (``kind`` says which case; see Outcome).

    ``job_id`` is set for ACCEPTED; ``error`` is sbatch's (or the program's)
    words otherwise; for CLAIMED it is the claim's first line. ``cluster``
    is set for ``12;cluster``.
    """

    index: int
    kind: Outcome
    job_id: str | None
    error: str
    cluster: str | None = None
    returncode: int | None = None

    def __post_init__(self) -> None:
        if (self.kind is Outcome.ACCEPTED) != (self.job_id is not None):
            raise ValueError("an accepted item, and only one, has a job id")

    @property
    def ok(self) -> bool:
        return self.kind is Outcome.ACCEPTED

    @property
    def unknown(self) -> bool:
        """True when the item may have been submitted although no job id came back."""
        return self.kind is Outcome.UNKNOWN


def submission_program() -> str:
    """The bash program run as ``bash -c PROGRAM aif-submit`` with the bundle on stdin.

    It unpacks the tar into ``mktemp -d`` (removed on exit), then per item in
    order: claims the item in the site's record (an ``intent`` line, created
    exclusively: an item someone already claimed is answered ``CLAIMED_RC``
    and not sent), ``mkdir -p -- workdir`` if set, ``sbatch --parsable [extra
    args] script``, appends the ``answer`` to the record, and prints exactly
    one line ``index<TAB>rc<TAB>job-id-or-error`` (error text on one line).
    A failing item does not stop the batch; the program exits 0 after the
    last item, or SUBMISSION_SETUP_FAILED before the first. A signal (the
    connection dropped: SIGHUP, SIGPIPE, SIGTERM) is acted on only once the
    running sbatch returned and its answer is in the record; then it exits
    129/141/143 without starting another item, still removing the temp dir.
    Items without an answer line are "unknown" here; the site's record
    tells which of them were sent (``gateway.journal``). Over SSH the
    program is one argv element of about 2 KiB (the 128 KiB argv limit only
    bites if scripts were put on the command line). It spans several lines,
    which a csh-family login shell would not accept inside quotes.

    Measured locally on the record cluster: 200 items in 1.05 s (plain
    ``sbatch`` loop: 0.93 s), 1.3 s when each item also has a workdir.
    """
    return _SUBMISSION_PROGRAM


def submission_argv() -> list[str]:
    """argv for a transport: run ``submission_program()`` with bash."""
    return ["bash", "-c", _SUBMISSION_PROGRAM, "aif-submit"]


def build_submission_bundle(items: Sequence[SubmissionItem], journal_dir: str = "") -> bytes:
    """An in-memory, byte-for-byte deterministic tar of the items.

    ``journal`` (the site record's directory for this submission,
    NUL-terminated) when given; per item ``NNNNNN/`` (zero-padded index):
    ``aif-job.sh`` (the script), ``workdir`` (the directory, NUL-terminated),
    ``args`` (the extra sbatch arguments, each NUL-terminated) and, for an
    item with a claim, ``claim`` (claim, token and aif id, each NUL-terminated).
    """
    if len(items) >= _MAX_ITEMS:
        raise ValueError(f"at most {_MAX_ITEMS - 1} items per batch")
    if any(item.claim for item in items) and not journal_dir.startswith("/"):
        raise ValueError(f"items with claims need the record's absolute directory, not {journal_dir!r}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as bundle:
        if journal_dir:
            _add_to_tar(bundle, "journal", journal_dir.encode() + b"\0")
        for index, item in enumerate(items):
            _check_item(index, item)
            directory = f"{index:06d}"
            _add_to_tar(bundle, directory, None)
            _add_to_tar(bundle, f"{directory}/{_SCRIPT_FILE}", item.script.encode())
            _add_to_tar(bundle, f"{directory}/workdir", item.workdir.encode() + b"\0")
            args = b"".join(arg.encode() + b"\0" for arg in item.extra_args)
            _add_to_tar(bundle, f"{directory}/args", args)
            if item.claim:
                claim = b"".join(v.encode() + b"\0" for v in (item.claim, item.token, item.aif_id))
                _add_to_tar(bundle, f"{directory}/claim", claim)
    return buffer.getvalue()


def _check_item(index: int, item: SubmissionItem) -> None:
    if not item.script.strip():
        raise ValueError(f"item {index}: the script is empty")
    if "\0" in item.script:
        raise ValueError(f"item {index}: the script contains a NUL byte")
    if item.workdir and (not item.workdir.startswith("/") or "\0" in item.workdir):
        raise ValueError(f"item {index}: workdir must be an absolute path: {item.workdir!r}")
    if item.claim and not (_CLAIM_RE.fullmatch(item.claim) and _TOKEN_RE.match(item.token) and item.aif_id):
        raise ValueError(f"item {index}: not a claim: {item.claim!r} for token {item.token!r}")
    if "\0" in item.aif_id or "\t" in item.aif_id or "\n" in item.aif_id:
        raise ValueError(f"item {index}: not an aif id: {item.aif_id!r}")
    for arg in item.extra_args:
        # NUL separates the arguments in the bundle; a word not starting with
        # "-" would be taken by sbatch as the script to submit.
        if not arg.startswith("-") or "\0" in arg:
            raise ValueError(f"item {index}: not an sbatch option: {arg!r}")


def _add_to_tar(bundle: tarfile.TarFile, name: str, data: bytes | None) -> None:
    # Fixed metadata (mtime 0, root-less owner) keeps the bundle deterministic.
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o700
        bundle.addfile(info)
    else:
        info.mode = 0o600
        info.size = len(data)
        bundle.addfile(info, io.BytesIO(data))


_CLAIM_RE = re.compile(r"[0-9a-f]{8,64}-[0-9]+\.[0-9]+")
_OUTCOME_LINE_RE = re.compile(r"^([0-9]+)\t(-?[0-9]+)\t(.*)$")
_PARSABLE_RE = re.compile(r"^\s*([0-9]+)(?:;(\S+))?\s*$")

# sbatch failures after which the controller may still have queued the job.
_MAYBE_SUBMITTED_ERRORS = ("Socket timed out", "timed out", "Zero Bytes were transmitted")


def parse_submission_output(stdout: str, count: int) -> list[SubmissionOutcome]:
    """One SubmissionOutcome per item, index 0..count-1.

    Lines that are not answer lines (e.g. a chatty login script) are ignored;
    for a repeated index the first line counts.
    """
    lines: dict[int, tuple[int, str]] = {}
    for line in stdout.splitlines():
        match = _OUTCOME_LINE_RE.match(line)
        if match:
            index = int(match.group(1))
            if 0 <= index < count and index not in lines:
                lines[index] = (int(match.group(2)), match.group(3))
    return [_outcome(index, lines.get(index)) for index in range(count)]


def _outcome(index: int, line: tuple[int, str] | None) -> SubmissionOutcome:
    if line is None:
        return SubmissionOutcome(
            index=index,
            kind=Outcome.UNKNOWN,
            job_id=None,
            error="no answer for this item (connection lost?): it may have been submitted",
        )
    returncode, message = line
    return classify_sbatch(index, returncode, message)


def classify_sbatch(index: int, returncode: int, message: str) -> SubmissionOutcome:
    """One answer (``rc``, sbatch's output or error on one line) as an Outcome.

    Used for the program's answer lines and for the answers kept in the
    site's record, so both read the same way.
    """
    if returncode == 0:
        match = _PARSABLE_RE.match(message)
        if match:
            return SubmissionOutcome(
                index=index,
                kind=Outcome.ACCEPTED,
                job_id=match.group(1),
                error="",
                cluster=match.group(2),
                returncode=0,
            )
        kind, error = Outcome.UNKNOWN, f"sbatch succeeded but printed no job id: {message!r}"
    elif returncode == CLAIMED_RC:
        kind, error = Outcome.CLAIMED, message
    elif returncode == RECORD_FAILED_RC:
        kind, error = Outcome.SITE_DOWN, message
    elif returncode > 128 or any(text in message for text in _MAYBE_SUBMITTED_ERRORS):
        # Killed by a signal mid-RPC, or a controller timeout: it may be queued.
        kind, error = Outcome.UNKNOWN, message
    elif is_controller_unreachable(message):
        # "Unable to contact slurm controller (connect failure)": nothing was queued.
        kind, error = Outcome.SITE_DOWN, message
    else:
        kind, error = Outcome.REFUSED, message
    return SubmissionOutcome(index=index, kind=kind, job_id=None, error=error, returncode=returncode)


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
