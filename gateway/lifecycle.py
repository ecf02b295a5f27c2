"""A job's whole life, as the CLI and scripts call it. Part of the api layer.

Submitting lives in ``gateway.submission``, status and waiting in
``gateway.status``, settling lost answers in ``gateway.settlement``; they are
all reachable from here. Logs, cancel and fetch are here. Every function
takes a :class:`~gateway.context.Context` (profiles, config, ledger,
backends, clock). The rules all of them keep:

- what the ledger says is what the site did: a match with Slurm is confirmed
  by the job's token (in squeue) or its name (after it left); a job is called
  never submitted only when that is proven; no job is signalled unconfirmed;
- one connection and one batched command per site for a submission, one
  status query per site for any number of jobs, all sites in parallel.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import AifError, SiteUnreachable, UsageError
from gateway.ledger import Ledger, LedgerJob
from gateway.record import Record
from gateway.states import JobState, is_terminal

if TYPE_CHECKING:
    from gateway.context import Context
    from gateway.settlement import settle_unresolved
    from gateway.status import StatusReport, refresh, wait
    from gateway.submission import DryRun, SubmitReport, SubmittedJob, dry_run, plan_submissions, submit
    from gateway.transports.base import Progress

# The names this module passes on from the modules that talk to sites, each imported
# when first asked for (PEP 562): `aif list` reads the ledger only, and loading the
# sites, the federation and submission would take it several times as long.
_PASSED_ON = {
    "settle_unresolved": "gateway.settlement",
    "StatusReport": "gateway.status",
    "refresh": "gateway.status",
    "wait": "gateway.status",
    "DryRun": "gateway.submission",
    "SubmitReport": "gateway.submission",
    "SubmittedJob": "gateway.submission",
    "dry_run": "gateway.submission",
    "plan_submissions": "gateway.submission",
    "submit": "gateway.submission",
}


def __getattr__(name: str) -> object:
    if name not in _PASSED_ON:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PASSED_ON[name]), name)
    globals()[name] = value  # asked once
    return value


__all__ = [
    "CancelResult",
    "DryRun",
    "StatusReport",
    "SubmitReport",
    "SubmittedJob",
    "cancel",
    "dry_run",
    "fetch",
    "fetchable_job",
    "follow_log",
    "history",
    "list_jobs",
    "plan_submissions",
    "read_log",
    "refresh",
    "settle_unresolved",
    "stdout_path_of",
    "submit",
    "wait",
]


# -- logs, cancel, fetch --------------------------------------------------------------------


def stdout_path_of(job: LedgerJob, task: int | None = None) -> str:
    if not job.slurm_job_id or not job.stdout_path:
        raise UsageError(f"{job.id} was never submitted ({job.state}): it has no output")
    if task is not None and job.array_size is None:
        raise UsageError(f"--task {task}: {job.id} is not an array job; leave out --task")
    if task is not None and job.array_size is not None and not 0 <= task < job.array_size:
        raise UsageError(
            f"--task {task}: {job.id} is an array of {job.array_size} tasks; "
            f"expected 0 to {job.array_size - 1}"
        )
    if job.array_token:
        # One task of an array of specs: Slurm wrote its output as ARRAYID_TASK.
        array_id, _, own_task = job.slurm_job_id.partition("_")
        return job.stdout_path.replace("%A", array_id).replace("%a", own_task)
    path = job.stdout_path.replace("%A", job.slurm_job_id).replace("%j", job.slurm_job_id)
    return path.replace("%a", str(task if task is not None else 0))


def read_log(ctx: Context, job_id: str, *, task: int | None = None, offset: int = 0) -> bytes:
    job = ctx.ledger.get(job_id)
    path = stdout_path_of(job, task)  # before connecting: a bad --task needs no site
    return ctx.backend(job.site).read_file(path, offset)


def follow_log(
    ctx: Context,
    job_id: str,
    write: Callable[[bytes], None],
    *,
    task: int | None = None,
    poll_interval: float = 1.0,
) -> LedgerJob:
    """Write the job's output as it grows, until the job has ended and all output is shown."""
    from gateway.status import refresh

    job = ctx.ledger.get(job_id)
    path = stdout_path_of(job, task)
    backend = ctx.backend(job.site)
    offset = 0
    while True:
        report = refresh(ctx, [job.id])
        ended = all(is_terminal(j.state) for j in report.jobs)
        chunk = backend.read_file(path, offset)
        if chunk:
            write(chunk)
            offset += len(chunk)
        elif ended:
            return ctx.ledger.get(job.id)
        else:
            ctx.clock.sleep(poll_interval)


class CancelResult(Record):
    """What ``cancel`` did for one job: whether scancel was sent for it, and if not, why."""

    job: LedgerJob
    was: JobState  # the state before
    cancelled: bool  # scancel was sent for it
    why_not: str = ""  # why it was not signalled (ended already, or not confirmed)


def cancel(ctx: Context, job_ids: Sequence[str]) -> list[CancelResult]:
    """scancel the jobs confirmed (by token, in squeue, just now), then check they left the queue.

    A job whose identity at the site cannot be confirmed is never signalled:
    its Slurm id may belong to another job by now.
    """
    from gateway.status import refresh

    ledger = ctx.ledger
    before = {j: ledger.get(j) for j in job_ids}
    # Fresh answers only (max_age 0): what is signalled is what the site holds now.
    report = refresh(ctx, [b.id for b in before.values()], max_age=0)
    if report.unreachable:
        raise SiteUnreachable("; ".join(report.unreachable.values()) + " (nothing was cancelled there)")
    targets = [j for j in report.jobs if j.id in report.in_queue and not is_terminal(j.state)]
    by_site: dict[str, list[LedgerJob]] = {}
    # One array's tasks side by side: the site checks each array's name once.
    for job in sorted(targets, key=lambda j: (j.slurm_job_id or "").partition("_")[0]):
        by_site.setdefault(job.site, []).append(job)
    sent = ctx.per_site(
        by_site, lambda backend, jobs: backend.cancel([(j.slurm_job_id or "", j.slurm_name) for j in jobs])
    )
    problems = {site: r.problem for site, r in sent.items() if r.problem}
    if problems:
        raise SiteUnreachable("; ".join(problems.values()))
    deadline = ctx.clock.monotonic() + ctx.timing.cancel_confirm_s
    active = list(targets)
    while active:
        report = refresh(ctx, [j.id for j in active], max_age=0)
        _pending_tasks_cancelled(ctx, report)
        active = [ledger.get(j.id) for j in report.jobs]
        active = [j for j in active if not is_terminal(j.state)]
        if not active or ctx.clock.monotonic() > deadline:
            break
        ctx.clock.sleep(0.5)
    if active:
        still = ", ".join(f"{j.id} ({j.state})" for j in active)
        raise AifError(f"scancel was sent, but these jobs are still in the queue: {still}")
    signalled = {j.id for j in targets}
    results = []
    for was in before.values():
        job = ledger.get(was.id)
        if job.id in signalled:
            results.append(CancelResult(job, was.state, True))
        elif is_terminal(job.state):
            results.append(CancelResult(job, was.state, False, f"already ended ({job.state})"))
        else:
            why = job.reason or "its identity at the site cannot be confirmed"
            results.append(CancelResult(job, was.state, False, f"not signalled: {why}"))
    return results


def _pending_tasks_cancelled(ctx: Context, report: StatusReport) -> None:
    """Tasks of arrays of specs that were pending when signalled and have left the queue.

    Slurm keeps no trace of a pending array task it cancelled (no CANCELLED
    record in squeue, nothing in the finished-job records: recorded on 22.05),
    so the task just confirmed in the queue, signalled, and now gone is CANCELLED.
    """
    gone = [
        (job.id, JobState.CANCELLED.value, "cancelled while pending (Slurm keeps no record of it)")
        for job in report.jobs
        if job.array_token
        and not is_terminal(job.state)
        and job.id not in report.in_queue
        and job.site not in report.unreachable
    ]
    ctx.ledger.update_states(gone)


def fetch(
    ctx: Context, job_id: str, dest: Path | None = None, *, progress: Progress | None = None
) -> tuple[LedgerJob, Path, list[str]]:
    """Copy the spec's outputs back (SFTP over SSH, a file copy locally)."""
    job = _check_fetchable(ctx.ledger.get(job_id))
    dest = dest or Path(job.id)
    backend = ctx.backend(job.site)
    fetched = []
    for output in job.outputs:
        remote = f"{job.workdir}/{output.rstrip('/')}"
        local = dest / output.rstrip("/")
        backend.fetch(remote, local, progress)
        fetched.append(output)
    return job, dest, fetched


def fetchable_job(ledger: Ledger, job_id: str) -> LedgerJob:
    """The job :func:`fetch` would copy from, checked without asking its site (known, submitted,
    with outputs)."""
    return _check_fetchable(ledger.get(job_id))


def _check_fetchable(job: LedgerJob) -> LedgerJob:
    if not job.slurm_job_id:
        raise UsageError(f"{job.id} was never submitted ({job.state}): nothing to fetch")
    if not job.outputs:
        raise UsageError(f"{job.id}: its spec lists no [data] outputs to fetch")
    return job


def list_jobs(ledger: Ledger, limit: int | None = None, *, include_invalid: bool = True) -> list[LedgerJob]:
    """The newest ``limit`` jobs; without ``include_invalid``, INVALID rows are skipped (not counted)."""
    return ledger.list_jobs(limit=limit, include_invalid=include_invalid)


def history(ledger: Ledger, job_id: str) -> list[tuple[str, str, str]]:
    """(time, state, reason) of every state change of a job, oldest first."""
    return [(c.at, c.state.value, c.reason) for c in ledger.history(job_id)]
