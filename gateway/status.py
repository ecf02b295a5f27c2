"""Status and waiting: one query per site for any number of jobs, all sites at once,
each within its deadline. Part of the api layer.

Every match with Slurm is confirmed (the token in squeue, the Slurm name in
finished-job records); jobs whose submission is unsettled are settled first
(``gateway.settlement``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.context import Context
from gateway.ledger import LedgerJob
from gateway.settlement import Evidence, SettlePlan, age_seconds, apply_evidence, gather_evidence, settle_plan
from gateway.site import JobQuery, Sighting, SiteBackend
from gateway.states import JobState, is_terminal


@dataclass(frozen=True)
class StatusReport:
    jobs: list[LedgerJob]
    unreachable: dict[str, str]  # site -> why
    in_queue: frozenset[str] = frozenset()  # aif ids confirmed in squeue by their token, just now


@dataclass(frozen=True)
class _SiteQuery:
    settle: SettlePlan | None
    queries: list[JobQuery]


@dataclass(frozen=True)
class _SiteAnswer:
    evidence: Evidence | None
    sightings: dict[str, Sighting]


def refresh(
    ctx: Context, job_ids: Sequence[str] | None = None, *, deadline: float | None = None
) -> StatusReport:
    """Bring the ledger up to date: one query per site (two while submissions are unsettled),
    all sites at once, each within the deadline."""
    ledger = ctx.ledger
    jobs = [ledger.get(j) for j in job_ids] if job_ids else ledger.list_jobs(active_only=True)
    unresolved: dict[str, list[LedgerJob]] = {}
    queries: dict[str, list[JobQuery]] = {}
    for job in jobs:
        if is_terminal(job.state) or not job.site:
            continue
        if job.unresolved:
            unresolved.setdefault(job.site, []).append(job)
        elif job.slurm_job_id:
            queries.setdefault(job.site, []).append(
                JobQuery(job.slurm_job_id, job.token, job.slurm_name, job.array_token)
            )
    work = {
        site: _SiteQuery(
            settle_plan(ctx, unresolved[site], False) if site in unresolved else None, queries.get(site, [])
        )
        for site in sorted(set(unresolved) | set(queries))
    }

    def ask(backend: SiteBackend, query: _SiteQuery) -> _SiteAnswer:
        # Only the site is asked here (threads): the ledger is written below, on this thread.
        evidence = gather_evidence(backend, query.settle) if query.settle else None
        return _SiteAnswer(evidence, backend.jobs(query.queries) if query.queries else {})

    answers = ctx.per_site(work, ask, deadline=deadline)
    settled = [
        job.id
        for site, query in work.items()
        if query.settle is not None and answers[site].value is not None
        for job in query.settle.jobs
    ]
    unreachable: dict[str, str] = {}
    in_queue: set[str] = set()
    changes: list[tuple[str, str, str]] = []
    by_token = {j.token: j for j in jobs}
    for site, answer in answers.items():
        if answer.value is None:
            unreachable[site] = answer.problem
            continue
        settle = work[site].settle
        if settle is not None and answer.value.evidence is not None:
            apply_evidence(ctx, settle, answer.value.evidence)
        for token, sighting in answer.value.sightings.items():
            job = by_token[token]
            if sighting.record is not None:
                changes.append((job.id, sighting.record.state.value, sighting.record.reason))
                if sighting.in_queue:
                    in_queue.add(job.id)
            elif age_seconds(ctx, job) > ctx.timing.just_submitted_grace_s:
                changes.append((job.id, JobState.UNKNOWN.value, _one_line(sighting.problem)))
    ledger.update_states(changes)
    # Jobs just settled as sent are asked about at once: their true state, not PENDING.
    followed = [j for j in settled if ledger.get(j).slurm_job_id and not ledger.get(j).terminal]
    if followed:
        again = refresh(ctx, followed, deadline=deadline)
        unreachable.update(again.unreachable)
        in_queue |= again.in_queue
    return StatusReport(
        jobs=[ledger.get(j.id) for j in jobs], unreachable=unreachable, in_queue=frozenset(in_queue)
    )


def _one_line(text: str) -> str:
    return text.lstrip("; ").replace("\n", " ")


# -- wait -------------------------------------------------------------------------------


def wait(
    ctx: Context,
    job_ids: Sequence[str],
    *,
    timeout: float | None = None,
    on_update: Callable[[StatusReport], None] | None = None,
    poll_interval: float = 1.0,
    max_interval: float = 10.0,
) -> StatusReport:
    """Poll until every job ended, or ``timeout`` seconds passed; returns the last report.

    A site that cannot be reached is shown (``report.unreachable``) and asked
    again with a growing back-off; no query may outlast the deadline.
    """
    clock = ctx.clock
    deadline = None if timeout is None else clock.monotonic() + timeout
    interval = poll_interval
    while True:
        report = refresh(ctx, job_ids, deadline=deadline)
        if on_update is not None:
            on_update(report)
        if all(is_terminal(j.state) for j in report.jobs):
            return report
        if deadline is not None and clock.monotonic() >= deadline:
            return report
        pause = interval if deadline is None else min(interval, max(0.0, deadline - clock.monotonic()))
        clock.sleep(pause)
        # Back off while nothing can be learnt: faster when all sites answer.
        growth = 2.0 if report.unreachable else 1.2
        interval = min(interval * growth, max_interval)
