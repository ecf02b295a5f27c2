"""Probing a site's load: the one remote command, and the pure parser of what it prints.

One probe is one command at the site (``bash -c PROGRAM aif-probe PARTITIONS``,
the program being ``probe.sh`` beside this file):
the site's clock, ``sinfo`` per partition (nodes by state, CPUs and GPUs idle
and total), the pending and running jobs of every user in the partitions the
job could use (with the CPUs and GPUs they hold or wait for per node, their time
limits, reasons, nodes and priorities: ``gateway.slurm.backlog``) and those
partitions' nodes one by one, whether the site
hides other users' jobs (``PrivateData``), its ``MaxArraySize``, and, with the
job's rendered script on stdin, Slurm's own estimated start for it
(``sbatch --test-only``, which answers on stderr "Job N to start at TIME
using K processors on nodes X in partition P", or refuses). aif never
guesses when running jobs end: it reads Slurm's own limits. Slurm is the scheduler.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import field
from datetime import datetime
from pathlib import Path

from gateway.record import Record
from gateway.slurm.backlog import (
    BASIC_QUEUE_FIELDS,
    QUEUE_FIELDS,
    NodeSlots,
    QueuedJob,
    node_format,
    parse_nodes,
    parse_queue_line,
    queue_format,
)
from gateway.slurm.jobs import SlurmOutputError, count_array_tasks, is_controller_unreachable
from gateway.slurm.load import SINFO_FIELDS, PartitionLoad, gres_count, parse_sinfo

_PROBE_PROGRAM = Path(__file__).with_name("probe.sh").read_text(encoding="utf-8")


def probe_argv(partitions: Sequence[str], with_test: bool) -> list[str]:
    """The probe; the job's script goes on stdin when ``with_test`` (``sbatch --test-only``)."""
    for name in partitions:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ValueError(f"not a partition name: {name!r}")
    fmt = ",".join(f"{name}:|" for name in SINFO_FIELDS)
    return [
        "bash",
        "-c",
        _PROBE_PROGRAM,
        "aif-probe",
        ",".join(partitions),
        fmt,
        "test" if with_test else "-",
        queue_format(),
        node_format(),
    ]


# ``sbatch --test-only`` alone, script on stdin: a new job shape within a snapshot's life.
# The caller prints the site's clock first (the estimate is in the site's local time).
TEST_ONLY_SHELL = 'sbatch --test-only 2>&1; echo "@rc $?"'


class PartitionDemand(Record):
    """Pending and running work in one partition, all users (array tasks counted one by one)."""

    pending_jobs: int = 0
    pending_cpus: int = 0
    pending_gpus: int = 0
    running_jobs: int = 0
    running_cpus: int = 0
    running_gpus: int = 0


class StartEstimate(Record):
    """Slurm's answer to ``sbatch --test-only``: when and where, or why it cannot run.

    ``transient``: no answer about the job at all (the controller could not be
    reached or did not answer in time), so not a refusal: there is no estimate.
    """

    ok: bool
    seconds: float | None  # from the site's now to the estimated start (never negative)
    partition: str
    message: str  # Slurm's words
    transient: bool = False
    asked_at: float = 0.0  # this machine's clock when asked alone (0: with the probe, at its stamp)


class Reservation(Record):
    """A reservation at the site (times in the site's local time, as Slurm prints them)."""

    name: str
    start: str
    end: str
    flags: tuple[str, ...]
    nodes: str

    @property
    def maintenance(self) -> bool:
        return "MAINT" in self.flags


class ProbeResult(Record):
    """What one probe of one site found."""

    site_epoch: int
    partitions: tuple[PartitionLoad, ...]
    demand: dict[str, PartitionDemand] = field(default_factory=dict)
    queue_visible: bool = True
    max_array_size: int | None = None
    estimate: StartEstimate | None = None
    site_now: str = ""  # the site's local time when probed (ISO, as Slurm prints times)
    reservations: tuple[Reservation, ...] = ()
    # Job by job and node by node (gateway.slurm.backlog); empty from older probes.
    backlog: tuple[QueuedJob, ...] = ()
    nodes: tuple[NodeSlots, ...] = ()

    def reservation_ending_by(self, seconds: float) -> Reservation | None:
        """A maintenance reservation that ends between the probe and ``seconds`` later (+1 min)."""
        try:
            now = datetime.fromisoformat(self.site_now)
        except ValueError:
            return None
        for reservation in self.reservations:
            try:
                end = datetime.fromisoformat(reservation.end)
            except ValueError:
                continue
            if reservation.maintenance and now < end and (end - now).total_seconds() <= seconds + 60:
                return reservation
        return None


class ProbeUnreadable(ValueError):
    """The probe printed something it does not print (cut short, or not our program)."""


def parse_probe(stdout: str) -> ProbeResult:
    """Parse the probe's sections; any missing section or failed sinfo is ProbeUnreadable."""
    sections = _sections(stdout)
    clock = sections.get("clock")
    if clock is None or "end" not in sections:
        raise ProbeUnreadable("the probe's answer was cut short")
    epoch_text, _, local_now = clock[0].partition("\t")
    try:
        site_epoch = int(epoch_text)
        now = datetime.fromisoformat(local_now)
    except ValueError as exc:
        raise ProbeUnreadable(f"the site's clock is unreadable: {clock[0]!r}") from exc
    sinfo_lines, sinfo_rc = _body_and_rc(sections.get("sinfo", []))
    if sinfo_rc != "0":
        raise ProbeUnreadable(f"sinfo failed: {_last(sinfo_lines)}")
    try:
        partitions = tuple(parse_sinfo("\n".join(sinfo_lines)))
    except SlurmOutputError as exc:
        raise ProbeUnreadable(str(exc)) from exc
    queue_lines, queue_rc = _body_and_rc(sections["queue"])
    if queue_rc != "0":
        raise ProbeUnreadable(f"squeue failed: {_last(queue_lines)}")
    config = dict(line.split(None, 2)[0::2] for line in sections.get("config", []) if "=" in line)
    private = config.get("PrivateData", "").lower()
    array_size = config.get("MaxArraySize", "")
    node_lines, node_rc = _body_and_rc(sections.get("nodes", []))
    test_lines, test_rc = _body_and_rc(sections["testonly"])
    reservations = tuple(r for r in (_reservation(line) for line in sections.get("resv", [])) if r)
    return ProbeResult(
        site_epoch=site_epoch,
        partitions=partitions,
        demand=parse_demand(queue_lines),
        backlog=parse_backlog(queue_lines),
        nodes=parse_nodes(node_lines) if node_rc == "0" else (),
        queue_visible="jobs" not in private,
        max_array_size=int(array_size) if array_size.isdigit() else None,
        estimate=None if test_rc == "-" else parse_test_only(test_lines, test_rc, now),
        site_now=now.isoformat(),
        reservations=reservations,
    )


def _reservation(line: str) -> Reservation | None:
    """One line of ``scontrol show reservation --oneliner`` (none: "No reservations in the system")."""
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    if "ReservationName" not in fields:
        return None
    return Reservation(
        name=fields["ReservationName"],
        start=fields.get("StartTime", ""),
        end=fields.get("EndTime", ""),
        flags=tuple(f for f in fields.get("Flags", "").split(",") if f),
        nodes=fields.get("Nodes", ""),
    )


def parse_test_only_output(stdout: str, site_now: datetime) -> StartEstimate:
    """The answer of :func:`test_only_argv`."""
    lines, rc = _body_and_rc(stdout.splitlines())
    return parse_test_only(lines, rc, site_now)


TEST_ONLY_START_RE = re.compile(r"Job \d+ to start at (\S+) using .* in partition (\S+)")


def parse_test_only(lines: Sequence[str], rc: str, site_now: datetime) -> StartEstimate:
    """``sbatch --test-only``'s words, as seconds from the site's now (its own clock)."""
    text = " / ".join(line.strip() for line in lines if line.strip())
    match = TEST_ONLY_START_RE.search(text)
    if rc == "0" and match:
        try:
            start = datetime.fromisoformat(match.group(1))
        except ValueError:
            return StartEstimate(False, None, "", f"unreadable estimate: {text}")
        seconds = max(0.0, (start - site_now).total_seconds())
        return StartEstimate(True, seconds, match.group(2), text)
    transient = is_controller_unreachable(text) or "Socket timed out" in text
    return StartEstimate(False, None, "", text or f"sbatch --test-only exited {rc}", transient)


def parse_demand(lines: Sequence[str]) -> dict[str, PartitionDemand]:
    """Per partition: pending and running jobs, CPUs and GPUs (a job pending for ``a,b`` counts in both)."""
    totals: dict[str, list[int]] = {}
    for line in lines:
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) not in (BASIC_QUEUE_FIELDS + 1, len(QUEUE_FIELDS) + 1) or fields[-1].strip():
            raise ProbeUnreadable(f"squeue line is not in aif's format: {line[:200]!r}")
        partitions, state, nodes_text, cpus_text, tasks_text, tres = fields[:BASIC_QUEUE_FIELDS]
        tasks = 1 if tasks_text.strip() in ("", "N/A") else count_array_tasks(tasks_text)
        nodes = _int(nodes_text) or 1
        cpus = _int(cpus_text) or 0
        gpus = gres_count(tres.replace("gres:", ""), "gpu") * nodes
        running = state.strip() == "RUNNING"
        for partition in partitions.split(","):
            row = totals.setdefault(partition.strip(), [0] * 6)
            offset = 3 if running else 0
            row[offset] += tasks
            row[offset + 1] += tasks * cpus
            row[offset + 2] += tasks * gpus
    return {name: PartitionDemand(*row) for name, row in totals.items()}


def parse_backlog(lines: Sequence[str]) -> tuple[QueuedJob, ...]:
    """Every job of the queue section, in detail (none from an older probe's six fields)."""
    jobs = (parse_queue_line(line.split("|")[:-1]) for line in lines if line.strip())
    return tuple(job for job in jobs if job is not None)


def _int(text: str) -> int | None:
    match = re.match(r"\s*([0-9]+)", text)
    return int(match.group(1)) if match else None


def _sections(stdout: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.splitlines():
        if line.startswith("@clock\t"):
            sections["clock"] = [line[len("@clock\t") :]]
            current = None
        elif line in ("@sinfo", "@queue", "@nodes", "@config", "@resv", "@testonly", "@end"):
            current = sections.setdefault(line[1:], [])
        elif current is not None:
            current.append(line)
    return sections


def _body_and_rc(lines: Sequence[str]) -> tuple[list[str], str]:
    body = list(lines)
    rc = ""
    while body and not body[-1].startswith("@rc "):
        body.pop()
    if body:
        rc = body.pop()[4:].strip()
    return body, rc


def _last(lines: Sequence[str]) -> str:
    texts = [line for line in lines if line.strip()]
    return texts[-1] if texts else "no output"
