"""A job's whole life: submit, follow, cancel, fetch. Part of the api layer.

Rules kept here:
- nothing is half-submitted: every spec is validated and placed before any
  is sent; each submission is in the ledger (with its token) before it
  leaves this machine;
- one connection and one batched command per site for a submission, one
  status query per site for any number of jobs;
- a lost answer is never retried blindly: the job is looked up by its token
  first and adopted if it exists.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gateway import slurm
from gateway.api import login_user
from gateway.broker import place, site_misfit
from gateway.config import UserConfig
from gateway.errors import (
    AifError,
    ConnectionLost,
    InvalidInput,
    NoFit,
    SiteUnreachable,
    UsageError,
)
from gateway.ledger import Ledger, LedgerJob, is_terminal, spec_sha256
from gateway.profiles import (
    ProfileSet,
    check_spec_against_profiles,
    get_profile,
    load_sites,
    resolve_account,
)
from gateway.rendering import RenderedJob, render_batch_script
from gateway.site import SiteBackend, open_backend
from gateway.spec import JobSpec, load_spec
from gateway.transports.base import CommandHook, Progress

# A job may not show in squeue for a moment after sbatch returned.
JUST_SUBMITTED_GRACE_S = 30.0
# A SUBMITTING job whose token the site does not know after this long never got there.
LOST_SUBMISSION_AFTER_S = 120.0


@dataclass
class SiteSessions:
    """One backend (one connection) per site for the life of this process."""

    profiles: ProfileSet
    config: UserConfig
    on_command: CommandHook | None = None
    _open: dict[str, SiteBackend] = field(default_factory=dict)

    def backend(self, site: str) -> SiteBackend:
        if site not in self._open:
            profile = get_profile(self.profiles, site)
            self._open[site] = open_backend(profile, self.config.access(site), self.on_command)
        return self._open[site]

    def close(self) -> None:
        for backend in self._open.values():
            backend.close()
        self._open.clear()

    def __enter__(self) -> SiteSessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_sessions(on_command: CommandHook | None = None) -> SiteSessions:
    profiles, config = load_sites()
    return SiteSessions(profiles=profiles, config=config, on_command=on_command)


# -- submit -------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmittedJob:
    job: LedgerJob
    why: str  # why this site


@dataclass(frozen=True)
class DryRun:
    spec: str
    site: str
    why: str
    rendered: RenderedJob


@dataclass(frozen=True)
class _Planned:
    spec: JobSpec
    site: str
    why: str


def _spec_hash(path: str) -> str:
    """The spec's hash for the ledger; an unreadable file is recorded with the hash of nothing."""
    try:
        return spec_sha256(path)
    except OSError:
        return hashlib.sha256(b"").hexdigest()


def plan_submissions(
    spec_paths: Sequence[str], sessions: SiteSessions, ledger: Ledger | None, site: str | None
) -> list[_Planned]:
    """Validate and place every spec before anything is sent: all or nothing."""
    planned: list[_Planned] = []
    for path in spec_paths:
        try:
            spec = load_spec(path)
            check_spec_against_profiles(spec, sessions.profiles)
            chosen = site or spec.placement.site
            if chosen:
                profile = get_profile(sessions.profiles, chosen)
                why_not = site_misfit(spec, profile, sessions.config)
                if why_not:
                    raise NoFit(f"{spec.name} cannot run at {chosen}: {why_not}")
                planned.append(
                    _Planned(spec, chosen, "named on the command line" if site else "pinned by the spec")
                )
            else:
                placement = place(spec, sessions.profiles, sessions.config)
                planned.append(_Planned(spec, placement.site, placement.why))
        except (InvalidInput, NoFit, UsageError) as exc:
            if ledger is not None:
                ledger.record_invalid(
                    spec_path=path, spec_hash=_spec_hash(path), message=exc.message, site=site or ""
                )
            others = len(spec_paths) - 1
            if others:
                raise type(exc)(
                    f"{exc.message} (nothing was submitted, of {len(spec_paths)} specs)"
                ) from None
            raise
    return planned


def submit(
    spec_paths: Sequence[str],
    *,
    site: str | None = None,
    after: str | None = None,
    on_command: CommandHook | None = None,
) -> list[SubmittedJob]:
    """Submit every spec; returns one entry per job, whatever happened to it."""
    with open_sessions(on_command) as sessions, Ledger() as ledger:
        planned = plan_submissions(spec_paths, sessions, ledger, site)
        dependency = _dependency(sessions, ledger, after, {p.site for p in planned})
        intents = [
            {
                "site": p.site,
                "name": p.spec.name,
                "spec_path": p.spec.source,
                "spec_hash": p.spec.sha256,
                "workdir": "",
                "outputs": p.spec.data.outputs,
                "stdout_path": "",
                "array_size": p.spec.array.size if p.spec.array else None,
                "depends_on": dependency.id if dependency else None,
            }
            for p in planned
        ]
        jobs = ledger.record_intents(intents)
        rendered = [_render_for(p, sessions, job) for p, job in zip(planned, jobs, strict=True)]
        paths = [(job.id, r.workdir, r.stdout_path) for job, r in zip(jobs, rendered, strict=True)]
        ledger.record_paths(paths)
        # A parent that already completed needs no Slurm dependency (and Slurm may have forgotten it).
        waits = dependency is not None and dependency.state != "COMPLETED"
        extra = (f"--dependency=afterok:{dependency.slurm_job_id}",) if dependency and waits else ()
        by_site: dict[str, list[int]] = {}
        for index, p in enumerate(planned):
            by_site.setdefault(p.site, []).append(index)
        for site_name, indexes in by_site.items():
            items = [
                slurm.SubmissionItem(script=rendered[i].script, workdir=rendered[i].workdir, extra_args=extra)
                for i in indexes
            ]
            _submit_to_site(sessions, ledger, site_name, [jobs[i] for i in indexes], items)
        return [SubmittedJob(ledger.get(job.id), p.why) for job, p in zip(jobs, planned, strict=True)]


def dry_run(spec_paths: Sequence[str], *, site: str | None = None) -> list[DryRun]:
    sessions = open_sessions()
    planned = plan_submissions(spec_paths, sessions, None, site)
    return [
        DryRun(spec=p.spec.source, site=p.site, why=p.why, rendered=_render_for(p, sessions)) for p in planned
    ]


def _dependency(
    sessions: SiteSessions, ledger: Ledger, after: str | None, sites: set[str]
) -> LedgerJob | None:
    """The job given with --after, checked: at the same site, submitted, not failed.

    Slurm silently drops ``afterok:N`` once job N has left its memory
    (MinJobAge), even when N failed, so the parent's state is looked up
    first: one that ended other than COMPLETED means the new job could
    never start, and is refused.
    """
    if after is None:
        return None
    parent = ledger.get(after)
    if parent.slurm_job_id is None:
        raise UsageError(f"--after {parent.id}: that job was never submitted ({parent.state})")
    other_sites = sites - {parent.site}
    if other_sites:
        raise UsageError(
            f"--after {parent.id}: it runs at {parent.site}, this job would run at "
            f"{', '.join(sorted(other_sites))}; "
            "dependencies across sites are not supported yet (pin the job with --site "
            f"{parent.site})"
        )
    parent = refresh([parent.id], sessions=sessions, ledger=ledger).jobs[0]
    if is_terminal(parent.state) and parent.state != "COMPLETED":
        raise UsageError(f"--after {parent.id}: that job ended {parent.state}, so this one could never start")
    return parent


def _render_for(p: _Planned, sessions: SiteSessions, job: LedgerJob | None = None) -> RenderedJob:
    """The script for a planned job; without a ledger job (dry run) there is no id or token yet."""
    profile = sessions.profiles[p.site]
    access = sessions.config.access(p.site)
    return render_batch_script(
        p.spec,
        profile,
        account=resolve_account(profile, access),
        user=login_user(profile, sessions.config),
        **({"job_id": job.id, "token": job.token} if job else {}),
    )


def _submit_to_site(
    sessions: SiteSessions,
    ledger: Ledger,
    site: str,
    jobs: list[LedgerJob],
    items: list[slurm.SubmissionItem],
) -> None:
    """One batched submission; a lost answer is resolved by token, then retried once."""
    pending = list(range(len(jobs)))
    for attempt in (1, 2):
        unknown: list[int] = []
        try:
            outcomes = sessions.backend(site).submit([items[i] for i in pending])
        except ConnectionLost:
            unknown = pending
        except SiteUnreachable as exc:
            # Nothing was sent: the connection or the program never started.
            for i in pending:
                ledger.mark_not_submitted(jobs[i].id, "UNREACHABLE", exc.message)
            return
        else:
            accepted = []
            for i, outcome in zip(pending, outcomes, strict=True):
                if outcome.ok and outcome.job_id:
                    accepted.append((jobs[i].id, outcome.job_id))
                elif outcome.unknown:
                    unknown.append(i)
                else:
                    ledger.mark_not_submitted(jobs[i].id, "REJECTED", outcome.error or "rejected")
            ledger.mark_submitted_many(accepted)
        if not unknown:
            return
        # The answer for these was lost: look for each token before sending anything again.
        try:
            found = find_tokens(sessions, site, [jobs[i].token for i in unknown])
        except SiteUnreachable:
            return  # still SUBMITTING: `aif status` resolves it by token later
        ledger.mark_submitted_many(
            (jobs[i].id, found[jobs[i].token]) for i in unknown if jobs[i].token in found
        )
        pending = [i for i in unknown if jobs[i].token not in found]
        if not pending or attempt == 2:
            return


def find_tokens(sessions: SiteSessions, site: str, tokens: Sequence[str]) -> dict[str, str]:
    """Slurm ids of the jobs carrying these submission tokens: one query, reconnecting if needed."""
    return sessions.backend(site).find_tokens(tokens)


# -- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusReport:
    jobs: list[LedgerJob]
    unreachable: dict[str, str]  # site -> why


def _age_seconds(job: LedgerJob) -> float:
    try:
        then = datetime.fromisoformat(job.updated_at)
    except ValueError:
        return 0.0
    return (datetime.now(timezone.utc) - then).total_seconds()


def refresh(
    job_ids: Sequence[str] | None = None,
    *,
    on_command: CommandHook | None = None,
    sessions: SiteSessions | None = None,
    ledger: Ledger | None = None,
) -> StatusReport:
    """Bring the ledger up to date: one query per site, whatever the number of jobs."""
    own_sessions = sessions is None
    own_ledger = ledger is None
    sessions = sessions or open_sessions(on_command)
    ledger = ledger or Ledger()
    try:
        jobs = [ledger.get(j) for j in job_ids] if job_ids else ledger.list_jobs(active_only=True)
        by_site: dict[str, list[LedgerJob]] = {}
        for job in jobs:
            if not is_terminal(job.state) and job.site:
                by_site.setdefault(job.site, []).append(job)
        unreachable: dict[str, str] = {}
        for site, site_jobs in by_site.items():
            try:
                _refresh_site(sessions, ledger, site, site_jobs)
            except SiteUnreachable as exc:
                unreachable[site] = exc.message
        return StatusReport(jobs=[ledger.get(j.id) for j in jobs], unreachable=unreachable)
    finally:
        if own_sessions:
            sessions.close()
        if own_ledger:
            ledger.close()


def _refresh_site(sessions: SiteSessions, ledger: Ledger, site: str, jobs: list[LedgerJob]) -> None:
    backend = sessions.backend(site)
    submitting = [j for j in jobs if j.state == "SUBMITTING"]
    if submitting:
        found = find_tokens(sessions, site, [j.token for j in submitting])
        ledger.mark_submitted_many((j.id, found[j.token]) for j in submitting if j.token in found)
        for job in submitting:
            if job.token not in found and _age_seconds(job) > LOST_SUBMISSION_AFTER_S:
                ledger.mark_not_submitted(job.id, "UNREACHABLE", "the submission never reached the site")
        jobs = [ledger.get(j.id) for j in jobs]
    queued = [j for j in jobs if j.slurm_job_id and not is_terminal(j.state)]
    if not queued:
        return
    records = backend.jobs([j.slurm_job_id for j in queued if j.slurm_job_id])
    changes: list[tuple[str, str, str]] = []
    for job in queued:
        record = records.get(job.slurm_job_id or "")
        if record is not None:
            changes.append((job.id, record.state.value, record.reason))
        elif _age_seconds(job) > JUST_SUBMITTED_GRACE_S:
            changes.append((job.id, "UNKNOWN", "not found at the site"))
    ledger.update_states(changes)


# -- wait -------------------------------------------------------------------------------


def wait(
    job_ids: Sequence[str],
    *,
    timeout: float | None = None,
    on_update: Callable[[StatusReport], None] | None = None,
    on_command: CommandHook | None = None,
    poll_interval: float = 1.0,
) -> StatusReport:
    """Poll until every job ended (or ``timeout``); returns the last report."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with open_sessions(on_command) as sessions, Ledger() as ledger:
        interval = poll_interval
        while True:
            report = refresh(job_ids, sessions=sessions, ledger=ledger)
            if on_update is not None:
                on_update(report)
            if all(is_terminal(j.state) for j in report.jobs):
                return report
            if deadline is not None and time.monotonic() >= deadline:
                return report
            sleep = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            time.sleep(sleep)
            interval = min(interval * 1.2, 5.0)


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
    path = job.stdout_path.replace("%A", job.slurm_job_id).replace("%j", job.slurm_job_id)
    return path.replace("%a", str(task if task is not None else 0))


def read_log(
    job_id: str, *, task: int | None = None, offset: int = 0, on_command: CommandHook | None = None
) -> bytes:
    with open_sessions(on_command) as sessions, Ledger() as ledger:
        job = ledger.get(job_id)
        path = stdout_path_of(job, task)  # before connecting: a bad --task needs no site
        return sessions.backend(job.site).read_file(path, offset)


def follow_log(
    job_id: str,
    write: Callable[[bytes], None],
    *,
    task: int | None = None,
    on_command: CommandHook | None = None,
    poll_interval: float = 1.0,
) -> LedgerJob:
    """Write the job's output as it grows, until the job has ended and all output is shown."""
    with open_sessions(on_command) as sessions, Ledger() as ledger:
        job = ledger.get(job_id)
        path = stdout_path_of(job, task)
        backend = sessions.backend(job.site)
        offset = 0
        while True:
            report = refresh([job.id], sessions=sessions, ledger=ledger)
            ended = all(is_terminal(j.state) for j in report.jobs)
            chunk = backend.read_file(path, offset)
            if chunk:
                write(chunk)
                offset += len(chunk)
            elif ended:
                return ledger.get(job.id)
            else:
                time.sleep(poll_interval)


@dataclass(frozen=True)
class CancelResult:
    job: LedgerJob
    was: str  # the state before


def cancel(
    job_ids: Sequence[str], *, on_command: CommandHook | None = None, confirm_timeout: float = 20.0
) -> list[CancelResult]:
    """scancel, then confirm each job really left the queue (scancel exits 0 even for unknown jobs)."""
    with open_sessions(on_command) as sessions, Ledger() as ledger:
        before = {j: ledger.get(j) for j in job_ids}
        report = refresh(list(job_ids), sessions=sessions, ledger=ledger)
        active = [j for j in report.jobs if not is_terminal(j.state)]
        by_site: dict[str, list[LedgerJob]] = {}
        for job in active:
            by_site.setdefault(job.site, []).append(job)
        for site, jobs in by_site.items():
            sessions.backend(site).cancel([j.slurm_job_id for j in jobs if j.slurm_job_id])
        deadline = time.monotonic() + confirm_timeout
        while active:
            report = refresh([j.id for j in active], sessions=sessions, ledger=ledger)
            active = [j for j in report.jobs if not is_terminal(j.state)]
            if not active or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if active:
            still = ", ".join(f"{j.id} ({j.state})" for j in active)
            raise AifError(f"scancel was sent, but these jobs are still in the queue: {still}")
        return [CancelResult(job=ledger.get(j), was=before[j].state) for j in job_ids]


def fetch(
    job_id: str,
    dest: Path | None = None,
    *,
    progress: Progress | None = None,
    on_command: CommandHook | None = None,
) -> tuple[LedgerJob, Path, list[str]]:
    """Copy the spec's outputs back (SFTP over SSH, a file copy locally)."""
    with open_sessions(on_command) as sessions, Ledger() as ledger:
        job = _check_fetchable(ledger.get(job_id))
        dest = dest or Path(job.id)
        backend = sessions.backend(job.site)
        fetched = []
        for output in job.outputs:
            remote = f"{job.workdir}/{output.rstrip('/')}"
            local = dest / output.rstrip("/")
            backend.fetch(remote, local, progress)
            fetched.append(output)
        return job, dest, fetched


def fetchable_job(job_id: str) -> LedgerJob:
    """The job :func:`fetch` would copy from, checked without asking its site (known, submitted,
    with outputs)."""
    with Ledger() as ledger:
        return _check_fetchable(ledger.get(job_id))


def _check_fetchable(job: LedgerJob) -> LedgerJob:
    if not job.slurm_job_id:
        raise UsageError(f"{job.id} was never submitted ({job.state}): nothing to fetch")
    if not job.outputs:
        raise UsageError(f"{job.id}: its spec lists no [data] outputs to fetch")
    return job


def list_jobs(limit: int | None = None, *, include_invalid: bool = True) -> list[LedgerJob]:
    """The newest ``limit`` jobs; without ``include_invalid``, INVALID rows are skipped (not counted)."""
    with Ledger() as ledger:
        if include_invalid:
            return ledger.list_jobs(limit=limit)
        shown = [job for job in ledger.list_jobs() if job.state != "INVALID"]
        return shown if limit is None else shown[:limit]


def history(job_id: str) -> list[tuple[str, str, str]]:
    """(time, state, reason) of every state change of a job, oldest first."""
    with Ledger() as ledger:
        return [(c.at, c.state, c.reason) for c in ledger.history(job_id)]
