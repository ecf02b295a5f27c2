"""When a job would start at a site, read from Slurm's own queue GPU by GPU.

``sbatch --test-only`` answers from Slurm's plan, and Slurm (22.05) plans a
queued job on whole nodes: on the sandbox's south site (one node, 8 GPUs) with
eight 1-GPU jobs running and seven waiting, ``squeue --start`` planned the seven
one minute apart, each alone on the node, and ``--test-only`` put a new 1-GPU
job eight minutes out, where all seven and the new one fit the node the moment
the running jobs reach their limits: 60 s. On sites whose nodes hold several
jobs, the estimate is far too late for small jobs, and placement by it sends
them to the wrong site.

This module reads the same facts GPU by GPU: each running job holds its GPUs
and CPUs on its nodes until its time limit runs out (Slurm's own latest end:
aif does not guess when jobs really end), and each queued job, in Slurm's
priority order, takes the earliest time its nodes have room for its whole time
limit, per GPU and CPU instead of per node, and no earlier than the jobs queued
before it; then the jobs placed since the probe; then the job being placed.
Pure: a function of the probe's data, tested offline.

No earlier than the jobs before it: Slurm's backfill would slip a job into a
gap that lasts only while the jobs before it run to their time limits. They
rarely do (jobs use a third of their limit or less), and the gap closes the
moment they end: counting on it sent small jobs behind a big one that had
already started (bench/placement.py's burst).

GPUs a node's sinfo counts as used by jobs the probe did not list (jobs of
another partition on the same nodes) are held with no end. What it does not
know (reservations, QOS and association limits, memory, features,
preemption) Slurm's own estimate does; the ranking uses this reading
only where Slurm's answer is later and not explained by a maintenance
reservation, and says which it used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.record import Record
from gateway.slurm.backlog import NodeSlots, QueuedJob
from gateway.slurm.load import node_state_usable

# Read GPU by GPU up to this many jobs (running, queued, placed) on this many nodes;
# beyond, Slurm's estimate and the queue-depth term stand alone.
MAX_JOBS = 300
MAX_NODES = 256

# Beyond the nodes no job can start on now (gateway.slurm.node_state_usable), the reading
# also leaves out nodes in a reservation, whose end Slurm's own estimate accounts for.
_RESERVED_STATES = ("maint", "reserved")
_FOREVER = float("inf")


class Ask(Record):
    """What one job asks: nodes, and per node GPUs and CPUs, for its time limit (None: unlimited)."""

    partition: str
    nodes: int
    gpus_per_node: int
    cpus_per_node: int
    limit_s: float | None


@dataclass
class _Hold:
    start: float
    end: float
    gpus: int
    cpus: int


@dataclass
class _Node:
    slots: NodeSlots
    holds: list[_Hold]

    def fits(self, ask: Ask, start: float, end: float) -> bool:
        if ask.gpus_per_node > self.slots.gpus or ask.cpus_per_node > self.slots.cpus:
            return False
        moments = [start, *(h.start for h in self.holds if start < h.start < end)]
        for moment in moments:
            gpus = cpus = 0
            for hold in self.holds:
                if hold.start <= moment < hold.end:
                    gpus += hold.gpus
                    cpus += hold.cpus
            if gpus + ask.gpus_per_node > self.slots.gpus or cpus + ask.cpus_per_node > self.slots.cpus:
                return False
        return True

    def free_gpus(self, moment: float) -> int:
        return self.slots.gpus - sum(h.gpus for h in self.holds if h.start <= moment < h.end)


def earliest_start(
    nodes: Sequence[NodeSlots],
    backlog: Sequence[QueuedJob],
    placed: Sequence[Ask],
    job: Ask,
) -> float | None:
    """Seconds from the probe until ``job`` has room, after the backlog and ``placed``.

    None when it cannot be read: no node detail, more than MAX_JOBS or MAX_NODES,
    or the job never fits the nodes seen.
    """
    usable = [
        n
        for n in nodes
        if node_state_usable(n.state) and not n.state.lower().rstrip("~#!%$@^-+").startswith(_RESERVED_STATES)
    ]
    if not usable or len(usable) > MAX_NODES:
        return None
    competing = [j for j in backlog if j.competing]
    if sum(1 if j.running else j.tasks for j in competing) + len(placed) > MAX_JOBS:
        return None
    by_name = {n.name: _Node(n, []) for n in usable}
    for held in (j for j in competing if j.running):
        end = _FOREVER if held.limit_s is None else float(max(held.limit_s, 0))
        for host in held.hosts:
            node = by_name.get(host)
            if node is not None:
                node.holds.append(_Hold(0.0, end, held.gpus_per_node, held.cpus_per_node))
    # GPUs in use on a node by jobs the queue section did not list (another partition on the
    # same nodes): held with no known end. Too late a reading only leaves Slurm's estimate.
    for node in by_name.values():
        unlisted = node.slots.gpus_used - sum(h.gpus for h in node.holds)
        if unlisted > 0:
            node.holds.append(_Hold(0.0, _FOREVER, unlisted, 0))
    # Slurm's order: priority first; squeue's own order among equals.
    queued = sorted((j for j in competing if not j.running), key=lambda j: -j.priority)
    turn = 0.0  # no job starts before one queued ahead of it
    for waiting in queued:
        ask = Ask("", waiting.nodes, waiting.gpus_per_node, waiting.cpus_per_node, waiting.limit_s)
        allowed = [n for n in by_name.values() if set(n.slots.partitions) & set(waiting.partitions)]
        for _ in range(waiting.tasks):
            start = _take(allowed, ask, turn)  # None: it fits none of the nodes seen, waits elsewhere
            turn = max(turn, start or 0.0)
    for ask in placed:
        start = _take(_in_partition(by_name, ask.partition), ask, turn)
        turn = max(turn, start or 0.0)
    return _take(_in_partition(by_name, job.partition), job, turn)


def _in_partition(by_name: dict[str, _Node], partition: str) -> list[_Node]:
    return [n for n in by_name.values() if partition in n.slots.partitions]


def _take(allowed: Sequence[_Node], ask: Ask, turn: float) -> float | None:
    """Reserve the earliest room from ``turn`` on for ``ask`` on ``allowed`` (fullest nodes first)."""
    ends = (h.end for n in allowed for h in n.holds if h.end != _FOREVER and h.end > turn)
    moments = sorted({turn, *ends})
    for start in moments:
        end = _FOREVER if ask.limit_s is None else start + ask.limit_s
        fitting = [n for n in allowed if n.fits(ask, start, end)]
        if len(fitting) >= max(ask.nodes, 1):
            fitting.sort(key=lambda n: (n.free_gpus(start), n.slots.name))
            for node in fitting[: max(ask.nodes, 1)]:
                node.holds.append(_Hold(start, end, ask.gpus_per_node, ask.cpus_per_node))
            return start
    return None
