"""Defects 6, 7 and 8 of the ledger-truth issue, on the real sandbox.

Unclear errors and tracebacks (6), one broken profile breaking every site (7)
and a home others can read (8), each tried as a user would, with real sites.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gateway.sandbox.manager import SandboxFacts
from tests.integration.test_lifecycle import aif, aif_json, clone_home, script_spec, write_spec

pytestmark = pytest.mark.integration

EAST = "sandbox-east"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_broken_profile_leaves_the_other_sites_usable(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 7: `sites` reports it, `submit` to another site works, using it names its error."""
    home = clone_home(sandbox, tmp_path, monkeypatch)
    (home / "profiles" / "broken.toml").write_text("schema_version = 1\n[site\n")
    sites = aif("sites", "--json")
    assert sites.exit_code == 0, sites.stderr
    by_name = {s["name"]: s for s in json.loads(sites.stdout)}
    assert by_name["broken"]["usable"] is False and "broken.toml" in by_name["broken"]["problem"]
    assert by_name[EAST]["usable"] is True
    spec = write_spec(tmp_path, "bp", script_spec("bp", "true"))
    assert aif_json("submit", "--site", EAST, str(spec))[0]["slurm_job_id"]
    refused = aif("submit", "--site", "broken", str(spec))
    assert refused.exit_code == 3 and "broken.toml" in refused.stderr and "Traceback" not in refused.output


def test_the_home_and_every_file_in_it_are_private(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 8: a new home is 0700 and the ledger (with its WAL files) 0600, whatever the umask."""
    import os

    home = tmp_path / "fresh" / "aif"
    home.parent.mkdir()
    monkeypatch.setenv("AIF_HOME", str(home))
    old = os.umask(0o022)
    try:
        (home.parent / "profiles").mkdir()  # the sandbox's profiles and config, copied below
        assert aif("sites").exit_code == 0  # creates nothing it need not
        home.mkdir(mode=0o700)
        for part in ("profiles", "config.d"):
            for source in (sandbox.aif_home / part).iterdir():
                (home / part).mkdir(exist_ok=True, mode=0o700)
                (home / part / source.name).write_text(source.read_text())
        spec = write_spec(tmp_path, "pv", script_spec("pv", "true"))
        assert aif_json("submit", "--site", EAST, str(spec))[0]["slurm_job_id"]
    finally:
        os.umask(old)
    assert mode(home) == 0o700
    for name in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"):
        if (home / name).exists():
            assert mode(home / name) == 0o600, name


def test_a_loose_home_is_warned_about_once_with_the_chmod(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = clone_home(sandbox, tmp_path, monkeypatch)
    home.chmod(0o755)
    first = aif("list")
    second = aif("list")
    assert f"chmod 700 {home}" in first.stderr
    assert "chmod" not in second.stderr


def test_errors_are_one_clear_line_on_real_sites(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 6 on the sandbox: each unreachable site named once, no progress bar before an error,
    a task the array does not have refused, an unusable home one line (exit 1)."""
    home = clone_home(sandbox, tmp_path, monkeypatch)
    spec = write_spec(
        tmp_path, "arr", script_spec("arr", 'echo "task $SLURM_ARRAY_TASK_ID"', "[array]\nsize = 2\n")
    )
    [job] = aif_json("submit", "--site", EAST, str(spec))
    assert aif("wait", job["id"], "--timeout", "120").exit_code == 0
    assert aif("logs", job["id"], "--task", "1").stdout == "task 1\n"
    out_of_range = aif("logs", job["id"], "--task", "2")
    assert out_of_range.exit_code == 2 and "0 to 1" in out_of_range.stderr
    nothing = aif("fetch", "aif-nosuchjob1")
    assert nothing.exit_code == 2 and "━" not in nothing.stderr and len(nothing.stderr.splitlines()) == 1
    # A site that cannot be reached is named once, on one line.
    [queued] = aif_json(
        "submit", "--site", EAST, str(write_spec(tmp_path, "q", script_spec("q", "sleep 30")))
    )
    config = home / "config.d" / "sandbox.toml"
    config.write_text(config.read_text().replace("port = 2233", "port = 2299"))
    status = aif("status", queued["id"])
    assert status.exit_code == 5
    errors = [line for line in status.stderr.splitlines() if line.startswith("aif: ")]
    assert len(errors) == 1 and errors[0].count("sandbox-east") == 1
    config.write_text(config.read_text().replace("port = 2299", "port = 2233"))
    assert aif("cancel", queued["id"]).exit_code == 0
    # A home that cannot be written: one line, exit 1, no traceback.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("AIF_HOME", str(blocker / "aif"))
    unusable = aif("submit", "--site", EAST, str(spec))
    assert unusable.exit_code == 1 and "Traceback" not in unusable.output
    assert len(unusable.stderr.strip().splitlines()) == 1
