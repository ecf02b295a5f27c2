"""The federation's pure parts, on output recorded from the sandbox's real Slurm 22.05.

probe-idle.stdout: the probe at sandbox-north, idle, with a 1-GPU job's script (--test-only: now).
probe-busy.stdout: the same with north's 8 GPUs held by two 4-GPU jobs, a 4-GPU and a 1-GPU job
pending (--test-only: 5696 s later). test-only-refused.stdout: 8 GPUs asked on 4-GPU nodes.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path

import pytest

from gateway.config import PlacementWeights, SiteAccess, UserConfig
from gateway.federation.ranking import SiteView, rank
from gateway.federation.snapshot import Placed, Snapshot, SnapshotStore
from gateway.placement import _load_of
from gateway.profiles import load_profile
from gateway.slurm import probe
from gateway.spec import parse_spec

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "sandbox"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def spec(**resources: object) -> object:
    body: dict[str, object] = {"job": {"name": "j", "command": ["true"], "sector": "health"}}
    body["resources"] = {"gpus_per_node": 1, "walltime": "01:00:00", **resources}
    return parse_spec(body, source="j.toml")


@pytest.fixture
def profiles() -> dict[str, object]:
    return {name: load_profile(GOLDEN / f"{name}.toml") for name in ("sandbox-north", "sandbox-south")}


CONFIG = UserConfig(sites={n: SiteAccess(account="sandbox") for n in ("sandbox-north", "sandbox-south")})


def test_the_probe_of_an_idle_site() -> None:
    result = probe.parse_probe(recorded("probe-idle.stdout"))
    gpu = next(p for p in result.partitions if p.partition == "gpu")
    assert (gpu.gpus_total, gpu.gpus_used, gpu.cpus_idle, gpu.up) == (8, 0, 128, True)
    assert result.demand == {} and result.queue_visible and result.max_array_size == 1001
    assert result.estimate is not None and result.estimate.ok and result.estimate.seconds == 0
    assert result.site_epoch == 1795939929


def test_the_probe_of_a_busy_site() -> None:
    result = probe.parse_probe(recorded("probe-busy.stdout"))
    demand = result.demand["gpu"]
    assert (demand.pending_jobs, demand.pending_gpus, demand.running_gpus) == (2, 5, 8)
    assert result.estimate is not None and result.estimate.seconds == 5696  # 08:12:19 -> 09:47:15
    assert result.estimate.partition == "gpu"


def test_test_only_refusal_is_slurms_words() -> None:
    text = recorded("test-only-refused.stdout")
    now_line, _, rest = text.partition("\n")
    estimate = probe.parse_test_only_output(rest, datetime.fromisoformat(now_line))
    assert not estimate.ok and "Requested node configuration is not available" in estimate.message


def test_a_cut_probe_is_unreadable() -> None:
    with pytest.raises(probe.ProbeUnreadable):
        probe.parse_probe(recorded("probe-idle.stdout").replace("@end\n", ""))


def snapshot(site: str, name: str, placed: tuple[Placed, ...] = ()) -> Snapshot:
    result = probe.parse_probe(recorded(name))
    estimates = {"shape": result.estimate} if result.estimate else {}
    return Snapshot(site, time.time(), 0.1, "", result, estimates, placed, queried=("gpu",))


def view(profiles: dict[str, object], site: str, name: str, placed: tuple[Placed, ...] = ()) -> SiteView:
    snap = snapshot(site, name)
    return SiteView(profiles[site], snap, snap.result.estimate if snap.result else None, placed)  # type: ignore[arg-type]


def test_the_busy_site_loses_despite_its_sector(profiles: dict[str, object]) -> None:
    ranking = rank(
        spec(),  # type: ignore[arg-type]
        [
            view(profiles, "sandbox-north", "probe-busy.stdout"),
            view(profiles, "sandbox-south", "probe-idle.stdout"),
        ],
        CONFIG,
    )
    assert [s.site for s in ranking.ranked] == ["sandbox-south", "sandbox-north"]
    north = ranking.ranked[1]
    assert north.terms == {"time_to_start": 5696.0, "data": 0.0, "sector_bonus": -600.0}
    assert ranking.headline("j").startswith("j goes to sandbox-south")


def test_the_sector_bonus_wins_between_idle_sites(profiles: dict[str, object]) -> None:
    ranking = rank(
        spec(),  # type: ignore[arg-type]
        [
            view(profiles, "sandbox-north", "probe-idle.stdout"),
            view(profiles, "sandbox-south", "probe-idle.stdout"),
        ],
        CONFIG,
    )
    assert ranking.winner is not None and ranking.winner.site == "sandbox-north"


def test_jobs_placed_since_the_probe_move_to_the_queue_depth_term(profiles: dict[str, object]) -> None:
    """Once the free GPUs the probe saw are taken, the estimate no longer holds: queue depth does."""
    now = time.time() + 1
    eight = tuple(Placed(now, "gpu", 1, 1) for _ in range(8))
    config = dataclasses.replace(CONFIG, weights=PlacementWeights(sector_bonus_s=0))
    north = view(profiles, "sandbox-north", "probe-idle.stdout", eight)
    south = view(profiles, "sandbox-south", "probe-idle.stdout")
    ranking = rank(spec(), [north, south], config)  # type: ignore[arg-type]
    assert ranking.winner is not None and ranking.winner.site == "sandbox-south"
    full = next(s for s in ranking.ranked if s.site == "sandbox-north")
    assert "+ 450 s of queue for the 8 GPUs placed since the probe" in full.basis
    # Slurm's 0 s, plus the one GPU beyond the 8 free over 8 GPUs, times the job's 1 h walltime.
    assert full.terms["time_to_start"] == pytest.approx(1 / 8 * 3600)


def test_ties_are_broken_by_free_share_then_name(profiles: dict[str, object]) -> None:
    config = dataclasses.replace(CONFIG, weights=PlacementWeights(sector_bonus_s=0))
    one = (Placed(time.time() + 1, "gpu", 1, 1),)
    north = view(profiles, "sandbox-north", "probe-idle.stdout", one)
    south = view(profiles, "sandbox-south", "probe-idle.stdout")
    ranking = rank(spec(), [north, south], config)  # type: ignore[arg-type]
    assert [s.site for s in ranking.ranked] == ["sandbox-south", "sandbox-north"]  # 8/8 free beats 7/8
    assert "larger share" in ranking.tie_rule


def test_an_unreachable_site_is_excluded_with_its_reason_and_is_retryable(
    profiles: dict[str, object],
) -> None:
    down = SiteView(
        profiles["sandbox-north"], Snapshot("sandbox-north", time.time(), 2.0, "squeue failed", None)
    )  # type: ignore[arg-type]
    ranking = rank(spec(), [down], CONFIG)  # type: ignore[arg-type]
    assert ranking.winner is None and ranking.retryable
    assert ranking.excluded[0].reasons == ("unreachable: squeue failed",)


def test_a_snapshot_survives_the_store(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "federation")
    snap = snapshot("sandbox-north", "probe-busy.stdout")
    store.write(snap)
    store.record_placed("sandbox-north", Placed(time.time() + 1, "gpu", 1, 1))
    again = store.read("sandbox-north")
    assert snap.result is not None
    # The estimate is kept per job shape (estimates), not in the probe result.
    assert again is not None and again.result == dataclasses.replace(snap.result, estimate=None)
    assert len(again.placed) == 1
    assert again.estimates == snap.estimates


def test_a_maintenance_reservation_is_a_later_start_and_is_named(profiles: dict[str, object]) -> None:
    """probe-maintenance.stdout: south under a 10-minute MAINT reservation (created with scontrol)."""
    south = view(profiles, "sandbox-south", "probe-maintenance.stdout")
    north = view(profiles, "sandbox-north", "probe-idle.stdout")
    ranking = rank(spec(), [south, north], CONFIG)  # type: ignore[arg-type]
    waiting = next(s for s in ranking.ranked if s.site == "sandbox-south")
    assert waiting.terms["time_to_start"] == 584  # 08:17:01 -> 08:26:45, the reservation's end
    assert "after maintenance reservation maint-test (until 2026-11-29T08:26:45)" in waiting.basis


def test_an_excluded_site_gets_every_reason_it_fails(profiles: dict[str, object]) -> None:
    body = {
        "job": {"name": "j", "command": ["true"]},
        "resources": {"gpus_per_node": 16, "walltime": "01:00:00"},
        "data": {"sensitivity": "sensitive", "inputs": ["news-corpus"]},
        "placement": {"exclude": ["sandbox-south"], "countries": ["DE"]},
    }
    ranking = rank(parse_spec(body, source="j.toml"), [SiteView(profiles["sandbox-south"], None)], CONFIG)  # type: ignore[arg-type]
    (south,) = ranking.excluded
    assert south.reasons[:3] == (
        "excluded by the spec",
        f"in {profiles['sandbox-south'].country}, the spec allows only DE",  # type: ignore[attr-defined]
        "accepts data up to internal, the job's is sensitive",
    )
    assert any("16" in r and "GPU" in r for r in south.reasons[3:])  # no node has 16 GPUs
    assert not ranking.retryable


def test_a_test_only_that_reached_no_controller_is_no_answer_not_a_refusal() -> None:
    now = datetime.fromisoformat("2026-11-29T08:12:19")
    failed = "sbatch: error: Batch job submission failed: "
    down = failed + "Unable to contact slurm controller (connect failure)\n@rc 1\n"
    slow = failed + "Socket timed out on send/recv operation\n@rc 1\n"
    refused = recorded("test-only-refused.stdout").partition("\n")[2]
    assert probe.parse_test_only_output(down, now).transient
    assert probe.parse_test_only_output(slow, now).transient
    assert not probe.parse_test_only_output(refused, now).transient


def test_an_estimate_probed_a_while_ago_is_counted_from_now(profiles: dict[str, object]) -> None:
    busy = view(profiles, "sandbox-north", "probe-busy.stdout")
    assert busy.snapshot is not None
    later = busy.snapshot.probed_at + 100
    ranking = rank(spec(), [busy], CONFIG, now=later)  # type: ignore[arg-type]
    (north,) = ranking.ranked
    assert north.terms["time_to_start"] == 5696 - 100
    assert north.basis.endswith("(probed 100 s ago: 5596 s from now)")
    assert rank(spec(), [busy], CONFIG).ranked[0].terms["time_to_start"] == 5696  # type: ignore[arg-type]


def test_aif_load_counts_jobs_placed_since_in_the_free_room_then_as_pending() -> None:
    now = time.time() + 1
    twelve = tuple(Placed(now, "gpu", 1, 2) for _ in range(12))
    load = _load_of("sandbox-north", snapshot("sandbox-north", "probe-idle.stdout", twelve))
    assert (load.gpus_free, load.gpus_total, load.pending_jobs, load.pending_gpus) == (0, 8, 4, 4)
    assert load.cpus_free == 128 - 8 * 2
