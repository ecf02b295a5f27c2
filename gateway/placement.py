"""The federation as the commands see it: rank a spec, show each site's load, explain a job.

Part of the api layer; the federation itself (probing, snapshots, ranking)
is ``gateway.federation``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.api import site_problem
from gateway.context import Context
from gateway.federation.placer import pinned_ranking
from gateway.federation.ranking import Ranking
from gateway.federation.snapshot import Snapshot
from gateway.ledger import Ledger, LedgerJob
from gateway.profile_rules import check_spec_against_profiles
from gateway.profiles import get_profile
from gateway.record import Record
from gateway.spec import JobSpec, load_spec
from gateway.submission import federation_for


def rank_spec(ctx: Context, spec_path: str, *, refresh: bool = False) -> tuple[JobSpec, Ranking]:
    """Every site for ``spec_path``, best first, and the excluded ones with every reason."""
    spec = load_spec(spec_path)
    check_spec_against_profiles(spec, ctx.profiles)
    if spec.placement.site:
        return spec, pinned_ranking(spec, get_profile(ctx.profiles, spec.placement.site), ctx.config)
    return spec, federation_for(ctx, refresh=refresh).rank(spec)


class SiteLoad(Record):
    """One line of `aif load` (capacity: the site's largest partition; pending: all partitions asked).

    Jobs placed since the probe are counted: in the free room while it lasts, then as pending.
    """

    site: str
    reachable: bool
    problem: str
    latency_s: float
    age_s: float
    gpus_free: int
    gpus_total: int
    cpus_free: int
    cpus_total: int
    pending_jobs: int
    pending_gpus: int
    queue_visible: bool
    probed: bool = True  # False: the site is not usable by this user (``problem`` says why)

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "reachable": self.reachable,
            "probed": self.probed,
            "problem": self.problem,
            "latency_s": round(self.latency_s, 3),
            "snapshot_age_s": round(self.age_s, 1),
            "gpus": {"free": self.gpus_free, "total": self.gpus_total},
            "cpus": {"free": self.cpus_free, "total": self.cpus_total},
            "pending": {"jobs": self.pending_jobs, "gpus": self.pending_gpus, "visible": self.queue_visible},
        }


def site_loads(ctx: Context, *, refresh: bool = False) -> list[SiteLoad]:
    """Every site's load (one probe per site at most per TTL, all sites at once); a site this
    user cannot use is not probed, and says why."""
    problems = {name: site_problem(profile, ctx.config) for name, profile in sorted(ctx.profiles.items())}
    found = federation_for(ctx, refresh=refresh).snapshots([s for s, why in problems.items() if not why])
    return [
        _load_of(site, found[site][0])
        if site in found
        else SiteLoad(site, False, why, 0.0, 0.0, 0, 0, 0, 0, 0, 0, True, probed=False)
        for site, why in problems.items()
    ]


def _load_of(site: str, snapshot: Snapshot) -> SiteLoad:
    result = snapshot.result
    if result is None:
        return SiteLoad(
            site, False, snapshot.problem, snapshot.latency_s, snapshot.age(), 0, 0, 0, 0, 0, 0, True
        )
    # Partitions often share nodes (sinfo reports each partition's own view), so the
    # site's capacity is its largest partition's, not their sum.
    parts = result.partitions
    gpus_free = max((p.gpus_free for p in parts), default=0)
    cpus_free = max((p.cpus_idle for p in parts), default=0)
    # Jobs placed since the probe take the free room in the order they were placed; those
    # that find none wait, as they will at the site.
    waiting_jobs = waiting_gpus = 0
    for placed in snapshot.placed:
        if placed.gpus <= gpus_free and placed.cpus <= cpus_free:
            gpus_free, cpus_free = gpus_free - placed.gpus, cpus_free - placed.cpus
        else:
            waiting_jobs, waiting_gpus = waiting_jobs + 1, waiting_gpus + placed.gpus
    return SiteLoad(
        site=site,
        reachable=True,
        problem="",
        latency_s=snapshot.latency_s,
        age_s=snapshot.age(time.time()),
        gpus_free=gpus_free,
        gpus_total=max((p.gpus_total for p in parts), default=0),
        cpus_free=cpus_free,
        cpus_total=max((p.cpus_total for p in parts), default=0),
        pending_jobs=sum(d.pending_jobs for d in result.demand.values()) + waiting_jobs,
        pending_gpus=sum(d.pending_gpus for d in result.demand.values()) + waiting_gpus,
        queue_visible=result.queue_visible,
    )


class Explanation(Record):
    job: LedgerJob
    placement: dict[str, Any]  # the ranking as it was ({} for jobs placed before the federation)
    attempts: list[tuple[str, str, str, str]]  # (site, at, outcome, detail)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.job.id,
            "site": self.job.site,
            "slurm_job_id": self.job.slurm_job_id,
            "state": str(self.job.state),
            "placement": self.placement,
            "attempts": [
                dict(zip(("site", "at", "outcome", "detail"), a, strict=True)) for a in self.attempts
            ],
        }


def explain(ledger: Ledger, job_id: str) -> Explanation:
    """Why a job went where it went: the ranking kept at submission, and every attempt."""
    job = ledger.get(job_id)
    try:
        placement = json.loads(job.placement) if job.placement else {}
    except ValueError:
        placement = {}
    return Explanation(job, placement, ledger.attempts(job.id))
