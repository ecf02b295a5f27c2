"""Status and waiting: one query per site for any number of jobs, all sites at once,
each within its deadline. Part of the api layer.

Every match with Slurm is confirmed (the token in squeue, the Slurm name in
finished-job records); jobs whose submission is unsettled are settled first
(``gateway.settlement``). The answers are shared with the user's other aif
processes and each site is asked within its poll budget (``gateway.polling``);
the ledger is read and written in a few statements whatever the number of jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from gateway.context import Context
from gateway.ledger import LedgerJob
from gateway.polling import Budget, MemoryPollStore, PollStore, SharedAnswers, next_budget
from gateway.record import Record
from gateway.settlement import Evidence, SettlePlan, age_seconds, apply_evidence, gather_evidence, settle_plan
from gateway.site import JobQuery, Sighting, SiteBackend, SlurmCliBackend
from gateway.states import JobState, is_terminal


class StatusReport(Record):
    jobs: list[LedgerJob]
    unreachable: dict[str, str]  # site -> why
    # aif ids confirmed in squeue by their token, in the answer used (asked now with max_age=0)
    in_queue: frozenset[str] = frozenset()


class _SiteQuery(Record):
    settle: SettlePlan | None
    queries: list[JobQuery]
    newest_change: float  # the newest ledger change of the jobs asked (epoch seconds)
    max_age: float | None  # the freshness wanted of a shared answer (None: the site's interval)


class _SiteAnswer(Record):
    evidence: Evidence | None
    sightings: dict[str, Sighting]


def refresh(
    ctx: Context,
    job_ids: Sequence[str] | None = None,
    *,
    deadline: float | None = None,
    max_age: float | None = None,
) -> StatusReport:
    """Bring the ledger up to date: one query per site (two while submissions are unsettled),
    all sites at once, each within the deadline.

    With a shared store (``ctx.polls``), an answer another process got at most
    ``max_age`` seconds ago (default: the base poll interval; 0: ask now) is
    used instead of asking, as ``gateway.polling`` rules.
    """
    freshness = ctx.timing.poll_interval_s if max_age is None else max_age
    return _refresh(ctx, job_ids, deadline, lambda _site: freshness, ctx.polls)


def _refresh(
    ctx: Context,
    job_ids: Sequence[str] | None,
    deadline: float | None,
    max_age: Callable[[str], float | None],
    polls: PollStore | None,
) -> StatusReport:
    """:func:`refresh`, with each site's freshness (None: its budget's interval) and store."""
    ledger = ctx.ledger
    jobs = ledger.get_many(job_ids) if job_ids else ledger.list_jobs(active_only=True)
    unresolved: dict[str, list[LedgerJob]] = {}
    queries: dict[str, list[JobQuery]] = {}
    newest_change: dict[str, str] = {}
    for job in jobs:
        if is_terminal(job.state) or not job.site:
            continue
        if job.unresolved:
            unresolved.setdefault(job.site, []).append(job)
        elif job.slurm_job_id:
            queries.setdefault(job.site, []).append(
                JobQuery(job.slurm_job_id, job.token, job.slurm_name, job.array_token)
            )
            newest_change[job.site] = max(newest_change.get(job.site, ""), job.updated_at)
    work = {
        site: _SiteQuery(
            settle_plan(ctx, unresolved[site], False) if site in unresolved else None,
            queries.get(site, []),
            _epoch(newest_change.get(site, "")),
            max_age(site),
        )
        for site in sorted(set(unresolved) | set(queries))
    }

    def ask(backend: SiteBackend, query: _SiteQuery) -> _SiteAnswer:
        # Only the site is asked here (threads): the ledger is written below, on this thread.
        evidence = gather_evidence(backend, query.settle) if query.settle else None
        if not query.queries:
            return _SiteAnswer(evidence, {})
        if polls is None or not isinstance(backend, SlurmCliBackend):
            return _SiteAnswer(evidence, backend.jobs(query.queries))
        shared = SharedAnswers(
            backend.transport,
            polls,
            now=lambda: ctx.clock.now().timestamp(),
            max_age=query.max_age,
            newest_change=query.newest_change,
        )
        return _SiteAnswer(evidence, replace(backend, transport=shared).jobs(query.queries))

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
    as_read: dict[str, str] = {}
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
            as_read[job.id] = job.updated_at
            if sighting.record is not None:
                changes.append((job.id, sighting.record.state.value, sighting.record.reason))
                if sighting.in_queue:
                    in_queue.add(job.id)
            elif age_seconds(ctx, job) > ctx.timing.just_submitted_grace_s:
                changes.append((job.id, JobState.UNKNOWN.value, _one_line(sighting.problem)))
    # A job another process changed since it was read here keeps that change: an
    # answer shared between processes may be older than what that one wrote.
    ledger.update_states(changes, unchanged_since=as_read)
    # Jobs just settled as sent are asked about at once: their true state, not PENDING.
    followed = [j.id for j in ledger.get_many(settled) if j.slurm_job_id and not j.terminal]
    if followed:
        again = _refresh(ctx, followed, deadline, max_age, polls)
        unreachable.update(again.unreachable)
        in_queue |= again.in_queue
    # Read again only the jobs this refresh meant to change (1,000 unchanged ones cost nothing).
    read = {j.id: j for j in jobs}
    stale = set(settled) | {
        job_id
        for job_id, state, reason in changes
        if (read[job_id].state.value, read[job_id].reason) != (state, reason)
    }
    current = {j.id: j for j in ledger.get_many(sorted(stale))} if stale else {}
    return StatusReport(
        jobs=[current.get(j.id, j) for j in jobs], unreachable=unreachable, in_queue=frozenset(in_queue)
    )


def _epoch(iso: str) -> float:
    """A ledger time as epoch seconds (0 for none)."""
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else 0.0
    except ValueError:
        return 0.0


def _one_line(text: str) -> str:
    return text.lstrip("; ").replace("\n", " ")


# -- wait -------------------------------------------------------------------------------


def wait(
    ctx: Context,
    job_ids: Sequence[str],
    *,
    timeout: float | None = None,
    on_update: Callable[[StatusReport], None] | None = None,
) -> StatusReport:
    """Poll until every job ended, or ``timeout`` seconds passed; returns the last report.

    Each site is asked when its poll budget says it is due (``gateway.polling``):
    with other aif processes waiting too, together at most once per interval, an
    interval that grows while nothing changes there and doubles while the site
    cannot be reached (shown in ``report.unreachable``). No query outlasts the deadline.
    """
    clock = ctx.clock
    deadline = None if timeout is None else clock.monotonic() + timeout
    # Nothing shared (a context without a store): the same budget, in this process alone.
    polls = ctx.polls or MemoryPollStore(ctx.timing.poll_rules())

    # Sites whose queue is not asked through the store (jobs being settled, a
    # backend that shares nothing) go by this process's own budget of the same rules.
    own = Budget(polls.rules.interval_s)
    while True:
        # An answer as old as the site's current interval will do (max_age None).
        report = _refresh(ctx, job_ids, deadline, lambda _site: None, polls)
        if on_update is not None:
            on_update(report)
        if all(is_terminal(j.state) for j in report.jobs):
            return report
        if deadline is not None and clock.monotonic() >= deadline:
            return report
        now = clock.now().timestamp()
        seen = (
            "" if report.unreachable else repr(sorted((j.id, j.state.value, j.reason) for j in report.jobs))
        )
        own = next_budget(own, polls.rules, asked_at=now, digest=seen or None)
        waiting = {j.site for j in report.jobs if not is_terminal(j.state) and j.site}
        pause = _pause(polls, waiting, own, now)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - clock.monotonic()))
        # Sleep until the first site is due, but look every base interval whether another
        # process got a new answer meanwhile (a stat, no query): then use it at once.
        stamps = {site: polls.stamp(site) for site in waiting}
        while pause > 0:
            step = min(pause, polls.rules.interval_s)
            clock.sleep(step)
            pause -= step
            if any(polls.stamp(site) != stamp for site, stamp in stamps.items()):
                break


# Never poll faster than this, whatever a budget says (a zero interval, a clock jump).
_MIN_PAUSE_S = 0.1


def _pause(polls: PollStore, sites: set[str], own: Budget, now: float) -> float:
    """How long to sleep before the first of these sites is due again."""
    due = []
    for site in sorted(sites):
        budget = polls.read(site).budget
        due.append((budget if budget.asked_at is not None else own).due_in(now))
    pause = min(due, default=own.due_in(now))
    return min(max(pause, _MIN_PAUSE_S), polls.rules.max_interval_s)
