"""What more knowledge would win on the placement bench's burst: an offline model of the sandbox.

Run with `make bench`, or alone: `python bench/placement_bound.py [--seeds N] [--json]`.
About 13 seconds; no sandbox, no network.

`bench/placement.py` measures aif against ARC's brokers on the real sandbox. Its
burst goals (aif's mean wait <= 0.6 x random and <= 0.8 x FastestQueue) have not
been met. This script asks what the sandbox cannot: how far below FastestQueue
and random do site choices go on that workload when the placer knows more than
aif may? It replays the same jobs (`placement.draw_burst`, same seeds, same
arrival times) on a model of the two GPU sites, under seven policies:

random        the bench's own RandomChoice, same seed: the same choices as on the sandbox
fastestqueue  the bench's own FastestQueue session (one reading at the start, idle
              sites, then ARC's bookkeeping of the jobs it placed)
aif           aif's own reading of a site (gateway.federation.backlog.earliest_start)
              on a snapshot at most 30 s old (the shipped TTL) with the jobs placed
              since, ranked as gateway.federation.ranking ranks (earliest start,
              then the larger free share, then the name). Slurm's `--test-only`
              answer is left out: it plans queued jobs a whole node at a time and is
              never earlier than this reading here
aif+moves     aif's reading, and then, every second, each queued job goes to another
              site that would start it now (hold, cancel, submit again: 1 s on its
              way). aif does not do this: it is the one lever a federation has after
              placement (GridWay's migration), and this shows what it would add
oracle        knows every job's real run time (which aif must not model: "never
              model when running jobs will end") and the jobs already sent: each
              job goes where, run forward, it would start first. That is the
              issue's own rule ("place every job where it will start soonest")
              applied with knowledge no placer has. It is not a bound on what
              placement can do: it is greedy and keeps no site free for jobs that
              have not arrived yet, and jobs that arrive later can still backfill
              onto GPUs freed early and delay it (in 45 of 1,040 jobs over 25
              seeds). Other policies beat it on some seeds (aif on 8 of 25)
hindsight     knows the whole burst, jobs still to come included: a local search
              over every job's site (from the oracle's: move one job to its other
              site, or swap two that arrive one after the other; keep what lowers
              the mean; stop when nothing does). No placer can do this; it shows
              that site choices alone can go that low on this workload. On the
              bench's seed only, unless `--hindsight-all` (about 2 minutes)
pooled        no placement at all: both sites' nodes (4 + 4 + 8 GPUs) as one Slurm
              cluster, one queue, every job started the moment a node may take it.
              What one scheduler that sees every node does: the ideal a federation of
              separate sites stands in for. The goals ask aif to go below it

This is not a scheduler aif uses: aif never predicts when jobs end, Slurm
schedules. The model stands in for Slurm only to compare choices offline:

- each site is its nodes (sandbox-north 2 x 4 GPUs, sandbox-south 1 x 8); a job
  reaches its site's queue 0.6 s after it arrives (one `aif submit` process);
- every 0.5 s, jobs that reached their run time end, then the site goes through
  its queue in submission order and starts each job that fits its nodes now for
  its whole time limit without delaying any job queued before it: conservative
  backfill on time limits (Slurm's backfill, with every queued job planned);
- a job holds its GPUs 1 s longer than its `sleep` (`--overhead`): the start and
  end of its job step and Slurm's reaction to its end. This one parameter is
  fitted: with 1 s the model gives the two baselines that do not read the sites
  (their choices are the sandbox's, job for job, by construction) the mean waits
  measured on the sandbox for seed 2026 (`make bench`, 2026-11-29: random
  22.3 s, FastestQueue 16.7; model 22.6 and 15.7; with 0 s, 20.0 and 12.2; a
  later run measured 22.4 and 14.5: FastestQueue moves by 2 s between runs). For
  aif it gives 13.6 s against 14.0-15.5 measured; it compares rules with one
  another rather than predicting the sandbox's figures;
- the wait of a job is its start minus its arrival, as on the sandbox.

Each case is replayed twice: with time limits in whole minutes, as Slurm keeps
them (the sandbox), and with limits of the run time times the overestimate to
the second, which Slurm cannot hold: what Slurm's view would carry if its
limits had the grain of these seconds-long jobs.

Output: per time grain, the policies' mean waits on the bench's seed (2026) and
averaged over seeds 1..N (default 25), each policy's mean over FastestQueue's and
random's, next to the goals. `--window S` spreads the same 40 arrivals over S
seconds instead of the bench's 25 (a lighter load). `--json` prints the same as
one object.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from placement import FastestQueue, Job, QueueInfo, RandomChoice, draw_burst  # bench/ beside this script

from gateway.federation.backlog import Ask, earliest_start
from gateway.slurm.backlog import NodeSlots, QueuedJob

SITES = {"sandbox-north": (4, 4), "sandbox-south": (8,)}
TICK_S = 0.5
SUBMIT_S = 0.6  # one `aif submit` process, as measured on the sandbox
OVERHEAD_S = 1.0  # a job holds its GPUs this long beyond its sleep (see the docstring)
SNAPSHOT_TTL_S = 30.0  # aif's shipped [federation] snapshot_ttl_s
BURST = (40, 25.0, 4.0, 60.0)  # placement.py's burst: count, window, Pareto scale, clip
BENCH_SEED = 2026
POOLED = ("pooled", (4, 4, 8))  # both GPU sites' nodes as one Slurm cluster
MOVE_EVERY_S = 1.0  # how often "aif+moves" looks for a queued job another site would start now
MOVE_S = 1.0  # hold, cancel and submit again elsewhere: three controller round trips
POLICIES = ("random", "fastestqueue", "aif", "aif+moves", "oracle", "pooled", "hindsight")
GOALS = (("random", 0.6), ("fastestqueue", 0.8))
CPUS_PER_NODE = 64  # never the limit here: one CPU per job


# --- The model of a site -----------------------------------------------------------


@dataclass
class ModelJob:
    seq: int
    gpus: int
    run_s: float
    limit_s: float
    arrival: float
    site: str = ""
    start: float | None = None
    node: int = -1


@dataclass
class ModelSite:
    name: str
    node_gpus: tuple[int, ...]
    running: list[ModelJob] = field(default_factory=list)
    queued: list[ModelJob] = field(default_factory=list)

    def free_gpus(self) -> list[int]:
        free = list(self.node_gpus)
        for job in self.running:
            free[job.node] -= job.gpus
        return free

    def tick(self, now: float) -> None:
        """End the jobs that reached their run time, then start what backfill allows now."""
        self.running = [j for j in self.running if j.start is not None and j.start + j.run_s > now]
        if not self.queued:
            return
        holds = self._running_holds(now)  # holds[node] = (from, until, gpus), seconds from now, on limits
        starting: list[tuple[ModelJob, int]] = []
        for job in self.queued:  # submission order: every job planned, none delayed by a later one
            at, node = _earliest(holds, self.node_gpus, job)
            holds[node].append((at, at + job.limit_s, job.gpus))
            if at == 0.0:
                starting.append((job, node))
        for job, node in starting:
            job.start, job.node = now, node
            self.queued.remove(job)
            self.running.append(job)

    def starts_now(self, job: ModelJob, now: float, coming: Sequence[ModelJob]) -> bool:
        """Whether ``job``, queued after every job here and ``coming`` (on their way), starts now."""
        holds = self._running_holds(now)
        for ahead in [*self.queued, *coming]:
            at, node = _earliest(holds, self.node_gpus, ahead)
            holds[node].append((at, at + ahead.limit_s, ahead.gpus))
        return job.gpus <= max(self.node_gpus) and _earliest(holds, self.node_gpus, job)[0] == 0.0

    def _running_holds(self, now: float) -> list[list[tuple[float, float, int]]]:
        holds: list[list[tuple[float, float, int]]] = [[] for _ in self.node_gpus]
        for job in self.running:
            assert job.start is not None
            holds[job.node].append((0.0, max(0.0, job.start + job.limit_s - now), job.gpus))
        return holds

    def snapshot(self, now: float) -> tuple[list[NodeSlots], list[QueuedJob]]:
        """What aif's probe would read: nodes with GPUs in use, running jobs' time left, the queue."""
        free = self.free_gpus()
        nodes = [
            NodeSlots(f"n{i}", ("gpu",), "mixed", CPUS_PER_NODE, gpus, gpus - free[i])
            for i, gpus in enumerate(self.node_gpus)
        ]
        backlog = [
            QueuedJob(
                ("gpu",), True, 1, 1, j.gpus, math.ceil(j.start + j.limit_s - now), "None", (f"n{j.node}",), 1
            )
            for j in self.running
            if j.start is not None
        ]
        backlog += [
            QueuedJob(("gpu",), False, 1, 1, j.gpus, math.ceil(j.limit_s), "Priority", (), 1)
            for j in self.queued
        ]
        return nodes, backlog


def _earliest(
    holds: list[list[tuple[float, float, int]]], node_gpus: tuple[int, ...], job: ModelJob
) -> tuple[float, int]:
    moments = sorted({0.0, *(until for node in holds for _, until, _ in node)})
    for at in moments:
        for index, size in enumerate(node_gpus):
            if job.gpus <= size and _fits(holds[index], size, job.gpus, at, at + job.limit_s):
                return at, index
    raise ValueError(f"a {job.gpus}-GPU job fits no node of {node_gpus}")


def _fits(holds: list[tuple[float, float, int]], size: int, gpus: int, start: float, end: float) -> bool:
    for moment in [start, *(f for f, _, _ in holds if start < f < end)]:
        if sum(g for f, u, g in holds if f <= moment < u) + gpus > size:
            return False
    return True


# --- The policies ------------------------------------------------------------------


@dataclass
class World:
    sites: dict[str, ModelSite]
    in_flight: list[tuple[float, ModelJob]]  # (reaches its queue at, job)
    now: float = 0.0

    def step(self) -> None:
        for reach, job in [x for x in self.in_flight if x[0] <= self.now]:
            self.in_flight.remove((reach, job))
            self.sites[job.site].queued.append(job)
        for site in self.sites.values():
            site.tick(self.now)
        self.now = round(self.now + TICK_S, 6)

    def move_queued(self) -> None:
        """Send each queued job (in arrival order) to another site that would start it now, if any."""
        for job in sorted((j for site in self.sites.values() for j in site.queued), key=lambda j: j.seq):
            for name in eligible(job.gpus, self.sites):
                coming = [j for _, j in self.in_flight if j.site == name]
                if name != job.site and self.sites[name].starts_now(job, self.now, coming):
                    self.sites[job.site].queued.remove(job)
                    job.site = name
                    self.in_flight.append((self.now + MOVE_S, job))
                    break


Choose = Callable[[ModelJob, list[str], World], str]


def eligible(gpus: int, sites: dict[str, ModelSite] | None = None) -> list[str]:
    """The sites (the two GPU sites unless ``sites``) with a node that holds ``gpus`` GPUs."""
    layout = {n: s.node_gpus for n, s in sites.items()} if sites is not None else SITES
    return sorted(name for name, nodes in layout.items() if max(nodes) >= gpus)


def arc_choice(broker: FastestQueue | RandomChoice) -> Choose:
    return lambda job, sites, world: broker.choose(sites, job.gpus)


@dataclass
class AifReading:
    """aif's choice: its own GPU-level reading of a snapshot, the jobs placed since counted."""

    ttl_s: float = SNAPSHOT_TTL_S
    snapshots: dict[str, tuple[float, list[NodeSlots], list[QueuedJob], int]] = field(default_factory=dict)
    placed: dict[str, list[Ask]] = field(default_factory=dict)

    def __call__(self, job: ModelJob, sites: list[str], world: World) -> str:
        scored = []
        for name in sites:
            taken = self.snapshots.get(name)
            if taken is None or world.now - taken[0] >= self.ttl_s:
                nodes, backlog = world.sites[name].snapshot(world.now)
                taken = (world.now, nodes, backlog, sum(world.sites[name].free_gpus()))
                self.snapshots[name], self.placed[name] = taken, []
            _, nodes, backlog, free = taken
            ask = Ask("gpu", 1, job.gpus, 1, float(math.ceil(job.limit_s)))
            start = earliest_start(nodes, backlog, self.placed[name], ask)
            total = sum(SITES[name])
            share = (free - sum(a.gpus_per_node for a in self.placed[name])) / total
            scored.append((math.inf if start is None else start, -share, name, ask))
        best = min(scored, key=lambda s: s[:3])
        self.placed[best[2]].append(best[3])
        return best[2]


def oracle(job: ModelJob, sites: list[str], world: World) -> str:
    """Where the job would start first, the model run forward with every job's real run time."""

    def start_at(name: str) -> float:
        ahead = copy.deepcopy(
            World({name: world.sites[name]}, [x for x in world.in_flight if x[1].site == name])
        )
        ahead.now = world.now
        me = ModelJob(-1, job.gpus, job.run_s, job.limit_s, job.arrival, name)
        ahead.in_flight.append((job.arrival + SUBMIT_S, me))
        while me.start is None:
            ahead.step()
        return me.start

    return min(sites, key=lambda name: (start_at(name), name))


# --- A replay ----------------------------------------------------------------------


def _limit(job: Job, whole_minutes: bool) -> float:
    return job.walltime_min * 60.0 if whole_minutes else job.limit_s


def model_jobs(jobs: Sequence[Job], whole_minutes: bool, overhead_s: float = 0.0) -> list[ModelJob]:
    return [
        ModelJob(i, j.gpus, j.runtime_s + overhead_s, _limit(j, whole_minutes), j.offset_s)
        for i, j in enumerate(jobs)
    ]


def replay(
    jobs: Sequence[Job], policy: str, seed: int, whole_minutes: bool, overhead_s: float = OVERHEAD_S
) -> float:
    """Mean wait of ``jobs`` placed by ``policy`` on the model."""
    if policy == "hindsight":
        return hindsight(jobs, whole_minutes, overhead_s)[0]
    if policy == "pooled":
        one: Choose = lambda job, sites, world: POOLED[0]  # noqa: E731
        return _mean_wait(placed_jobs(jobs, one, whole_minutes, overhead_s, layout=dict([POOLED])))
    if policy == "aif+moves":
        return _mean_wait(placed_jobs(jobs, AifReading(), whole_minutes, overhead_s, moves=True))
    return _mean_wait(placed_jobs(jobs, _policy(policy, seed), whole_minutes, overhead_s))


def _policy(policy: str, seed: int) -> Choose:
    if policy == "random":
        return arc_choice(RandomChoice(random.Random(seed)))
    if policy == "fastestqueue":
        idle = {name: QueueInfo(0, sum(nodes), sum(nodes)) for name, nodes in SITES.items()}
        return arc_choice(FastestQueue(idle))
    if policy == "aif":
        return AifReading()
    if policy == "oracle":
        return oracle
    raise ValueError(policy)


def placed_jobs(
    jobs: Sequence[Job],
    choose: Choose,
    whole_minutes: bool,
    overhead_s: float,
    layout: dict[str, tuple[int, ...]] | None = None,
    moves: bool = False,
) -> list[ModelJob]:
    """``jobs`` replayed on the model, each placed by ``choose`` at its arrival.

    ``layout`` replaces the two GPU sites; with ``moves``, every MOVE_EVERY_S a queued
    job goes to another site that would start it now (World.move_queued).
    """
    world = World({name: ModelSite(name, nodes) for name, nodes in (layout or SITES).items()}, [])
    todo = model_jobs(jobs, whole_minutes, overhead_s)
    arrivals = list(todo)
    next_move = 0.0
    while arrivals or world.in_flight or any(s.queued for s in world.sites.values()):
        while arrivals and arrivals[0].arrival <= world.now:
            job = arrivals.pop(0)
            job.site = choose(job, eligible(job.gpus, world.sites), world)
            world.in_flight.append((job.arrival + SUBMIT_S, job))
        world.step()
        if moves and world.now >= next_move:
            world.move_queued()
            next_move = world.now + MOVE_EVERY_S
    return todo


def _mean_wait(jobs: Sequence[ModelJob]) -> float:
    return statistics.fmean(j.start - j.arrival for j in jobs if j.start is not None)


def hindsight(jobs: Sequence[Job], whole_minutes: bool, overhead_s: float) -> tuple[float, list[str]]:
    """The lowest mean wait a local search over every job's site finds, knowing the whole burst.

    Starts from the oracle's sites; moves one job to its other site, or swaps the sites of two
    jobs that arrive one after the other, and keeps any move that lowers the mean; stops when
    none does. Not a placement any placer could make (it knows jobs that have not arrived yet):
    it shows how far below the greedy rule site choices alone can go on this workload.
    """
    sites = [j.site for j in placed_jobs(jobs, oracle, whole_minutes, overhead_s)]

    def mean(choice: list[str]) -> float:
        fixed: Choose = lambda job, allowed, world: choice[job.seq]  # noqa: E731
        return _mean_wait(placed_jobs(jobs, fixed, whole_minutes, overhead_s))

    best = mean(sites)
    movable = [i for i, job in enumerate(jobs) if len(eligible(job.gpus)) > 1]
    other = dict(zip(SITES, reversed(list(SITES)), strict=True))
    improved = True
    while improved:
        improved = False
        moves = [[i] for i in movable] + [[a, b] for a, b in itertools.pairwise(movable)]
        for move in moves:
            if len(move) == 2 and sites[move[0]] == sites[move[1]]:
                continue
            trial = list(sites)
            for i in move:
                trial[i] = other[trial[i]]
            trial_mean = mean(trial)
            if trial_mean < best - 1e-9:
                best, sites, improved = trial_mean, trial, True
    return best, sites


def table(
    seeds: Sequence[int],
    window_s: float = BURST[1],
    overhead_s: float = OVERHEAD_S,
    hindsight_all: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """{grain: {"seed 2026" | "mean of N seeds": {policy: mean wait}}}.

    The hindsight search (about 2 s a replay) runs on the bench's seed, and on every seed
    only with ``hindsight_all``.
    """
    count, _, scale, clip = BURST
    burst = (count, window_s, scale, clip)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for grain, whole in (("whole minutes (Slurm)", True), ("seconds (not possible in Slurm)", False)):
        bench_jobs = draw_burst(*burst, BENCH_SEED)
        one = {p: replay(bench_jobs, p, BENCH_SEED, whole, overhead_s) for p in POLICIES}
        over_seeds = [p for p in POLICIES if hindsight_all or p != "hindsight"]
        per_seed = {
            p: [replay(draw_burst(*burst, s), p, s, whole, overhead_s) for s in seeds] for p in over_seeds
        }
        many = {p: statistics.fmean(v) for p, v in per_seed.items()}
        out[grain] = {f"seed {BENCH_SEED}": one, f"mean of {len(seeds)} seeds": many}
    return out


def render(result: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = []
    for grain, rows in result.items():
        lines.append(f"time limits in {grain}")
        lines.append(f"{'workload':18} {'policy':13} {'mean s':>7} {'/ FQ':>6} {'/ random':>9}")
        for label, means in rows.items():
            for policy, mean in means.items():
                fq, rnd = means["fastestqueue"], means["random"]
                lines.append(f"{label:18} {policy:13} {mean:7.2f} {mean / fq:6.2f} {mean / rnd:9.2f}")
        lines.append("")
    goals = ", ".join(f"<= {g} x {p}" for p, g in GOALS)
    lines.append(
        f"goals of the burst on the sandbox: aif {goals}. aif+moves moves queued jobs (aif does not);"
        " the oracle knows run times (aif may not); pooled is both sites as one Slurm cluster;"
        " hindsight also knows the jobs still to come (no placer can)"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=25, help="average over seeds 1..N (default 25)")
    parser.add_argument(
        "--window",
        type=float,
        default=BURST[1],
        help="spread the 40 arrivals over this many seconds (bench: 25)",
    )
    parser.add_argument(
        "--overhead", type=float, default=OVERHEAD_S, help="seconds a job holds its GPUs beyond its sleep"
    )
    parser.add_argument(
        "--hindsight-all",
        action="store_true",
        help="the hindsight search on every seed too (about 2 minutes)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the tables")
    args = parser.parse_args()
    result = table(range(1, args.seeds + 1), args.window, args.overhead, args.hindsight_all)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
