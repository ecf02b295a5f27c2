"""Settling submissions whose answer was lost: from the site's record, its queue and its
finished-job records. Part of the api layer.

The site is asked on whatever thread the caller likes (:func:`gather_evidence`
touches no ledger); the ledger is written on the caller's own (:func:`apply_evidence`).
Only a proof makes a job "not submitted": a fence in the site's record, or a
refusal in sbatch's recorded answer. A job whose attempt the ledger holds as in
doubt gets one more attempt row once settled: how it was found, and what it came to.

A spec sent as one task of an array of specs is settled by its array: the
array's token in squeue, or its name in finished-job records, gives the
array's id; the job is task ``array_task`` of it (``ARRAYID_TASK``), the task
its claim in the site's record was made for, before the array was sent.
"""

from __future__ import annotations

from dataclasses import field
from datetime import datetime

from gateway import journal, slurm
from gateway.context import Context
from gateway.ledger import LedgerJob
from gateway.record import Record
from gateway.site import SiteBackend
from gateway.states import JobState


def claimed_by(held: str, job: LedgerJob) -> str:
    fields = held.split()
    if fields[:1] == ["fence"]:
        return "not sent: another aif proved it unsent and fenced it (rerun with the same --key to send it)"
    other = fields[2] if len(fields) > 2 else "another job"
    return f"not sent: {other} already holds this spec under key {job.submission_key} at {job.site}"


def age_seconds(ctx: Context, job: LedgerJob) -> float:
    try:
        then = datetime.fromisoformat(job.updated_at)
    except ValueError:
        return 0.0
    return (ctx.clock.now() - then).total_seconds()


def settle_unresolved(ctx: Context, site: str, jobs: list[LedgerJob], *, fence_now: bool = False) -> None:
    """Settle jobs that may have been sent, from the site's record and its queue.

    An answer in the record gives the Slurm id; an intent with no answer is
    looked up by token in squeue; a claim with no intent is fenced (once it
    is old enough, or at once with ``fence_now``, when the sending program
    has provably stopped) and so proven never sent. Only that, or a refusal
    in the record, makes a job "not submitted". Raises SiteUnreachable when
    the site cannot be asked: the jobs stay as they are.
    """
    plan = settle_plan(ctx, jobs, fence_now)
    apply_evidence(ctx, plan, gather_evidence(ctx.backend(site), plan))


class SettlePlan(Record):
    """What to ask a site to settle its unresolved jobs (decided on the main thread)."""

    jobs: list[LedgerJob]
    directories: list[str]
    fences: list[journal.Fence]
    fence_now: bool
    old_enough: frozenset[str]  # ids of jobs past the grace period


class Evidence(Record):
    record: journal.RecordRead | None
    tokens_found: dict[str, str]  # in squeue, by token (an array's token: the array's id)
    names_found: dict[str, str]  # finished, by Slurm name (the second proof)
    arrays_found: dict[str, str] = field(default_factory=dict)  # finished arrays of specs, by name


def settle_plan(ctx: Context, jobs: list[LedgerJob], fence_now: bool) -> SettlePlan:
    with_record = [j for j in jobs if j.claim and j.journal_dir]
    return SettlePlan(
        jobs=jobs,
        directories=sorted({j.journal_dir for j in with_record}),
        fences=[
            journal.Fence(j.journal_dir, j.claim, j.token)
            for j in with_record
            if fence_now or age_seconds(ctx, j) > ctx.timing.lost_submission_after_s
        ],
        fence_now=fence_now,
        old_enough=frozenset(
            j.id for j in jobs if fence_now or age_seconds(ctx, j) > ctx.timing.just_submitted_grace_s
        ),
    )


def gather_evidence(backend: SiteBackend, plan: SettlePlan) -> Evidence:
    """The site's side of settling: one record read (fencing first), one squeue if needed. No ledger."""
    record = backend.read_record(plan.directories, plan.fences) if plan.directories else None
    doubtful = [j for j in plan.jobs if _claim_of(j, plan, record) is _IN_DOUBT]
    # A task of an array is found by its array's token: every task carries it.
    tokens = backend.find_tokens(sorted({_token_in_slurm(j) for j in doubtful})) if doubtful else {}
    # Not in the queue: it may have run and left; Slurm's finished-job records know its name.
    gone = [j for j in doubtful if _token_in_slurm(j) not in tokens and j.slurm_name]
    since = min((j.created_at[:10] for j in gone), default="")
    singles = [j.slurm_name for j in gone if not j.array_token]
    arrays = sorted({j.slurm_name for j in gone if j.array_token})
    names = backend.find_names(singles, since) if singles else {}
    found_arrays = backend.find_arrays(arrays, since) if arrays else {}
    return Evidence(record, tokens, names, found_arrays)


def _token_in_slurm(job: LedgerJob) -> str:
    """The token Slurm carries for the job: its array's, for a task of an array of specs."""
    return job.array_token or job.token


_IN_DOUBT = object()


def _claim_of(job: LedgerJob, plan: SettlePlan, record: journal.RecordRead | None) -> object:
    """The job's claim in the record, None when there is none yet, _IN_DOUBT when only squeue can tell."""
    if not (job.claim and job.journal_dir) or record is None:
        return _IN_DOUBT
    claim = record.claims[plan.directories.index(job.journal_dir)].get(job.claim)
    if claim is not None and claim.token == job.token and claim.status is journal.ClaimStatus.IN_DOUBT:
        return _IN_DOUBT
    return claim


def apply_evidence(ctx: Context, plan: SettlePlan, evidence: Evidence) -> None:
    ledger = ctx.ledger
    for job in plan.jobs:
        claim = _claim_of(job, plan, evidence.record)
        if claim is None:
            continue  # not claimed yet, too young to fence: it may still be on its way
        if isinstance(claim, journal.Claim):
            with ledger.batch():  # the job settled and the attempt that says so: one commit
                settled = _settle_by_claim(ctx, job, claim)
                if settled is not None:
                    _record_settlement(ctx, settled, "the site's record")
            continue
        found = _found_as(job, evidence)
        if found is not None:
            slurm_job_id, how = found
            with ledger.batch():
                _record_settlement(ctx, ledger.mark_submitted(job.id, slurm_job_id), how)
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


def _settle_by_claim(ctx: Context, job: LedgerJob, claim: journal.Claim) -> LedgerJob | None:
    """The job as its claim in the site's record settles it; None when the claim does not (yet)."""
    ledger = ctx.ledger
    if claim.token != job.token:
        held = f"intent {claim.token} {claim.aif_id}"
        return ledger.mark_not_submitted(job.id, JobState.NOT_SENT, claimed_by(held, job))
    if claim.fenced:
        return ledger.mark_not_submitted(
            job.id,
            JobState.NOT_SENT,
            "never sent: the site's record proves it (the submission stopped first)",
        )
    if claim.status is journal.ClaimStatus.SENT and claim.slurm_job_id:
        return ledger.mark_submitted(job.id, claim.slurm_job_id)
    if claim.answer is not None:
        down = claim.answer.kind is slurm.Outcome.SITE_DOWN
        state = JobState.UNREACHABLE if down else JobState.REJECTED
        return ledger.mark_not_submitted(job.id, state, claim.answer.error)
    return None


ATTEMPT_IN_DOUBT = "in doubt: the answer was lost (the site's record settles it)"


def attempt_outcome(job: LedgerJob) -> str:
    """What an attempt to send ``job`` came to, in the words ``aif explain`` shows."""
    if job.slurm_job_id:
        return f"accepted as Slurm job {job.slurm_job_id}"
    if job.unresolved:
        return ATTEMPT_IN_DOUBT
    return {
        JobState.REJECTED: "refused by the scheduler",
        JobState.UNREACHABLE: "site down: nothing was sent",
        JobState.NOT_SENT: "not sent",
    }.get(job.state, str(job.state))


def _record_settlement(ctx: Context, settled: LedgerJob, how: str) -> None:
    """The attempt left in doubt at ``settled``'s site, now settled (found by ``how``): one more
    attempt row says what it came to, so the ledger keeps every attempt with its outcome.

    Only an attempt recorded in doubt gets one: a submission that settles its lost answers
    before it records its attempts (at once, from the site's record) records the outcome itself.
    """
    attempts = ctx.ledger.attempts(settled.id)
    if not attempts or attempts[-1][0] != settled.site or attempts[-1][2] != ATTEMPT_IN_DOUBT:
        return
    outcome = f"settled from {how}: {attempt_outcome(settled)}"
    ctx.ledger.record_attempts([(settled.id, settled.site, outcome, settled.message or settled.reason)])


def _found_as(job: LedgerJob, evidence: Evidence) -> tuple[str, str] | None:
    """The Slurm id the job was found as, by token or by name (a task of an array: the
    array's id and its own task, ``ARRAYID_TASK``), and where it was found."""
    by_token, by_name = "its token in the site's queue", "its name in the site's finished jobs"
    if job.array_token:
        if job.array_task is None:
            return None
        in_queue = evidence.tokens_found.get(job.array_token)
        array_id = in_queue or evidence.arrays_found.get(job.slurm_name)
        return (f"{array_id}_{job.array_task}", by_token if in_queue else by_name) if array_id else None
    in_queue = evidence.tokens_found.get(job.token)
    slurm_job_id = in_queue or evidence.names_found.get(job.slurm_name)
    return (slurm_job_id, by_token if in_queue else by_name) if slurm_job_id else None
