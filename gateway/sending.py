"""Sending one submission's jobs: render them, record their paths, send them (one
command per site, specs of one shape as one array job), record every answer. Part of the
api layer; ``gateway.submission`` decides what is sent, and under which key.

Each job is in the ledger (with its token) before it leaves this machine, and in the
site's own record (``gateway.journal``) before sbatch runs; answers that were lost are
settled from that record at once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any

from gateway import journal, slurm
from gateway.api import login_user
from gateway.arrays import DEFAULT_MAX_ARRAY_SIZE, Batch, plan_batches
from gateway.context import Context, SiteResult
from gateway.errors import AifError
from gateway.federation.placer import Federation
from gateway.federation.ranking import Ranking
from gateway.ledger import LedgerJob, new_submission_token
from gateway.profile_rules import resolve_account
from gateway.profiles import SiteProfile
from gateway.record import Record
from gateway.rendering import RenderedJob, fill_site_path, render_batch_script
from gateway.settlement import attempt_outcome, claimed_by, settle_unresolved
from gateway.spec import JobSpec
from gateway.states import JobState


class Planned(Record):
    """A spec validated and placed: where it goes, why, and its label in the submission."""

    spec: JobSpec
    site: str
    why: str
    item: str  # the spec's label in its submission (content digest and copy number)
    ranking: Ranking  # where it could go, best first (one site when pinned)
    pinned: bool
    placement: str = ""  # the federation's count of it (Federation.publish); "" when pinned


def account_and_user(ctx: Context, profile: SiteProfile) -> tuple[str | None, str]:
    """The account to send and the login name at ``profile``'s site, from the user's config."""
    return resolve_account(profile, ctx.config.access(profile.name)), login_user(profile, ctx.config)


def work_area(ctx: Context, site: str) -> str:
    """The user's work area at ``site`` (the site's record of submissions lives under it)."""
    profile = ctx.profiles[site]
    account, user = account_and_user(ctx, profile)
    return fill_site_path(profile.slurm.work_area, user=user, account=account, site=site)


def render(
    ctx: Context, spec: JobSpec, profile: SiteProfile, job_id: str | None = None, token: str | None = None
) -> RenderedJob:
    """The script for ``spec`` at ``profile``'s site; without an id (dry run, probe) no id or token yet."""
    account, user = account_and_user(ctx, profile)
    if job_id is None:
        return render_batch_script(spec, profile, account=account, user=user)
    return render_batch_script(spec, profile, account=account, user=user, job_id=job_id, token=token)


def render_for(ctx: Context, p: Planned, job_id: str | None = None, token: str | None = None) -> RenderedJob:
    """The script for a planned job at its site."""
    return render(ctx, p.spec, ctx.profiles[p.site], job_id, token)


class Prepared(Record):
    """One round's submission items per site, rendered, their paths recorded: ready to send."""

    batches: dict[str, list[slurm.Submission]]
    order: dict[str, list[int]]  # per site, the jobs in the order of its answers


@dataclass
class Sending:
    """One submission's rounds: render, record the paths, send (one command per site), record
    every answer. Jobs whose site was down may come back for another round (failover)."""

    ctx: Context
    key: str
    planned: list[Planned]
    jobs: dict[int, LedgerJob]
    where: dict[int, str]
    extra: tuple[str, ...]
    next_gen: dict[str, int]
    coalesce: bool
    federation: Federation
    max_array: dict[str, int] = field(default_factory=dict)  # the sites' MaxArraySize, once known

    def prepare(self, pending: list[int]) -> Prepared:
        """Render ``pending`` for their sites and record their paths; nothing is sent."""
        by_site: dict[str, list[int]] = {}
        for i in pending:
            by_site.setdefault(self.where[i], []).append(i)
        plans = {site: self._batches(site, indexes) for site, indexes in by_site.items()}
        self.ctx.ledger.record_paths(row for plan in plans.values() for row in plan[1])
        return Prepared(
            batches={site: plan[0] for site, plan in plans.items()},
            order={site: plan[2] for site, plan in plans.items()},
        )

    def round(self, pending: list[int], prepared: Prepared | None = None) -> None:
        """Send ``pending`` to their sites (``prepared``: as :meth:`prepare` left them); an array
        over a site's MaxArraySize (nothing was claimed or sent) goes again, cut to the size the
        site named."""
        left = list(pending)
        while left:
            too_large = self._send(prepared or self.prepare(left))
            prepared = None
            left = [i for i in left if self.jobs[i].id in too_large]
            allowed: dict[str, int] = {}
            for i in left:
                site = self.where[i]
                allowed[site] = min(allowed.get(site, too_large[self.jobs[i].id]), too_large[self.jobs[i].id])
            for site, size in allowed.items():
                # A site that refuses the size it named gets no arrays at all (no endless rounds).
                self.max_array[site] = size if size < self.max_array.get(site, size + 1) else 1

    def _send(self, prepared: Prepared) -> dict[str, int]:
        ctx = self.ctx
        dirs = {s: journal.record_dir(work_area(ctx, s), self.key) for s in prepared.batches}
        answers = ctx.per_site(
            prepared.batches, lambda backend, items: backend.submit(items, dirs[backend.site])
        )
        too_large: dict[str, int] = {}
        lost: dict[str, list[LedgerJob]] = {}
        failures: list[Exception] = []
        with ctx.ledger.batch():  # the answers and the attempts: one commit
            for site_name, indexes in prepared.order.items():
                jobs = [self.jobs[i] for i in indexes]
                try:
                    found, lost[site_name] = record_answers(ctx, site_name, jobs, answers[site_name])
                except Exception as exc:  # its failed write undone alone: the other sites' answers stay
                    failures.append(exc)
                    continue
                too_large.update(found)
            if not failures and not any(lost.values()):
                self._record_attempts(prepared.order, too_large)
        if failures:
            raise failures[0]
        if any(lost.values()):
            # Settled from the sites' records, which may mean asking the sites: not while holding
            # the ledger's lock. The attempts then say what that found.
            for site_name, jobs in lost.items():
                if jobs:
                    settle_lost(ctx, site_name, jobs)
            self._record_attempts(prepared.order, too_large)
        return too_large

    def _record_attempts(self, order: dict[str, list[int]], too_large: dict[str, int]) -> None:
        latest = {j.id: j for j in self.ctx.ledger.jobs_with_key(self.key)}  # one read, not one per job
        attempts = []
        for site_name, indexes in order.items():
            for i in indexes:
                if self.jobs[i].id in too_large:
                    continue  # not sent: it goes again at once, in a smaller array
                after = latest[self.jobs[i].id]
                attempts.append((after.id, site_name, attempt_outcome(after), after.message or after.reason))
        self.ctx.ledger.record_attempts(attempts)

    def _batches(
        self, site: str, indexes: list[int]
    ) -> tuple[list[slurm.Submission], list[tuple[Any, ...]], list[int]]:
        """The site's submission items, each job's paths for the ledger, and the jobs in the
        order of the answers (an array's members in task order)."""
        ctx = self.ctx
        profile = ctx.profiles[site]
        account, user = account_and_user(ctx, profile)
        coalesce = self.coalesce and ctx.config.access(site).transport != "pyslurm"
        plan = plan_batches(
            [self.planned[i].spec for i in indexes],
            [self.jobs[i].id for i in indexes],
            profile,
            account=account,
            user=user,
            max_tasks=self._max_array_size(site),
            new_token=new_submission_token,
            coalesce=coalesce,
        )
        items: list[slurm.Submission] = []
        paths: list[tuple[Any, ...]] = []
        order: list[int] = []
        for batch in plan:
            members = [indexes[position] for position in batch.positions]
            order += members
            if batch.array is None:
                items.append(self._single(members[0], paths))
            else:
                items.append(self._array(batch, members, paths))
        return items, paths, order

    def _claim(self, i: int) -> str:
        item = self.planned[i].item
        return journal.claim_name(item, self.next_gen.get(item, 0))

    def _single(self, i: int, paths: list[tuple[Any, ...]]) -> slurm.SubmissionItem:
        job = self.jobs[i]
        rendered = render_for(self.ctx, replace(self.planned[i], site=self.where[i]), job.id, job.token)
        paths.append((job.id, rendered.workdir, rendered.stdout_path, rendered.slurm_name))
        return slurm.SubmissionItem(
            script=rendered.script,
            workdir=rendered.workdir,
            extra_args=self.extra,
            claim=self._claim(i),
            token=job.token,
            aif_id=job.id,
        )

    def _array(self, batch: Batch, members: list[int], paths: list[tuple[Any, ...]]) -> slurm.ArraySubmission:
        assert batch.array is not None
        rendered = batch.array
        for i, task in zip(members, rendered.tasks, strict=True):
            job = self.jobs[i]
            paths.append(
                (job.id, task.workdir, task.stdout_path, rendered.slurm_name, batch.array_token, task.index)
            )
        return slurm.ArraySubmission(
            script=rendered.script,
            output_dir=rendered.output_dir,
            array_token=batch.array_token,
            members=tuple(
                slurm.ArrayMember(self._claim(i), self.jobs[i].token, self.jobs[i].id) for i in members
            ),
            extra_args=self.extra,
        )

    def _max_array_size(self, site: str) -> int:
        """The site's MaxArraySize: as it answered, else as its last probe saw it, else Slurm's default.

        The submission program checks it again at the site before anything is claimed.
        """
        if site not in self.max_array:
            snapshot = self.federation.store.read(site)
            seen = snapshot.result.max_array_size if snapshot and snapshot.result else None
            self.max_array[site] = seen or DEFAULT_MAX_ARRAY_SIZE
        return self.max_array[site]


def record_answers(
    ctx: Context, site: str, jobs: list[LedgerJob], answer: SiteResult[list[slurm.SubmissionOutcome]]
) -> tuple[dict[str, int], list[LedgerJob]]:
    """Write what the site answered.

    Returns the jobs of arrays over the site's MaxArraySize (nothing claimed, nothing sent:
    they stay SUBMITTING) with the size the site allows, and the jobs whose answer was lost
    (for :func:`settle_lost`).
    """
    ledger = ctx.ledger
    unknown: list[LedgerJob] = []
    too_large: dict[str, int] = {}
    if answer.value is None:
        if answer.nothing_ran:
            # Nothing was sent: the connection or the program never started.
            for job in jobs:
                ledger.mark_not_submitted(job.id, JobState.UNREACHABLE, answer.problem)
            return too_large, []
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
                ledger.mark_not_submitted(job.id, JobState.NOT_SENT, claimed_by(outcome.error, job))
            elif outcome.kind is slurm.Outcome.TOO_LARGE:
                too_large[job.id] = slurm.max_array_size_of(outcome) or 1
            else:
                unknown.append(job)
        ledger.mark_submitted_many(accepted)
    return too_large, unknown


def settle_lost(ctx: Context, site: str, jobs: list[LedgerJob]) -> None:
    """Jobs whose answer was lost: the site's record says what happened, and fencing the
    claims that have no intent proves those were never sent. If the site cannot be asked
    now, they stay SUBMITTING: `aif status` settles them."""
    with contextlib.suppress(AifError):
        settle_unresolved(ctx, site, [ctx.ledger.get(j.id) for j in jobs], fence_now=True)
