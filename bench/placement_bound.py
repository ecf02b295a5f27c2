"""How much lower any placement could make the burst's mean wait: an offline model of the sandbox.

Run with `make bench`, or alone: `python bench/placement_bound.py [--seeds N] [--json]`.
About 10 seconds; no sandbox, no network.

`bench/placement.py` measures aif against ARC's brokers on the real sandbox. Its
burst goals (aif's mean wait <= 0.6 x random and <= 0.8 x FastestQueue) have not
been met. This script asks what the sandbox cannot: how far below FastestQueue
and random could ANY site choice go on that workload, given more information than
aif is allowed? It replays the same jobs (`placement.draw_burst`, same seeds, same
arrival times) on a model of the two GPU sites, under four policies:

random        the bench's own RandomChoice, same seed: the same choices as on the sandbox
fastestqueue  the bench's own FastestQueue session (one reading at the start, idle
              sites, then ARC's bookkeeping of the jobs it placed)
aif           aif's own reading of a site (gateway.federation.backlog.earliest_start)
              on a snapshot at most 30 s old (the shipped TTL) with the jobs placed
              since, ranked as gateway.federation.ranking ranks (earliest start,
              then the larger free share, then the name). Slurm's `--test-only`
              answer is left out: it plans queued jobs a whole node at a time and is
              never earlier than this reading here
oracle        knows every job's real run time (which aif must not model: "never
              model when running jobs will end") and the jobs already sent: each
              job goes where, run forward, it really starts first. That is the
              issue's own rule ("place every job where it will start soonest")
              with perfect knowledge: the best that rule can do. It is greedy, not
              the best of all choices: it keeps no site free for jobs that have
              not arrived yet (and so, on a few small bursts, loses to a policy
              that happened to)

This is not a scheduler aif uses: aif never predicts when jobs end, Slurm
schedules. The model stands in for Slurm only to compare choices offline:

- each site is its nodes (sandbox-north 2 x 4 GPUs, sandbox-south 1 x 8); a job
  reaches its site's queue 0.6 s after it arrives (one `aif submit` process);
- every 0.5 s, jobs that reached their run time end, then the site goes through
  its queue in submission order and starts each job that fits its nodes now for
  its whole time limit without delaying any job queued before it: conservative
  backfill on time limits (Slurm's backfill, with every queued job planned);
- a job holds its GPUs 1 s longer than its `sleep` (`--overhead`): the start and
  end of its job step and Slurm's reaction to its end. With 1 s the model gives
  the baselines the mean waits measured on the sandbox for seed 2026 (`make
  bench`, 2026-11-29: random 22.3 s, FastestQueue 16.7; model 22.6 and 15.7),
  and random and FastestQueue choose exactly the sites they chose there, job
  for job; with 0 s it gives 20.0 and 12.2;
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
POLICIES = ("random", "fastestqueue", "aif", "oracle")
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
        # holds[node] = (from, until, gpus), seconds from now, on time limits
        holds: list[list[tuple[float, float, int]]] = [[] for _ in self.node_gpus]
        for job in self.running:
            assert job.start is not None
            holds[job.node].append((0.0, max(0.0, job.start + job.limit_s - now), job.gpus))
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


Choose = Callable[[ModelJob, list[str], World], str]


def eligible(job: ModelJob) -> list[str]:
    return sorted(name for name, nodes in SITES.items() if max(nodes) >= job.gpus)


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
            share = max(0.0, (free - sum(a.gpus_per_node for a in self.placed[name])) / total)
            scored.append((math.inf if start is None else start, -share, name, ask))
        best = min(scored, key=lambda s: s[:3])
        self.placed[best[2]].append(best[3])
        return best[2]


def oracle(job: ModelJob, sites: list[str], world: World) -> str:
    """Where the job really starts first, the model run forward with every job's real run time."""

    def start_at(name: str) -> float:
        ahead = copy.deepcopy(
            World({name: world.sites[name]}, [x for x in world.in_flight if x[1].site == name])
        )
        ahead.now = world.now
        me = ModelJob(-1, job.gpus, job.run_s, job.limit_s, job.arrival, name)
        ahead.in_flight.append((world.now + SUBMIT_S, me))
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
    choose: Choose
    if policy == "random":
        choose = arc_choice(RandomChoice(random.Random(seed)))
    elif policy == "fastestqueue":
        idle = {name: QueueInfo(0, sum(nodes), sum(nodes)) for name, nodes in SITES.items()}
        choose = arc_choice(FastestQueue(idle))
    elif policy == "aif":
        choose = AifReading()
    elif policy == "oracle":
        choose = oracle
    else:
        raise ValueError(policy)
    world = World({name: ModelSite(name, nodes) for name, nodes in SITES.items()}, [])
    todo = model_jobs(jobs, whole_minutes, overhead_s)
    arrivals = list(todo)
    while arrivals or world.in_flight or any(s.queued for s in world.sites.values()):
        while arrivals and arrivals[0].arrival <= world.now:
            job = arrivals.pop(0)
            job.site = choose(job, eligible(job), world)
            world.in_flight.append((job.arrival + SUBMIT_S, job))
        world.step()
    return statistics.fmean(j.start - j.arrival for j in todo if j.start is not None)


def table(
    seeds: Sequence[int], window_s: float = BURST[1], overhead_s: float = OVERHEAD_S
) -> dict[str, dict[str, dict[str, float]]]:
    """{grain: {"seed 2026" | "mean of N seeds": {policy: mean wait}}}."""
    count, _, scale, clip = BURST
    burst = (count, window_s, scale, clip)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for grain, whole in (("whole minutes (Slurm)", True), ("seconds (not possible in Slurm)", False)):
        bench_jobs = draw_burst(*burst, BENCH_SEED)
        one = {p: replay(bench_jobs, p, BENCH_SEED, whole, overhead_s) for p in POLICIES}
        per_seed = {
            p: [replay(draw_burst(*burst, s), p, s, whole, overhead_s) for s in seeds] for p in POLICIES
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
    lines.append(f"goals of the burst on the sandbox: aif {goals}; the oracle knows what aif may not")
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
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the tables")
    args = parser.parse_args()
    result = table(range(1, args.seeds + 1), args.window, args.overhead)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
