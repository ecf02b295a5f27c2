"""Load probing: what a site's partitions have and use, and how much work waits for them.

Argv builders and parsers for ``sinfo`` (``PartitionLoad`` per partition) and
for ``squeue`` over every user's pending jobs (``QueueDepth`` per partition),
with the readers of Slurm durations and GRES counts they need.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import field
from types import MappingProxyType

from gateway.record import Record
from gateway.slurm.jobs import SlurmOutputError, _text_or_none, count_array_tasks

SINFO_FIELDS: tuple[str, ...] = (
    "Partition",  # with a trailing * on the default partition
    "Available",  # up / down / drain / inact
    "StateLong",  # node state of this line's group: idle, mixed, drained, down*...
    "Nodes",
    "CPUsState",  # allocated/idle/other/total
    "Gres",  # per node: gpu:4, gpu:a100:4(S:0-1), (null)
    "GresUsed",  # per node too: gpu:1, gpu:a100:2(IDX:0-1)
    "Memory",  # MB per node
    "Time",  # partition MaxTime: 2-00:00:00, 1:00:00, infinite
)


UNUSABLE_NODE_STATES = ("down", "drain", "fail", "unknown", "inval", "future")


def node_state_usable(state: str) -> bool:
    """Whether a node in this sinfo state may start a job (``drained``, ``idle*``... may not).

    A node in a maintenance reservation (``maint``) counts as usable: Slurm's
    estimate moves past the reservation, and the explanation names it.
    """
    if state.endswith("*"):  # not responding: Slurm allocates it no new work
        return False
    return not state.lower().rstrip("~#!%$@^-+").startswith(UNUSABLE_NODE_STATES)


class PartitionLoad(Record):
    """What one partition has and uses right now, summed over sinfo's node groups.

    ``available`` is sinfo's word (up/down/drain/inact). ``nodes_by_state``
    counts nodes by sinfo's long state (idle, mixed, allocated, draining,
    drained, down*...). ``cpus_other`` are CPUs of drained/down nodes;
    ``gpus_unusable`` the GPUs of those nodes that no job holds (so
    ``gpus_free`` is what a new job could get). ``memory_mb`` is the largest
    node's memory; ``timelimit`` is the partition's MaxTime as printed,
    ``timelimit_seconds`` None if infinite.
    """

    partition: str
    default: bool
    available: str
    nodes_total: int
    nodes_by_state: Mapping[str, int] = field(hash=False)
    cpus_alloc: int
    cpus_idle: int
    cpus_other: int
    cpus_total: int
    gpus_total: int
    gpus_used: int
    gres: tuple[str, ...]
    memory_mb: int | None
    timelimit: str
    timelimit_seconds: int | None
    gpus_unusable: int = 0

    @property
    def up(self) -> bool:
        return self.available == "up"

    @property
    def gpus_free(self) -> int:
        return max(0, self.gpus_total - self.gpus_used - self.gpus_unusable)

    @property
    def usable_nodes(self) -> int:
        return sum(n for state, n in self.nodes_by_state.items() if node_state_usable(state))


def sinfo_argv() -> list[str]:
    """sinfo, one line per group of alike nodes in a partition.

    sinfo groups a partition's nodes whose state, configuration and GRES use
    are the same, and splits them otherwise (so two nodes using 1 and 2 GPUs
    make two lines). Every field is an admin-chosen name or a number, so a
    plain ``|`` separator is safe here.
    """
    fmt = ",".join(f"{name}:|" for name in SINFO_FIELDS)
    return ["sinfo", "--noheader", f"--Format={fmt}"]


def parse_sinfo(stdout: str) -> list[PartitionLoad]:
    """PartitionLoad per partition, in sinfo's order."""
    groups: dict[str, list[list[str]]] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        # the last spec also ends in "|", so there is one empty field more
        if len(fields) != len(SINFO_FIELDS) + 1 or fields[-1].strip():
            raise SlurmOutputError(f"sinfo line is not in aif's format: {line[:200]!r}")
        groups.setdefault(fields[0], []).append(fields[:-1])
    return [_partition_load(lines) for lines in groups.values()]


def _partition_load(lines: list[list[str]]) -> PartitionLoad:
    first = lines[0]
    name = first[0]
    nodes_by_state: dict[str, int] = {}
    cpus = [0, 0, 0, 0]
    nodes_total = gpus_total = gpus_used = gpus_unusable = 0
    gres: list[str] = []
    memory: int | None = None
    for _, _, node_state, nodes_text, cpus_text, gres_text, gres_used_text, mem_text, _ in lines:
        try:
            nodes = int(nodes_text)
            cpu_counts = [int(x) for x in cpus_text.split("/")]
        except ValueError as exc:
            raise SlurmOutputError(f"sinfo numbers unreadable: {nodes_text!r} {cpus_text!r}") from exc
        if len(cpu_counts) != 4:
            raise SlurmOutputError(f"sinfo CPU counts unreadable: {cpus_text!r}")
        nodes_total += nodes
        nodes_by_state[node_state] = nodes_by_state.get(node_state, 0) + nodes
        cpus = [a + b for a, b in zip(cpus, cpu_counts, strict=True)]
        # Gres and GresUsed are both per node: sinfo only groups nodes whose
        # usage is the same (recorded: two nodes using 1 GPU each print
        # Nodes=2, CPUsState summed 2/126/0/128, but GresUsed gpu:1).
        group_total = gres_count(gres_text, "gpu") * nodes
        group_used = gres_count(gres_used_text, "gpu") * nodes
        gpus_total += group_total
        gpus_used += group_used
        if not node_state_usable(node_state):
            gpus_unusable += max(0, group_total - group_used)
        if _text_or_none(gres_text) is not None and gres_text not in gres:
            gres.append(gres_text)
        node_memory = _leading_int(mem_text)
        if node_memory is not None:
            memory = node_memory if memory is None else max(memory, node_memory)
    timelimit = first[8]
    return PartitionLoad(
        partition=name.rstrip("*"),
        default=name.endswith("*"),
        available=first[1],
        nodes_total=nodes_total,
        nodes_by_state=MappingProxyType(nodes_by_state),
        cpus_alloc=cpus[0],
        cpus_idle=cpus[1],
        cpus_other=cpus[2],
        cpus_total=cpus[3],
        gpus_total=gpus_total,
        gpus_used=gpus_used,
        gres=tuple(gres),
        memory_mb=memory,
        timelimit=timelimit,
        timelimit_seconds=parse_slurm_duration(timelimit),
        gpus_unusable=gpus_unusable,
    )


def _leading_int(text: str) -> int | None:
    match = re.match(r"\s*([0-9]+)", text)
    return int(match.group(1)) if match else None


def gres_count(gres: str, kind: str = "gpu") -> int:
    """Sum the counts of one GRES kind: ``gpu:a100:2(IDX:0-1),gpu:v100:1`` -> 3."""
    total = 0
    # Commas also appear inside "(S:0,2)" socket/index lists: drop those first.
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] != kind:
            continue
        if len(parts) == 1:
            total += 1  # "gpu" alone means one
            continue
        count = _leading_int(parts[-1])
        total += count if count is not None else 0
    return total


def parse_slurm_duration(text: str) -> int | None:
    """Slurm time text to seconds; None for ``infinite``/``UNLIMITED``/unreadable.

    Forms: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``.
    """
    text = text.strip()
    days = 0
    if "-" in text:
        day_text, _, text = text.partition("-")
        if not day_text.isdigit():
            return None
        days = int(day_text)
        parts = text.split(":")
        if not all(p.isdigit() for p in parts) or len(parts) > 3:
            return None
        hours, minutes, seconds = ([int(p) for p in parts] + [0, 0])[:3]
    else:
        parts = text.split(":")
        if not all(p.isdigit() for p in parts) or len(parts) > 3:
            return None
        numbers = [int(p) for p in parts]
        if len(numbers) == 1:
            hours, minutes, seconds = 0, numbers[0], 0
        elif len(numbers) == 2:
            hours, minutes, seconds = 0, numbers[0], numbers[1]
        else:
            hours, minutes, seconds = numbers
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class QueueDepth(Record):
    """Pending work waiting for one partition (all users), array tasks counted one by one."""

    partition: str
    pending_jobs: int
    pending_cpus: int


def queue_depth_argv() -> list[str]:
    """squeue of every user's pending jobs: partition, CPUs, array tasks. No free text."""
    return [
        "squeue",
        "--noheader",
        "--states=PENDING",
        "--Format=Partition:|,NumCPUs:|,ArrayTaskID:|",
    ]


def parse_queue_depth(stdout: str) -> list[QueueDepth]:
    """Pending jobs and CPUs per partition; a job pending for ``a,b`` counts in both."""
    jobs: dict[str, int] = {}
    cpus: dict[str, int] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 4 or fields[3].strip():
            raise SlurmOutputError(f"squeue line is not in aif's format: {line[:200]!r}")
        partitions, cpu_text, tasks_text, _ = fields
        tasks = 1 if _text_or_none(tasks_text) is None else count_array_tasks(tasks_text)
        job_cpus = _leading_int(cpu_text) or 0
        for partition in partitions.split(","):
            jobs[partition] = jobs.get(partition, 0) + tasks
            cpus[partition] = cpus.get(partition, 0) + tasks * job_cpus
    return [QueueDepth(name, jobs[name], cpus[name]) for name in jobs]
