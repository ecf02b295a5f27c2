"""200 submissions to one sandbox site: aif against a local sbatch loop, side by side.

Run as root with `make bench` (brings the sandbox up if it is not). The
site's nodes are drained for the measurement so every job stays pending:
what is timed is submission alone, as in ../shared/notes/ssh-submission-facts.md.
Methods are interleaved per repetition and the medians compared, so machine
noise hits them alike. Prints one table of seconds, ms per job and the ratio
to the local loop. The row "shared connection (warm)" is the same CLI process with
`[ssh] share_connection` on and the site's holder already logged in (like OpenSSH's
ControlMaster): no handshake in the process, so it is shown apart from the cold figure.
aif's submission program runs the site profile's `submit_concurrency` sbatch at a time (2 for
the sandbox); the row "one sbatch at a time" is the same CLI process with a profile saying 1,
beside the floor's one-by-one loop.
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
from gateway.transports.ssh import SshTarget, SshTransport

SITE = "sandbox-east"
SHARED_ROW = "aif submit, CLI, shared connection (warm)"
SERIAL_ROW = "aif submit, CLI, one sbatch at a time"
SPEC_RESOURCES = '[resources]\nwalltime = "00:01:00"\n'
SCRIPT = "#!/bin/bash\n#SBATCH --time=00:01:00\n#SBATCH --output=/dev/null\ntrue\n"


def spec_text(i: int) -> str:
    return f'[job]\nname = "bench-{i}"\ncommand = ["true"]\nworkdir = "bench"\n' + SPEC_RESOURCES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (it drains sandbox nodes)", file=sys.stderr)
        return 2

    manager.up(progress=lambda line: print(f"[sandbox] {line}", file=sys.stderr))
    compile_aif()
    facts = manager.facts()
    site = facts.site(SITE)
    conf = str(site.slurm_conf)
    nodes = site_nodes(conf)

    # A private AIF_HOME for the bench's ledger, seeing the same sandbox sites.
    work = Path(tempfile.mkdtemp(prefix="aif-bench-"))
    private_home(facts, work / "home")
    os.environ["AIF_HOME"] = str(work / "home")
    # Another whose profile of the site says one sbatch at a time: what the workers bring.
    serial_home = private_home(facts, work / "home-serial")
    profile = serial_home / "profiles" / f"{SITE}.toml"
    profile.write_text(profile.read_text().replace("submit_concurrency = 2", "submit_concurrency = 1"))
    assert "submit_concurrency = 1" in profile.read_text(), profile
    specs, scripts = write_jobs(work, args.jobs, spec_text, SCRIPT)

    target = SshTarget(
        site=SITE,
        host=site.host,
        port=site.ssh_port,
        user=site.user,
        identity_file=Path(site.identity_file),
        known_hosts=Path(site.known_hosts),
        use_ssh_config=False,
    )
    per_job = SshTransport(target)
    per_job.connect()

    def local_loop() -> None:
        local_sbatch_loop(scripts, conf)

    def aif_library() -> None:
        with open_context() as ctx:
            # One Slurm job per spec: bench/arrays.py measures the same specs as one array.
            jobs = lifecycle.submit(ctx, specs, site=SITE, coalesce=False).jobs
        assert all(j.job.slurm_job_id for j in jobs), [j.job.message for j in jobs if not j.job.slurm_job_id]

    def aif_cli(home: Path | None = None) -> None:
        aif = Path(sys.executable).parent / "aif"
        subprocess.run(
            [str(aif), "submit", "--site", SITE, "--no-coalesce", "--json", *specs],
            check=True,
            capture_output=True,
            env={**os.environ, "AIF_HOME": str(home)} if home else None,
        )

    def aif_cli_serial() -> None:
        aif_cli(serial_home)

    shared = SharedConnection(work / "home", [SITE])

    def aif_cli_shared() -> None:
        with shared.on():
            aif_cli()

    ssh_base = openssh(site)
    # One ssh process streaming every script into a remote sbatch loop: the floor (no
    # record, no ledger, no rendering; the scripts are already written).
    stream = "".join(
        f"sbatch --parsable <<'AIF_BENCH_EOF' >/dev/null || exit 1\n{SCRIPT}AIF_BENCH_EOF\n"
        for _ in range(args.jobs)
    )

    def ssh_stream() -> None:
        subprocess.run([*ssh_base, "bash", "-s"], input=stream.encode(), check=True, capture_output=True)

    control = work / "control.sock"
    master = subprocess.Popen(
        [*ssh_base[:-1], "-M", "-S", str(control), "-N", ssh_base[-1]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if control.exists():
            break
        time.sleep(0.05)

    def ssh_control_master_loop() -> None:
        muxed = [*ssh_base[:-1], "-S", str(control), ssh_base[-1]]
        for _ in range(args.jobs):
            subprocess.run(
                [*muxed, "sbatch", "--parsable"], input=SCRIPT.encode(), check=True, capture_output=True
            )

    def ssh_exec_per_job() -> None:
        for _ in range(args.jobs):
            result = per_job.run(["sbatch", "--parsable"], stdin=SCRIPT.encode())
            assert result.ok, result.stderr

    methods: dict[str, Callable[[], None]] = {
        "local sbatch loop (login node)": local_loop,
        "aif submit, library (1 SSH exec)": aif_library,
        "aif submit, CLI process (1 SSH exec)": aif_cli,
        SERIAL_ROW: aif_cli_serial,
        SHARED_ROW: aif_cli_shared,
        "paramiko, one exec per job": ssh_exec_per_job,
        "ssh: one process streaming to sbatch (floor)": ssh_stream,
        "ssh ControlMaster, one ssh per job": ssh_control_master_loop,
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    status_times: list[float] = []
    slurm(conf, "scontrol", "update", f"nodename={nodes}", "state=drain", "reason=aif-bench")
    try:
        aif_cli_shared()  # not timed: starts the site's holder for the shared row
        slurm(conf, "scancel", f"--user={site.user}")
        shared.wait_warm()
        for rep in range(args.repeat):
            for name, run in methods.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
                slurm(conf, "scancel", "--user=root")
                slurm(conf, "scancel", f"--user={site.user}")
            # status of every job aif submitted in this repetition: one query per site
            started = time.perf_counter()
            with open_context() as ctx:
                lifecycle.refresh(ctx)
            status_times.append(time.perf_counter() - started)
            print(f"[bench] repetition {rep + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        shared.stop()
        slurm(conf, "scancel", "--user=root")
        slurm(conf, "scancel", f"--user={site.user}")
        slurm(conf, "scontrol", "update", f"nodename={nodes}", "state=resume")
        per_job.close()
        master.terminate()
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(times["local sbatch loop (login node)"])
    print(f"\n{args.jobs} submissions to {SITE}, median of {args.repeat} interleaved runs")
    floor = statistics.median(times["ssh: one process streaming to sbatch (floor)"])
    print(f"{'method':46} {'s':>8} {'ms/job':>8} {'x local':>8} {'x floor':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:46} {median:8.2f} {median / args.jobs * 1000:8.1f} {median / base:8.2f}"
            f" {median / floor:8.2f}"
        )
    cli = statistics.median(times["aif submit, CLI process (1 SSH exec)"])
    verdict = "met" if cli / floor <= 1.1 else "NOT met"
    warm = statistics.median(times[SHARED_ROW])
    serial = statistics.median(times[SERIAL_ROW])
    print(
        f"\nratio: aif CLI (its own SSH handshake) / ssh floor {cli / floor:.2f} [goal <= 1.1: {verdict}]; "
        f"with a warm shared connection (no handshake in the process): {warm / floor:.2f}; "
        f"one sbatch at a time at the site (submit_concurrency = 1): {serial / floor:.2f}"
    )
    status_ms = statistics.median(status_times) * 1000
    print(f"\naif status of every job in the bench ledger (one squeue per site): {status_ms:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
