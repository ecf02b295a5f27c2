"""`aif list` of a ledger with 10,000 jobs: --json --all, the default (newest 50) and the table.

No sandbox: a temporary AIF_HOME whose ledger is filled through the ledger API
(10,000 submitted jobs in various states plus a few INVALID rows), then each
command runs as its own CLI process, interleaved with `python -c pass` from the
same interpreter, medians of the repetitions. Ends with one line of ratios
against the goal (`aif list --json --all` <= 1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 1.0


def fill(path: Path, count: int, invalid: int) -> None:
    from gateway.ledger import Ledger

    states = ["COMPLETED", "FAILED", "CANCELLED", "RUNNING", "PENDING"]
    with Ledger(path) as ledger:
        for start in range(0, count, 1000):
            size = min(1000, count - start)
            jobs = ledger.record_intents(
                [
                    {
                        "site": ("lumi", "bsc", "mimer")[i % 3],
                        "name": f"train-{start + i}",
                        "spec_path": f"/home/me/specs/train-{start + i}.toml",
                        "spec_hash": "0" * 64,
                        "workdir": f"/scratch/me/runs/train-{start + i}",
                        "outputs": ("results/",),
                        "stdout_path": "/scratch/me/runs/slurm-%j.out",
                        "array_size": None,
                        "depends_on": None,
                    }
                    for i in range(size)
                ]
            )
            ledger.mark_submitted_many((job.id, str(100000 + start + i)) for i, job in enumerate(jobs))
            ledger.update_states(
                (job.id, states[i % len(states)], "None" if i % 5 == 3 else "") for i, job in enumerate(jobs)
            )
        for _ in range(invalid):
            ledger.record_invalid(spec_path="bad.toml", spec_hash="0" * 64, message="job.name: required")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aif-bench-list-"))
    home = work / "home"
    os.environ["AIF_HOME"] = str(home)
    invalid = 20
    started = time.perf_counter()
    fill(home / "ledger.sqlite", args.jobs, invalid)
    print(
        f"[bench] ledger of {args.jobs} jobs filled in {time.perf_counter() - started:.1f} s", file=sys.stderr
    )
    aif = str(Path(sys.executable).parent / "aif")
    env = {**os.environ, "COLUMNS": "200"}
    commands = {
        "python -c pass": ([sys.executable, "-c", "pass"], None),
        "aif list --json --all (every row)": ([aif, "list", "--json", "--all"], args.jobs + invalid),
        "aif list --json (newest 50)": ([aif, "list", "--json"], 50),
        "aif list (table, newest 50)": ([aif, "list"], None),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    try:
        for rep in range(args.repeat + 1):  # the first round warms caches and is not counted
            for name, (argv, rows) in commands.items():
                t0 = time.perf_counter()
                result = subprocess.run(argv, capture_output=True, text=True, env=env)
                elapsed = time.perf_counter() - t0
                if result.returncode != 0:
                    raise SystemExit(f"bench: {name} failed: {result.stderr.strip()}")
                if rows is not None and len(json.loads(result.stdout)) != rows:
                    raise SystemExit(f"bench: {name} did not print {rows} rows")
                if rep:
                    times[name].append(elapsed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n`aif list` of a ledger with {args.jobs} jobs (+{invalid} INVALID), median of {args.repeat} runs"
    )
    print(f"{'what':40} {'s':>7}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:40} {median:7.3f}")
    every = medians["aif list --json --all (every row)"]
    print(
        f"ratios: aif list --json --all = {every:.3f} s = {every / GOAL_S:.2f} x the goal of {GOAL_S:g} s "
        f"-> {'met' if every <= GOAL_S else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
