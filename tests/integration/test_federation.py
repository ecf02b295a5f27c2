"""The federation on the sandbox's three real Slurm sites: live load, data, sector, failover, bursts.

north: 2 nodes x 4 GPUs, health and climate, holds ehr-demo and shared-corpus, sensitive data;
south: 1 node x 8 GPUs, finance and language, holds news-corpus and shared-corpus, internal data;
east: CPUs only. Long jobs are `sleep` with a one-hour walltime, cancelled at the end of each test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.sandbox.manager import SandboxFacts
from tests.integration.test_lifecycle import aif, aif_json, clone_home, write_spec

pytestmark = pytest.mark.integration

NORTH, SOUTH, EAST = "sandbox-north", "sandbox-south", "sandbox-east"
AIF = [sys.executable, "-c", "from gateway.cli import run; run()"]


def gpu_spec(directory: Path, name: str, *, gpus: int = 1, extra: str = "", seconds: int = 2) -> Path:
    body = (
        f'[job]\nname = "{name}"\ncommand = ["sleep", "{seconds}"]\n{extra}\n'
        f'[resources]\ngpus_per_node = {gpus}\nwalltime = "01:00:00"\n'
    )
    return write_spec(directory, name, body)


@pytest.fixture
def long_jobs(sandbox_home: Path) -> Iterator[list[str]]:
    """aif ids of long jobs a test starts; all cancelled afterwards."""
    started: list[str] = []
    yield started
    if started:
        aif("cancel", *started)


def fill(site: str, tmp_path: Path, long_jobs: list[str], *, jobs: int, gpus: int = 4) -> None:
    """Hold a site's GPUs with long jobs (and queue more behind them)."""
    for i in range(jobs):
        spec = gpu_spec(tmp_path, f"hold-{site}-{i}", gpus=gpus, seconds=3000)
        [job] = aif_json("submit", "--site", site, str(spec))
        long_jobs.append(job["id"])


def wait_running(job_ids: list[str], count: int, timeout: float = 30) -> None:
    """Until ``count`` of the jobs run (Slurm starts a job a moment after it was submitted)."""
    deadline = time.monotonic() + timeout
    while True:
        states = [j["state"] for j in aif_json("status", *job_ids)]
        if states.count("RUNNING") >= count:
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.5)


def queue_names(sandbox: SandboxFacts, site: str) -> list[str]:
    """The Slurm names of every job the site's controller knows (finished ones it still holds too):
    a witness that does not go through aif."""
    return subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%j"],
        env={"SLURM_CONF": str(sandbox.site(site).slurm_conf), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def ledger_rows(name: str) -> list[dict[str, Any]]:
    """Every ledger row of the specs called ``name``."""
    return [row for row in aif_json("list", "--all") if row["name"] == name]


def ranking(*args: str) -> dict[str, Any]:
    result = aif("rank", "--refresh", "--json", *args)
    assert result.exit_code == 0, result.output + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_a_health_job_goes_north_until_north_is_busy(
    sandbox_home: Path, tmp_path: Path, long_jobs: list[str]
) -> None:
    spec = gpu_spec(tmp_path, "health-job", extra='sector = "health"')
    first = ranking(str(spec))
    assert [r["site"] for r in first["ranking"]] == [NORTH, SOUTH]
    assert first["ranking"][0]["terms"]["sector_bonus"] < 0
    # north's 8 GPUs held by long jobs, and more queued behind them
    fill(NORTH, tmp_path, long_jobs, jobs=3)
    busy = ranking(str(spec))
    assert [r["site"] for r in busy["ranking"]] == [SOUTH, NORTH]
    north = busy["ranking"][1]
    assert north["terms"]["time_to_start"] > 600  # Slurm's estimate outweighs the sector bonus
    assert "sbatch --test-only" in north["reasons"][0]
    shown = aif("rank", str(spec))
    assert shown.exit_code == 0 and shown.stdout.startswith(f"health-job goes to {SOUTH}")
    [job] = aif_json("submit", str(spec))
    assert job["site"] == SOUTH and job["placement"]["ranking"][0]["site"] == SOUTH
    long_jobs.append(job["id"])


def test_data_location_excludes_and_the_less_loaded_holder_wins(
    sandbox_home: Path, tmp_path: Path, long_jobs: list[str]
) -> None:
    news = gpu_spec(tmp_path, "news", extra='[data]\ninputs = ["news-corpus"]\nsensitivity = "internal"')
    data = ranking(str(news))
    assert [r["site"] for r in data["ranking"]] == [SOUTH]
    excluded = {e["site"]: e["reasons"] for e in data["excluded"]}
    # Every check that fails is a reason: east (no GPUs, public data only) lacks the dataset too.
    for site in (NORTH, EAST):
        missing = [r for r in excluded[site] if "news-corpus" in r]
        assert len(missing) == 1, (site, excluded[site])
        assert "does not hold dataset news-corpus" in missing[0] and "later issue" in missing[0]
    shared = gpu_spec(
        tmp_path, "shared", extra='[data]\ninputs = ["shared-corpus"]\nsensitivity = "internal"'
    )
    # Both hold it. north comes first by name, so load north: south wins on its time to start.
    fill(NORTH, tmp_path, long_jobs, jobs=3)
    both = ranking(str(shared))["ranking"]
    assert [r["site"] for r in both] == [SOUTH, NORTH]
    assert both[1]["terms"]["time_to_start"] > both[0]["terms"]["time_to_start"]
    assert both[1]["score"] > both[0]["score"]  # no tie: the tie rule played no part


def test_a_sensitive_job_is_never_placed_off_north(
    sandbox: SandboxFacts, sandbox_home: Path, tmp_path: Path
) -> None:
    from gateway.sandbox import manager

    spec = gpu_spec(tmp_path, "secret", extra='[data]\nsensitivity = "sensitive"')
    assert [r["site"] for r in ranking(str(spec))["ranking"]] == [NORTH]
    manager.stop_controller(NORTH, sandbox.aif_home)
    try:
        result = aif("submit", "--refresh", "--json", str(spec))
        assert result.exit_code == 5, result.output + result.stderr  # only north could, and it is down
        assert NORTH in result.stderr and "Unable to contact slurm controller" in result.stderr
        shown = aif("rank", "--refresh", "--json", str(spec))
        assert shown.exit_code == 5  # nothing to rank, and only for a site that is down
        excluded = json.loads(shown.stdout)["excluded"]
        assert any(e["site"] == NORTH and "unreachable" in e["reasons"][0] for e in excluded)
    finally:
        manager.start_controller(NORTH, sandbox.aif_home)


def test_failover_from_a_site_that_fails_at_submit_time(
    sandbox: SandboxFacts, sandbox_home: Path, tmp_path: Path, long_jobs: list[str]
) -> None:
    """The snapshot (fresh, within its TTL) says north; north's controller is down when sbatch runs:
    the job goes to south, exactly one job exists, and both attempts are recorded."""
    from gateway.sandbox import manager

    spec = gpu_spec(tmp_path, "fo", extra='sector = "health"', seconds=30)
    assert ranking(str(spec))["ranking"][0]["site"] == NORTH  # probed now: the snapshot is fresh
    manager.stop_controller(NORTH, sandbox.aif_home)
    try:
        result = aif("submit", "--json", str(spec))
    finally:
        manager.start_controller(NORTH, sandbox.aif_home)
    assert result.exit_code == 0, result.output + result.stderr
    [job] = json.loads(result.stdout)
    long_jobs.append(job["id"])
    assert job["site"] == SOUTH and job["slurm_job_id"]
    why = aif_json("explain", job["id"])
    attempts = [(a["site"], a["outcome"]) for a in why["attempts"]]
    assert attempts[0][0] == NORTH and attempts[0][1].startswith("site down")
    assert attempts[1][0] == SOUTH and attempts[1][1].startswith("accepted")
    assert len(attempts) == 2
    # Exactly one job: one in south's queue, none in north's, one ledger row for the spec.
    assert [n for n in queue_names(sandbox, SOUTH) if n.startswith("fo.")] == [f"fo.{job['id']}"]
    assert not [n for n in queue_names(sandbox, NORTH) if n.startswith("fo.")]  # never sent to north
    assert [row["id"] for row in ledger_rows("fo")] == [job["id"]]
    with_name = aif_json("status", job["id"])
    assert with_name[0]["site"] == SOUTH


def test_a_pinned_job_never_fails_over(sandbox: SandboxFacts, sandbox_home: Path, tmp_path: Path) -> None:
    from gateway.sandbox import manager

    spec = gpu_spec(tmp_path, "pin", extra='sector = "health"')
    manager.stop_controller(NORTH, sandbox.aif_home)
    try:
        result = aif("submit", "--site", NORTH, "--json", str(spec))
    finally:
        manager.start_controller(NORTH, sandbox.aif_home)
    assert result.exit_code == 5
    [job] = json.loads(result.stdout)
    assert job["site"] == NORTH and job["state"] == "UNREACHABLE"


def test_a_job_that_may_not_fail_over_is_sent_nowhere_while_its_site_is_down(
    sandbox: SandboxFacts, sandbox_home: Path, tmp_path: Path, long_jobs: list[str]
) -> None:
    """north is placed first (fresh snapshot), then its controller is down at submit: with
    --no-failover, and for a job sent --after a job of north's (Slurm's afterok names a job of
    one site), the job stays unsent at north (exit 5), with one attempt, and no site has it."""
    from gateway.sandbox import manager

    [parent] = aif_json("submit", "--site", NORTH, str(gpu_spec(tmp_path, "parent", seconds=3000)))
    long_jobs.append(parent["id"])
    stay = gpu_spec(tmp_path, "stay", extra='sector = "health"')
    child = gpu_spec(tmp_path, "child", extra='sector = "health"')
    assert ranking(str(stay))["ranking"][0]["site"] == NORTH  # probed now: the snapshot is fresh
    manager.stop_controller(NORTH, sandbox.aif_home)
    try:
        results = {
            "stay": aif("submit", "--no-failover", "--json", str(stay)),
            "child": aif("submit", "--after", parent["id"], "--json", str(child)),
        }
    finally:
        manager.start_controller(NORTH, sandbox.aif_home)
    for name, result in results.items():
        assert result.exit_code == 5, result.output + result.stderr
        [job] = json.loads(result.stdout)
        assert (job["site"], job["state"], job["slurm_job_id"]) == (NORTH, "UNREACHABLE", None), job
        assert "Unable to contact slurm controller" in result.stderr
        [attempt] = aif_json("explain", job["id"])["attempts"]
        said = aif("explain", job["id"]).stdout.splitlines()[0]
        assert said.startswith(f"{job['id']} ({name}) was not sent (UNREACHABLE) at {NORTH}: "), said
        assert attempt["site"] == NORTH and attempt["outcome"].startswith("site down")
        for site in (NORTH, SOUTH, EAST):
            assert not [n for n in queue_names(sandbox, site) if n.startswith(f"{name}.")], site
        assert [row["id"] for row in ledger_rows(name)] == [job["id"]]


def test_load_shows_each_sites_room_and_why_one_cannot_be_asked(
    sandbox: SandboxFacts, sandbox_home: Path, tmp_path: Path, long_jobs: list[str]
) -> None:
    """north: its 8 GPUs held, one 4-GPU job waiting; south: drained, so none of its 8 GPUs is free
    though nothing runs there; east: its controller down. Everything is restored at the end."""
    from gateway.sandbox import manager

    fill(NORTH, tmp_path, long_jobs, jobs=3)
    wait_running(long_jobs, 2)  # two hold north's 8 GPUs, the third waits
    manager.drain_nodes(SOUTH, sandbox.aif_home)
    manager.stop_controller(EAST, sandbox.aif_home)
    try:
        loads = {x["site"]: x for x in aif_json("load", "--refresh")}
        shown = aif("load")  # the same snapshots, for people
    finally:
        manager.start_controller(EAST, sandbox.aif_home)
        manager.resume_nodes(SOUTH, sandbox.aif_home)
    north, south, east = loads[NORTH], loads[SOUTH], loads[EAST]
    assert north["reachable"] and north["problem"] == ""
    assert north["gpus"] == {"free": 0, "total": 8}
    assert north["pending"] == {"jobs": 1, "gpus": 4, "visible": True}
    assert 0 <= north["cpus"]["free"] < north["cpus"]["total"]
    assert south["reachable"] and south["gpus"] == {"free": 0, "total": 8}  # drained: not free
    assert south["cpus"]["free"] == 0 and south["cpus"]["total"] > 0
    assert not east["reachable"] and "Unable to contact slurm controller" in east["problem"]
    for site in (north, south, east):
        assert site["latency_s"] > 0 and 0 <= site["snapshot_age_s"] < 30
    assert shown.exit_code == 0, shown.output + shown.stderr
    rows = {line.split()[1]: line for line in shown.stdout.splitlines() if line.startswith("│ sandbox-")}
    assert "│ yes " in rows[NORTH] and "│ 0/8 " in rows[NORTH] and "│ 1 (4) " in rows[NORTH]
    assert "│ yes " in rows[SOUTH] and "│ 0/8 " in rows[SOUTH]
    assert "│ no: " in rows[EAST]
    # Restored, and fresh snapshots left for the next test. A resumed node shows "idle*" (not
    # responding, so not usable) until slurmctld hears from its slurmd again, within seconds.
    deadline = time.monotonic() + 30
    while True:
        again = {x["site"]: x for x in aif_json("load", "--refresh")}
        if again[EAST]["reachable"] and again[SOUTH]["gpus"]["free"] == 8:
            break
        assert time.monotonic() < deadline, again
        time.sleep(0.5)


def test_a_burst_spreads_over_the_free_gpus(sandbox_home: Path, tmp_path: Path) -> None:
    specs = [str(gpu_spec(tmp_path, f"burst{i}", seconds=1)) for i in range(24)]
    jobs = aif_json("submit", "--refresh", *specs)
    by_site: dict[str, int] = {}
    for job in jobs:
        by_site[job["site"]] = by_site.get(job["site"], 0) + 1
    assert set(by_site) == {NORTH, SOUTH}, by_site
    assert max(by_site.values()) <= 16, by_site  # 8 free GPUs each: neither takes the lot
    assert aif("wait", *[j["id"] for j in jobs], "--timeout", "120").exit_code == 0


def test_two_rank_processes_within_the_ttl_probe_each_site_once(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = clone_home(sandbox, tmp_path, monkeypatch)  # no snapshot yet
    spec = gpu_spec(tmp_path, "twice")
    processes = [
        subprocess.Popen(
            [*AIF, "-v", "rank", "--json", str(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    probes = [line for _, err in outputs for line in err.splitlines() if "aif-probe" in line]
    assert sorted(line.split("]")[0] for line in probes) == ["+ [sandbox-north", "+ [sandbox-south"]
    assert (home / "federation" / f"{NORTH}.json").is_file()
