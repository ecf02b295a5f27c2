"""Submitting: every spec validated and placed first, then one batched command per site,
under a key that never lets one spec be sent twice. Part of the api layer.

- nothing is half-submitted: every spec is validated and placed before any
  is sent; each job is in the ledger (with its token) before it leaves this
  machine, and in the site's own record (``gateway.journal``) before sbatch runs;
- a submission has a key: the same key with the same specs never submits
  twice, from any machine: what the sites' records show as sent is adopted;
- answers that were lost are settled from the site's record at once;
- specs of one shape sent to one site in one call become ONE Slurm array job
  (``gateway.arrays``), each spec still its own aif job: one task of it,
  claimed in the site's record on its own before the array is sent.

Sending (render, record, one command per site, the answers) is ``gateway.sending``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from gateway import journal
from gateway.arrays import array_job_name, array_output_dir
from gateway.context import Context
from gateway.errors import AifError, Interrupted, InvalidInput, NoFit, SiteUnreachable, UsageError
from gateway.federation.placer import Federation, pinned_ranking
from gateway.federation.ranking import Ranking, static_reasons
from gateway.ledger import LedgerJob, spec_sha256
from gateway.profile_rules import check_spec_against_profiles
from gateway.profiles import SiteProfile, get_profile
from gateway.record import Record
from gateway.rendering import RenderedJob
from gateway.sending import Planned, Sending, render, render_for, work_area
from gateway.spec import JobSpec, load_spec
from gateway.states import JobState, is_terminal
from gateway.status import refresh


class SubmittedJob(Record):
    job: LedgerJob
    why: str  # why this site
    how: str  # "submitted", "sent before", "adopted", "in doubt", or why it was not sent


class SubmitReport(Record):
    key: str
    jobs: list[SubmittedJob]


class DryRun(Record):
    spec: str
    site: str
    why: str
    rendered: RenderedJob


def federation_for(ctx: Context, *, refresh: bool = False) -> Federation:
    """The federation over this context's sites: probes through its backends, shared snapshots."""

    def script_for(spec: JobSpec, profile: SiteProfile) -> str:
        return render(ctx, spec, profile).script

    return Federation(ctx.profiles, ctx.config, ctx.backend, script_for, refresh=refresh)


def no_site_error(spec: JobSpec, ranking: Ranking) -> AifError:
    """Every site excluded: exit 5 when only for being down or unreachable (retry later), else 4."""
    detail = "; ".join(f"{e.site}: {', '.join(e.reasons)}" for e in ranking.excluded)
    if ranking.retryable:
        return SiteUnreachable(f"no site can run {spec.name} now (retry later): {detail}")
    return NoFit(f"no site can run {spec.name}: {detail}")


def _spec_hash(path: str) -> str:
    """The spec's hash for the ledger; an unreadable file is recorded with the hash of nothing."""
    try:
        return spec_sha256(path)
    except OSError:
        return spec_sha256("/dev/null")


def plan_submissions(
    ctx: Context,
    spec_paths: Sequence[str],
    site: str | None,
    *,
    record_invalid: bool = True,
    federation: Federation | None = None,
) -> list[Planned]:
    """Validate and place every spec before anything is sent: all or nothing.

    Specs are placed one after the other against snapshots that count each
    job just placed, so a burst spreads over the sites.
    """
    planned: list[Planned] = []
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
                # Pinning is the same filter with one candidate, and no probe.
                ranking = pinned_ranking(spec, get_profile(ctx.profiles, chosen), ctx.config)
                if ranking.winner is None:
                    reasons = "; ".join(r for e in ranking.excluded for r in e.reasons)
                    raise NoFit(f"{spec.name} cannot run at {chosen}: {reasons}")
                why = "named on the command line" if site else "pinned by the spec"
                planned.append(Planned(spec, chosen, why, item, ranking, pinned=True))
            else:
                federation = federation or federation_for(ctx)
                ranking, placement = federation.place(spec)
                if ranking.winner is None:
                    raise no_site_error(spec, ranking)
                why = ranking.headline(spec.name).split(": ", 1)[1]
                planned.append(Planned(spec, ranking.winner.site, why, item, ranking, False, placement))
        except (InvalidInput, NoFit, UsageError, SiteUnreachable) as exc:
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
    return [DryRun(spec=p.spec.source, site=p.site, why=p.why, rendered=render_for(ctx, p)) for p in planned]


def _intent(p: Planned, key: str, journal_dir: str, dependency: LedgerJob | None, gen: int) -> dict[str, Any]:
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
        "placement": json.dumps(
            {"headline": p.ranking.headline(p.spec.name), "pinned": p.pinned, **p.ranking.to_json()}
        ),
    }


def submit(
    ctx: Context,
    spec_paths: Sequence[str],
    *,
    site: str | None = None,
    after: str | None = None,
    key: str | None = None,
    failover: bool = True,
    refresh: bool = False,
    coalesce: bool = True,
) -> SubmitReport:
    """Submit every spec under one key; one entry per spec, whatever happened to it.

    With no ``key`` a fresh one is made (it cannot have been used). With a
    key, what was sent under it before (from this machine or another, as the
    sites' records show) is adopted and only the rest is sent; a spec whose
    content was never part of that submission is refused. A job placed by
    the federation whose site turns out to be down (nothing was sent, proven)
    goes to the next site of its ranking, unless ``failover`` is off; a
    pinned job never moves, nor does one sent ``after`` another (its
    dependency holds only at its parent's site). Unless ``coalesce`` is
    off, specs of one shape sent to one site go as one array job (each spec
    one task of it).
    """
    explicit = key is not None
    key = key if key is not None else journal.new_key()
    if not journal.is_valid_key(key):
        raise UsageError(f"--key {key!r}: a key is {journal.KEY_ALLOWED}")
    if site is not None:
        ctx.prepare([site])  # the login overlaps reading, placing and recording the specs
    federation = federation_for(ctx, refresh=refresh)
    planned = plan_submissions(ctx, spec_paths, site, federation=federation)
    dependency = _dependency(ctx, after, {p.site for p in planned})
    decided, next_gen = _settle_earlier(ctx, planned, key) if explicit else ({}, {})
    to_send = [i for i in range(len(planned)) if i not in decided]
    journal_dirs = {p.site: journal.record_dir(work_area(ctx, p.site), key) for p in planned}
    intents = [
        _intent(planned[i], key, journal_dirs[planned[i].site], dependency, next_gen.get(planned[i].item, 0))
        for i in to_send
    ]
    # A parent that already completed needs no Slurm dependency (and Slurm may have forgotten it).
    waits = dependency is not None and dependency.state != JobState.COMPLETED
    # Slurm's afterok:N names job N of one site: at any other site it is another job or none.
    failover = failover and dependency is None
    extra = (f"--dependency=afterok:{dependency.slurm_job_id}",) if dependency and waits else ()
    where = {i: planned[i].site for i in to_send}
    # Other aif processes count these jobs from now on (a dry run, a refused batch or jobs
    # sent before under this key are never counted: nothing of them is sent now).
    federation.publish({planned[i].placement for i in to_send})
    tried: dict[int, list[str]] = {i: [] for i in to_send}
    pending = list(to_send)
    with ctx.ledger.batch():  # the intents and the paths rendered with their ids: one commit, then the send
        jobs = dict(zip(to_send, ctx.ledger.record_intents(intents), strict=True))
        sending = Sending(ctx, key, planned, jobs, where, extra, next_gen, coalesce, federation)
        prepared = sending.prepare(pending) if pending else None
    try:
        while pending:
            sending.round(pending, prepared)
            prepared = None
            # In Slurm's queue now (or maybe): counted again if a probe since publish missed them.
            federation.sent({planned[i].placement for i in pending})
            for i in pending:
                tried[i].append(where[i])
            pending = (
                _fail_over(ctx, key, planned, jobs, where, tried, pending, federation) if failover else []
            )
    except KeyboardInterrupt:
        raise _interrupted(ctx, key, spec_paths, list(jobs.values()), decided) from None
    latest = {j.id: j for j in ctx.ledger.jobs_with_key(key)}  # one read, not one per job
    for i, job in jobs.items():
        now = latest[job.id]
        why = planned[i].why if len(tried[i]) < 2 else f"failed over from {', '.join(tried[i][:-1])}"
        decided[i] = SubmittedJob(now, why, _how(now))
    return SubmitReport(key=key, jobs=[decided[i] for i in range(len(planned))])


def _fail_over(
    ctx: Context,
    key: str,
    planned: list[Planned],
    jobs: dict[int, LedgerJob],
    where: dict[int, str],
    tried: dict[int, list[str]],
    pending: list[int],
    federation: Federation,
) -> list[int]:
    """Move the jobs whose site was down (nothing sent, proven) to the next site of their ranking.

    A job whose answer was lost is never sent elsewhere: it stays for its site's record to
    settle. A pinned job never moves.
    """
    moved = []
    for i in pending:
        job = ctx.ledger.get(jobs[i].id)
        proven_unsent = job.state == JobState.UNREACHABLE or (
            job.state == JobState.NOT_SENT and job.message.startswith("never sent")
        )
        if planned[i].pinned or not proven_unsent:
            continue
        nxt = next((s.site for s in planned[i].ranking.ranked if s.site not in tried[i]), None)
        if nxt is None:
            continue
        target = replace(planned[i], site=nxt)
        rendered = render_for(ctx, target, job.id, job.token)
        ctx.ledger.reassign(
            job.id,
            site=nxt,
            journal_dir=journal.record_dir(work_area(ctx, nxt), key),
            workdir=rendered.workdir,
            stdout_path=rendered.stdout_path,
        )
        counted = federation.count_placed(planned[i].spec, nxt, instead_of=planned[i].placement)
        planned[i] = replace(planned[i], placement=counted)
        where[i] = nxt
        moved.append(i)
    return moved


def _how(job: LedgerJob) -> str:
    if job.slurm_job_id:
        return "submitted"
    if job.unresolved:
        return "in doubt"
    return job.message or str(job.state)


def _settle_earlier(
    ctx: Context, planned: list[Planned], key: str
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
    # Where each spec could have gone (statically): its record may be at any of them.
    could_run = [
        {name for name, prof in ctx.profiles.items() if not static_reasons(p.spec, prof, ctx.config)}
        for p in planned
    ]
    sites = {j.site for j in earlier} | {p.site for p in planned} | set().union(*could_run)
    dirs = {}
    for name in sorted(sites):
        try:
            dirs[name] = journal.record_dir(work_area(ctx, name), key)
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
        blind = [name for name in unasked if name in could_run[index]]
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
    p: Planned,
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


def _adopt(ctx: Context, p: Planned, key: str, journal_dir: str, claim: journal.Claim) -> LedgerJob:
    """A job another aif sent under this key, into this ledger under its own id and token
    (a task of an array: with its array's token, task, name and output)."""
    rendered = render_for(ctx, p, claim.aif_id, claim.token)
    intent = _intent(p, key, journal_dir, None, claim.gen)
    intent.update(workdir=rendered.workdir, stdout_path=rendered.stdout_path, slurm_name=rendered.slurm_name)
    if claim.array_token and claim.array_task is not None:
        output_dir = array_output_dir(rendered.work_area, claim.array_token)
        intent.update(
            stdout_path=f"{output_dir}/slurm-%A_%a.out",
            slurm_name=array_job_name(claim.array_token),
            array_token=claim.array_token,
            array_task=claim.array_task,
        )
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
