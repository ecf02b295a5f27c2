"""How a profile compares with what its Slurm site really has: `aif profile check`'s verdicts.

Pure: :func:`compare_profile` takes a profile and the site as read by
``gateway.slurm.partitions`` and lists where they disagree, each mismatch with the
profile key to change.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from gateway.profiles import Partition, SiteProfile
from gateway.record import Record
from gateway.slurm.partitions import SiteNode, SitePartition, SiteSnapshot
from gateway.tomlcheck import format_walltime

# -- the comparison --------------------------------------------------------------------------


class Mismatch(Record):
    """One place where the profile says something the site contradicts.

    ``key`` is the profile key to change (``partitions[1].cpus_per_node``);
    ``profile`` and ``site`` are the two values as text; ``source`` is the
    Slurm command and field the site's value comes from; ``why`` what goes
    wrong for jobs meanwhile.
    """

    key: str
    profile: str
    site: str
    source: str
    why: str = ""

    def line(self) -> str:
        text = f"{self.key}: profile says {self.profile}, the site has {self.site} ({self.source})"
        return f"{text}: {self.why}" if self.why else text

    def to_json(self) -> dict[str, str]:
        return {
            "key": self.key,
            "profile": self.profile,
            "site": self.site,
            "source": self.source,
            "why": self.why,
        }


class Comparison(Record):
    mismatches: tuple[Mismatch, ...]
    notes: tuple[str, ...]  # informational: nothing in the profile is wrong


def compare_profile(profile: SiteProfile, site: SiteSnapshot) -> Comparison:
    """Every disagreement between the profile's partitions and the site's, and notes on the rest."""
    mismatches: list[Mismatch] = []
    notes: list[str] = []
    for index, partition in enumerate(profile.partitions):
        _compare_partition(profile, index, partition, site, mismatches, notes)
    listed = {p.name for p in profile.partitions}
    for extra in site.partitions:
        if extra.name not in listed:
            notes.append(f"the site's partition {extra.name} is not in the profile: {_describe(extra, site)}")
    return Comparison(tuple(mismatches), tuple(notes))


def _compare_partition(
    profile: SiteProfile,
    index: int,
    p: Partition,
    site: SiteSnapshot,
    mismatches: list[Mismatch],
    notes: list[str],
) -> None:
    key = f"partitions[{index}]"
    there = site.partition(p.name)
    if there is None:
        names = [s.name for s in site.partitions]
        close = difflib.get_close_matches(p.name, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        mismatches.append(
            Mismatch(
                f"{key}.name",
                p.name,
                f"no such partition (it has {', '.join(names) or 'none'})",
                "scontrol PartitionName",
                f"every job placed there is rejected{hint}",
            )
        )
        return
    if there.state != "UP":
        notes.append(
            f"{key} ({p.name}) is {there.state} at the site (scontrol State): its jobs do not start now"
        )
    if there.hidden:
        notes.append(f"{key} ({p.name}) is hidden at the site (scontrol Hidden=YES)")
    nodes = site.nodes_of(p.name)
    if not nodes:
        mismatches.append(
            Mismatch(
                f"{key}.name", p.name, "a partition without nodes", "scontrol Nodes", "no job can run there"
            )
        )
        return
    unavailable = [n for n in nodes if not n.available]
    if unavailable:
        shown = ", ".join(f"{n.name} {n.state}" for n in unavailable[:5])
        more = ", ..." if len(unavailable) > 5 else ""
        notes.append(
            f"{key} ({p.name}): {len(unavailable)} of {len(nodes)} nodes cannot run jobs now ({shown}{more})"
        )
    _compare_cpus(key, p, there, nodes, mismatches, notes)
    _compare_memory(key, p, there, nodes, mismatches, notes)
    _compare_gpus(profile, key, p, nodes, mismatches, notes)
    _compare_limits(key, p, there, mismatches, notes)
    _compare_qos(profile, index, p, there, mismatches)
    if there.oversubscribe == "EXCLUSIVE" and not p.whole_node:
        notes.append(
            f"{key}.whole_node: the site gives whole nodes in {p.name} (scontrol OverSubscribe=EXCLUSIVE); "
            "whole_node = true would say so"
        )


def _compare_sizes(
    key: str,
    asked: int,
    shown: str,
    per_node: Sequence[int],
    unit: str,
    source: str,
    mismatches: list[Mismatch],
    notes: list[str],
    *,
    why: str,
) -> None:
    """A usable size: more than any node has is a mismatch, less than every node a note."""
    low, high = min(per_node), max(per_node)
    span = f"{low}{unit}" if low == high else f"{low}{unit} to {high}{unit} (nodes differ)"
    if asked > high:
        mismatches.append(Mismatch(key, shown, span, source, why))
    elif asked > low:
        notes.append(f"{key}: {shown} fits only some of the site's nodes, which have {span} ({source})")
    elif asked < low:
        notes.append(
            f"{key}: the profile says {shown}, the site's nodes have {span} ({source}): fine if deliberate"
        )


def _compare_cpus(
    key: str,
    p: Partition,
    there: SitePartition,
    nodes: Sequence[SiteNode],
    mismatches: list[Mismatch],
    notes: list[str],
) -> None:
    cap = there.max_cpus_per_node
    per_node = [min(n.cpus, cap) if cap is not None else n.cpus for n in nodes]
    capped = cap is not None and any(cap < n.cpus for n in nodes)
    source = "scontrol MaxCPUsPerNode" if capped else "sinfo CPUS"
    _compare_sizes(
        f"{key}.cpus_per_node",
        p.cpus_per_node,
        str(p.cpus_per_node),
        per_node,
        "",
        source,
        mismatches,
        notes,
        why="jobs asking that many cores per node are rejected",
    )


def _compare_memory(
    key: str,
    p: Partition,
    there: SitePartition,
    nodes: Sequence[SiteNode],
    mismatches: list[Mismatch],
    notes: list[str],
) -> None:
    usable: list[tuple[int, str]] = []  # per node: what a job may have there, and which limit says so
    for node in nodes:
        candidates = [(node.memory_mb, "sinfo MEMORY")]
        if there.max_mem_per_node_mb is not None:
            candidates.append((there.max_mem_per_node_mb, "scontrol MaxMemPerNode"))
        if there.max_mem_per_cpu_mb is not None:
            cpus = min(node.cpus, there.max_cpus_per_node or node.cpus)
            candidates.append((there.max_mem_per_cpu_mb * cpus, "scontrol MaxMemPerCPU x CPUs"))
        usable.append(min(candidates, key=lambda candidate: candidate[0]))
    _compare_sizes(
        f"{key}.memory_per_node",
        p.memory_per_node_mb,
        f"{p.memory_per_node} ({p.memory_per_node_mb} MB)",
        [mb for mb, _ in usable],
        " MB",
        max(usable)[1],
        mismatches,
        notes,
        why="jobs asking that much memory per node are rejected",
    )


def _compare_gpus(
    profile: SiteProfile,
    key: str,
    p: Partition,
    nodes: Sequence[SiteNode],
    mismatches: list[Mismatch],
    notes: list[str],
) -> None:
    counts = [n.gpus for n in nodes]
    low, high = min(counts), max(counts)
    gres = ", ".join(sorted({n.gres_text for n in nodes}))
    if not p.gpus_per_node:
        if high:
            notes.append(
                f"{key}.gpus_per_node: the profile lists {p.name} without GPUs, its nodes have {gres} "
                "(sinfo GRES): aif sends only CPU jobs there"
            )
        return
    span = str(low) if low == high else f"{low} to {high} (nodes differ)"
    if p.gpus_per_node > high or p.gpus_per_node < low:
        why = (
            "jobs asking that many GPUs per node are rejected"
            if p.gpus_per_node > high
            else "jobs that could use more GPUs are placed elsewhere"
        )
        mismatches.append(
            Mismatch(f"{key}.gpus_per_node", str(p.gpus_per_node), f"{span} ({gres})", "sinfo GRES", why)
        )
    elif low != high:
        notes.append(
            f"{key}.gpus_per_node: {p.gpus_per_node} GPUs fit only some nodes, which have {span} (sinfo GRES)"
        )
    types = sorted({t for n in nodes for t in n.gpu_types})
    model = p.gpu_model.lower()
    typed = profile.slurm.gpu_request in ("gres-typed", "gpus-per-node-typed")
    if not types:
        if typed:
            mismatches.append(
                Mismatch(
                    "slurm.gpu_request",
                    profile.slurm.gpu_request,
                    f"GPUs of no named type in {p.name} ({gres})",
                    "sinfo GRES",
                    f"typed GPU requests ({model or '?'}:N) cannot be met there",
                )
            )
        elif model:
            notes.append(
                f"{key}.gpu_model: the site's GRES in {p.name} names no GPU type ({gres}), "
                f"so {p.gpu_model!r} cannot be checked"
            )
    elif model and model not in [t.lower() for t in types]:
        mismatches.append(
            Mismatch(
                f"{key}.gpu_model",
                repr(p.gpu_model),
                "GPU type " + " and ".join(types),
                "sinfo GRES",
                "typed requests fail, and specs asking for the real model never go there",
            )
        )
    elif not model:
        notes.append(
            f"{key}.gpu_model: the site's GPUs in {p.name} are of type {' and '.join(types)} (sinfo GRES); "
            "the profile names none, so specs asking for a model never go there"
        )
    elif len(types) > 1:
        notes.append(f"{key}.gpu_model: {p.name} mixes GPU types {' and '.join(types)} (sinfo GRES)")


def _compare_limits(
    key: str, p: Partition, there: SitePartition, mismatches: list[Mismatch], notes: list[str]
) -> None:
    site_time = there.max_time_seconds
    if site_time is not None:
        shown = format_walltime(site_time)
        if p.max_walltime_seconds > site_time:
            mismatches.append(
                Mismatch(
                    f"{key}.max_walltime",
                    p.max_walltime,
                    shown,
                    "scontrol MaxTime",
                    "longer jobs are accepted but never start (PartitionTimeLimit)",
                )
            )
        elif p.max_walltime_seconds < site_time:
            notes.append(
                f"{key}.max_walltime: the profile says {p.max_walltime}, "
                f"the site allows {shown} (scontrol MaxTime)"
            )
    if there.max_nodes is not None and there.max_nodes <= there.total_nodes:
        limit, source = there.max_nodes, "scontrol MaxNodes"
    else:
        limit, source = there.total_nodes, "scontrol TotalNodes"
    if p.max_nodes > limit:
        mismatches.append(
            Mismatch(f"{key}.max_nodes", str(p.max_nodes), str(limit), source, "larger jobs are rejected")
        )
    elif p.max_nodes < limit:
        notes.append(f"{key}.max_nodes: the profile says {p.max_nodes}, the site allows {limit} ({source})")


def _compare_qos(
    profile: SiteProfile, index: int, p: Partition, there: SitePartition, mismatches: list[Mismatch]
) -> None:
    used: list[tuple[str, str]] = []
    if p.qos:
        used.append((f"partitions[{index}].qos", p.qos))
    used += [(f"qos[{i}].name", r.name) for i, r in enumerate(profile.qos_rules) if r.partition == p.name]
    for key, name in used:
        if there.allow_qos is not None and name not in there.allow_qos:
            allowed = ", ".join(there.allow_qos) or "none"
            mismatches.append(
                Mismatch(
                    key,
                    name,
                    f"only QOS {allowed} allowed in {p.name}",
                    "scontrol AllowQos",
                    "its jobs are rejected",
                )
            )
        elif name in there.deny_qos:
            mismatches.append(
                Mismatch(
                    key, name, f"QOS {name} denied in {p.name}", "scontrol DenyQos", "its jobs are rejected"
                )
            )


def _describe(partition: SitePartition, site: SiteSnapshot) -> str:
    """A partition the profile does not list, in a few words."""
    nodes = site.nodes_of(partition.name)
    words = []
    if partition.default:
        words.append("the default")
    if partition.hidden:
        words.append("hidden")
    if partition.state != "UP":
        words.append(partition.state)
    words.append(f"{partition.total_nodes} {'node' if partition.total_nodes == 1 else 'nodes'}")
    if nodes:
        words.append(_span("CPUs", [n.cpus for n in nodes]))
        words.append(_span("MB", [n.memory_mb for n in nodes]))
        gres = sorted({n.gres_text for n in nodes} - {"none"})
        if gres:
            words.append("GRES " + " / ".join(gres))
    words.append(f"MaxTime {partition.max_time}")
    return ", ".join(words)


def _span(unit: str, values: Iterable[int]) -> str:
    ordered = sorted(set(values))
    return f"{ordered[0]} {unit}" if len(ordered) == 1 else f"{ordered[0]}-{ordered[-1]} {unit}"
