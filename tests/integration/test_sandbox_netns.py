"""`aif sandbox up` inside a network namespace of its own, as in a container.

Each test runs a second, private sandbox in a new network namespace
(``unshare -n``), so it runs beside the session's sandbox: same ports, other
namespace (and its own mount namespace, so that one case can remount /sys).
The child process brings it up, runs one job as root, logs in over
SSH as the sandbox user, and brings it down again; it prints what it saw as
JSON. Cost: about 4 s per case (up ~0.5 s, one job ~1 s, down ~2 s), 12 s in all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# What runs inside the namespace: argv[1] is the AIF_HOME of the private sandbox.
CHILD = r"""
import json, os, subprocess, sys, time
from pathlib import Path
from gateway.sandbox import manager

home = Path(sys.argv[1])
seen = {"links": subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout}
try:
    seen["up"] = manager.up(home).up
    site = manager.facts(home).site("sandbox-north")
    env = {**os.environ, "SLURM_CONF": str(site.slurm_conf)}

    def slurm(*argv):
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)

    job = slurm("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true").stdout.strip()
    deadline = time.monotonic() + 20
    state = ""
    while time.monotonic() < deadline and state not in ("COMPLETED", "FAILED", "CANCELLED"):
        time.sleep(0.1)
        state = slurm("squeue", "-h", "-t", "all", "-j", job, "-o", "%T").stdout.strip()
    seen["job"] = state
    login = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(site.identity_file), "-o", "IdentitiesOnly=yes",
         "-o", f"UserKnownHostsFile={site.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", "-p", str(site.ssh_port), f"{site.user}@{site.host}",
         "sinfo -h -o %t"],
        capture_output=True, text=True, timeout=30,
    )
    seen["ssh"] = [login.returncode, login.stdout.strip(), login.stderr.strip()]
except Exception as exc:
    seen["error"] = f"{type(exc).__name__}: {exc}"
finally:
    manager.down(home)
print(json.dumps(seen))
"""


@pytest.fixture
def private_home() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("the Slurm sandbox needs root")
    base = Path(tempfile.mkdtemp(prefix="aif-netns-"))
    os.chmod(base, 0o755)  # the sandbox user's sbatch reads slurm.conf in here
    try:
        yield base / "aif_home"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param("ip link set lo up", id="loopback-only"),
        # glibc counts any IPv4 address but 127.0.0.1 as "configured" (AI_ADDRCONFIG):
        # this is what a host with a real interface looks like to Slurm.
        pytest.param("ip link set lo up && ip addr add 127.0.0.2/8 dev lo", id="host-like"),
        # What `ip netns exec` does: a new mount namespace with a fresh /sys, in
        # which no cgroup file system is mounted (as in some containers).
        pytest.param(
            "mount --make-rprivate / && mount -t sysfs sysfs /sys && ip link set lo up",
            id="fresh-sysfs",
        ),
    ],
)
def test_sandbox_runs_jobs_in_a_new_network_namespace(private_home: Path, setup: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c", f'{setup} && exec "$0" -c "$1" "$2"', sys.executable, CHILD,
         str(private_home)],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    logs = private_home / "sandbox" / "log"
    assert "error" not in seen, f"{seen['error']} (logs in {logs})"
    # Nothing but loopback: no route out, as in a container without a network.
    assert [line.split(":")[1].strip() for line in seen["links"].splitlines()] == ["lo"]
    assert seen["up"] is True
    assert seen["job"] == "COMPLETED"
    assert seen["ssh"] == [0, "idle", ""]
