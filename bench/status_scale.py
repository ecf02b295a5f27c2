"""`aif status --json` of 1,000 jobs across the three sandbox sites, against one plain
`ssh site squeue` per site, side by side.

Run as root with `make bench` (brings the sandbox up if it is not). Every node
is drained so the jobs stay pending, the jobs are submitted once (one `aif
submit` per site; `--no-coalesce` where aif has it, so 1,000 jobs stay 1,000
records in squeue), then each repetition runs, interleaved: for every site one
OpenSSH `ssh` process (the sandbox's key, known_hosts and port, no ssh config)
running the same squeue aif runs, and one `aif -v status --json` process. The
`-v` lines count aif's queries per site (it must be exactly one each), the
JSON must hold every job, and each `aif status` runs more than the poll
interval after the previous one, so it really asks (no shared answer is
reused). Peak RSS is the largest child's maxrss (the aif processes; ssh is
far smaller). For the breakdown: the same status as a library call in this
process (imports warm, no interpreter start), a Python process that only
imports what `aif status` imports, and `aif status` of the first site's jobs
alone (one site against its own ssh: the sandbox's three sshd and
controllers share the machine's two cores with aif, real sites do not).
The row "shared connection (warm)" is the same CLI process with `[ssh]
share_connection` on and every site's holder already logged in (like OpenSSH's
ControlMaster): no handshake in the process, so it is shown apart from the cold
figure the goal is about. The queue is emptied and the nodes resumed at the
end. Prints the medians and one line of ratios against the goals.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import openssh, private_home, site_nodes, slurm
from shared_connection import SharedConnection  # bench/ beside this script

from gateway import slurm as slurm_dialect
from gateway.sandbox import manager
from gateway.sandbox.manager import SiteAccess

GOAL_RATIO = 1.5
GOAL_RSS_MB = 100.0
SHARED_ROW = "aif -v status --json, CLI, shared connection (warm)"
SPEC = (
    '[job]\nname = "scale-{i}"\ncommand = ["true"]\nworkdir = "bench"\n[resources]\nwalltime = "00:01:00"\n'
)


def ssh_argv(site: SiteAccess, command: list[str]) -> list[str]:
    """Plain OpenSSH, as a user would type it: the sandbox's key, known_hosts and port."""
    return [*openssh(site), shlex.join(command)]


def aif_command() -> str:
    return str(Path(sys.executable).parent / "aif")


def submit_jobs(sites: list[SiteAccess], count: int, work: Path) -> dict[str, list[str]]:
    """``count`` one-line specs spread over the sites, one `aif submit` per site; their aif ids."""
    help_text = subprocess.run([aif_command(), "submit", "--help"], capture_output=True, text=True).stdout
    coalesce = ["--no-coalesce"] if "--no-coalesce" in help_text else []
    specs = []
    for i in range(count):
        path = work / f"spec-{i:05d}.toml"
        path.write_text(SPEC.format(i=i))
        specs.append(str(path))
    ids = {}
    for index, site in enumerate(sites):
        mine = specs[index :: len(sites)]
        result = subprocess.run(
            [aif_command(), "submit", "--site", site.name, "--json", *coalesce, *mine],
            capture_output=True,
            text=True,
        )
        jobs = json.loads(result.stdout or "[]")
        if result.returncode != 0 or len(jobs) != len(mine) or not all(j["slurm_job_id"] for j in jobs):
            raise SystemExit(f"bench: submitting to {site.name} failed: {result.stderr.strip()[-500:]}")
        ids[site.name] = [job["id"] for job in jobs]
    return ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (it drains sandbox nodes)", file=sys.stderr)
        return 2

    manager.up(progress=lambda line: print(f"[sandbox] {line}", file=sys.stderr))
    facts = manager.facts()
    sites = list(facts.sites)
    work = Path(tempfile.mkdtemp(prefix="aif-bench-status-"))
    home = private_home(facts, work / "home")
    os.environ["AIF_HOME"] = str(home)
    poll_interval = float(os.environ.get("AIF_POLL_INTERVAL", "1.0"))
    squeue = slurm_dialect.squeue_argv()  # exactly what aif runs

    ssh_times: dict[str, list[float]] = {site.name: [] for site in sites}
    aif_times: list[float] = []
    shared_times: list[float] = []
    shared = SharedConnection(home, [site.name for site in sites])
    library_times: list[float] = []
    import_times: list[float] = []
    one_site_times: list[float] = []
    # What `aif status` imports before it asks anything (its floor as a Python process).
    imports = [sys.executable, "-c", "import gateway.cli, gateway.status, gateway.transports.ssh"]
    queries: list[dict[str, int]] = []
    for site in sites:
        slurm(str(site.slurm_conf), "scancel", f"--user={site.user}")
        slurm(
            str(site.slurm_conf),
            "scontrol",
            "update",
            f"nodename={site_nodes(str(site.slurm_conf))}",
            "state=drain",
            "reason=aif-bench",
        )
    try:
        started = time.perf_counter()
        ids = submit_jobs(sites, args.jobs, work)
        print(f"[bench] {args.jobs} jobs submitted in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        last_status = 0.0
        for rep in range(args.repeat + 1):  # the first round warms caches and is not counted
            for site in sites:
                t0 = time.perf_counter()
                result = subprocess.run(ssh_argv(site, squeue), capture_output=True, text=True)
                elapsed = time.perf_counter() - t0
                if result.returncode != 0 or not result.stdout:
                    raise SystemExit(f"bench: ssh {site.name} squeue failed: {result.stderr.strip()}")
                if rep:
                    ssh_times[site.name].append(elapsed)
            # Older than the poll interval: this status must ask every site itself.
            time.sleep(max(0.0, last_status + poll_interval + 0.1 - time.perf_counter()))
            t0 = time.perf_counter()
            result = subprocess.run([aif_command(), "-v", "status", "--json"], capture_output=True, text=True)
            elapsed = time.perf_counter() - t0
            last_status = time.perf_counter()
            count = check_status(result, args.jobs, sites)
            # The same CLI process riding on each site's holder (started by rep 0's run).
            time.sleep(max(0.0, last_status + poll_interval + 0.1 - time.perf_counter()))
            with shared.on():
                t0 = time.perf_counter()
                warm = subprocess.run(
                    [aif_command(), "-v", "status", "--json"], capture_output=True, text=True
                )
                shared_elapsed = time.perf_counter() - t0
            last_status = time.perf_counter()
            if check_status(warm, args.jobs, sites) != count:
                raise SystemExit("bench: the shared status asked the sites a different number of times")
            if not rep:
                shared.wait_warm()
            t0 = time.perf_counter()
            subprocess.run(imports, check=True)
            import_elapsed = time.perf_counter() - t0
            # The same for one site's jobs alone: one site against one ssh, like for like.
            time.sleep(max(0.0, last_status + poll_interval + 0.1 - time.perf_counter()))
            t0 = time.perf_counter()
            one = subprocess.run(
                [aif_command(), "-v", "status", "--json", *ids[sites[0].name]], capture_output=True, text=True
            )
            one_elapsed = time.perf_counter() - t0
            last_status = time.perf_counter()
            if one.returncode != 0 or one.stderr.count(f"+ [{sites[0].name}] ") != 1:
                raise SystemExit(f"bench: aif status of {sites[0].name}'s jobs: {one.stderr.strip()[-500:]}")
            if rep:
                import_times.append(import_elapsed)
                one_site_times.append(one_elapsed)
                aif_times.append(elapsed)
                shared_times.append(shared_elapsed)
                queries.append(count)
                library_times.append(library_status(last_status, poll_interval))
                last_status = time.perf_counter()
            print(f"[bench] repetition {rep}/{args.repeat} done", file=sys.stderr)
    finally:
        shared.stop()
        for site in sites:
            slurm(str(site.slurm_conf), "scancel", f"--user={site.user}")
            slurm(
                str(site.slurm_conf),
                "scontrol",
                "update",
                f"nodename={site_nodes(str(site.slurm_conf))}",
                "state=resume",
            )
        shutil.rmtree(work, ignore_errors=True)

    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ssh_medians = {name: statistics.median(values) for name, values in ssh_times.items()}
    slowest = max(ssh_medians.values())
    aif_median = statistics.median(aif_times)
    per_site = max(max(c.values()) for c in queries), min(min(c.values()) for c in queries)
    print(
        f"\n`aif status --json` of {args.jobs} jobs over {len(sites)} sites (nodes drained), "
        f"median of {args.repeat} interleaved runs"
    )
    print(f"{'what':52} {'s':>7} {'x slowest ssh':>14}")
    for name, median in ssh_medians.items():
        print(f"{'ssh ' + name + ' squeue (OpenSSH, 1 process)':52} {median:7.3f} {median / slowest:14.2f}")
    floor = statistics.median(import_times)
    print(f"{'python: only the imports of aif status (no work)':52} {floor:7.3f} {floor / slowest:14.2f}")
    library = statistics.median(library_times)
    print(f"{'aif status, library call (3 sites at once)':52} {library:7.3f} {library / slowest:14.2f}")
    cli = "aif -v status --json, CLI process (3 sites at once)"
    print(f"{cli:52} {aif_median:7.3f} {aif_median / slowest:14.2f}")
    shared_median = statistics.median(shared_times)
    print(f"{SHARED_ROW:52} {shared_median:7.3f} {shared_median / slowest:14.2f}")
    one = statistics.median(one_site_times)
    mine = f"aif -v status --json ID..., {sites[0].name}'s jobs only"
    print(f"{mine:52} {one:7.3f} {one / ssh_medians[sites[0].name]:14.2f} (x its own ssh)")
    print(
        f"queries per site per aif status (from -v): {per_site[1]}..{per_site[0]}; "
        f"peak RSS of a child process: {rss_mb:.0f} MB"
    )
    ok = aif_median / slowest <= GOAL_RATIO and rss_mb <= GOAL_RSS_MB and per_site == (1, 1)
    print(
        f"ratios: aif status / slowest ssh squeue = {aif_median / slowest:.2f} (goal <= {GOAL_RATIO}); "
        f"peak RSS {rss_mb:.0f} MB (goal <= {GOAL_RSS_MB:.0f}); queries per site {per_site[0]} (goal 1)"
        f" -> {'met' if ok else 'NOT met'}; with warm shared connections (no handshake in the process): "
        f"{shared_median / slowest:.2f}"
    )
    return 0


def check_status(
    result: subprocess.CompletedProcess[str], expected: int, sites: list[SiteAccess]
) -> dict[str, int]:
    """Every job in the JSON; the queries per site from the -v lines."""
    jobs = json.loads(result.stdout or "[]")
    if result.returncode != 0 or len(jobs) != expected:
        raise SystemExit(f"bench: aif status gave {len(jobs)} jobs: {result.stderr.strip()[-500:]}")
    count = {site.name: 0 for site in sites}
    for line in result.stderr.splitlines():
        for site in sites:
            if line.startswith(f"+ [{site.name}] "):
                count[site.name] += 1
    return count


def library_status(last: float, poll_interval: float) -> float:
    """The same status as a library call in this process (no Python start-up, imports warm)."""
    from gateway.context import open_context
    from gateway.status import refresh

    time.sleep(max(0.0, last + poll_interval + 0.1 - time.perf_counter()))
    t0 = time.perf_counter()
    with open_context() as ctx:
        report = refresh(ctx)
    elapsed = time.perf_counter() - t0
    if report.unreachable:
        raise SystemExit(f"bench: {report.unreachable}")
    return elapsed


if __name__ == "__main__":
    raise SystemExit(main())
