"""gateway.federation.placer: probing, the shared snapshots and counting placed jobs.

Over a fake site backend that answers with probes recorded from the sandbox's
real Slurm (tests/data/slurm/probe-idle.stdout: two idle 4-GPU nodes) and
counts every remote command.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import PlacementWeights, SiteAccess, UserConfig
from gateway.errors import HomeUnusable, SiteUnreachable
from gateway.federation.placer import Federation
from gateway.federation.snapshot import SnapshotStore
from gateway.profiles import load_profile
from gateway.slurm import probe
from gateway.slurm.probe import ProbeResult, StartEstimate
from gateway.spec import JobSpec, parse_spec

TESTS = Path(__file__).resolve().parents[1]
SITES = ("sandbox-north", "sandbox-south")
PROFILES = {name: load_profile(TESTS / "golden" / "sandbox" / f"{name}.toml") for name in SITES}
# No sector bonus: the two idle sites are alike, so only the counting decides.
CONFIG = UserConfig(
    sites={n: SiteAccess(account="sandbox") for n in SITES}, weights=PlacementWeights(sector_bonus_s=0)
)
NOW = "2026-11-29T08:12:19"


class FakeSite:
    def __init__(
        self,
        name: str,
        calls: Counter[str],
        *,
        test_only_down: bool = False,
        starts_in_s: int = 0,
        nodes: bool = False,
    ) -> None:
        self.name, self.calls, self.test_only_down = name, calls, test_only_down
        self.starts_in_s, self.nodes = starts_in_s, nodes

    def probe(self, partitions: list[str], script: str | None) -> ProbeResult:
        self.calls[f"probe {self.name} {','.join(partitions)}"] += 1
        text = (TESTS / "data" / "slurm" / "probe-idle.stdout").read_text()
        if self.nodes:  # node by node, as the sandbox's probe reads them: the queue is read GPU by GPU
            text = text.replace(
                "@config\n", "@nodes\nn1|gpu|idle|64|gpu:4|\nn2|gpu|idle|64|gpu:4|\n@rc 0\n@config\n"
            )
        result = probe.parse_probe(text)
        return dataclasses.replace(result, estimate=self.test_only(script) if script else None)

    def test_only(self, script: str) -> StartEstimate:
        self.calls[f"test-only {self.name}"] += 1
        if self.test_only_down:
            raise SiteUnreachable(f"site {self.name}: Unable to contact slurm controller (connect failure)")
        now = datetime.fromisoformat(NOW)
        at = (now + timedelta(seconds=self.starts_in_s)).isoformat()
        answer = f"sbatch: Job 9 to start at {at} using 1 processors on nodes n1 in partition gpu\n@rc 0\n"
        return probe.parse_test_only_output(answer, now)


def job(gpus: int = 1) -> JobSpec:
    body = {
        "job": {"name": "j", "command": ["true"]},
        "resources": {"gpus_per_node": gpus, "walltime": "1:00:00"},
    }
    return parse_spec(body, source="j.toml")


def federation(store: SnapshotStore, calls: Counter[str], **site: Any) -> Federation:
    return Federation(
        PROFILES, CONFIG, lambda name: FakeSite(name, calls, **site), lambda s, p: "#!/bin/bash\n", store
    )


def probes(calls: Counter[str]) -> int:
    return sum(n for call, n in calls.items() if call.startswith("probe"))


def test_a_job_placed_by_this_process_is_counted_once(tmp_path: Path) -> None:
    fed = federation(SnapshotStore(tmp_path), Counter())
    fed.place(job())
    fed.publish()  # now in the shared snapshot too: still one job
    ranking = fed.rank(job())
    north = next(s for s in ranking.ranked if s.site == "sandbox-north")
    assert "1 GPUs placed since still leave 7 free" in north.basis


@pytest.mark.parametrize("mixed", [False, True])
def test_a_burst_spreads_and_a_mix_of_partitions_probes_once_per_partition(
    tmp_path: Path, mixed: bool
) -> None:
    calls: Counter[str] = Counter()
    fed = federation(SnapshotStore(tmp_path), calls)
    sites: Counter[str] = Counter()
    for _ in range(24):
        if mixed:
            fed.place(job(gpus=0))  # a CPU job: the standard partition
        ranking, _ = fed.place(job())
        assert ranking.winner is not None
        sites[ranking.winner.site] += 1
    assert sites == {"sandbox-north": 12, "sandbox-south": 12}
    assert probes(calls) == (4 if mixed else 2)  # gpu, then gpu and standard once per site


def test_placements_are_shared_with_other_processes_only_when_published(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    mine = federation(store, Counter())
    _, first = mine.place(job(gpus=4))
    mine.place(job(gpus=4))
    other = federation(store, Counter())
    assert all(
        not s.placed for s in (store.read(n) for n in SITES) if s is not None
    )  # a dry run shares nothing
    mine.publish({first})
    assert sum(len(s.placed) for s in (store.read(n) for n in SITES) if s is not None) == 1
    mine.publish()
    assert sum(len(s.placed) for s in (store.read(n) for n in SITES) if s is not None) == 2
    ranking = other.rank(job(gpus=4))
    assert all("4 GPUs placed since still leave 4 free" in s.basis for s in ranking.ranked)


def test_identical_jobs_cost_one_probe_per_site_per_ttl(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()
    store = SnapshotStore(tmp_path)
    for _ in range(20):  # twenty aif processes
        fed = federation(store, calls)
        fed.publish([fed.place(job())[1]])
    assert probes(calls) == 2 and calls["test-only sandbox-north"] == 1  # inside the probe


def test_a_test_only_without_answer_is_no_estimate_and_is_asked_again(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()
    store = SnapshotStore(tmp_path)
    federation(store, Counter()).rank(job())  # probed, with the estimate of a 1-GPU job
    fed = federation(store, calls, test_only_down=True)
    for _ in range(2):
        ranking = fed.rank(job(gpus=2))  # a new shape: sbatch --test-only alone
        assert [s.site for s in ranking.ranked] == list(SITES)  # not excluded: no answer is no refusal
        assert all(s.basis.startswith("queue depth (no estimate from Slurm)") for s in ranking.ranked)
        assert all("(no answer from sbatch --test-only: site " in s.basis for s in ranking.ranked)
    assert calls["test-only sandbox-north"] == 2  # not kept in the snapshot


def test_the_snapshot_is_stamped_when_its_probe_starts(tmp_path: Path) -> None:
    before = time.time()
    fed = federation(SnapshotStore(tmp_path), Counter())
    snapshot, _ = fed.snapshots(["sandbox-north"])["sandbox-north"]
    assert before <= snapshot.probed_at <= before + 1


def test_an_unusable_home_is_an_error_not_a_site_down(tmp_path: Path) -> None:
    (tmp_path / "federation").write_text("not a directory")
    fed = federation(SnapshotStore(tmp_path / "federation"), Counter())
    with pytest.raises(HomeUnusable):
        fed.rank(job())


def counted(store: SnapshotStore, site: str) -> int:
    snapshot = store.read(site)
    return 0 if snapshot is None else len(snapshot.placed)


def test_jobs_a_probe_missed_between_publish_and_send_count_again_once_sent(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    mine = federation(store, Counter())
    placements = [mine.place(job())[1] for _ in range(2)]
    mine.publish()
    assert counted(store, "sandbox-north") == 1 and counted(store, "sandbox-south") == 1
    other = federation(store, Counter())
    other.refresh = True
    other.rank(job())  # a probe while the jobs are on their way: not in the queue it read
    assert counted(store, "sandbox-north") == 0
    mine.sent(placements)
    assert counted(store, "sandbox-north") == 1 and counted(store, "sandbox-south") == 1
    mine.sent(placements)  # never twice
    assert counted(store, "sandbox-north") == 1


def test_a_failover_counts_the_job_at_its_new_site_only(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    fed = federation(store, Counter())
    ranking, placement = fed.place(job())
    assert ranking.winner is not None and ranking.winner.site == "sandbox-north"
    fed.publish()
    again = fed.count_placed(job(), "sandbox-south", instead_of=placement)
    assert counted(store, "sandbox-north") == 0 and counted(store, "sandbox-south") == 1
    fed.count_placed(job(), "sandbox-north", instead_of=again)  # a second failover
    assert counted(store, "sandbox-north") == 1 and counted(store, "sandbox-south") == 0


def test_an_estimate_asked_after_the_probe_counts_from_when_it_was_asked(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    federation(store, Counter()).rank(job())
    for site in SITES:  # probed 20 s ago
        snapshot = store.read(site)
        assert snapshot is not None
        store.write(dataclasses.replace(snapshot, probed_at=snapshot.probed_at - 20))
    ranking = federation(store, Counter(), starts_in_s=1000).rank(job(gpus=2))  # a new shape: asked now
    assert all(s.terms["time_to_start"] == pytest.approx(1000, abs=1) for s in ranking.ranked)


def test_the_overflow_of_a_burst_spreads_too(tmp_path: Path) -> None:
    """Past the 16 free GPUs every job starts when the first hour's jobs end, at both sites:
    the tie goes to the site whose free share is less outgrown, not always to the first name."""
    fed = federation(SnapshotStore(tmp_path), Counter(), nodes=True)
    sites: Counter[str] = Counter()
    for _ in range(24):
        ranking, _ = fed.place(job())
        assert ranking.winner is not None
        sites[ranking.winner.site] += 1
    assert sites == {"sandbox-north": 12, "sandbox-south": 12}
    assert "+ 3600 s for the jobs placed since the probe (read GPU by GPU" in ranking.winner.basis
