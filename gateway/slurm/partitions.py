"""What a Slurm site really has, and how a profile compares: the dialect of `aif profile check`.

Pure: no I/O. :func:`check_argv` is ONE command that prints, in sections,
``sinfo`` one line per node and partition, ``scontrol show partition`` one
line per partition, and the answer of ``sbatch --test-only`` to each test
script given; :func:`parse_check_output` reads it back, and
:func:`compare_profile` lists where a profile and the site disagree, each
with the profile key to change.

Every format here was checked against real Slurm 22.05; the recordings the
unit tests replay are in ``tests/data/slurm/`` (its README says how each was made).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import field
from types import MappingProxyType

from gateway.record import Record
from gateway.slurm.jobs import SlurmOutputError
from gateway.slurm.load import parse_slurm_duration
from gateway.slurm.probe import TEST_ONLY_START_RE

# -- the command ---------------------------------------------------------------------------

# One line per node and partition (-N); --all: hidden partitions and those the user's
# groups may not use, so a profile naming one is told why rather than "no such partition".
# Every field is an admin-chosen name or a number: "|" cannot occur in them.
SINFO_NODE_FIELDS = ("%R", "%N", "%c", "%m", "%G", "%T")  # partition node CPUs MB gres state
SINFO_NODES_ARGV: tuple[str, ...] = (
    "sinfo",
    "--all",
    "--noheader",
    "--Node",
    "--format=" + "|".join(SINFO_NODE_FIELDS),
)
SCONTROL_PARTITIONS_ARGV: tuple[str, ...] = ("scontrol", "--all", "--oneliner", "show", "partition")
# The script comes on stdin; the answer is on stderr (rc 0: it could run; rc 1: it cannot).
TEST_ONLY_ARGV: tuple[str, ...] = ("sbatch", "--test-only")

SECTION = "\x1e"  # starts every section line after the first: Slurm never prints it

# Runs as: bash -c PROGRAM aif-profile-check SCRIPT...  The scripts are data (positional
# arguments), never part of this text. sinfo or scontrol failing ends it with their
# status (the controller cannot be asked); each test script gets its own answer.
_CHECK_PROGRAM = f"""set -u
{shlex.join(SINFO_NODES_ARGV)} || exit
printf '\\036partitions\\n'
{shlex.join(SCONTROL_PARTITIONS_ARGV)} || exit
for script in "$@"; do
    printf '\\036test-only\\n'
    rc=0
    printf '%s' "$script" | {shlex.join(TEST_ONLY_ARGV)} 2>&1 || rc=$?
    printf '\\n\\036rc %d\\n' "$rc"
done
"""


def check_argv(test_scripts: Sequence[str]) -> list[str]:
    """The one command that asks the site everything `aif profile check` needs."""
    return ["bash", "-c", _CHECK_PROGRAM, "aif-profile-check", *test_scripts]


# -- what the site says ----------------------------------------------------------------------


class GresItem(Record):
    """One generic resource of a node: ``gpu:a100:4(S:0-1)`` is ("gpu", "a100", 4)."""

    name: str
    type: str  # '' when the site names none (``gpu:4``)
    count: int


class SiteNode(Record):
    """One node as one of its partitions sees it (``sinfo -N``: a node in two partitions is two)."""

    partition: str
    name: str
    cpus: int
    memory_mb: int
    gres: tuple[GresItem, ...]
    state: str  # sinfo's long state: idle, mixed, allocated, drained, down*...

    @property
    def gpus(self) -> int:
        return sum(item.count for item in self.gres if item.name == "gpu")

    @property
    def gpu_types(self) -> tuple[str, ...]:
        return tuple(item.type for item in self.gres if item.name == "gpu" and item.type)

    @property
    def gres_text(self) -> str:
        return ",".join(":".join(filter(None, (g.name, g.type, str(g.count)))) for g in self.gres) or "none"

    @property
    def available(self) -> bool:
        """Whether jobs may start on it now (not down, drained, failing, unknown...)."""
        # A trailing "*" means the node does not respond; "~" (powered down) and the
        # other power flags leave it usable: Slurm starts it for a job.
        if self.state.endswith("*"):
            return False
        base = self.state.rstrip("~#!%$@^-+").lower()
        return base in ("idle", "mixed", "allocated", "completing", "planned", "reserved")


class SitePartition(Record):
    """One partition as ``scontrol show partition -o`` prints it (limits None: UNLIMITED)."""

    name: str
    state: str  # UP, DOWN, DRAIN, INACTIVE
    default: bool
    hidden: bool
    nodes: str  # Slurm's host list, '' for none
    total_nodes: int
    max_nodes: int | None
    max_time: str  # as printed: 2-00:00:00, 12:00:00, UNLIMITED
    max_time_seconds: int | None
    max_cpus_per_node: int | None
    max_mem_per_node_mb: int | None
    max_mem_per_cpu_mb: int | None
    allow_qos: tuple[str, ...] | None  # None: ALL
    deny_qos: tuple[str, ...]
    oversubscribe: str  # NO, YES:4, FORCE:4, EXCLUSIVE
    fields: Mapping[str, str] = field(hash=False, compare=False, repr=False)


class TestOnly(Record):
    """What ``sbatch --test-only`` said of one partition's test job.

    ``ok``: it could run. ``start``: when Slurm expects it to start (ISO time,
    '' if not said). ``message``: Slurm's answer on one line, or why it was not run.
    """

    partition: str
    ok: bool
    start: str
    message: str


class SiteSnapshot(Record):
    """Everything one `aif profile check` command brought back."""

    partitions: tuple[SitePartition, ...]
    nodes: tuple[SiteNode, ...]
    test_only: tuple[tuple[int, str], ...]  # (sbatch's exit status, its answer) per test script

    def partition(self, name: str) -> SitePartition | None:
        return next((p for p in self.partitions if p.name == name), None)

    def nodes_of(self, partition: str) -> list[SiteNode]:
        return [n for n in self.nodes if n.partition == partition]


_UNSET = frozenset({"", "(null)", "N/A", "NONE"})


def parse_gres(text: str) -> tuple[GresItem, ...]:
    """``gpu:a100:4(S:0-1),nvme:1`` -> items; ``(null)`` -> none."""
    items = []
    # Commas also appear inside "(S:0,2)" socket lists: drop those first.
    for raw in re.sub(r"\([^)]*\)", "", text.strip()).split(","):
        parts = raw.strip().split(":")
        if not parts[0] or parts[0] in _UNSET:
            continue
        count = 1  # "gpu" alone means one
        kind = ""
        if len(parts) >= 2 and re.fullmatch(r"[0-9]+[KMGTP]?", parts[-1]):
            count = _count(parts[-1])
            kind = ":".join(parts[1:-1])
        elif len(parts) >= 2:
            kind = ":".join(parts[1:])
        items.append(GresItem(parts[0], kind, count))
    return tuple(items)


def _count(text: str) -> int:
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
    if text[-1] in factor:
        return int(text[:-1]) * factor[text[-1]]
    return int(text)


def parse_sinfo_nodes(stdout: str) -> tuple[SiteNode, ...]:
    """The lines of :data:`SINFO_NODES_ARGV`."""
    nodes = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != len(SINFO_NODE_FIELDS):
            raise SlurmOutputError(f"sinfo line is not in aif's format: {line[:200]!r}")
        partition, name, cpus, memory, gres, state = (f.strip() for f in fields)
        try:
            nodes.append(SiteNode(partition, name, int(cpus), int(memory), parse_gres(gres), state))
        except ValueError:
            raise SlurmOutputError(f"sinfo numbers unreadable: {line[:200]!r}") from None
    return tuple(nodes)


def parse_scontrol_partitions(stdout: str) -> tuple[SitePartition, ...]:
    """The lines of :data:`SCONTROL_PARTITIONS_ARGV`: ``Key=Value`` pairs, one partition a line."""
    partitions = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields: dict[str, str] = {}
        last = ""
        for token in line.split():
            key, equals, value = token.partition("=")
            if equals and re.fullmatch(r"[A-Za-z]+", key):
                fields[key] = value
                last = key
            elif last:  # a value with a space in it
                fields[last] += " " + token
        partitions.append(_partition(fields, line))
    return tuple(partitions)


def _partition(fields: dict[str, str], line: str) -> SitePartition:
    missing = [k for k in ("PartitionName", "State", "MaxTime", "MaxNodes", "TotalNodes") if k not in fields]
    if missing:
        raise SlurmOutputError(f"scontrol partition line lacks {', '.join(missing)}: {line[:200]!r}")
    try:
        return SitePartition(
            name=fields["PartitionName"],
            state=fields["State"],
            default=fields.get("Default") == "YES",
            hidden=fields.get("Hidden") == "YES",
            nodes="" if fields.get("Nodes", "") in _UNSET else fields["Nodes"],
            total_nodes=int(fields["TotalNodes"]),
            max_nodes=_limit(fields["MaxNodes"]),
            max_time=fields["MaxTime"],
            max_time_seconds=parse_slurm_duration(fields["MaxTime"]),
            max_cpus_per_node=_limit(fields.get("MaxCPUsPerNode", "UNLIMITED")),
            max_mem_per_node_mb=_memory_limit(fields.get("MaxMemPerNode", "UNLIMITED")),
            max_mem_per_cpu_mb=_memory_limit(fields.get("MaxMemPerCPU", "UNLIMITED")),
            allow_qos=_name_list(fields.get("AllowQos", "ALL")),
            deny_qos=_name_list(fields.get("DenyQos", "")) or (),
            oversubscribe=fields.get("OverSubscribe", "NO"),
            fields=MappingProxyType(fields),
        )
    except ValueError:
        raise SlurmOutputError(f"scontrol partition numbers unreadable: {line[:200]!r}") from None


def _limit(text: str) -> int | None:
    return None if text in ("UNLIMITED", "INFINITE", "") else int(text)


def _memory_limit(text: str) -> int | None:
    """MB; scontrol prints MB without a unit, but a suffix is read too (``500G``)."""
    if text in ("UNLIMITED", "INFINITE", "", "0"):
        return None
    factor = {"M": 1, "G": 1024, "T": 1024**2}
    if text[-1] in factor:
        return int(text[:-1]) * factor[text[-1]]
    return int(text)


def _name_list(text: str) -> tuple[str, ...] | None:
    if text == "ALL":
        return None
    return tuple(name for name in text.split(",") if name and name not in _UNSET)


# sbatch --test-only's answer, read the same way as the federation's probe reads it.
_TEST_ONLY_RE = TEST_ONLY_START_RE


def read_test_only(partition: str, returncode: int, answer: str) -> TestOnly:
    """One partition's ``sbatch --test-only`` answer: rc 0 and when it would start, or why not."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    message = " / ".join(lines) or f"sbatch exited with status {returncode} and said nothing"
    match = _TEST_ONLY_RE.search(answer)
    return TestOnly(
        partition=partition,
        ok=returncode == 0,
        start=match.group(1) if match and returncode == 0 else "",
        message=message,
    )


def parse_check_output(stdout: str, scripts: int) -> SiteSnapshot:
    """What :func:`check_argv` printed (exit status 0) for ``scripts`` test scripts."""
    sections = stdout.split(SECTION)
    if len(sections) < 2 or not sections[1].startswith("partitions\n"):
        raise SlurmOutputError("the profile check printed no partitions section")
    answers: list[tuple[int, str]] = []
    rest = sections[2:]
    while rest:
        if len(rest) < 2 or not rest[0].startswith("test-only\n"):
            raise SlurmOutputError(f"the profile check's output is cut short: {rest[0][:200]!r}")
        answer, status = rest[0][len("test-only\n") :], rest[1]
        matched = re.fullmatch(r"rc (-?[0-9]+)\n?", status)
        if matched is None:
            raise SlurmOutputError(f"the profile check's test answer ends oddly: {status[:200]!r}")
        answers.append((int(matched.group(1)), answer))
        rest = rest[2:]
    if len(answers) != scripts:
        raise SlurmOutputError(f"the profile check answered {len(answers)} of {scripts} test jobs")
    return SiteSnapshot(
        partitions=parse_scontrol_partitions(sections[1][len("partitions\n") :]),
        nodes=parse_sinfo_nodes(sections[0]),
        test_only=tuple(answers),
    )
