"""Reading Slurm's queue GPU by GPU (gateway.slurm.backlog parses, gateway.federation.backlog reads).

Recorded on the sandbox (Slurm 22.05), the designed case of bench/placement.py:
probe-south-short-jobs.stdout: sandbox-south (1 node, 8 GPUs) with eight 1-GPU 1-minute jobs
running and seven waiting; sbatch --test-only put a new 1-GPU job 480 s out, though all seven and
the new one fit the node the moment the running ones reach their limit.
probe-north-long-jobs.stdout: sandbox-north (2 nodes x 4 GPUs) held by two 4-GPU 3-minute jobs.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from gateway.config import PlacementWeights, SiteAccess, UserConfig
from gateway.federation.backlog import MAX_JOBS, Ask, earliest_start
from gateway.federation.ranking import SiteView, rank
from gateway.federation.snapshot import Placed, Snapshot, SnapshotStore
from gateway.profiles import load_profile
from gateway.slurm import probe
from gateway.slurm.backlog import NodeSlots, QueuedJob, expand_hostlist, parse_queue_line
from gateway.slurm.probe import Reservation
from gateway.spec import parse_spec

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "sandbox"
CONFIG = UserConfig(
    sites={n: SiteAccess(account="sandbox") for n in ("sandbox-north", "sandbox-south")},
    weights=PlacementWeights(sector_bonus_s=0),
)


def node(name: str, gpus: int = 8, cpus: int = 64, state: str = "mixed") -> NodeSlots:
    return NodeSlots(name, ("gpu",), state, cpus, gpus)


def running(hosts: tuple[str, ...], gpus: int, left_s: int | None, nodes: int = 1) -> QueuedJob:
    return QueuedJob(("gpu",), True, nodes, 1, gpus, left_s, "None", hosts, 0)


def waiting(
    gpus: int, limit_s: int, priority: int = 1, reason: str = "Priority", nodes: int = 1
) -> QueuedJob:
    return QueuedJob(("gpu",), False, nodes, 1, gpus, limit_s, reason, (), priority)


def one_gpu(limit_s: float = 60) -> Ask:
    return Ask("gpu", 1, 1, 1, limit_s)


# -- Parsing ---------------------------------------------------------------------------


def test_hostlists_expand_with_their_padding() -> None:
    assert expand_hostlist("n[1-3,5],gpu07") == ("n1", "n2", "n3", "n5", "gpu07")
    assert expand_hostlist("x[008-010]") == ("x008", "x009", "x010")
    assert expand_hostlist("(null)") == ()


def test_a_queue_line_holds_what_a_job_asks_per_node() -> None:
    line = "gpu|RUNNING|2|16|N/A|gres:gpu:4|1:00:00|45:10|None|n[1-2]|4294|"
    job = parse_queue_line(line.split("|")[:-1])
    assert job == QueuedJob(("gpu",), True, 2, 8, 4, 2710, "None", ("n1", "n2"), 4294)
    pending_array = "gpu|PENDING|1|1|0-9%2|gres:gpu:1|UNLIMITED|1:00|Priority||7"
    array = parse_queue_line(pending_array.split("|"))
    assert array is not None and (array.tasks, array.limit_s, array.hosts) == (10, None, ())
    older = "gpu|PENDING|1|1|N/A|gres:gpu:1"
    assert parse_queue_line(older.split("|")) is None  # an older probe's six fields


def test_the_recorded_probe_reads_job_by_job_and_node_by_node() -> None:
    result = probe.parse_probe((DATA / "probe-south-short-jobs.stdout").read_text())
    assert [n.name for n in result.nodes] == ["south-n1"] and result.nodes[0].gpus == 8
    states = [j.running for j in result.backlog]
    assert (states.count(True), states.count(False)) == (8, 7)
    assert all(j.gpus_per_node == 1 and j.limit_s is not None and j.limit_s <= 60 for j in result.backlog)
    assert result.demand["gpu"].pending_gpus == 7  # the totals read as before
    assert (
        result.estimate is not None and result.estimate.seconds is not None and result.estimate.seconds > 400
    )


# -- Reading ---------------------------------------------------------------------------


def test_small_jobs_share_a_node_as_soon_as_the_running_ones_reach_their_limit() -> None:
    busy = [running(("n1",), 1, 60) for _ in range(8)] + [waiting(1, 60) for _ in range(7)]
    assert earliest_start([node("n1")], busy, (), one_gpu()) == 60
    assert earliest_start([node("n1")], busy, [one_gpu()], one_gpu()) == 120  # the 8th GPU went


def test_no_job_is_counted_to_start_before_one_queued_ahead_of_it() -> None:
    """A backfill gap lasts only while the jobs ahead run to their limits: not counted on."""
    busy = [running(("n1",), 4, 600), waiting(8, 3600, priority=10)]
    assert earliest_start([node("n1")], busy, (), one_gpu(300)) == 4200
    two = [running(("n1",), 6, 60), waiting(1, 60, priority=10)]
    assert earliest_start([node("n1")], two, (), one_gpu()) == 0  # room beside the one ahead


def test_multi_node_jobs_need_their_nodes_at_once() -> None:
    nodes = [node("n1", 4), node("n2", 4)]
    busy = [running(("n1",), 4, 100), running(("n2",), 2, 300)]
    assert earliest_start(nodes, busy, (), Ask("gpu", 2, 4, 1, 60)) == 300
    assert earliest_start(nodes, busy, (), Ask("gpu", 1, 2, 1, 60)) == 0


def test_what_cannot_be_read_is_none() -> None:
    assert earliest_start([node("n1", state="drained")], (), (), one_gpu()) is None
    assert earliest_start([node("n1", state="idle*")], (), (), one_gpu()) is None  # not responding
    assert earliest_start([node("n1", 4)], (), (), Ask("gpu", 1, 8, 1, 60)) is None  # never fits
    many = [waiting(1, 60) for _ in range(MAX_JOBS + 1)]
    assert earliest_start([node("n1")], many, (), one_gpu()) is None


def test_held_and_unlimited_jobs() -> None:
    held = [running(("n1",), 8, 60), waiting(8, 60, reason="Dependency")]
    assert earliest_start([node("n1")], held, (), one_gpu()) == 60  # a dependency does not compete
    forever = [running(("n1",), 8, None)]
    assert earliest_start([node("n1")], forever, (), one_gpu()) is None


# -- Ranking ---------------------------------------------------------------------------


@pytest.fixture
def profiles() -> dict[str, object]:
    return {name: load_profile(GOLDEN / f"{name}.toml") for name in ("sandbox-north", "sandbox-south")}


def spec() -> object:
    body = {"job": {"name": "probe", "command": ["sleep", "10"]}}
    body["resources"] = {"gpus_per_node": 1, "walltime": "00:01:00"}  # type: ignore[assignment]
    return parse_spec(body, source="probe.toml")


def view(profiles: dict[str, object], site: str, name: str, placed: tuple[Placed, ...] = ()) -> SiteView:
    result = probe.parse_probe((DATA / name).read_text())
    snap = Snapshot(site, time.time(), 0.1, "", result, {}, (), queried=("gpu",))
    return SiteView(profiles[site], snap, result.estimate, placed)  # type: ignore[arg-type]


def test_the_short_queue_wins_where_slurms_estimate_sent_it_to_the_long_jobs(
    profiles: dict[str, object],
) -> None:
    north = view(profiles, "sandbox-north", "probe-north-long-jobs.stdout")
    south = view(profiles, "sandbox-south", "probe-south-short-jobs.stdout")
    ranking = rank(spec(), [north, south], CONFIG)  # type: ignore[arg-type]
    assert [s.site for s in ranking.ranked] == ["sandbox-south", "sandbox-north"]
    best = ranking.ranked[0]
    assert best.terms["time_to_start"] == pytest.approx(60, abs=5)
    assert "read GPU by GPU" in best.basis and "sbatch --test-only said" in best.basis
    assert ranking.ranked[1].basis.startswith("Slurm's estimate (sbatch --test-only)")


def test_jobs_placed_since_the_probe_are_read_into_the_queue(profiles: dict[str, object]) -> None:
    later = time.time() + 1
    placed = (Placed(later, "gpu", 1, 1, 1, 60),)
    south = view(profiles, "sandbox-south", "probe-south-short-jobs.stdout", placed)
    ranking = rank(spec(), [south], CONFIG)  # type: ignore[arg-type]
    assert ranking.ranked[0].terms["time_to_start"] == pytest.approx(120, abs=5)
    assert "counting the jobs placed since the probe" in ranking.ranked[0].basis


def test_slurms_later_estimate_stands_when_a_maintenance_explains_it(profiles: dict[str, object]) -> None:
    south = view(profiles, "sandbox-south", "probe-south-short-jobs.stdout")
    assert south.snapshot is not None and south.snapshot.result is not None
    result = south.snapshot.result
    # A maintenance that ends within Slurm's estimate explains it: the reading does not know it.
    maint = Reservation("maint1", result.site_now, result.site_now[:-2] + "59", ("MAINT",), "south-n1")
    changed = dataclasses.replace(result, reservations=(maint,))
    snap = dataclasses.replace(south.snapshot, result=changed)
    ranking = rank(spec(), [dataclasses.replace(south, snapshot=snap)], CONFIG)  # type: ignore[arg-type]
    best = ranking.ranked[0]
    assert best.basis.startswith("Slurm's estimate") and "maintenance reservation maint1" in best.basis
    assert best.terms["time_to_start"] == result.estimate.seconds  # type: ignore[union-attr]


def test_the_reading_survives_the_store(tmp_path: Path) -> None:
    result = probe.parse_probe((DATA / "probe-south-short-jobs.stdout").read_text())
    store = SnapshotStore(tmp_path)
    store.write(Snapshot("sandbox-south", time.time(), 0.1, "", result, {}, ()))
    again = store.read("sandbox-south")
    assert again is not None and again.result is not None
    assert again.result.backlog == result.backlog and again.result.nodes == result.nodes


def test_sinfos_groups_of_alike_nodes_read_node_by_node() -> None:
    from gateway.slurm.backlog import parse_nodes

    lines = ["n[01-03]|gpu|mixed|64|gpu:4|", "n04|gpu*|drained|64|gpu:4|", "n01|big|mixed|64|gpu:4|"]
    nodes = parse_nodes(lines)
    assert [n.name for n in nodes] == ["n01", "n02", "n03", "n04"]
    assert nodes[0].partitions == ("gpu", "big") and nodes[3].state == "drained"


def test_gpus_used_by_jobs_the_probe_did_not_list_are_held() -> None:
    """Another partition's job on the same node holds GPUs the queue section does not show."""
    shared = NodeSlots("n1", ("gpu",), "mixed", 64, 8, gpus_used=6)  # 2 by a listed job, 4 unlisted
    listed = [running(("n1",), 2, 60)]
    assert earliest_start([shared], listed, (), Ask("gpu", 1, 4, 1, 60)) == 60
    assert earliest_start([shared], listed, (), Ask("gpu", 1, 6, 1, 60)) is None  # never, as far as seen
    from gateway.slurm.backlog import parse_nodes

    [node] = parse_nodes(["n1|gpu|mixed|64|gpu:8|gpu:6(IDX:0-5)|"])
    assert node.gpus_used == 6
