"""Status and polling at scale on the real sandbox: one query per site for any number of jobs,
and concurrent aif processes sharing one budget through $AIF_HOME (gateway.polling)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.sandbox.manager import SandboxFacts
from tests.integration.test_lifecycle import aif, aif_json, clone_home, write_spec

pytestmark = pytest.mark.integration

SITES = ("sandbox-north", "sandbox-south", "sandbox-east")
AIF = [sys.executable, "-c", "from gateway.cli import run; run()"]


def sleep_spec(directory: Path, name: str, seconds: int) -> Path:
    body = f'[job]\nname = "{name}"\ncommand = ["sleep", "{seconds}"]\n[resources]\nwalltime = "00:05:00"\n'
    return write_spec(directory, name, body)


def site_commands(stderr: str) -> list[tuple[str, str]]:
    """(site, program) of every `+ [SITE] argv` line aif -v printed."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("+ ["):
            site, _, command = line[3:].partition("] ")
            found.append((site, command.split(" ", 1)[0]))
    return found


def run_aif(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AIF, *args], capture_output=True, text=True, timeout=120, env=env)


def test_status_asks_each_site_once_for_any_number_of_jobs(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone_home(sandbox, tmp_path, monkeypatch)
    ids: list[str] = []
    for site in SITES:
        specs = [str(sleep_spec(tmp_path, f"{site}-{i}", 300)) for i in range(8)]
        ids += [job["id"] for job in aif_json("submit", "--site", site, *specs)]
    try:
        result = run_aif("-v", "status", "--json")
        assert result.returncode == 0, result.stderr
        assert sorted(site_commands(result.stderr)) == [(site, "squeue") for site in sorted(SITES)]
        jobs = json.loads(result.stdout)
        assert sorted(j["id"] for j in jobs) == sorted(ids)
        assert {j["state"] for j in jobs} <= {"PENDING", "RUNNING"}
        # Within the poll interval another status uses those answers instead of asking;
        # cancel (which must see the site now) never does.
        slow = {**os.environ, "AIF_POLL_INTERVAL": "30"}
        first = run_aif("-v", "status", "--json", env=slow)  # the jobs changed above: asks once more
        again = run_aif("-v", "status", "--json", env=slow)
        assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
        assert site_commands(again.stderr) == []
        assert [(j["id"], j["state"]) for j in json.loads(again.stdout)] == [
            (j["id"], j["state"]) for j in json.loads(first.stdout)
        ]
    finally:
        cancelled = aif("cancel", *ids)
        assert cancelled.exit_code == 0, cancelled.output + cancelled.stderr


def test_concurrent_waits_and_statuses_share_one_budget(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone_home(sandbox, tmp_path, monkeypatch)
    site = "sandbox-east"
    specs = [str(sleep_spec(tmp_path, f"wait-{i}", 6)) for i in range(6)]
    ids = [job["id"] for job in aif_json("submit", "--site", site, *specs)]
    started = time.monotonic()
    processes = [
        subprocess.Popen([*AIF, "-v", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in [["wait", job_id, "--json", "--timeout", "120"] for job_id in ids]
        + [["status", "--json"], ["status", "--json"]]
    ]
    outputs = [p.communicate(timeout=180) for p in processes]
    elapsed = time.monotonic() - started
    assert all(p.returncode == 0 for p in processes), outputs
    assert all(json.loads(out)[0]["state"] == "COMPLETED" for out, _ in outputs[: len(ids)])
    asked = [command for _, err in outputs for command in site_commands(err)]
    assert set(asked) == {(site, "squeue")}
    # Eight processes each polling on their own would ask every second or so each; together
    # they stay within one budget: at most one squeue per poll interval (1 s), plus the look
    # that jobs changed just before forces.
    assert len(asked) <= elapsed / 1.0 + 2, (len(asked), elapsed)
    assert len(asked) < len(processes) * 2
