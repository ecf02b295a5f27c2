"""A job's whole life: submit, follow, cancel, fetch. Part of the api layer.

Every function takes a :class:`~gateway.context.Context` (profiles, config,
ledger, backends, clock). Rules kept here:

- nothing is half-submitted: every spec is validated and placed before any
  is sent; each submission is in the ledger (with its token) before it
  leaves this machine, and in the site's own record (``gateway.journal``)
  before sbatch runs;
- a submission has a key: the same key with the same specs never submits
  twice, from any machine: what the site's record shows as sent is adopted;
- one connection and one batched command per site for a submission, one
  status query per site for any number of jobs, all sites in parallel;
- what the ledger says is what the site did: a match with Slurm is confirmed
  by the job's token (in squeue) or its name (after it left); a job is called
  never submitted only when that is proven; no job is signalled unconfirmed.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway import journal, slurm
from gateway.api import login_user
from gateway.broker import place, site_misfit
from gateway.context import Context, SiteResult
from gateway.errors import AifError, Interrupted, InvalidInput, NoFit, SiteUnreachable, UsageError
from gateway.ledger import Ledger, LedgerJob, spec_sha256
from gateway.profiles import check_spec_against_profiles, get_profile, resolve_account
from gateway.rendering import RenderedJob, fill_site_path, render_batch_script
from gateway.site import JobQuery, Sighting, SiteBackend
from gateway.spec import JobSpec, load_spec
from gateway.states import JobState, is_terminal
from gateway.transports.base import Progress

# -- submit -------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmittedJob:
    job: LedgerJob
    why: str  # why this site
    how: str  # "submitted", "sent before", "adopted", "in doubt", or why it was not sent


@dataclass(frozen=True)
class SubmitReport:
    key: str
    jobs: list[SubmittedJob]


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
    item: str  # the spec's label in its submission (content digest and copy number)


def _spec_hash(path: str) -> str:
    """The spec's hash for the ledger; an unreadable file is recorded with the hash of nothing."""
    try:
        return spec_sha256(path)
    except OSError:
        return spec_sha256("/dev/null")


def plan_submissions(
    ctx: Context, spec_paths: Sequence[str], site: str | None, *, record_invalid: bool = True
) -> list[_Planned]:
    """Validate and place every spec before anything is sent: all or nothing."""
    planned: list[_Planned] = []
    copies: dict[str, int] = {}
    for path in spec_paths:
        try:
            spec = load_spec(path)
            check_spec_against_profiles(spec, ctx.profiles)
            digest = spec.content_digest()
            item = journal.item_label(digest, copies.get(digest, 0))
            copies[digest] = copies.get(digest, 0) + 1
            chosen = site or spec.placement.site
            if chosen:
                profile = get_profile(ctx.profiles, chosen)
                why_not = site_misfit(spec, profile, ctx.config)
                if why_not:
                    raise NoFit(f"{spec.name} cannot run at {chosen}: {why_not}")
                why = "named on the command line" if site else "pinned by the spec"
                planned.append(_Planned(spec, chosen, why, item))
            else:
                placement = place(spec, ctx.profiles, ctx.config)
                planned.append(_Planned(spec, placement.site, placement.why, item))
        except (InvalidInput, NoFit, UsageError) as exc:
            if record_invalid:
                ctx.ledger.record_invalid(
                    spec_path=path, spec_hash=_spec_hash(path), message=exc.message, site=site or ""
                )
            others = len(spec_paths) - 1
            if others:
                raise type(exc)(
                    f"{exc.message} (nothing was submitted, of {len(spec_paths)} specs)"
                ) from None
            raise
    return planned


def dry_run(ctx: Context, spec_paths: Sequence[str], *, site: str | None = None) -> list[DryRun]:
    planned = plan_submissions(ctx, spec_paths, site, record_invalid=False)
    return [DryRun(spec=p.spec.source, site=p.site, why=p.why, rendered=_render_for(ctx, p)) for p in planned]


def _work_area(ctx: Context, site: str) -> str:
    profile = ctx.profiles[site]
    access = ctx.config.access(site)
    account = resolve_account(profile, access)
    return fill_site_path(
        profile.slurm.work_area, user=login_user(profile, ctx.config), account=account, site=site
    )


def _render_for(
    ctx: Context, p: _Planned, job_id: str | None = None, token: str | None = None
) -> RenderedJob:
    """The script for a planned job; without an id (dry run) there is no id or token yet."""
    profile = ctx.profiles[p.site]
    access = ctx.config.access(p.site)
    account = resolve_account(profile, access)
    user = login_user(profile, ctx.config)
    if job_id is None:
        return render_batch_script(p.spec, profile, account=account, user=user)
    return render_batch_script(p.spec, profile, account=account, user=user, job_id=job_id, token=token)


def _intent(
    p: _Planned, key: str, journal_dir: str, dependency: LedgerJob | None, gen: int
) -> dict[str, Any]:
    return {
        "site": p.site,
        "name": p.spec.name,
        "spec_path": p.spec.source,
        "spec_hash": p.spec.sha256,
        "workdir": "",
        "outputs": p.spec.data.outputs,
        "stdout_path": "",
        "array_size": p.spec.array.size if p.spec.array else None,
        "depends_on": dependency.id if dependency else None,
        "submission_key": key,
        "item": p.item,
        "claim_gen": gen,
        "journal_dir": journal_dir,
    }


def submit(
    ctx: Context,
    spec_paths: Sequence[str],
    *,
    site: str | None = None,
    after: str | None = None,
    key: str | None = None,
) -> SubmitReport:
    """Submit every spec under one key; one entry per spec, whatever happened to it.

    With no ``key`` a fresh one is made (it cannot have been used). With a
    key, what was sent under it before (from this machine or another, as the
    sites' records show) is adopted and only the rest is sent; a spec whose
    content was never part of that submission is refused.
    """
    explicit = key is not None
    key = key if key is not None else journal.new_key()
    if not journal.is_valid_key(key):
        raise UsageError(f"--key {key!r}: a key is {journal.KEY_ALLOWED}")
    planned = plan_submissions(ctx, spec_paths, site)
    dependency = _dependency(ctx, after, {p.site for p in planned})
    decided, next_gen = _settle_earlier(ctx, planned, key) if explicit else ({}, {})
    to_send = [i for i in range(len(planned)) if i not in decided]
    journal_dirs = {p.site: journal.record_dir(_work_area(ctx, p.site), key) for p in planned}
    intents = [
        _intent(planned[i], key, journal_dirs[planned[i].site], dependency, next_gen.get(planned[i].item, 0))
        for i in to_send
    ]
    jobs = dict(zip(to_send, ctx.ledger.record_intents(intents), strict=True))
    rendered = {i: _render_for(ctx, planned[i], job.id, job.token) for i, job in jobs.items()}
    ctx.ledger.record_paths(
        (job.id, rendered[i].workdir, rendered[i].stdout_path, rendered[i].slurm_name)
        for i, job in jobs.items()
    )
    # A parent that already completed needs no Slurm dependency (and Slurm may have forgotten it).
    waits = dependency is not None and dependency.state != JobState.COMPLETED
    extra = (f"--dependency=afterok:{dependency.slurm_job_id}",) if dependency and waits else ()
    by_site: dict[str, list[int]] = {}
    for i in to_send:
        by_site.setdefault(planned[i].site, []).append(i)
    batches = {
        site_name: [
            slurm.SubmissionItem(
                script=rendered[i].script,
                workdir=rendered[i].workdir,
                extra_args=extra,
                claim=ctx.ledger.get(jobs[i].id).claim,
                token=jobs[i].token,
                aif_id=jobs[i].id,
            )
            for i in indexes
        ]
        for site_name, indexes in by_site.items()
    }
    try:
        answers = ctx.per_site(
            batches,
            lambda backend, items: backend.submit(items, journal_dirs[backend.site]),
        )
        for site_name, indexes in by_site.items():
            _record_answers(ctx, site_name, [jobs[i] for i in indexes], answers[site_name])
    except KeyboardInterrupt:
        raise _interrupted(ctx, key, spec_paths, list(jobs.values()), decided) from None
    for i, job in jobs.items():
        decided[i] = SubmittedJob(ctx.ledger.get(job.id), planned[i].why, _how(ctx.ledger.get(job.id)))
    return SubmitReport(key=key, jobs=[decided[i] for i in range(len(planned))])


def _how(job: LedgerJob) -> str:
    if job.slurm_job_id:
        return "submitted"
    if job.unresolved:
        return "in doubt"
    return job.message or str(job.state)


def _record_answers(
    ctx: Context, site: str, jobs: list[LedgerJob], answer: SiteResult[list[slurm.SubmissionOutcome]]
) -> None:
    """Write what the site answered; items whose answer was lost are settled from its record."""
    ledger = ctx.ledger
    unknown: list[LedgerJob] = []
    if answer.value is None:
        if answer.nothing_ran:
            # Nothing was sent: the connection or the program never started.
            for job in jobs:
                ledger.mark_not_submitted(job.id, JobState.UNREACHABLE, answer.problem)
            return
        unknown = jobs
    else:
        accepted = []
        for job, outcome in zip(jobs, answer.value, strict=True):
            if outcome.kind is slurm.Outcome.ACCEPTED and outcome.job_id:
                accepted.append((job.id, outcome.job_id))
            elif outcome.kind is slurm.Outcome.REFUSED:
                ledger.mark_not_submitted(job.id, JobState.REJECTED, outcome.error or "rejected")
            elif outcome.kind is slurm.Outcome.SITE_DOWN:
                ledger.mark_not_submitted(job.id, JobState.UNREACHABLE, f"site {site}: {outcome.error}")
            elif outcome.kind is slurm.Outcome.CLAIMED:
                ledger.mark_not_submitted(job.id, JobState.NOT_SENT, _claimed_by(outcome.error, job))
            else:
                unknown.append(job)
        ledger.mark_submitted_many(accepted)
    if unknown:
        # The answer for these was lost: the site's record says what happened, and
        # fencing the claims that have no intent proves those were never sent.
        # If the site cannot be asked now, they stay SUBMITTING: `aif status` settles them.
        with contextlib.suppress(AifError):
            settle_unresolved(ctx, site, [ledger.get(j.id) for j in unknown], fence_now=True)


def _claimed_by(held: str, job: LedgerJob) -> str:
    fields = held.split()
    if fields[:1] == ["fence"]:
        return "not sent: another aif proved it unsent and fenced it (rerun with the same --key to send it)"
    other = fields[2] if len(fields) > 2 else "another job"
    return f"not sent: {other} already holds this spec under key {job.submission_key} at {job.site}"


def _settle_earlier(
    ctx: Context, planned: list[_Planned], key: str
) -> tuple[dict[int, SubmittedJob], dict[str, int]]:
    """What was already sent under ``key``, per planned spec, and the claim generation
    each remaining spec must use; checks the content matches.

    Reads the key's record at every site a spec could have gone to (in
    parallel): a site that cannot be asked leaves its specs undecided, and
    they are not sent (nothing is sent twice on a guess).
    """
    ledger = ctx.ledger
    earlier = ledger.jobs_with_key(key)
    unresolved = [j.id for j in earlier if j.unresolved]
    if unresolved:
        refresh(ctx, unresolved)
        earlier = ledger.jobs_with_key(key)
    sites = {j.site for j in earlier} | {p.site for p in planned}
    for p in planned:
        sites |= {
            name for name, prof in ctx.profiles.items() if site_misfit(p.spec, prof, ctx.config) is None
        }
    dirs = {}
    for name in sorted(sites):
        try:
            dirs[name] = journal.record_dir(_work_area(ctx, name), key)
        except AifError:
            continue
    reads = ctx.per_site(dirs, lambda backend, directory: backend.read_record([directory]))
    claims: dict[str, list[tuple[str, journal.Claim]]] = {}
    for name, result in reads.items():
        if result.value is not None:
            for claim in result.value.claims[0].values():
                claims.setdefault(claim.item, []).append((name, claim))
    known = {j.item for j in earlier if j.item} | set(claims)
    if known:
        for p in planned:
            if p.item not in known:
                raise UsageError(
                    f"--key {key} was used for other specs: {p.spec.source} ({p.spec.name}) is not "
                    "one of them (nothing was submitted; use a new key for new work)"
                )
    unasked = {name: r.problem for name, r in reads.items() if r.value is None}
    decided: dict[int, SubmittedJob] = {}
    for index, p in enumerate(planned):
        earlier_job = _earlier_job(ctx, p, key, earlier, claims.get(p.item, []), dirs)
        if earlier_job is not None:
            decided[index] = SubmittedJob(earlier_job[0], p.why, earlier_job[1])
            continue
        blind = [name for name in unasked if site_misfit(p.spec, ctx.profiles[name], ctx.config) is None]
        if blind:
            raise SiteUnreachable(
                f"cannot tell whether {p.spec.source} was already sent under key {key}: "
                + "; ".join(unasked[name] for name in blind)
                + " (nothing was submitted; retry when the site answers)"
            )
    # One past every attempt known, here or in any site's record.
    gens: dict[str, int] = {}
    for job in earlier:
        gens[job.item] = max(gens.get(job.item, 0), job.claim_gen + 1)
    for item, found in claims.items():
        for _, claim in found:
            gens[item] = max(gens.get(item, 0), claim.gen + 1)
    return decided, gens


def _earlier_job(
    ctx: Context,
    p: _Planned,
    key: str,
    earlier: list[LedgerJob],
    claims: list[tuple[str, journal.Claim]],
    dirs: dict[str, str],
) -> tuple[LedgerJob, str] | None:
    """The job already standing for this spec under the key, and how; None if it must be sent."""
    mine = {j.token: j for j in earlier if j.item == p.item}
    for site, claim in sorted(claims, key=lambda sc: -sc[1].gen):
        if claim.status is journal.ClaimStatus.NOT_SENT:
            continue
        if claim.token in mine:
            job = ctx.ledger.get(mine[claim.token].id)
            return job, "sent before" if job.slurm_job_id else "in doubt"
        adopted = _adopt(ctx, replace(p, site=site), key, dirs[site], claim)
        return adopted, "adopted from the site's record" if adopted.slurm_job_id else "in doubt"
    for job in reversed([j for j in earlier if j.item == p.item]):
        if job.slurm_job_id or job.unresolved:
            return job, "sent before" if job.slurm_job_id else "in doubt"
    return None


def _adopt(ctx: Context, p: _Planned, key: str, journal_dir: str, claim: journal.Claim) -> LedgerJob:
    """A job another aif sent under this key, into this ledger under its own id and token."""
    rendered = _render_for(ctx, p, claim.aif_id, claim.token)
    intent = _intent(p, key, journal_dir, None, claim.gen)
    intent.update(workdir=rendered.workdir, stdout_path=rendered.stdout_path, slurm_name=rendered.slurm_name)
    return ctx.ledger.record_adopted(
        intent, job_id=claim.aif_id, token=claim.token, slurm_job_id=claim.slurm_job_id
    )


def _interrupted(
    ctx: Context,
    key: str,
    spec_paths: Sequence[str],
    sent_now: list[LedgerJob],
    decided: dict[int, SubmittedJob],
) -> Interrupted:
    jobs = [ctx.ledger.get(j.id) for j in sent_now] + [d.job for d in decided.values()]
    sent = sum(1 for j in jobs if j.slurm_job_id)
    unknown = sum(1 for j in jobs if j.unresolved)
    not_sent = len(jobs) - sent - unknown
    command = shlex.join(["aif", "submit", "--key", key, *spec_paths])
    return Interrupted(
        f"interrupted: {sent} sent, {not_sent} not sent, {unknown} unknown (the sites' records settle "
        f"those); finish with: {command}"
    )


def _dependency(ctx: Context, after: str | None, sites: set[str]) -> LedgerJob | None:
    """The job given with --after, checked: at the same site, submitted, not failed.

    Slurm silently drops ``afterok:N`` once job N has left its memory
    (MinJobAge), even when N failed, so the parent's state is looked up
    first: one that ended other than COMPLETED means the new job could
    never start, and is refused.
    """
    if after is None:
        return None
    parent = ctx.ledger.get(after)
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
    parent = refresh(ctx, [parent.id]).jobs[0]
    if is_terminal(parent.state) and parent.state != JobState.COMPLETED:
        raise UsageError(f"--after {parent.id}: that job ended {parent.state}, so this one could never start")
    return parent


# -- settling submissions whose answer was lost -------------------------------------------


def settle_unresolved(ctx: Context, site: str, jobs: list[LedgerJob], *, fence_now: bool = False) -> None:
    """Settle jobs that may have been sent, from the site's record and its queue.

    An answer in the record gives the Slurm id; an intent with no answer is
    looked up by token in squeue; a claim with no intent is fenced (once it
    is old enough, or at once with ``fence_now``, when the sending program
    has provably stopped) and so proven never sent. Only that, or a refusal
    in the record, makes a job "not submitted". Raises SiteUnreachable when
    the site cannot be asked: the jobs stay as they are.
    """
    plan = _settle_plan(ctx, jobs, fence_now)
    _apply_evidence(ctx, plan, _gather_evidence(ctx.backend(site), plan))


@dataclass(frozen=True)
class _SettlePlan:
    """What to ask a site to settle its unresolved jobs (decided on the main thread)."""

    jobs: list[LedgerJob]
    directories: list[str]
    fences: list[journal.Fence]
    fence_now: bool
    old_enough: frozenset[str]  # ids of jobs past the grace period


@dataclass(frozen=True)
class _Evidence:
    record: journal.RecordRead | None
    tokens_found: dict[str, str]  # in squeue, by token
    names_found: dict[str, str]  # finished, by Slurm name (the second proof)


def _settle_plan(ctx: Context, jobs: list[LedgerJob], fence_now: bool) -> _SettlePlan:
    with_record = [j for j in jobs if j.claim and j.journal_dir]
    return _SettlePlan(
        jobs=jobs,
        directories=sorted({j.journal_dir for j in with_record}),
        fences=[
            journal.Fence(j.journal_dir, j.claim, j.token)
            for j in with_record
            if fence_now or _age_seconds(ctx, j) > ctx.timing.lost_submission_after_s
        ],
        fence_now=fence_now,
        old_enough=frozenset(
            j.id for j in jobs if fence_now or _age_seconds(ctx, j) > ctx.timing.just_submitted_grace_s
        ),
    )


def _gather_evidence(backend: SiteBackend, plan: _SettlePlan) -> _Evidence:
    """The site's side of settling: one record read (fencing first), one squeue if needed. No ledger."""
    record = backend.read_record(plan.directories, plan.fences) if plan.directories else None
    doubtful = [j for j in plan.jobs if _claim_of(j, plan, record) is _IN_DOUBT]
    tokens = backend.find_tokens([j.token for j in doubtful]) if doubtful else {}
    # Not in the queue: it may have run and left; Slurm's finished-job records know its name.
    gone = [j for j in doubtful if j.token not in tokens and j.slurm_name]
    since = min((j.created_at[:10] for j in gone), default="")
    names = backend.find_names([j.slurm_name for j in gone], since) if gone else {}
    return _Evidence(record, tokens, names)


_IN_DOUBT = object()


def _claim_of(job: LedgerJob, plan: _SettlePlan, record: journal.RecordRead | None) -> object:
    """The job's claim in the record, None when there is none yet, _IN_DOUBT when only squeue can tell."""
    if not (job.claim and job.journal_dir) or record is None:
        return _IN_DOUBT
    claim = record.claims[plan.directories.index(job.journal_dir)].get(job.claim)
    if claim is not None and claim.token == job.token and claim.status is journal.ClaimStatus.IN_DOUBT:
        return _IN_DOUBT
    return claim


def _apply_evidence(ctx: Context, plan: _SettlePlan, evidence: _Evidence) -> None:
    ledger = ctx.ledger
    for job in plan.jobs:
        claim = _claim_of(job, plan, evidence.record)
        if claim is None:
            continue  # not claimed yet, too young to fence: it may still be on its way
        if isinstance(claim, journal.Claim):
            if claim.token != job.token:
                held = f"intent {claim.token} {claim.aif_id}"
                ledger.mark_not_submitted(job.id, JobState.NOT_SENT, _claimed_by(held, job))
            elif claim.fenced:
                ledger.mark_not_submitted(
                    job.id,
                    JobState.NOT_SENT,
                    "never sent: the site's record proves it (the submission stopped first)",
                )
            elif claim.status is journal.ClaimStatus.SENT and claim.slurm_job_id:
                ledger.mark_submitted(job.id, claim.slurm_job_id)
            elif claim.answer is not None:
                down = claim.answer.kind is slurm.Outcome.SITE_DOWN
                state = JobState.UNREACHABLE if down else JobState.REJECTED
                ledger.mark_not_submitted(job.id, state, claim.answer.error)
            continue
        if job.token in evidence.tokens_found:
            ledger.mark_submitted(job.id, evidence.tokens_found[job.token])
        elif job.slurm_name in evidence.names_found:
            ledger.mark_submitted(job.id, evidence.names_found[job.slurm_name])
        elif job.id in plan.old_enough:
            why = (
                "maybe sent: the site's record holds its intent but no answer, and neither "
                "its token (in the queue) nor its name (in finished jobs) is found"
                if job.claim
                else "maybe sent: not found by its token or its name, and it has no site record "
                "(older aif) to prove either way"
            )
            if ledger.get(job.id).reason != why:
                ledger.mark_unresolved(job.id, why)


# -- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusReport:
    jobs: list[LedgerJob]
    unreachable: dict[str, str]  # site -> why
    in_queue: frozenset[str] = frozenset()  # aif ids confirmed in squeue by their token, just now


def _age_seconds(ctx: Context, job: LedgerJob) -> float:
    try:
        then = datetime.fromisoformat(job.updated_at)
    except ValueError:
        return 0.0
    return (ctx.clock.now() - then).total_seconds()


@dataclass(frozen=True)
class _SiteQuery:
    settle: _SettlePlan | None
    queries: list[JobQuery]


@dataclass(frozen=True)
class _SiteAnswer:
    evidence: _Evidence | None
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
            queries.setdefault(job.site, []).append(JobQuery(job.slurm_job_id, job.token, job.slurm_name))
    work = {
        site: _SiteQuery(
            _settle_plan(ctx, unresolved[site], False) if site in unresolved else None, queries.get(site, [])
        )
        for site in sorted(set(unresolved) | set(queries))
    }

    def ask(backend: SiteBackend, query: _SiteQuery) -> _SiteAnswer:
        # Only the site is asked here (threads): the ledger is written below, on this thread.
        evidence = _gather_evidence(backend, query.settle) if query.settle else None
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
            _apply_evidence(ctx, settle, answer.value.evidence)
        for token, sighting in answer.value.sightings.items():
            job = by_token[token]
            if sighting.record is not None:
                changes.append((job.id, sighting.record.state.value, sighting.record.reason))
                if sighting.in_queue:
                    in_queue.add(job.id)
            elif _age_seconds(ctx, job) > ctx.timing.just_submitted_grace_s:
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


@dataclass(frozen=True)
class CancelResult:
    job: LedgerJob
    was: JobState  # the state before
    cancelled: bool  # scancel was sent for it
    why_not: str = ""  # why it was not signalled (ended already, or not confirmed)


def cancel(ctx: Context, job_ids: Sequence[str]) -> list[CancelResult]:
    """scancel the jobs confirmed (by token, in squeue, just now), then check they left the queue.

    A job whose identity at the site cannot be confirmed is never signalled:
    its Slurm id may belong to another job by now.
    """
    ledger = ctx.ledger
    before = {j: ledger.get(j) for j in job_ids}
    report = refresh(ctx, [b.id for b in before.values()])
    if report.unreachable:
        raise SiteUnreachable("; ".join(report.unreachable.values()) + " (nothing was cancelled there)")
    targets = [j for j in report.jobs if j.id in report.in_queue and not is_terminal(j.state)]
    by_site: dict[str, list[LedgerJob]] = {}
    for job in targets:
        by_site.setdefault(job.site, []).append(job)
    sent = ctx.per_site(by_site, lambda backend, jobs: backend.cancel([j.slurm_job_id or "" for j in jobs]))
    problems = {site: r.problem for site, r in sent.items() if r.problem}
    if problems:
        raise SiteUnreachable("; ".join(problems.values()))
    deadline = ctx.clock.monotonic() + ctx.timing.cancel_confirm_s
    active = list(targets)
    while active:
        report = refresh(ctx, [j.id for j in active])
        active = [j for j in report.jobs if not is_terminal(j.state)]
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
    if include_invalid:
        return ledger.list_jobs(limit=limit)
    shown = [job for job in ledger.list_jobs() if job.state != JobState.INVALID]
    return shown if limit is None else shown[:limit]


def history(ledger: Ledger, job_id: str) -> list[tuple[str, str, str]]:
    """(time, state, reason) of every state change of a job, oldest first."""
    return [(c.at, c.state.value, c.reason) for c in ledger.history(job_id)]
