"""The polling budget: 50 concurrent `aif wait` processes on 50 jobs at one sandbox site (and
two `aif status` loops), sharing one $AIF_HOME, against the same as independent pollers (each
its own $AIF_HOME), side by side.

Run as root with `make bench` (brings the sandbox up if it is not). Each run
submits 50 jobs (`sleep` of --seconds, one CPU each, all running at once) to
sandbox-east with one `aif submit`, then starts one `aif -v wait ID` process per
job and waits for all of them, while --status-loops processes run `aif -v
status` every 2 s (a dashboard, a script). Shared: every process uses the same
AIF_HOME, so they share the site's answers and its poll budget
(gateway.polling). Independent: every process gets its own AIF_HOME (a copy of
the ledger), as unrelated pollers would. Counted per run: the squeue and sacct commands the
processes ran at the site (their `-v` lines), and the job-info RPCs the
site's controller itself served (sdiag's REQUEST_JOB_USER_INFO and
REQUEST_JOB_INFO), how long the run took from the first wait's start, and
how late a wait returned after its job ended (Slurm's end time; median over
the processes): the price of backing off.
Runs alternate (shared, independent, ...); the medians are printed, then one
line of ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from gateway.sandbox import manager
from gateway.sandbox.manager import SiteAccess

SITE = "sandbox-east"
RPCS = ("REQUEST_JOB_USER_INFO", "REQUEST_JOB_INFO")
STATUS_EVERY_S = 2.0


def slurm(conf: str, *argv: str) -> str:
    env = {**os.environ, "SLURM_CONF": conf}
    return subprocess.run(argv, env=env, check=True, capture_output=True, text=True, timeout=120).stdout


def job_info_rpcs(conf: str) -> int:
    """Job-info RPCs the controller served so far (squeue asks with these), from sdiag."""
    text = slurm(conf, "sdiag")
    total = 0
    for name in RPCS:
        match = re.search(rf"^\s*{name}\s+\(\s*\d+\) count:(\d+)", text, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total


def aif_command() -> str:
    return str(Path(sys.executable).parent / "aif")


def submit(home: Path, work: Path, count: int, seconds: int, run: int) -> list[tuple[str, str]]:
    help_text = subprocess.run([aif_command(), "submit", "--help"], capture_output=True, text=True).stdout
    coalesce = ["--no-coalesce"] if "--no-coalesce" in help_text else []
    specs = []
    for i in range(count):
        path = work / f"run{run}-{i:03d}.toml"
        path.write_text(
            f'[job]\nname = "poll-{run}-{i}"\ncommand = ["sleep", "{seconds}"]\nworkdir = "bench"\n'
            '[resources]\nwalltime = "00:05:00"\ncpus_per_task = 1\n'
        )
        specs.append(str(path))
    result = subprocess.run(
        [aif_command(), "submit", "--site", SITE, "--json", *coalesce, *specs],
        capture_output=True,
        text=True,
        env={**os.environ, "AIF_HOME": str(home)},
    )
    jobs = json.loads(result.stdout or "[]")
    if result.returncode != 0 or len(jobs) != count:
        raise SystemExit(f"bench: submit failed: {result.stderr.strip()[-500:]}")
    return [(job["id"], job["slurm_job_id"]) for job in jobs]


def end_times(conf: str, slurm_ids: list[str]) -> dict[str, float]:
    """Slurm id -> when the job ended (the site's own record, to the second)."""
    out = slurm(conf, "sacct", "-c", "-n", "-P", "-o", "JobIDRaw,End", "-j", ",".join(slurm_ids))
    ends = {}
    for line in out.splitlines():
        job_id, _, end = line.partition("|")
        try:
            ends[job_id] = datetime.fromisoformat(end).timestamp()
        except ValueError:
            continue
    return ends


def private_home(shared: Path, target: Path) -> Path:
    """A home of its own for one poller: the same sites, a copy of the ledger, no shared answers."""
    for part in ("profiles", "config.d"):
        shutil.copytree(shared / part, target / part)
    source = sqlite3.connect(shared / "ledger.sqlite")
    copy = sqlite3.connect(target / "ledger.sqlite")
    with copy:
        source.backup(copy)
    source.close()
    copy.close()
    os.chmod(target, 0o700)
    os.chmod(target / "ledger.sqlite", 0o600)
    return target


def status_loop(home: Path, log: Path, stop: threading.Event, every: float) -> None:
    """`aif -v status --json` every ``every`` seconds until told to stop (a dashboard, a script)."""
    with open(log, "w") as err:
        while not stop.is_set():
            subprocess.run(
                [aif_command(), "-v", "status", "--json"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "AIF_HOME": str(home)},
                check=False,
            )
            stop.wait(every)


def run_waits(
    homes: list[Path], status_homes: list[Path], ids: list[str], logs: Path, timeout: float
) -> tuple[int, int, float, list[float]]:
    """One `aif -v wait` per job at once, and the status loops beside them: (squeue commands,
    sacct commands, seconds until every wait returned, when each returned)."""
    started = time.perf_counter()
    stop = threading.Event()
    loops = [
        threading.Thread(target=status_loop, args=(home, logs / f"status-{i}.err", stop, STATUS_EVERY_S))
        for i, home in enumerate(status_homes)
    ]
    for loop in loops:
        loop.start()
    processes = []
    for index, (home, job_id) in enumerate(zip(homes, ids, strict=True)):
        err = open(logs / f"wait-{index:03d}.err", "w")  # noqa: SIM115 - closed below
        processes.append(
            (
                subprocess.Popen(
                    [aif_command(), "-v", "wait", job_id, "--json", "--timeout", str(timeout)],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env={**os.environ, "AIF_HOME": str(home)},
                ),
                err,
            )
        )
    failed = 0
    returned: list[float | None] = [None] * len(processes)
    while any(r is None for r in returned):
        for index, (process, _) in enumerate(processes):
            if returned[index] is None and process.poll() is not None:
                returned[index] = time.time()
                failed += process.returncode != 0
        time.sleep(0.02)
    for _, err in processes:
        err.close()
    elapsed = time.perf_counter() - started
    stop.set()
    for loop in loops:
        loop.join()
    if failed:
        raise SystemExit(f"bench: {failed} waits failed; see {logs}")
    squeue = sacct = 0
    for path in sorted(logs.glob("*.err")):
        for line in path.read_text().splitlines():
            squeue += line.startswith(f"+ [{SITE}] squeue")
            sacct += line.startswith(f"+ [{SITE}] sacct")
    return squeue, sacct, elapsed, [r for r in returned if r is not None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=30, help="how long each job runs")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--status-loops", type=int, default=2, help="`aif status` every 2 s beside the waits")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (it reads the controller's statistics)", file=sys.stderr)
        return 2

    manager.up(progress=lambda line: print(f"[sandbox] {line}", file=sys.stderr))
    facts = manager.facts()
    site: SiteAccess = facts.site(SITE)
    conf = str(site.slurm_conf)
    work = Path(tempfile.mkdtemp(prefix="aif-bench-polling-"))
    os.chmod(work, 0o755)
    results: dict[str, list[tuple[float, ...]]] = {"shared": [], "independent": []}
    slurm(conf, "scancel", f"--user={site.user}")
    try:
        run = 0
        for rep in range(args.repeat):
            for mode in ("shared", "independent"):
                run += 1
                home = work / f"home-{run}"
                for part in ("profiles", "config.d"):
                    shutil.copytree(facts.aif_home / part, home / part)
                os.chmod(home, 0o700)
                submitted = submit(home, work, args.processes, args.seconds, run)
                ids = [aif_id for aif_id, _ in submitted]
                if mode == "shared":
                    homes = [home] * len(ids)
                    status_homes = [home] * args.status_loops
                else:
                    homes = [private_home(home, work / f"home-{run}-{i:03d}") for i in range(len(ids))]
                    status_homes = [
                        private_home(home, work / f"home-{run}-status-{i}") for i in range(args.status_loops)
                    ]
                logs = work / f"logs-{run}"
                logs.mkdir()
                before = job_info_rpcs(conf)
                squeue, sacct, elapsed, returned = run_waits(
                    homes, status_homes, ids, logs, timeout=args.seconds + 240
                )
                rpcs = job_info_rpcs(conf) - before
                ends = end_times(conf, [slurm_id for _, slurm_id in submitted])
                late = statistics.median(
                    back - ends[slurm_id] for back, (_, slurm_id) in zip(returned, submitted, strict=True)
                )
                results[mode].append((squeue, sacct, rpcs, elapsed, late))
                print(
                    f"[bench] run {run} ({mode}): {squeue} squeue + {sacct} sacct, "
                    f"{rpcs} controller job-info RPCs, {elapsed:.1f} s, "
                    f"a wait returned {late:.1f} s after its job ended",
                    file=sys.stderr,
                )
                slurm(conf, "scancel", f"--user={site.user}")
            print(f"[bench] repetition {rep + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        slurm(conf, "scancel", f"--user={site.user}")
        shutil.rmtree(work, ignore_errors=True)

    def median(mode: str, index: int) -> float:
        return statistics.median(r[index] for r in results[mode])

    print(
        f"\n{args.processes} concurrent `aif wait` processes, one job each ({args.seconds} s) at {SITE}, "
        f"and {args.status_loops} `aif status` every {STATUS_EVERY_S:g} s; "
        f"median of {args.repeat} alternating runs"
    )
    print(f"{'pollers':34} {'squeue':>7} {'sacct':>6} {'ctld RPCs':>10} {'s':>6} {'late s':>7}")
    names = {
        "shared": "aif wait, one shared $AIF_HOME",
        "independent": "independent pollers (own homes)",
    }
    for mode, name in names.items():
        squeue, sacct, rpcs, seconds, late = (median(mode, i) for i in range(5))
        print(f"{name:34} {squeue:7.0f} {sacct:6.0f} {rpcs:10.0f} {seconds:6.1f} {late:7.1f}")
    shared = median("shared", 0) + median("shared", 1)
    alone = median("independent", 0) + median("independent", 1)
    print(
        f"ratios: site queries shared / independent = {shared / alone:.3f} "
        f"({shared:.0f} against {alone:.0f}); "
        f"controller RPCs {median('shared', 2) / max(1.0, median('independent', 2)):.3f}; "
        f"squeue per second of waiting, shared: {median('shared', 0) / median('shared', 3):.2f} "
        f"(budget: at most 1 per poll interval of 1 s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
