"""The sandbox for real: three Slurm clusters reached over SSH, then down and up again.

The tests share the session's sandbox (tests/integration/conftest.py). The
last one stops it and starts it again, so it leaves it up for whatever runs next.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.sandbox import manager
from gateway.sandbox.manager import SandboxFacts, SiteAccess

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.integration

SITE_NAMES = ("sandbox-north", "sandbox-south", "sandbox-east")
JOB_SCRIPT = """#!/bin/bash
gpus=${CUDA_VISIBLE_DEVICES:-none}
echo "cluster=$SLURM_CLUSTER_NAME user=$(id -un) gpus=$gpus n=${SLURM_GPUS_ON_NODE:-0}"
"""


def ssh(site: SiteAccess, command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``command`` at a sandbox site with the real OpenSSH client, strict host key check."""
    argv = [
        "ssh",
        "-F", "/dev/null",
        "-i", str(site.identity_file),
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={site.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-p", str(site.ssh_port),
        f"{site.user}@{site.host}",
        command,
    ]  # fmt: skip
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


def proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return comm, fields[0], int(fields[1])


def zombies() -> dict[int, tuple[str, int]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := proc_stat(int(entry))) and info[1] == "Z":
            found[int(entry)] = (info[0], info[2])
    return found


def processes_naming(root: Path) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if f"{root}/" in cmdline or cmdline.split("\0")[-2:-1] == [str(root)]:
                found.append(f"{entry}: {cmdline.replace(chr(0), ' ')}")
    return found


def test_status_says_every_site_answers(sandbox: SandboxFacts) -> None:
    status = manager.status(sandbox.aif_home)
    assert status.up, status.problems
    assert status.munged and status.supervisor_pid is not None
    data = json.loads(status.to_json())
    assert data["up"] is True
    by_name = {s["name"]: s for s in data["sites"]}
    assert list(by_name) == list(SITE_NAMES)
    for name, port in zip(SITE_NAMES, (2231, 2232, 2233), strict=True):
        site = by_name[name]
        assert site["ssh_port"] == port
        assert site["controller"] and site["nodes"] and site["sshd"]
        assert site["slurm_conf"] == str(sandbox.site(name).slurm_conf)
        assert Path(site["slurm_conf"]).is_file()
    assert by_name["sandbox-north"]["node_states"] == {"north-n1": "idle", "north-n2": "idle"}


def test_gateway_files_point_at_the_running_sandbox(sandbox_home: Path) -> None:
    # sandbox_home set AIF_HOME: the default home is now the sandbox's.
    assert manager.status().up
    profiles = sorted(p.name for p in (sandbox_home / "profiles").iterdir())
    assert profiles == ["sandbox-east.toml", "sandbox-north.toml", "sandbox-south.toml"]
    config = tomllib.loads((sandbox_home / "config.d" / "sandbox.toml").read_text())
    for name in SITE_NAMES:
        entry = config["sites"][name]
        profile = tomllib.loads((sandbox_home / "profiles" / f"{name}.toml").read_text())
        assert profile["access"]["port"] == entry["port"]
        for key in ("identity_file", "known_hosts", "slurm_conf"):
            assert Path(entry[key]).is_file(), key
    for dataset in ("ehr-demo", "news-corpus", "sensor-logs"):
        assert Path(f"/home/aifuser/datasets/{dataset}").is_dir()


def _run_job(site: SiteAccess, sbatch_args: str) -> tuple[str, str]:
    """Submit over SSH, wait for the job to end, return (its output, its sacct -c line)."""
    # The three clusters share aifuser's home and each numbers its jobs from 1:
    # output file names must include the cluster. `sbatch --wait` polls after
    # 2 s then 8 s more, so poll squeue instead (-t all: a finished job stays
    # listed for MinJobAge, but only when asked for).
    out = f"aif-sandbox-test-{site.cluster}-$id.out"
    remote = (
        f"id=$(sbatch --parsable --job-name=aif-sandbox-test {sbatch_args}"
        f' -o "aif-sandbox-test-{site.cluster}-%j.out") || exit $?;'
        " for i in $(seq 300); do"
        '  state=$(squeue -h -t all -j "$id" -o %T); case $state in COMPLETED) break;;'
        "  PENDING|CONFIGURING|RUNNING|COMPLETING) sleep 0.1;; *) break;; esac;"
        " done;"
        ' [ "$state" = COMPLETED ] || { echo "job $id is $state" >&2; exit 1; };'
        f' cat "{out}"; rm -f "{out}";'
        ' sacct -c -P -n -o jobid,jobname,state,partition -j "$id"'
    )
    result = ssh(site, remote, stdin=JOB_SCRIPT)
    assert result.returncode == 0, f"{site.name}: {result.stderr}"
    lines = result.stdout.splitlines()
    assert len(lines) == 2, f"{site.name}: {result.stdout!r} {result.stderr!r}"
    return lines[0], lines[1]


def test_each_port_runs_jobs_on_its_own_cluster(sandbox: SandboxFacts) -> None:
    cases = {
        "sandbox-north": ("-p gpu --gpus-per-node=4", "north", "0,1,2,3", 4, "gpu"),
        "sandbox-south": ("-p gpu --gpus-per-node=8", "south", "0,1,2,3,4,5,6,7", 8, "gpu"),
        "sandbox-east": ("", "east", "none", 0, "standard"),
    }
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = {
            name: pool.submit(_run_job, sandbox.site(name), args) for name, (args, *_) in cases.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    for name, (_, cluster, gpus, count, partition) in cases.items():
        output, accounting = results[name]
        assert output == f"cluster={cluster} user=aifuser gpus={gpus} n={count}", name
        # sacct -c works for the login user: the sandbox group may write the jobcomp file.
        assert accounting.split("|")[1:] == ["aif-sandbox-test", "COMPLETED", partition], name


# munged makes its socket 777 by design: every user's client must connect, and
# munged authenticates each one by its uid (SO_PEERCRED), not by the file's mode.
WORLD_WRITABLE_BY_DESIGN = {"munge/munge.socket.2"}
SECRETS = ("munge/munge.key", "ssh/client_key", "ssh/ssh_host_ed25519_key")
# munged writes its PRNG seed when it stops, so a first run has none yet.
SECRETS_ONCE_WRITTEN = ("munge/munged.seed",)


def test_sandbox_files_are_no_more_open_than_needed(sandbox: SandboxFacts) -> None:
    root = sandbox.root
    listing: list[str] = []
    too_open: list[str] = []
    for path in [root, *sorted(root.rglob("*")), *sorted(sandbox.aif_home.glob("*/*.toml"))]:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue  # a job's file, gone meanwhile
        if stat.S_ISLNK(info.st_mode):
            continue  # a symlink's own mode means nothing
        name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        owner = f"{pwd.getpwuid(info.st_uid).pw_name}:{grp.getgrgid(info.st_gid).gr_name}"
        listing.append(f"{stat.filemode(info.st_mode)} {owner} {name}")
        if info.st_mode & stat.S_IWOTH and name not in WORLD_WRITABLE_BY_DESIGN:
            too_open.append(name)
    everything = "\n".join(listing)
    assert too_open == [], f"world-writable: {too_open}\n{everything}"
    for secret in [*SECRETS, *(s for s in SECRETS_ONCE_WRITTEN if (root / s).exists())]:
        info = (root / secret).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode) & 0o077) == (0, 0), f"{secret}\n{everything}"
    # Saved jobs hold scripts and environments; logs are the daemons' and root's.
    for directory in [root / "log", *(root / s.cluster / "state" for s in sandbox.sites)]:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, f"{directory}\n{everything}"
    # `sacct -c` opens the job history read-write: the sandbox user gets it
    # through the sandbox group, nobody else at all.
    group = grp.getgrnam("aifsandbox")
    assert "aifuser" in group.gr_mem
    for site in sandbox.sites:
        info = (root / site.cluster / "jobcomp.txt").stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, group.gr_gid, 0o660)


def test_up_when_up_starts_nothing(sandbox: SandboxFacts) -> None:
    before = manager.status(sandbox.aif_home)
    started = time.monotonic()
    after = manager.up(sandbox.aif_home)
    assert time.monotonic() - started < 3.0
    assert after.up and after.supervisor_pid == before.supervisor_pid


def test_a_dead_daemon_shows_in_status_and_up_restarts_all(sandbox: SandboxFacts) -> None:
    state = json.loads((sandbox.root / "run" / "supervisor.json").read_text())
    os.kill(state["children"]["slurmd-east-n2"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not (status := manager.status(sandbox.aif_home)).problems:
        assert time.monotonic() < deadline, "status did not notice the dead slurmd"
        time.sleep(0.05)
    assert not status.up
    assert status.problems[0].startswith("slurmd-east-n2 was killed by signal 9"), status.problems
    assert [s.nodes for s in status.sites] == [True, True, False]

    restarted = manager.up(sandbox.aif_home)
    assert restarted.up, restarted.problems
    assert restarted.supervisor_pid != state["pid"]


def test_down_leaves_nothing_behind_and_up_starts_clean(sandbox: SandboxFacts) -> None:
    root = sandbox.root
    state = json.loads((root / "run" / "supervisor.json").read_text())
    supervisor, daemons = state["pid"], list(state["children"].values())
    assert len(daemons) == 1 + 3 + 5 + 1  # munged, 3 slurmctld, 5 slurmd, sshd
    zombies_before = zombies()

    manager.down(sandbox.aif_home)

    # Every PID is gone, not left as a zombie (this process ran `up`, so it
    # reaped the supervisor; the supervisor reaped the daemons).
    for pid in [supervisor, *daemons]:
        assert proc_stat(pid) is None, (pid, proc_stat(pid))
    assert processes_naming(root) == []
    sandbox_comms = ("slurm", "munged", "sshd", "python")
    new_zombies = {
        pid: info
        for pid, info in zombies().items()
        if pid not in zombies_before and (info[1] == supervisor or info[0].startswith(sandbox_comms))
    }
    assert new_zombies == {}
    assert not (root / "run").exists()
    assert not (root / "north" / "state").exists()
    status = manager.status(sandbox.aif_home)
    assert not status.up and not status.munged
    assert not any(s.controller or s.sshd for s in status.sites)

    again = manager.up(sandbox.aif_home)
    assert again.up, again.problems
    assert again.supervisor_pid != supervisor
    # Slurm's state was wiped: job ids start at 1 again.
    north = sandbox.site("sandbox-north")
    result = ssh(north, "sbatch --parsable -o /dev/null", stdin="#!/bin/bash\ntrue\n")
    assert (result.returncode, result.stdout.strip()) == (0, "1"), result.stderr
