"""A partition's backlog job by job, and its nodes one by one, as the federation probe reads them.

The probe's queue section lists, for the partitions a job could use, every
pending and running job with what it holds or asks per node and Slurm's own
limits: ``TimeLeft`` of a running job (its time limit minus what it has run:
Slurm's latest end for it) and ``TimeLimit`` of a pending one. Its node
section lists the partitions' nodes with their CPUs and GPUs. Together they
let the federation read Slurm's plan GPU by GPU (``gateway.federation.backlog``)
where ``sbatch --test-only`` plans queued jobs a whole node at a time.

The node section is sinfo's grouped form (a hostlist per set of alike nodes), so a site
of thousands of nodes answers in a few lines. Older probes printed only the first six
queue fields: they parse with no detail.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.record import Record
from gateway.slurm.jobs import count_array_tasks
from gateway.slurm.load import gres_count, parse_slurm_duration

# squeue --Format fields of the probe's queue section, in order (each ends with "|").
QUEUE_FIELDS: tuple[str, ...] = (
    "Partition",
    "State",
    "NumNodes",
    "NumCPUs",
    "ArrayTaskID",
    "tres-per-node",
    "TimeLimit",  # pending: the limit it asks for
    "TimeLeft",  # running: limit minus elapsed, Slurm's latest end for it
    "Reason",
    "NodeList",  # running: the nodes it holds (a Slurm hostlist)
    "PriorityLong",
)
BASIC_QUEUE_FIELDS = 6  # what probes before the detail printed

# sinfo --Node --Format fields of the probe's node section.
NODE_FIELDS: tuple[str, ...] = ("NodeList", "Partition", "StateLong", "CPUs", "Gres", "GresUsed")
_NODE_FIELDS_BEFORE_USE = 5  # probes before GresUsed was asked for

# A pending job waiting only for its turn or for room; any other reason (a dependency,
# a hold, a QOS or association limit, a begin time) keeps it out of the next starts.
COMPETING_REASONS = frozenset({"Priority", "Resources", "None", ""})


class QueuedJob(Record):
    """One pending or running job (a pending array: one per task) as the probe saw it."""

    partitions: tuple[str, ...]
    running: bool
    nodes: int
    cpus_per_node: int
    gpus_per_node: int
    limit_s: int | None  # pending: its time limit; running: its time left (None: unlimited)
    reason: str
    hosts: tuple[str, ...]  # running: the nodes it holds
    priority: int
    tasks: int = 1  # a pending array's tasks (each one such job)

    @property
    def competing(self) -> bool:
        return self.running or self.reason in COMPETING_REASONS


class NodeSlots(Record):
    """One node of the queried partitions: its state and what it has."""

    name: str
    partitions: tuple[str, ...]
    state: str
    cpus: int
    gpus: int
    gpus_used: int = 0  # by every job on it, of any partition (sinfo's GresUsed, per node)


def queue_format() -> str:
    return ",".join(f"{name}:|" for name in QUEUE_FIELDS)


def node_format() -> str:
    return ",".join(f"{name}:|" for name in NODE_FIELDS)


def parse_queue_line(fields: Sequence[str]) -> QueuedJob | None:
    """A job from one queue line split at ``|`` (trailing empty field dropped); None if basic."""
    if len(fields) != len(QUEUE_FIELDS):
        return None
    partitions, state, nodes_text, cpus_text, tasks_text, tres = fields[:6]
    limit_text, left_text, reason, hosts_text, priority_text = fields[6:]
    running = state.strip() == "RUNNING"
    nodes = _int(nodes_text) or 1
    cpus = _int(cpus_text) or 0
    tasks = 1 if running or tasks_text.strip() in ("", "N/A") else count_array_tasks(tasks_text)
    return QueuedJob(
        partitions=tuple(p.strip() for p in partitions.split(",") if p.strip()),
        running=running,
        nodes=nodes,
        cpus_per_node=-(-cpus // nodes),
        gpus_per_node=gres_count(tres.replace("gres:", ""), "gpu"),
        limit_s=_duration(left_text if running else limit_text),
        reason=reason.strip(),
        hosts=expand_hostlist(hosts_text.strip()) if running else (),
        priority=_int(priority_text) or 0,
        tasks=tasks,
    )


def parse_nodes(lines: Sequence[str]) -> tuple[NodeSlots, ...]:
    """One NodeSlots per node, from sinfo's groups of alike nodes (a hostlist each).

    A node in several of the partitions asked for is listed once per partition.
    """
    found: dict[str, NodeSlots] = {}
    for line in lines:
        fields = line.split("|")
        if len(fields) - 1 not in (len(NODE_FIELDS), _NODE_FIELDS_BEFORE_USE) or fields[-1].strip():
            continue  # not ours (an error line): the node section is optional detail
        hosts, partition, state, cpus, gres, *used = (f.strip() for f in fields[:-1])
        partition = partition.rstrip("*")
        gpus_used = gres_count(used[0], "gpu") if used else 0
        for name in expand_hostlist(hosts):
            known = found.get(name)
            if known is None:
                found[name] = NodeSlots(
                    name, (partition,), state, _int(cpus) or 0, gres_count(gres, "gpu"), gpus_used
                )
            elif partition not in known.partitions:
                found[name] = NodeSlots(
                    name, (*known.partitions, partition), known.state, known.cpus, known.gpus, known.gpus_used
                )
    return tuple(found.values())


def expand_hostlist(text: str) -> tuple[str, ...]:
    """``n[1-3,5],gpu07`` -> n1 n2 n3 n5 gpu07 (zero padding kept); one bracket group per name."""
    names: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,\[]*", text):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if match is None:
            if part and part not in ("(null)", "None assigned"):
                names.append(part)
            continue
        head, ranges, tail = match.groups()
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                continue
            width = len(low)
            for number in range(int(low), int(high or low) + 1):
                names.append(f"{head}{number:0{width}d}{tail}")
    return tuple(names)


def _duration(text: str) -> int | None:
    return parse_slurm_duration(text)  # None for UNLIMITED, INVALID, N/A...


def _int(text: str) -> int | None:
    match = re.match(r"\s*([0-9]+)", text)
    return int(match.group(1)) if match else None
