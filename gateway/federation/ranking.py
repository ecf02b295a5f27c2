"""Which sites may run a job (eligibility) and which will start it soonest (ranking). Pure.

Eligibility is a list of reasons per site; a site with none may run the job.
The score of an eligible site is one number of seconds, with its terms shown:

    score = time to start + data - sector bonus

- time to start: Slurm's own estimated start at that site (``sbatch
  --test-only``, converted with the site's clock), unless Slurm's queue read
  GPU by GPU (``gateway.federation.backlog``: running jobs hold their GPUs
  until their time limit, queued jobs take the earliest room in priority order)
  starts the job earlier and no maintenance reservation explains the later
  answer: Slurm plans queued jobs a whole node at a time, so on nodes that hold
  several jobs its estimate for a small job is far too late. The jobs placed
  since the probe are read into that queue too. Where the queue cannot be read
  (an older probe, hidden jobs, a queue too long), once those jobs no longer fit
  the capacity the probe saw free, the queue-depth term for the excess is added:
  (work placed since + this job - free) over the partition's size, times a
  round (the job's own walltime, or ``queue_round_s``), the way ARC's
  FastestQueue normalises waiting jobs by slots, turned into seconds. With no
  estimate from Slurm and no reading, the queue depth alone: (work waiting +
  that excess) over the size, times a round. An estimate or a reading names a
  moment: from a snapshot probed a while ago, it is that much nearer now;
- data: inputs held at the site cost nothing (sites without them are not
  eligible yet: moving catalogue datasets is a later issue);
- sector bonus: a factory whose sectors include the job's earns
  ``sector_bonus_s`` seconds, a preference a long queue can outweigh.

Ties are broken by the larger share of the partition still free after the jobs
placed since (below zero once they outgrow it, so the overflow of a burst
spreads by size too), then by the site's name: the rule is written into every
explanation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import field

from gateway import slurm
from gateway.config import PlacementWeights, UserConfig
from gateway.errors import AifError
from gateway.federation.backlog import Ask, earliest_start
from gateway.federation.snapshot import Placed, Snapshot
from gateway.profile_rules import resolve_account
from gateway.profiles import SiteProfile
from gateway.record import Record
from gateway.rendering import choose_partition
from gateway.slurm.probe import PartitionDemand, StartEstimate
from gateway.spec import JobSpec

TIE_RULE = (
    "ties go to the site with the larger share of the partition free after the jobs placed since"
    " (below zero once they outgrow it), then by name"
)


class Excluded(Record):
    site: str
    reasons: tuple[str, ...]
    transient: bool  # every reason is a site being down, unreachable or in maintenance
    candidate: bool = True  # it passed the static rules (only its state at the site excluded it)

    def to_json(self) -> dict[str, object]:
        return {"site": self.site, "reasons": list(self.reasons)}


class Scored(Record):
    site: str
    score: float
    terms: Mapping[str, float]
    partition: str
    basis: str  # which estimate the time to start came from, in words
    reasons: tuple[str, ...]  # why it ranks where it does, in words
    free_share: float  # the partition's share still free after the jobs placed since (< 0: outgrown)

    def to_json(self) -> dict[str, object]:
        return {
            "site": self.site,
            "score": round(self.score, 1),
            "terms": {k: round(v, 1) for k, v in self.terms.items()},
            "partition": self.partition,
            "reasons": list(self.reasons),
        }


class Ranking(Record):
    ranked: tuple[Scored, ...]
    excluded: tuple[Excluded, ...]
    tie_rule: str = TIE_RULE

    @property
    def winner(self) -> Scored | None:
        return self.ranked[0] if self.ranked else None

    @property
    def retryable(self) -> bool:
        """Nothing to rank, and every candidate was excluded only for being down or unreachable."""
        candidates = [e for e in self.excluded if e.candidate]
        return not self.ranked and bool(candidates) and all(e.transient for e in candidates)

    def headline(self, spec_name: str) -> str:
        """One plain sentence: which site wins and why."""
        best = self.winner
        if best is None:
            return f"no site can run {spec_name} now"
        why = "; ".join(best.reasons[:2])
        if len(self.ranked) > 1:
            second = self.ranked[1]
            why += f"; next best {second.site} (score {second.score:.0f} s)"
        return f"{spec_name} goes to {best.site}: {why}"

    def to_json(self) -> dict[str, object]:
        return {
            "ranking": [s.to_json() for s in self.ranked],
            "excluded": [e.to_json() for e in self.excluded],
            "tie_rule": self.tie_rule,
        }


class SiteView(Record):
    """What ranking knows of one site: its profile and, unless pinned, its load."""

    profile: SiteProfile
    snapshot: Snapshot | None  # None: not probed (a pinned submission needs no ranking)
    estimate: StartEstimate | None = None
    placed_here: tuple[Placed, ...] = field(default=())  # placed by this process since the probe


def static_reasons(spec: JobSpec, profile: SiteProfile, config: UserConfig) -> list[str]:
    """Every reason the site may not run the job whatever its load (empty: it may)."""
    reasons = []
    if profile.name in spec.placement.exclude:
        reasons.append("excluded by the spec")
    if spec.placement.countries and profile.country not in spec.placement.countries:
        reasons.append(f"in {profile.country}, the spec allows only {', '.join(spec.placement.countries)}")
    if not profile.accepts_sensitivity(spec.data.sensitivity):
        reasons.append(f"accepts data up to {profile.max_sensitivity}, the job's is {spec.data.sensitivity}")
    missing = [d for d in spec.data.inputs if profile.dataset(d) is None]
    if missing:
        reasons.append(
            f"does not hold dataset {', '.join(missing)}"
            " (moving catalogue datasets between sites is a later issue)"
        )
    if spec.environment.container and not profile.environment.container_exec:
        reasons.append("has no container runtime")
    if spec.environment.modules and not profile.environment.module_command:
        reasons.append("has no module system")
    try:
        resolve_account(profile, config.access(profile.name))
    except AifError as exc:
        reasons.append(exc.message)
    try:
        choose_partition(spec, profile)
    except AifError as exc:
        reasons.append(exc.message)
    return reasons


def job_need(spec: JobSpec, profile: SiteProfile) -> tuple[str, int, int]:
    """(partition, GPUs, CPUs) the job takes at this site."""
    choice = choose_partition(spec, profile)
    res = spec.resources
    gpus = res.nodes * res.gpus_per_node
    cpus = res.nodes * res.tasks_per_node * (choice.cpus_per_task or 1)
    return choice.partition.name, gpus, cpus


def rank(
    spec: JobSpec,
    views: Sequence[SiteView],
    config: UserConfig,
    now: float | None = None,
) -> Ranking:
    """Eligible sites in order (best first) with their terms, then the excluded with every reason.

    ``now`` (this machine's clock, as snapshots are stamped): an estimate from a probe
    made some seconds before is that much nearer; None takes each estimate as of now.
    """
    weights = config.weights
    ranked: list[Scored] = []
    excluded: list[Excluded] = []
    for view in sorted(views, key=lambda v: v.profile.name):
        reasons = static_reasons(spec, view.profile, config)
        if reasons:
            excluded.append(Excluded(view.profile.name, tuple(reasons), transient=False, candidate=False))
            continue
        scored = _score(spec, view, weights, now)
        if isinstance(scored, Excluded):
            excluded.append(scored)
        else:
            ranked.append(scored)
    ranked.sort(key=lambda s: (s.score, -s.free_share, s.site))
    return Ranking(tuple(ranked), tuple(excluded))


def _score(spec: JobSpec, view: SiteView, weights: PlacementWeights, now: float | None) -> Scored | Excluded:
    site = view.profile.name
    partition, need_gpus, need_cpus = job_need(spec, view.profile)
    sector = spec.job.sector is not None and spec.job.sector in view.profile.sectors
    bonus = float(weights.sector_bonus_s) if sector else 0.0
    data = 0.0  # every input is held here (or the site was excluded)
    reasons: list[str] = []
    if spec.data.inputs:
        reasons.append(f"holds {', '.join(spec.data.inputs)}")
    if sector:
        reasons.append(f"focuses on {spec.job.sector} (-{bonus:.0f} s)")
    if view.snapshot is None:
        terms = {"time_to_start": 0.0, "data": data, "sector_bonus": -bonus if bonus else 0.0}
        basis = "pinned: no ranking, the site's load not probed"
        return Scored(site, data - bonus, terms, partition, basis, (basis, *reasons), 0.0)
    snapshot = view.snapshot
    if snapshot.result is None:
        return Excluded(site, (f"unreachable: {snapshot.problem}",), transient=True)
    load = next((p for p in snapshot.result.partitions if p.partition == partition), None)
    if load is None:
        return Excluded(site, (f"partition {partition} is not at the site (sinfo)",), transient=False)
    if not load.up or load.usable_nodes == 0:
        what = "is down" if not load.up else "has every node down, drained or not responding"
        return Excluded(site, (f"partition {partition} {what} ({_states(load)})",), transient=True)
    estimate = view.estimate
    unanswered = ""
    if estimate is not None and estimate.transient:  # no answer about the job: no estimate
        unanswered, estimate = estimate.message, None
    if estimate is not None and not estimate.ok:
        return Excluded(site, (f"Slurm says it cannot run there: {estimate.message}",), transient=False)
    gpu_job = need_gpus > 0
    total = load.gpus_total if gpu_job else load.cpus_total
    free = load.gpus_free if gpu_job else load.cpus_idle  # drained or down nodes' are not free
    placed = [*snapshot.placed, *view.placed_here]
    placed_here = sum(p.gpus if gpu_job else p.cpus for p in placed if p.partition == partition)
    need = need_gpus if gpu_job else need_cpus
    unit = "GPUs" if gpu_job else "CPUs"
    free_after = free - placed_here
    demand = snapshot.result.demand.get(partition, PartitionDemand())
    waiting = demand.pending_gpus if gpu_job else demand.pending_cpus
    # A "round" is how long a partition as full as it is large takes to drain, for jobs like
    # this one: the job's own walltime unless the config sets one. Not a model of when
    # running jobs end (Slurm is the scheduler): a unit to compare queues in seconds.
    round_s = float(weights.queue_round_s or spec.resources.walltime_seconds)
    beyond = placed_here + need - max(free, 0)  # work placed since that the free capacity cannot take
    reading = _backlog_reading(spec, snapshot, partition, (need_gpus, need_cpus), placed)
    # Slurm's start time and the queue's limits are moments: the seconds since the probe are past.
    elapsed = 0.0 if now is None else max(0.0, now - snapshot.probed_at)
    if estimate is not None and estimate.seconds is not None:
        start, basis, slurms = _from_estimate(estimate, snapshot, partition, reading)
        # An estimate asked alone (a new shape within the snapshot's life) counts from then.
        asked = estimate.asked_at or snapshot.probed_at
        since = elapsed if not slurms or now is None else max(0.0, now - asked)
        start, basis = _less_elapsed(start, basis, since)
        if reading is None and placed_here and beyond > 0:
            extra = beyond / max(total, 1) * round_s
            start += extra
            basis += (
                f", + {extra:.0f} s of queue for the {placed_here} {unit} placed since the probe "
                f"({free} of {total} were free)"
            )
        elif reading is None and placed_here:
            basis += f"; {placed_here} {unit} placed since still leave {free_after} free"
    elif reading is not None:
        basis = f"Slurm's queue read {_BY_UNIT}: starts in {reading[1]:.0f} s in {partition}"
        basis += " (no estimate from Slurm)"
        start, basis = _less_elapsed(reading[1], basis, elapsed)
        if placed_here:
            basis += f", counting the {placed_here} {unit} placed since the probe"
    else:
        ahead = (waiting if snapshot.result.queue_visible else 0) + beyond
        start = max(0.0, ahead / max(total, 1) * round_s)
        depth = (
            f"{waiting} {unit} waiting"
            if snapshot.result.queue_visible
            else "queue not visible (PrivateData)"
        )
        basis = (
            f"queue depth (no estimate from Slurm): {depth}, {placed_here} placed since, "
            f"{free} of {total} free -> {start:.0f} s"
        )
    if unanswered:
        basis += f" (no answer from sbatch --test-only: {unanswered})"
    reasons.insert(0, basis)
    if not snapshot.result.queue_visible:
        reasons.append("other users' jobs are hidden here (PrivateData=jobs): queue depth not visible")
    terms = {"time_to_start": start, "data": data, "sector_bonus": -bonus if bonus else 0.0}
    share = free_after / max(total, 1)
    return Scored(site, start + data - bonus, terms, partition, basis, tuple(reasons), share)


_BY_UNIT = "GPU by GPU (each job's time limit, Slurm's priority order)"


def _less_elapsed(start: float, basis: str, elapsed: float) -> tuple[float, str]:
    """A start counted from the probe, counted from now instead."""
    if start <= 0 or elapsed < 1:
        return start, basis
    now_start = max(0.0, start - elapsed)
    return now_start, f"{basis} (probed {elapsed:.0f} s ago: {now_start:.0f} s from now)"


def _from_estimate(
    estimate: StartEstimate, snapshot: Snapshot, partition: str, reading: tuple[float, float] | None
) -> tuple[float, str, bool]:
    """Time to start from Slurm's estimate, or from the GPU-level reading where Slurm's is later.

    ``reading`` is (without, with) the jobs placed since the probe; their difference is
    what those jobs add to Slurm's estimate, which was asked before they were placed.
    """
    assert snapshot.result is not None and estimate.seconds is not None
    slurm_s = estimate.seconds
    where = estimate.partition or partition
    slurm_basis = f"Slurm's estimate (sbatch --test-only): starts in {slurm_s:.0f} s in {where}"
    maintenance = snapshot.result.reservation_ending_by(slurm_s) if slurm_s > 0 else None
    if maintenance is not None:
        slurm_basis += f", after maintenance reservation {maintenance.name} (until {maintenance.end})"
    if reading is None:
        return slurm_s, slurm_basis, True
    without, with_placed = reading
    added = max(0.0, with_placed - without)
    if slurm_s <= without or maintenance is not None:
        start = slurm_s + added
        if added:
            slurm_basis += f", + {added:.0f} s for the jobs placed since the probe (read {_BY_UNIT})"
        return start, slurm_basis, True
    basis = (
        f"Slurm's queue read {_BY_UNIT}: starts in {with_placed:.0f} s in {partition}"
        f"{' counting the jobs placed since the probe' if added else ''}; sbatch --test-only said"
        f" {slurm_s:.0f} s, planning queued jobs a whole node at a time"
    )
    return with_placed, basis, False


def _backlog_reading(
    spec: JobSpec, snapshot: Snapshot, partition: str, need: tuple[int, int], placed: Sequence[Placed]
) -> tuple[float, float] | None:
    """Seconds to start read GPU by GPU, without and with the jobs placed since; None if unread."""
    result = snapshot.result
    if result is None or not result.queue_visible or not result.nodes:
        return None
    res = spec.resources
    nodes = max(res.nodes, 1)
    gpus, cpus = need
    job = Ask(partition, nodes, gpus // nodes, -(-cpus // nodes), float(res.walltime_seconds))
    asks = [
        Ask(
            p.partition,
            p.nodes,
            p.gpus // max(p.nodes, 1),
            -(-p.cpus // max(p.nodes, 1)),
            float(p.walltime_s or res.walltime_seconds),
        )
        for p in placed
    ]
    without = earliest_start(result.nodes, result.backlog, (), job)
    if without is None:
        return None
    with_placed = earliest_start(result.nodes, result.backlog, asks, job) if asks else without
    return without, with_placed if with_placed is not None else without


def _states(load: slurm.PartitionLoad) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(load.nodes_by_state.items()))
