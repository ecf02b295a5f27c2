"""The ledger tells the truth under faults, on the real sandbox (issue: the ledger never lies).

Each test breaks something for real (kills aif, kills the sshd serving it, runs
many aif processes at once, cuts a site off) and checks that what aif says is
what Slurm did: every spec has exactly one job, "never submitted" only when
proven, no job sent twice. Independent witness: the site's own files and
Slurm's commands run over the system's OpenSSH.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger import Ledger
from gateway.sandbox.manager import SandboxFacts
from gateway.states import JobState
from tests.integration.test_lifecycle import aif, aif_json, at_site, clone_home, script_spec, write_spec

pytestmark = pytest.mark.integration

EAST = "sandbox-east"
SOUTH = "sandbox-south"
AIF = [sys.executable, "-c", "from gateway.cli import run; run()"]


def aif_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*AIF, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or dict(os.environ)
    )


def record_dir(key: str, site: str = EAST) -> Path:
    """The site's record of one submission key (the sandbox sites share this machine's disk)."""
    return Path(f"/home/aifuser/aif/{site}/.aif/submissions/{key}")


def slurm_names_at(sandbox: SandboxFacts, site: str) -> list[str]:
    """The name of every job Slurm holds or recorded at a site (squeue plus the job-completion
    log), once per job: a job seen in both is one (id, name) pair; a reused id under another
    name is another job."""
    queue = at_site(sandbox, site, "squeue", "--me", "-h", "-t", "all", "-o", "'%i|%j'")
    done = at_site(sandbox, site, "sacct", "-c", "-n", "-P", "-o", "jobidraw,jobname")
    assert queue.returncode == 0, queue.stderr
    jobs: set[tuple[str, str]] = set()
    for line in queue.stdout.splitlines() + done.stdout.splitlines():
        job_id, _, name = line.partition("|")
        if job_id.strip():
            jobs.add((job_id.strip(), name.strip()))
    return [name for _, name in sorted(jobs)]


def specs(tmp_path: Path, prefix: str, count: int, script: str = "true") -> list[str]:
    return [
        str(write_spec(tmp_path, f"{prefix}{i}", script_spec(f"{prefix}{i}", script))) for i in range(count)
    ]


def test_killed_mid_bulk_submit_then_rerun_with_the_key_sends_each_spec_once(
    sandbox_home: Path, sandbox: SandboxFacts, tmp_path: Path
) -> None:
    """Defects 2 and 3: aif is killed (-9) mid-submit; status settles every job from the site's
    record (sent ones adopted, the rest proven unsent); the same command with the same key
    sends only the rest. Every spec ends with exactly one Slurm job."""
    prefix = f"kill{int(time.time()) % 100000}x"
    paths = specs(tmp_path, prefix, 200)
    key = f"test-{prefix}"
    # Each spec its own Slurm job (test_arrays.py kills aif mid-submit of arrays of specs).
    process = aif_process("submit", "--site", EAST, "--no-coalesce", "--key", key, *paths)
    record = record_dir(key)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if record.is_dir() and len(os.listdir(record)) >= 20:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    claimed = len(os.listdir(record)) if record.is_dir() else 0
    # Nobody looks until the jobs have run and left squeue (here: the cluster is
    # reinstalled, so even its job ids start again); only the site's record and
    # Slurm's finished-job log know what happened.
    from gateway.sandbox import manager

    deadline = time.monotonic() + 60
    while (
        prefix in at_site(sandbox, EAST, "squeue", "--me", "-h", "-t", "pending,running", "-o", "%j").stdout
    ):
        assert time.monotonic() < deadline, "the jobs sent before the kill did not finish"
        time.sleep(0.5)
    manager.restart_cluster_fresh(EAST, sandbox.aif_home)
    # Settle what the dead aif left behind: fencing proves the unsent ones at once.
    env = dict(os.environ, AIF_LOST_SUBMISSION_AFTER="0", AIF_JUST_SUBMITTED_GRACE="0")
    settled = subprocess.run([*AIF, "status", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in settled.stderr
    with Ledger() as ledger:
        jobs = ledger.jobs_with_key(key)
    assert len(jobs) == 200
    never = [j for j in jobs if j.state == JobState.NOT_SENT]
    sent = [j for j in jobs if j.slurm_job_id]
    assert len(sent) + len(never) + sum(1 for j in jobs if j.unresolved) == 200
    assert len(sent) >= min(claimed, 200) - 1  # at most the one in flight is still in doubt
    assert 0 < len(sent) < 200, "aif was not killed mid-submit"
    # Every job that ran is reported with its true end state, not "never submitted".
    assert {j.state for j in sent} == {JobState.COMPLETED}
    # The rerun: the same key and specs (aif's own message gives this command).
    again = aif("submit", "--site", EAST, "--no-coalesce", "--key", key, "--json", *paths)
    assert again.exit_code == 0, again.output + again.stderr
    rerun = json.loads(again.stdout)
    assert len(rerun) == 200 and all(j["slurm_job_id"] for j in rerun)
    assert sum(1 for j in rerun if j["how"] == "submitted") == 200 - len(sent)
    names = [n for n in slurm_names_at(sandbox, EAST) if n.startswith(prefix)]
    spec_names = sorted(n.split(".")[0] for n in names)
    assert spec_names == sorted(f"{prefix}{i}" for i in range(200)), "a spec was sent twice or not at all"
    # A third run sends nothing at all.
    third = aif_json("submit", "--site", EAST, "--no-coalesce", "--key", key, *paths)
    assert {j["how"] for j in third} == {"sent before"}


def test_same_key_with_different_content_is_refused(sandbox_home: Path, tmp_path: Path) -> None:
    first = write_spec(tmp_path, "kc", script_spec("kc", "echo one"))
    key = f"test-kc-{int(time.time() * 1000)}"
    assert aif("submit", "--site", EAST, "--key", key, str(first)).exit_code == 0
    first.write_text(script_spec("kc", "echo two"))  # same file name, other content
    result = aif("submit", "--site", EAST, "--key", key, str(first))
    assert result.exit_code == 2
    assert str(first) in result.stderr and "Traceback" not in result.output


def test_interrupted_submit_says_what_was_sent_and_how_to_finish(
    sandbox_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the site ran sbatch, before aif read its answers: counts and the exact command.

    Interrupted in aif's own process, where the answers come back (its SSH transport may run
    in its forked login child)."""
    from gateway.site import SlurmCliBackend

    real_submit = SlurmCliBackend.submit

    def submit_then_interrupt(self: SlurmCliBackend, items: Any, journal_dir: str = "") -> Any:
        real_submit(self, items, journal_dir)  # the site ran every sbatch and answered
        raise KeyboardInterrupt

    monkeypatch.setattr(SlurmCliBackend, "submit", submit_then_interrupt)
    paths = specs(tmp_path, "intr", 3)
    result = aif("submit", "--site", SOUTH, *paths)
    assert result.exit_code == 130
    message = result.stderr.strip().splitlines()[-1]
    assert "0 sent, 0 not sent, 3 unknown" in message
    assert "finish with: aif submit --key " in message
    key = message.split("--key ")[1].split()[0]
    monkeypatch.setattr(SlurmCliBackend, "submit", real_submit)
    rerun = aif_json("submit", "--key", key, "--site", SOUTH, *paths)
    # The site's record shows all three were sent: adopted, none sent again.
    assert all(j["slurm_job_id"] for j in rerun)
    assert {j["how"] for j in rerun} == {"sent before"}


def test_eight_concurrent_submits_give_200_jobs_no_duplicates(
    sandbox_home: Path, sandbox: SandboxFacts, tmp_path: Path
) -> None:
    prefix = f"conc{int(time.time()) % 100000}x"
    batches = [specs(tmp_path, f"{prefix}{p}-", 25) for p in range(8)]
    processes = [
        aif_process("submit", "--site", EAST, "--no-coalesce", "--json", *batch) for batch in batches
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        assert "database is locked" not in stderr and "Traceback" not in stderr
    ids = [job["slurm_job_id"] for stdout, _ in outputs for job in json.loads(stdout)]
    assert len(ids) == 200 and len(set(ids)) == 200
    with Ledger() as ledger:
        mine = [j for j in ledger.list_jobs() if j.name.startswith(prefix)]
    assert len(mine) == 200
    names = [n for n in slurm_names_at(sandbox, EAST) if n.startswith(prefix)]
    assert len(names) == 200


def test_sshd_killed_mid_bulk_leaves_exactly_one_job_per_spec(
    sandbox_home: Path, sandbox: SandboxFacts, tmp_path: Path
) -> None:
    """The sshd process serving aif is killed after sbatch ran and before its answers were read."""
    prefix = f"sshk{int(time.time()) % 100000}x"
    paths = specs(tmp_path, prefix, 50)
    key = f"test-{prefix}"
    record = record_dir(key)

    from gateway.sandbox import manager

    def kill_sessions_once_claims_appear() -> list[int]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if record.is_dir() and len(os.listdir(record)) >= 5:
                return manager.kill_ssh_sessions(sandbox.aif_home)
            time.sleep(0.002)
        return []

    with ThreadPoolExecutor(1) as pool:
        killer = pool.submit(kill_sessions_once_claims_appear)
        result = aif("submit", "--site", EAST, "--no-coalesce", "--key", key, "--json", *paths)
        assert killer.result(), "no sshd session was killed"
    assert "Traceback" not in result.output
    env_settle = {"AIF_LOST_SUBMISSION_AFTER": "0", "AIF_JUST_SUBMITTED_GRACE": "0"}
    for name, value in env_settle.items():
        os.environ[name] = value
    try:
        aif("status")
        rerun = aif("submit", "--site", EAST, "--no-coalesce", "--key", key, "--json", *paths)
    finally:
        for name in env_settle:
            os.environ.pop(name, None)
    assert rerun.exit_code == 0, rerun.stderr
    names = sorted(n.split(".")[0] for n in slurm_names_at(sandbox, EAST) if n.startswith(prefix))
    assert names == sorted(f"{prefix}{i}" for i in range(50))


def test_wait_on_an_unreachable_site_shows_it_and_keeps_its_timeout(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 5: the site's problem is shown live and --timeout is honoured to the second."""
    home = clone_home(sandbox, tmp_path, monkeypatch)
    spec = write_spec(tmp_path, "wu", script_spec("wu", "sleep 30"))
    [job] = aif_json("submit", "--site", EAST, str(spec))
    config = home / "config.d" / "sandbox.toml"
    config.write_text(config.read_text().replace("port = 2233", "port = 2299"))
    started = time.monotonic()
    result = aif("wait", job["id"], "--timeout", "3")
    took = time.monotonic() - started
    assert result.exit_code == 8
    assert took < 4.5, f"--timeout 3 took {took:.1f} s"
    assert "sandbox-east" in result.stderr and "site problem" in result.stderr
    config.write_text(config.read_text().replace("port = 2299", "port = 2233"))
    assert aif("cancel", job["id"]).exit_code == 0


def slurm_state_at(sandbox: SandboxFacts, site: str, slurm_id: str) -> str:
    result = at_site(sandbox, site, "squeue", "-h", "-t", "all", "-j", slurm_id, "-o", "%T")
    return result.stdout.strip()


def test_a_reused_slurm_id_is_never_taken_for_the_old_job(
    sandbox_home: Path, sandbox: SandboxFacts, tmp_path: Path
) -> None:
    """Defect 1: after a reinstall Slurm ids start again at 1. A job that finished while nobody
    looked keeps its true end state; a job whose id now names another job is UNKNOWN with the
    reason, and `aif cancel` never signals the new job."""
    from gateway.sandbox import manager

    manager.restart_cluster_fresh(SOUTH, sandbox.aif_home)
    [finished] = aif_json(
        "submit", "--site", SOUTH, str(write_spec(tmp_path, "ra", script_spec("ra", "echo A")))
    )
    [lost] = aif_json(
        "submit", "--site", SOUTH, str(write_spec(tmp_path, "rd", script_spec("rd", "sleep 300")))
    )
    deadline = time.monotonic() + 60
    while slurm_state_at(sandbox, SOUTH, finished["slurm_job_id"]) != "COMPLETED":
        assert time.monotonic() < deadline, "job A did not complete"
        time.sleep(0.3)
    manager.restart_cluster_fresh(SOUTH, sandbox.aif_home)
    [new_a] = aif_json(
        "submit", "--site", SOUTH, str(write_spec(tmp_path, "rb", script_spec("rb", "sleep 300")))
    )
    [new_d] = aif_json(
        "submit", "--site", SOUTH, str(write_spec(tmp_path, "re", script_spec("re", "sleep 300")))
    )
    assert (new_a["slurm_job_id"], new_d["slurm_job_id"]) == (finished["slurm_job_id"], lost["slurm_job_id"])
    os.environ["AIF_JUST_SUBMITTED_GRACE"] = "0"
    try:
        [a] = aif_json("status", finished["id"])
        [d] = aif_json("status", lost["id"])
        cancelled = aif("cancel", lost["id"])
    finally:
        os.environ.pop("AIF_JUST_SUBMITTED_GRACE", None)
    assert a["state"] == "COMPLETED"  # from Slurm's finished-job record, confirmed by its name
    assert d["state"] == "UNKNOWN" and "reused" in d["reason"]
    assert cancelled.exit_code == 1 and "not signalled" in cancelled.output + cancelled.stderr
    assert slurm_state_at(sandbox, SOUTH, new_d["slurm_job_id"]) in ("PENDING", "RUNNING")
    assert aif("cancel", new_a["id"], new_d["id"]).exit_code == 0


def test_a_controller_that_is_down_is_unreachable_not_a_rejection(
    sandbox_home: Path, sandbox: SandboxFacts, tmp_path: Path
) -> None:
    """Defects 4 and 5: exit 5, nothing submitted, retryable; `wait` shows it and keeps --timeout."""
    from gateway.sandbox import manager

    [running] = aif_json(
        "submit", "--site", EAST, str(write_spec(tmp_path, "cw", script_spec("cw", "sleep 60")))
    )
    manager.stop_controller(EAST, sandbox.aif_home)
    try:
        spec = write_spec(tmp_path, "cd", script_spec("cd", "true"))
        result = aif("submit", "--site", EAST, "--json", str(spec))
        assert result.exit_code == 5, result.output + result.stderr
        assert "Unable to contact slurm controller" in result.stderr
        [job] = json.loads(result.stdout)
        assert job["state"] == "UNREACHABLE" and job["slurm_job_id"] is None
        started = time.monotonic()
        waited = aif("wait", running["id"], "--timeout", "4")
        took = time.monotonic() - started
        assert waited.exit_code == 8 and took < 6.0, (waited.exit_code, took)
        assert "site problem" in waited.stderr
    finally:
        manager.start_controller(EAST, sandbox.aif_home)
    # Retryable: the same spec goes through once the controller is back.
    assert aif_json("submit", "--site", EAST, str(spec))[0]["slurm_job_id"]
    assert aif("cancel", running["id"]).exit_code == 0
