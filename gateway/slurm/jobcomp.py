"""Finished array tasks from the job-completion log, at sites without slurmdbd.

Sites whose finished jobs are only in the jobcomp/filetxt log (``sacct -c``)
lose what tells array tasks apart in ``sacct -c``: it prints every task under
its raw id alone and warns ``Unknown type ArrayJobId`` on stderr (recorded on
22.05); ``sacct -c -j 7_0`` even answers with job 7, another task. The log
itself keeps it: each line is ``Key=Value`` pairs with ``ArrayJobId=`` and
``ArrayTaskId=`` for a task. So a task of an array of specs that left squeue
is found there, by the array's name (``aif-array.HEX``), with ``grep -F``
over the file ``sacct -c`` reads (JobCompLoc, from ``scontrol show config``;
the user must be able to read it, as for ``sacct -c``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.slurm.jobs import JobRecord, _exit_status_for, decode_exit_code_pair, normalize_state

# Runs as: bash -c PROGRAM aif-jobcomp NAME...; prints the log's lines of those names, then @end.
_PROGRAM = r"""set -u
log=$(scontrol show config 2>/dev/null | sed -n 's/^JobCompLoc *= *//p')
if [ -z "$log" ] || [ ! -r "$log" ]; then
    echo "aif-jobcomp: cannot read the job-completion log ${log:-(no JobCompLoc)}" >&2
    exit 3
fi
patterns=()
for name in "$@"; do
    patterns+=(-e "Name=$name JobState=")
done
grep -F "${patterns[@]}" -- "$log"
rc=$?
[ "$rc" -le 1 ] || exit "$rc"
echo "@end"
"""

_NAME_RE = re.compile(r"[A-Za-z0-9._+-]+")
_PAIR_RE = re.compile(r"(?:^| )([A-Za-z]+)=")


def jobcomp_tasks_argv(names: Sequence[str]) -> list[str]:
    """One command printing the job-completion log's lines of jobs with these names."""
    if not names:
        raise ValueError("no job names given")
    for name in names:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"not an array's Slurm name: {name!r}")
    return ["bash", "-c", _PROGRAM, "aif-jobcomp", *names]


class JobcompUnreadable(ValueError):
    """The output was cut short (no ``@end``)."""


def parse_jobcomp_tasks(stdout: str) -> list[JobRecord]:
    """The array tasks among the log's lines: ``job_id`` is ``ARRAYID_TASK``; the last line of
    a task wins (a requeued task has one line per end)."""
    lines = stdout.splitlines()
    if "@end" not in lines:
        raise JobcompUnreadable("the job-completion log could not be read whole (no @end line)")
    latest: dict[tuple[str, str], JobRecord] = {}
    for line in lines:
        record = _task_record(line)
        if record is not None:
            key = (record.raw_job_id, record.name)
            latest.pop(key, None)
            latest[key] = record
    return list(latest.values())


def _pairs(line: str) -> dict[str, str]:
    """``Key=Value`` pairs; a value runs to the next `` Key=`` (so a WorkDir with spaces stays whole)."""
    found: dict[str, str] = {}
    matches = list(_PAIR_RE.finditer(line))
    if not matches:
        return found
    ends = [m.start() for m in matches[1:]] + [len(line)]
    for here, end in zip(matches, ends, strict=True):
        found[here.group(1)] = line[here.end() : end].strip()
    return found


def _task_record(line: str) -> JobRecord | None:
    fields = _pairs(line)
    raw, array_id, task = fields.get("JobId", ""), fields.get("ArrayJobId", ""), fields.get("ArrayTaskId", "")
    if not (raw.isdigit() and array_id.isdigit() and task.isdigit()):
        return None
    state = normalize_state(fields.get("JobState", ""))
    exit_status, signal = _exit_status_for(state, *decode_exit_code_pair(fields.get("ExitCode", "")))
    return JobRecord(
        job_id=f"{array_id}_{task}",
        array_job_id=array_id,
        name=fields.get("Name", ""),
        state=state,
        raw_state=fields.get("JobState", ""),
        reason="",
        comment="",
        exit_code=exit_status,
        partition=fields.get("Partition", ""),
        nodelist=fields.get("NodeList", ""),
        submit_time=fields.get("SubmitTime") or None,
        start_time=fields.get("StartTime") or None,
        end_time=fields.get("EndTime") or None,
        raw_job_id=raw,
        array_task_id=task,
        exit_signal=signal,
    )
