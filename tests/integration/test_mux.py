"""The shared SSH connection (gateway.transports.mux) on the real sandbox: a second `aif status`
process rides on the first one's holder (no new SSH login, no paramiko imported, the same
answer as a direct connection); a holder killed with -9 leaves a stale socket that the next
process steps around; a holder leaves when its connection dies and when asked to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.sandbox import manager
from gateway.sandbox.manager import SandboxFacts
from gateway.transports.mux import holder_pids
from tests.integration.test_lifecycle import clone_home
from tests.integration.test_polling import sleep_spec

pytestmark = pytest.mark.integration

SITE = "sandbox-north"
AIF = [sys.executable, "-c", "from gateway.cli import run; run()"]
# As the console script runs it; atexit writes whether paramiko was ever imported.
AIF_REPORTING_PARAMIKO = """
import atexit, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(str("paramiko" in sys.modules)))
sys.argv[0] = "aif"
from gateway.cli import main
sys.exit(main())
"""


def logins(sandbox: SandboxFacts) -> int:
    """SSH logins the sandbox's sshd accepted so far (its log is on stderr, in sshd.out)."""
    return (sandbox.root / "log" / "sshd.out").read_text(errors="replace").count("Accepted publickey")


def status(tmp_path: Path) -> tuple[list[tuple[str, str]], bool]:
    """`aif -v status --json` as a CLI process: (id, slurm id) per job, each still pending or
    running (the job may start between two calls), and whether it imported paramiko."""
    marker = tmp_path / "paramiko"
    result = subprocess.run(
        [sys.executable, "-c", AIF_REPORTING_PARAMIKO, str(marker), "-v", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AIF_POLL_INTERVAL": "0"},  # every status asks the site
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"+ [{SITE}] squeue") == 1, result.stderr
    answer = json.loads(result.stdout)
    assert all(j["state"] in ("PENDING", "RUNNING") for j in answer), answer
    jobs = sorted((j["id"], j["slurm_job_id"]) for j in answer)
    return jobs, marker.read_text() == "True"


def wait_for(predicate: object, seconds: float = 15.0) -> None:
    give_up = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.05)


def test_a_second_status_rides_on_the_holder_and_a_dead_holder_is_stepped_around(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = clone_home(sandbox, tmp_path, monkeypatch)
    spec = sleep_spec(tmp_path, "shared", 300)
    submitted = subprocess.run(
        [*AIF, "submit", "--site", SITE, "--json", str(spec)], capture_output=True, text=True, timeout=120
    )
    assert submitted.returncode == 0, submitted.stderr
    try:
        direct, imported = status(tmp_path)  # sharing off: the reference answer
        assert imported and len(direct) == 1

        (home / "config.toml").write_text("[ssh]\nshare_connection = true\npersist_s = 30\n")
        before = logins(sandbox)
        first, imported = status(tmp_path)  # no holder yet: direct, and starts one
        wait_for(lambda: (home / "mux" / f"{SITE}.sock").exists())
        assert first == direct and imported
        assert logins(sandbox) == before + 2  # its own login and the holder's
        second, imported = status(tmp_path)
        assert second == direct and not imported
        assert logins(sandbox) == before + 2  # no new login: the holder's connection ran it

        # A holder killed with -9 leaves its socket behind: the next process goes direct.
        [pid] = holder_pids(home).values()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not holder_pids(home))
        assert (home / "mux" / f"{SITE}.sock").exists()
        third, imported = status(tmp_path)
        assert third == direct and imported
        log = home / "mux" / f"{SITE}.log"
        wait_for(lambda: log.read_text().count(f"holding {SITE}") == 2)  # a new holder serves

        listed = subprocess.run([*AIF, "mux", "status", "--json"], capture_output=True, text=True, timeout=60)
        assert [held["site"] for held in json.loads(listed.stdout)] == [SITE]

        # A holder whose SSH connection dies leaves at once (ControlMaster does the same).
        [pid] = holder_pids(home).values()
        manager.kill_ssh_sessions(sandbox.aif_home)
        wait_for(lambda: not holder_pids(home), seconds=5)
        assert not (home / "mux" / f"{SITE}.sock").exists()
        assert "its SSH connection is gone" in log.read_text()
    finally:
        (home / "config.toml").unlink(missing_ok=True)  # cancel directly: it starts no holder
        ids = [job["id"] for job in json.loads(submitted.stdout)]
        subprocess.run([*AIF, "cancel", *ids], capture_output=True, timeout=120)
        stopped = subprocess.run([*AIF, "mux", "stop"], capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert holder_pids(home) == {}
