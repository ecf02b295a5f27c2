"""Array coalescing: 200 specs of one shape in one `aif submit`, sent as ONE Slurm array job,
against one `ssh site sbatch --array=0-199` and the local one-by-one sbatch loop, side by side.

Run as root with `make bench` (brings the sandbox up if it is not; in a loopback-only network
namespace of your own if another sandbox may be running). sandbox-east's nodes are drained
for the measurement so every job stays pending: what is timed is submission alone. Methods
are interleaved per repetition and the queue is emptied between them; the medians are
compared. Prints one table and a final line of ratios. Goal: aif's CLI process (Python
start-up, the SSH handshake, validation, placement, the ledger, the site's record and the
one remote command included) at most 1.3x the plain `ssh site sbatch --array=0-199` process.
The row "shared connection (warm)" is the same CLI process with `[ssh] share_connection`
on and the site's holder already logged in (like OpenSSH's ControlMaster): no handshake
in the process, so it is shown apart from the cold figure the goal is about. The row
"only the imports" is a Python process that imports what `aif submit` imports (click, the
lifecycle, the transport whose forked child imports paramiko and logs in on the other core)
and does nothing: the part of the CLI process that is Python's start-up alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import (
    compile_aif,
    local_sbatch_loop,
    openssh,
    private_home,
    site_nodes,
    slurm,
    write_jobs,
)
from shared_connection import SharedConnection  # bench/ beside this script

from gateway import lifecycle
from gateway.context import open_context
from gateway.sandbox import manager

SITE = "sandbox-east"
SHARED_ROW = "aif submit, CLI, shared connection (warm)"
IMPORTS_ROW = "python: only the imports of aif submit (no work)"
IMPORTS_OF_SUBMIT = (
    "import gateway.cli.jobs, gateway.lifecycle, gateway.submission, gateway.transports.mux.forked"
)
SCRIPT = "#!/bin/bash\n#SBATCH --time=00:01:00\n#SBATCH --output=/dev/null\ntrue\n"


def spec_text(i: int) -> str:
    """One-line specs of one shape: each its own name, command and (default) directory."""
    return f'[job]\nname = "bench-{i}"\ncommand = ["echo", "{i}"]\n[resources]\nwalltime = "00:01:00"\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (it drains sandbox nodes)", file=sys.stderr)
        return 2

    compile_aif()
    manager.up(progress=lambda line: print(f"[sandbox] {line}", file=sys.stderr))
    facts = manager.facts()
    site = facts.site(SITE)
    conf = str(site.slurm_conf)
    nodes = site_nodes(conf)

    # A private AIF_HOME for the bench's ledger, seeing the same sandbox sites.
    work = Path(tempfile.mkdtemp(prefix="aif-bench-arrays-"))
    private_home(facts, work / "home")
    os.environ["AIF_HOME"] = str(work / "home")
    specs, scripts = write_jobs(work, args.jobs, spec_text, SCRIPT)
    aif = Path(sys.executable).parent / "aif"
    ssh = openssh(site)

    def ssh_array() -> None:
        argv = [*ssh, "sbatch", "--parsable", f"--array=0-{args.jobs - 1}"]
        result = subprocess.run(argv, input=SCRIPT, capture_output=True, text=True, check=True)
        assert result.stdout.strip().isdigit(), result.stdout

    def local_loop() -> None:
        local_sbatch_loop(scripts, conf)

    def aif_cli(*extra: str) -> Callable[[], None]:
        def run() -> None:
            result = subprocess.run(
                [str(aif), "submit", "--site", SITE, "--json", *extra, *specs], capture_output=True, text=True
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.count('"slurm_job_id": "') == args.jobs

        return run

    shared = SharedConnection(work / "home", [SITE])

    def aif_cli_shared() -> None:
        with shared.on():
            aif_cli()()

    def aif_library() -> None:
        with open_context() as ctx:
            jobs = lifecycle.submit(ctx, specs, site=SITE).jobs
        assert all(j.job.slurm_job_id for j in jobs)
        assert len({j.job.slurm_job_id.split("_")[0] for j in jobs if j.job.slurm_job_id}) == 1

    def imports_only() -> None:
        # What `aif submit` imports before it does anything: its floor as a Python process.
        subprocess.run([sys.executable, "-c", IMPORTS_OF_SUBMIT], check=True)

    methods: dict[str, Callable[[], None]] = {
        f"ssh site sbatch --array=0-{args.jobs - 1}": ssh_array,
        "aif submit, CLI process (one array)": aif_cli(),
        IMPORTS_ROW: imports_only,
        SHARED_ROW: aif_cli_shared,
        "aif submit, library call (one array)": aif_library,
        "aif submit --no-coalesce, CLI process": aif_cli("--no-coalesce"),
        "local sbatch loop (login node)": local_loop,
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    slurm(conf, "scontrol", "update", f"nodename={nodes}", "state=drain", "reason=aif-bench")
    try:
        for run in methods.values():  # warm-up, not timed: the SSH host key, caches, the ledger
            run()
            slurm(conf, "scancel", f"--user={site.user}")
        shared.wait_warm()  # the shared row's first run started the site's holder
        for rep in range(args.repeat):
            for name, run in methods.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
                # Empty the queue: the next method starts from the same controller state.
                slurm(conf, "scancel", "--user=root")
                slurm(conf, "scancel", f"--user={site.user}")
                while slurm(conf, "squeue", "-h", "-t", "pending,running").strip():
                    time.sleep(0.05)
            print(f"[bench] repetition {rep + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        shared.stop()
        slurm(conf, "scancel", "--user=root")
        slurm(conf, "scancel", f"--user={site.user}")
        slurm(conf, "scontrol", "update", f"nodename={nodes}", "state=resume")
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    floor = medians[f"ssh site sbatch --array=0-{args.jobs - 1}"]
    loop = medians["local sbatch loop (login node)"]
    print(f"\n{args.jobs} specs of one shape to {SITE}, median of {args.repeat} interleaved runs")
    print(f"{'method':52} {'s':>7} {'x ssh array':>11} {'x local loop':>13}")
    for name, median in medians.items():
        print(f"{name:52} {median:7.3f} {median / floor:11.2f} {median / loop:13.2f}")
    cli = medians["aif submit, CLI process (one array)"]
    warm = medians[SHARED_ROW]
    print(
        f"\nratio: aif CLI (one array, its own SSH handshake) / ssh sbatch --array = {cli / floor:.2f} "
        f"(goal <= 1.3); / local loop = {cli / loop:.2f} (goal about 0.3); "
        f"with a warm shared connection (no handshake in the process): {warm / floor:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
