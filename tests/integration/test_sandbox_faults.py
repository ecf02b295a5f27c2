"""The sandbox's fault injection (gateway.sandbox.manager), each fault on the real sandbox.

Every test puts the session's sandbox back as it found it, even when it
fails, so the tests after it see a healthy sandbox. What each costs is in
its docstring; about 10 s in all.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.errors import ConnectionLost, SandboxError, SiteUnreachable
from gateway.sandbox import manager
from gateway.sandbox.manager import SandboxFacts
from gateway.sandbox.supervisor import descendants
from gateway.transports.ssh import SshTarget, SshTransport

pytestmark = pytest.mark.integration

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def slurm(sandbox: SandboxFacts, site: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """A Slurm client command at ``site``, run here as root."""
    env = {**os.environ, "SLURM_CONF": str(sandbox.site(site).slurm_conf)}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def submit(sandbox: SandboxFacts, site: str, *args: str) -> str:
    result = slurm(sandbox, site, "sbatch", "--parsable", "-o", "/dev/null", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def job_state(sandbox: SandboxFacts, site: str, job: str) -> str:
    return slurm(sandbox, site, "squeue", "-h", "-t", "all", "-j", job, "-o", "%T").stdout.strip()


def wait_until_ended(sandbox: SandboxFacts, site: str, job: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while (state := job_state(sandbox, site, job)) not in FINAL_STATES:
        assert time.monotonic() < deadline, f"job {job} at {site} is still {state!r}"
        time.sleep(0.1)
    return state


def target(sandbox: SandboxFacts, site: str) -> SshTarget:
    facts = sandbox.site(site)
    return SshTarget(
        site=site,
        host=facts.host,
        port=facts.ssh_port,
        user=facts.user,
        identity_file=facts.identity_file,
        known_hosts=facts.known_hosts,
        connect_timeout=5.0,
        use_ssh_config=False,
        use_agent=False,
    )


def supervisor_pid(sandbox: SandboxFacts) -> int:
    return int(json.loads((sandbox.root / "run" / "supervisor.json").read_text())["pid"])


@pytest.fixture
def healthy(sandbox: SandboxFacts) -> Iterator[SandboxFacts]:
    """The session's sandbox, checked up before the test and made up again after it."""
    assert manager.status(sandbox.aif_home).up
    yield sandbox
    if not manager.status(sandbox.aif_home).up:
        manager.up(sandbox.aif_home)  # a failed test left a fault behind: restart everything


def sandbox_status_cli(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, Any]]:
    """`aif sandbox status --json` as a user runs it: its exit code and what it printed."""
    monkeypatch.setenv("AIF_HOME", str(home))
    result = CliRunner().invoke(main, ["sandbox", "status", "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_stopped_controller_is_down_and_comes_back_with_its_jobs(
    healthy: SandboxFacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """About 2.5 s: one client call against the stopped controller (2 s), the restart."""
    home, site = healthy.aif_home, "sandbox-north"
    held = submit(healthy, site, "--hold", "--wrap", "true")
    try:
        manager.stop_controller(site, home)
        status = manager.status(home)
        assert not status.up
        assert status.stopped == ("slurmctld-north",)
        assert status.problems == ("slurmctld-north is stopped (on request)",)
        north = status.site(site)
        assert not north.controller and not north.nodes and north.sshd
        assert all(s.healthy for s in status.sites if s.name != site)
        code, shown = sandbox_status_cli(home, monkeypatch)
        assert code == 1 and shown["sites"][0]["controller"] is False

        started = time.monotonic()
        down = slurm(healthy, site, "squeue", "-h")
        failed_after = time.monotonic() - started
        assert down.returncode == 1 and "Unable to contact slurm controller" in down.stderr
        # MessageTimeout=3: clients give up after about 2 s (`squeue -j` tries twice: 4 s).
        assert failed_after < 3.5
    finally:
        manager.start_controller(site, home)
    assert sandbox_status_cli(home, monkeypatch)[0] == 0
    # slurmctld made its jobcomp file 644 again as it opened it; the sandbox group gets it back.
    jobcomp = healthy.root / "north" / "jobcomp.txt"
    assert stat.S_IMODE(jobcomp.stat().st_mode) == 0o660
    # The held job was saved to StateSaveLocation and recovered.
    assert job_state(healthy, site, held) == "PENDING"
    assert slurm(healthy, site, "scancel", held).returncode == 0


def test_fresh_restart_starts_job_ids_at_1_and_keeps_the_history(healthy: SandboxFacts) -> None:
    """About 4 s: two short jobs, one fresh restart of a cluster."""
    home, site = healthy.aif_home, "sandbox-east"
    before, after = f"before-{secrets.token_hex(3)}", f"after-{secrets.token_hex(3)}"
    old = submit(healthy, site, "-J", before, "--wrap", "true")
    assert wait_until_ended(healthy, site, old) == "COMPLETED"
    submit(healthy, site, "--wrap", "sleep 300")
    east_conf = f"SLURM_CONF={healthy.site(site).slurm_conf}".encode()

    def east_steps() -> list[int]:
        steps = []
        for pid in descendants(supervisor_pid(healthy)):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "slurmstepd" and east_conf in environ:
                steps.append(pid)
        return steps

    deadline = time.monotonic() + 10
    while not east_steps():  # the job runs once its slurmstepd does
        assert time.monotonic() < deadline, "the sleep job never got a slurmstepd"
        time.sleep(0.1)

    manager.restart_cluster_fresh(site, home)

    status = manager.status(home)
    assert status.up, status.problems
    assert status.site(site).node_states == {"east-n1": "idle", "east-n2": "idle"}
    assert east_steps() == []  # the running job died with the old cluster
    new = submit(healthy, site, "-J", after, "--wrap", "true")
    assert new == "1"
    assert wait_until_ended(healthy, site, new) == "COMPLETED"
    history = slurm(healthy, site, "sacct", "-c", "-P", "-n", "-o", "jobid,jobname,state").stdout
    assert f"{old}|{before}|COMPLETED" in history.splitlines()
    assert f"1|{after}|COMPLETED" in history.splitlines()


def test_stopped_sshd_refuses_new_connections_and_keeps_open_ones(healthy: SandboxFacts) -> None:
    """Under 1 s."""
    home, site = healthy.aif_home, "sandbox-south"
    with SshTransport(target(healthy, site)) as open_one, SshTransport(target(healthy, site)) as new_one:
        assert open_one.run(["true"]).ok
        try:
            manager.stop_sshd(home)
            status = manager.status(home)
            assert status.stopped == ("sshd",)
            assert status.problems == ("sshd is stopped (on request)",)
            assert not any(s.sshd for s in status.sites)
            assert all(s.controller and s.nodes for s in status.sites)
            with pytest.raises(SiteUnreachable, match="connection refused"):
                new_one.run(["true"])
            assert open_one.run(["echo", "still here"]).stdout == "still here\n"
        finally:
            manager.start_sshd(home)
        assert manager.status(home).up
        assert new_one.run(["echo", "back"]).stdout == "back\n"


def test_killed_ssh_sessions_drop_the_command_that_runs(healthy: SandboxFacts) -> None:
    """About 1 s."""
    home = healthy.aif_home
    with SshTransport(target(healthy, "sandbox-north")) as transport:
        assert transport.run(["true"]).ok
        outcome: list[object] = []

        def long_command() -> None:
            try:
                outcome.append(transport.run(["sleep", "30"]))
            except BaseException as exc:  # looked at below
                outcome.append(exc)

        runner = threading.Thread(target=long_command)
        runner.start()
        time.sleep(0.5)
        killed = manager.kill_ssh_sessions(home)
        runner.join(10)
        assert not runner.is_alive()
        assert len(killed) >= 2  # "sshd: aifuser [priv]" and "sshd: aifuser@notty", per connection
        (dropped,) = outcome
        assert isinstance(dropped, ConnectionLost), dropped
        # The listener was not touched: the next command connects again.
        assert transport.run(["echo", "again"]).stdout == "again\n"
        assert transport.connect_count == 2
    assert manager.status(home).up


def test_drained_nodes_hold_jobs_until_resumed(healthy: SandboxFacts) -> None:
    """About 2 s: one job that waits for the resume."""
    home, site = healthy.aif_home, "sandbox-south"
    try:
        manager.drain_nodes(site, home)
        status = manager.status(home)
        assert status.site(site).node_states == {"south-n1": "drain"}
        assert not status.up and "south-n1 is drain" in status.problems
        job = submit(healthy, site, "--wrap", "true")
        time.sleep(1.0)  # a scheduling pass: the job must not start
        assert job_state(healthy, site, job) == "PENDING"
    finally:
        manager.resume_nodes(site, home)
    assert wait_until_ended(healthy, site, job) == "COMPLETED"
    assert manager.status(home).up


def test_faults_need_a_running_sandbox_and_a_real_site(healthy: SandboxFacts, tmp_path: Path) -> None:
    """Instant."""
    with pytest.raises(SandboxError, match="is not running: run `aif sandbox up` first"):
        manager.stop_controller("sandbox-north", tmp_path / "no_sandbox_here")
    with pytest.raises(SandboxError, match="no sandbox site 'sandbox-west'"):
        manager.stop_controller("sandbox-west", healthy.aif_home)
    assert manager.status(healthy.aif_home).up
