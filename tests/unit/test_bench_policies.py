"""The baselines of bench/placement.py: ARC's FastestQueue mapping, random, round-robin, the workload."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "placement.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_placement", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bp = _load()
Q = bp.QueueInfo


def test_order_is_waiting_jobs_per_slot_ascending() -> None:
    infos = {
        "a": Q(waiting_jobs=4, total_slots=8, free_slots=0),
        "b": Q(waiting_jobs=3, total_slots=4, free_slots=0),
    }
    # 4/8 = 0.5 beats 3/4 = 0.75, though a has more waiting jobs.
    assert bp.fastest_queue_order(infos, ["a", "b"]) == ["a", "b"]
    assert bp.fastest_queue_order(infos, ["b"]) == ["b"]


def test_ratio_is_compared_exactly() -> None:
    # 1/3 and 2/6 are equal: no float rounding decides between them; the tie-break does.
    infos = {"x": Q(1, 3, 0), "y": Q(2, 6, 0)}
    assert bp.fastest_queue_order(infos, ["x", "y"]) == ["y", "x"]  # more total slots first


def test_ties_break_by_free_slots_then_total_then_name() -> None:
    empty = {"north": Q(0, 8, 8), "south": Q(0, 8, 8), "big": Q(0, 16, 8), "busy": Q(0, 8, 2)}
    assert bp.fastest_queue_order(empty, empty) == ["big", "north", "south", "busy"]
    # The order does not depend on the order the sites are given in (a strict order).
    for _ in range(20):
        names = list(empty)
        random.shuffle(names)
        assert bp.fastest_queue_order(empty, names) == ["big", "north", "south", "busy"]


def test_sites_without_numbers_are_dropped() -> None:
    infos = {"ok": Q(5, 8, 0), "silent": Q(-1, 8, 0), "noslots": Q(0, 0, 0)}
    assert bp.fastest_queue_order(infos, ["ok", "silent", "noslots", "unknown"]) == ["ok"]


def test_bookkeeping_follows_register_job_submission() -> None:
    # Free slots enough: the job starts directly, free slots go down by its slots.
    assert bp.register_submission(Q(0, 8, 8), 4) == Q(0, 8, 4)
    assert bp.register_submission(Q(0, 8, 4), 4) == Q(0, 8, 0)
    # Not enough free slots: it waits; ARC adds the job's slot count to WaitingJobs.
    assert bp.register_submission(Q(0, 8, 2), 4) == Q(4, 8, 2)
    assert bp.register_submission(Q(3, 8, 0), 1) == Q(4, 8, 0)


def test_fastest_queue_session_spreads_then_queues() -> None:
    fq = bp.FastestQueue({"north": Q(0, 8, 8), "south": Q(0, 8, 8)})
    picks = [fq.choose(["north", "south"], 4) for _ in range(6)]
    # Empty queues: more free slots first (name breaks the first tie), then waiting per slot.
    assert picks == ["north", "south", "north", "south", "north", "south"]
    assert fq.infos == {"north": Q(4, 8, 0), "south": Q(4, 8, 0)}


def test_fastest_queue_falls_for_the_designed_case() -> None:
    # North: busy with long jobs, nobody waiting. South: 7 short jobs waiting. 8 one-GPU probes.
    fq = bp.FastestQueue({"sandbox-north": Q(0, 8, 0), "sandbox-south": Q(7, 8, 0)})
    picks = [fq.choose(["sandbox-north", "sandbox-south"], 1) for _ in range(8)]
    assert picks == ["sandbox-north"] * 8


def test_fastest_queue_only_among_eligible() -> None:
    fq = bp.FastestQueue({"north": Q(0, 8, 8), "south": Q(9, 8, 0)})
    assert fq.choose(["south"], 8) == "south"
    assert fq.infos["south"] == Q(17, 8, 0)
    with pytest.raises(ValueError):
        fq.choose([], 1)


def test_random_is_uniform_seeded_and_eligible_only() -> None:
    a = bp.RandomChoice(random.Random(7))
    b = bp.RandomChoice(random.Random(7))
    picks = [a.choose({"s", "n"}, 1) for _ in range(2000)]
    assert picks == [b.choose(["n", "s"], 1) for _ in range(2000)]  # the input order does not matter
    assert 900 < picks.count("n") < 1100
    assert all(a.choose(["s"], 8) == "s" for _ in range(50))


def test_round_robin_cycles_and_skips_ineligible() -> None:
    rr = bp.RoundRobin(("east", "north", "south"))
    both = ["north", "south"]
    assert [rr.choose(both, 1) for _ in range(4)] == ["north", "south", "north", "south"]
    assert rr.choose(["south"], 8) == "south"  # north was next: skipped
    assert rr.choose(both, 1) == "north"


def test_gres_parsing() -> None:
    assert bp.gres_gpus("gpu:4") == 4
    assert bp.gres_gpus("gpu:4(IDX:0-3)") == 4
    assert bp.gres_gpus("gpu:0(IDX:N/A)") == 0
    assert bp.gres_gpus("gpu:fake:2(IDX:0-1)") == 2
    assert bp.gres_gpus("(null)") == 0


def test_mean_p90() -> None:
    assert all(math.isnan(v) for v in bp.mean_p90([]))
    assert bp.mean_p90([3.0]) == (3.0, 3.0)
    mean, p90 = bp.mean_p90([float(i) for i in range(11)])
    assert (mean, p90) == (5.0, 9.0)


def test_burst_is_reproducible_heavy_tailed_and_realistic() -> None:
    jobs = bp.draw_burst(40, 25.0, 4.0, 60.0, 2026)
    assert jobs == bp.draw_burst(40, 25.0, 4.0, 60.0, 2026)
    assert len(jobs) >= 40
    assert {j.gpus for j in jobs} <= {1, 2, 4, 8}
    assert all(4 <= j.runtime_s <= 60 for j in jobs)
    # Walltime: whole minutes, never below the run time times 1.5.
    assert all(j.walltime_min * 60 >= 1.5 * j.runtime_s for j in jobs)
    offsets = [j.offset_s for j in jobs]
    assert offsets == sorted(offsets) and offsets[0] == 0.0


def test_spec_text_is_a_valid_spec(tmp_path: Path) -> None:
    from gateway.spec import load_spec

    job = bp.Job("burst-07", 4, 12, 2, 1.5)
    path = tmp_path / "s.toml"
    path.write_text(bp.spec_text(job, "bench-placement-x"))
    spec = load_spec(path)
    assert spec.resources.gpus_per_node == 4
    assert spec.resources.walltime == "00:02:00"
    assert spec.job.command == ("sleep", "12")
    assert spec.data.inputs == () and spec.job.sector is None


def test_trace_lines_say_where_each_job_went_and_why() -> None:
    job = bp.Job("burst-00", 2, 6, 1, 0.0)
    placement = {
        "ranking": [
            {"site": "sandbox-south", "score": 0.0, "reasons": ["Slurm's estimate: starts in 0 s"]},
            {"site": "sandbox-north", "score": 60.0, "reasons": ["read GPU by GPU", "focuses on health"]},
        ]
    }
    aif = bp.Submitted(job, None, 100.0, site="sandbox-south", start=101.5, placement=placement)
    lines = bp.trace_lines(bp.RunResult("aif", [aif]))
    assert lines[0].startswith("trace aif burst-00 t=  0.0 gpus=2 run=6s wall=1m -> south wait=1.5")
    assert lines[1:] == [
        "    south: 0.0 s: Slurm's estimate: starts in 0 s",
        "    north: 60.0 s: read GPU by GPU | focuses on health",
    ]
    pinned = bp.Submitted(job, "sandbox-north", 100.0, site="sandbox-north", start=None, error="rc 1: boom")
    assert bp.trace_lines(bp.RunResult("random", [pinned])) == [
        "trace random burst-00 t=  0.0 gpus=2 run=6s wall=1m -> north wait=- ERROR rc 1: boom"
    ]
