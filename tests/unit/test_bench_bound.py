"""bench/placement_bound.py: the offline model that bounds what placement can win on the burst."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name; the bound imports "placement"
    spec.loader.exec_module(module)
    return module


_load("placement")
bound = _load("placement_bound")


def _job(seq: int, gpus: int, run_s: float, limit_s: float) -> object:
    return bound.ModelJob(seq, gpus, run_s, limit_s, 0.0)


def test_a_job_that_would_delay_one_queued_before_it_waits_and_a_short_one_backfills() -> None:
    site = bound.ModelSite("s", (8,))
    running = _job(0, 4, 100.0, 60.0)
    site.queued.append(running)
    site.tick(0.0)
    assert running.start == 0.0
    big = _job(1, 8, 10.0, 60.0)  # needs the whole node: planned at 60 s, when the running job's limit ends
    long_small = _job(2, 4, 10.0, 120.0)  # would still hold 4 GPUs at 60 s: it must not start before big
    short_small = _job(3, 4, 10.0, 30.0)  # ends before 60 s: backfilled now
    site.queued += [big, long_small, short_small]
    site.tick(1.0)
    assert short_small.start == 1.0
    assert big.start is None and long_small.start is None


def test_jobs_end_at_their_run_time_not_their_limit() -> None:
    site = bound.ModelSite("s", (8,))
    first, second = _job(0, 8, 5.0, 60.0), _job(1, 8, 5.0, 60.0)
    site.queued += [first, second]
    site.tick(0.0)
    site.tick(4.5)
    assert second.start is None
    site.tick(5.0)
    assert second.start == 5.0


def test_the_oracle_reads_run_times_where_aif_reads_time_limits() -> None:
    # North: both nodes full with jobs that end in 2 s but may run 10 minutes; south: full
    # with a job that runs 30 s of its 1-minute limit. Time limits say south, run times north.
    world = bound.World({n: bound.ModelSite(n, g) for n, g in bound.SITES.items()}, [])
    north = [_job(0, 4, 2.0, 600.0), _job(1, 4, 2.0, 600.0)]
    south = [_job(2, 8, 30.0, 60.0)]
    world.sites["sandbox-north"].queued += north
    world.sites["sandbox-south"].queued += south
    world.step()
    new = _job(3, 4, 5.0, 60.0)
    sites = bound.eligible(new.gpus)
    assert sites == ["sandbox-north", "sandbox-south"]
    assert bound.AifReading()(new, sites, world) == "sandbox-south"
    assert bound.oracle(new, sites, world) == "sandbox-north"
    assert world.sites["sandbox-north"].running == north  # the oracle ran a copy forward


def test_every_policy_replays_a_small_burst() -> None:
    jobs = sys.modules["placement"].draw_burst(8, 4.0, 2.0, 12.0, 7)
    means = {p: bound.replay(jobs, p, 7, whole_minutes=True) for p in bound.POLICIES}
    assert all(math.isfinite(m) and m >= bound.SUBMIT_S for m in means.values())
    # With limits to the second, the model reads each job's own overestimate.
    assert all(0 < j.limit_s < j.walltime_min * 60 + 1e-9 for j in jobs)
    assert math.isfinite(bound.replay(jobs, "aif", 7, whole_minutes=False))


def test_hindsight_starts_from_the_oracles_sites_and_only_keeps_what_lowers_the_mean() -> None:
    jobs = sys.modules["placement"].draw_burst(8, 4.0, 2.0, 12.0, 13)
    oracle_mean = bound.replay(jobs, "oracle", 13, whole_minutes=True)
    best, sites = bound.hindsight(jobs, True, bound.OVERHEAD_S)
    assert best <= oracle_mean + 1e-9
    assert len(sites) == len(jobs)
    assert all(site == "sandbox-south" for site, job in zip(sites, jobs, strict=True) if job.gpus == 8)


def test_a_site_starts_a_job_now_only_when_neither_its_queue_nor_jobs_on_their_way_plan_that_room() -> None:
    site = bound.ModelSite("s", (8,))
    site.queued.append(_job(0, 4, 100.0, 600.0))
    site.tick(0.0)
    four = _job(1, 4, 5.0, 60.0)
    assert site.starts_now(four, 1.0, [])
    assert not site.starts_now(four, 1.0, [_job(2, 4, 5.0, 60.0)])  # the room is planned for the job coming
    assert not site.starts_now(_job(3, 8, 5.0, 60.0), 1.0, [])
    assert not bound.ModelSite("t", (4, 4)).starts_now(_job(4, 8, 5.0, 60.0), 0.0, [])  # fits no node


def test_moves_send_a_queued_job_to_a_site_that_would_start_it_now_and_leave_the_others() -> None:
    world = bound.World({n: bound.ModelSite(n, g) for n, g in bound.SITES.items()}, [])
    north, south = world.sites["sandbox-north"], world.sites["sandbox-south"]
    north.queued += [_job(0, 4, 100.0, 600.0), _job(1, 4, 100.0, 600.0)]
    south.queued.append(_job(2, 4, 100.0, 600.0))
    world.step()
    waiting = _job(3, 4, 5.0, 60.0)  # queued behind north's full nodes; south has 4 GPUs free
    too_big = _job(4, 8, 5.0, 60.0)  # fits only south, which cannot start it now
    for job, site in ((waiting, north), (too_big, south)):
        job.site = site.name
        site.queued.append(job)
    world.move_queued()
    assert waiting.site == "sandbox-south" and waiting not in north.queued
    assert world.in_flight == [(world.now + bound.MOVE_S, waiting)]
    assert too_big in south.queued


def test_pooled_is_one_cluster_of_both_sites_nodes() -> None:
    jobs = [sys.modules["placement"].Job(f"j{i}", 4, 10, 1, 0.0, 10.0) for i in range(4)]
    placed = bound.placed_jobs(
        jobs, lambda job, sites, world: bound.POOLED[0], True, 0.0, dict([bound.POOLED])
    )
    assert {j.site for j in placed} == {"pooled"}
    first_tick = math.ceil(bound.SUBMIT_S / bound.TICK_S) * bound.TICK_S
    assert all(j.start == first_tick for j in placed)  # 4 x 4 GPUs start at once on 4 + 4 + 8
