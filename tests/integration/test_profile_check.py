"""`aif profile check` against the real sandbox: its own profiles agree, a wrong one is told where.

Through the CLI, in process, over SSH with strict host-key checking, as an
operator would run it. `sbatch --test-only` submits nothing: no job is left behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.sandbox.manager import SandboxFacts

pytestmark = pytest.mark.integration

SITES = ("sandbox-north", "sandbox-south", "sandbox-east")


def aif(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def errors(result: Result) -> str:
    """stderr without `-v`'s command lines: the process-wide SSH connection of a site keeps the
    hook of the first command that asked for one, so after an earlier `aif -v` in this test
    process (test_lifecycle) the commands are echoed here too."""
    return "".join(line for line in result.stderr.splitlines(keepends=True) if not line.startswith("+ ["))


def queue_at(sandbox: SandboxFacts, site: str) -> str:
    """Every job in the site's queue, seen with the system's OpenSSH: an independent witness."""
    facts = sandbox.site(site)
    return subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-i", str(facts.identity_file), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={facts.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-p", str(facts.ssh_port), f"{facts.user}@{facts.host}",
            "squeue --all --noheader --format=%i/%j",
        ],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip


@pytest.mark.parametrize("site", SITES)
def test_every_sandbox_profile_agrees_with_its_site(
    sandbox: SandboxFacts, sandbox_home: Path, site: str
) -> None:
    result = aif("profile", "check", site, "--json")
    assert (result.exit_code, errors(result)) == (0, ""), result.output
    report = json.loads(result.stdout)
    assert (report["site"], report["ok"], report["mismatches"]) == (site, True, [])
    partitions = ["standard"] if site == "sandbox-east" else ["standard", "gpu"]
    assert [t["partition"] for t in report["test_only"]] == partitions
    for test in report["test_only"]:
        assert test["ok"] and test["start"], test
        assert f"in partition {test['partition']}" in test["message"]
    assert "aif-profile-check" not in queue_at(sandbox, site)


def test_the_report_for_people(sandbox: SandboxFacts, sandbox_home: Path) -> None:
    result = aif("profile", "check", "sandbox-north")
    assert (result.exit_code, errors(result)) == (0, "")
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == f"sandbox-north: {sandbox_home / 'profiles' / 'sandbox-north.toml'} compared with the site"
    )
    assert not any(line.startswith("mismatch:") for line in lines)
    assert lines[-1] == "sandbox-north: the profile agrees with the site"


@pytest.fixture
def private_home(
    sandbox: SandboxFacts, sandbox_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """An AIF_HOME of its own that reaches the sandbox sites, with no profile of its own yet."""
    home = tmp_path / "aif_home"
    (home / "profiles").mkdir(parents=True)
    (home / "config.d").mkdir()
    home.chmod(0o700)
    shutil.copy(sandbox_home / "config.d" / "sandbox.toml", home / "config.d" / "sandbox.toml")
    monkeypatch.setenv("AIF_HOME", str(home))
    return home


def wrong_north(sandbox_home: Path) -> str:
    """sandbox-north's profile with `standard` misspelt and the gpu partition's sizes and limits wrong."""
    text = (sandbox_home / "profiles" / "sandbox-north.toml").read_text()
    head, standard, gpu = text.split("[[partitions]]")
    standard = standard.replace('name = "standard"', 'name = "standrd"')
    for right, wrong in (
        ("cpus_per_node = 64", "cpus_per_node = 96"),
        ('memory_per_node = "250G"', 'memory_per_node = "300G"'),
        ("gpus_per_node = 4", "gpus_per_node = 8"),
        ('max_walltime = "1-00:00:00"', 'max_walltime = "2-00:00:00"'),
    ):
        assert right in gpu
        gpu = gpu.replace(right, wrong)
    return "[[partitions]]".join((head, standard, gpu))


def test_a_wrong_profile_shows_each_mismatch_with_its_key(
    sandbox: SandboxFacts, sandbox_home: Path, private_home: Path
) -> None:
    (private_home / "profiles" / "sandbox-north.toml").write_text(wrong_north(sandbox_home))
    result = aif("profile", "check", "sandbox-north")
    assert result.exit_code == 1
    assert errors(result) == (
        "aif: error: site sandbox-north: the profile disagrees with the site: "
        "5 mismatches, 1 test job refused\n"
    )
    mismatches = [line for line in result.stdout.splitlines() if line.startswith("mismatch: ")]
    assert mismatches == [
        "mismatch: partitions[0].name: profile says standrd, the site has no such partition "
        "(it has standard, gpu) (scontrol PartitionName): every job placed there is rejected; "
        "did you mean standard?",
        "mismatch: partitions[1].cpus_per_node: profile says 96, the site has 64 (sinfo CPUS): "
        "jobs asking that many cores per node are rejected",
        "mismatch: partitions[1].memory_per_node: profile says 300G (307200 MB), the site has 256000 MB "
        "(sinfo MEMORY): jobs asking that much memory per node are rejected",
        "mismatch: partitions[1].gpus_per_node: profile says 8, the site has 4 (gpu:4) (sinfo GRES): "
        "jobs asking that many GPUs per node are rejected",
        "mismatch: partitions[1].max_walltime: profile says 2-00:00:00, the site has 1-00:00:00 "
        "(scontrol MaxTime): longer jobs are accepted but never start (PartitionTimeLimit)",
    ]
    assert "note: the site's partition standard is not in the profile: the default, 2 nodes" in result.stdout

    as_json = aif("profile", "check", "sandbox-north", "--json")
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert [(m["key"], m["profile"], m["site"], m["source"]) for m in report["mismatches"]] == [
        (
            "partitions[0].name",
            "standrd",
            "no such partition (it has standard, gpu)",
            "scontrol PartitionName",
        ),
        ("partitions[1].cpus_per_node", "96", "64", "sinfo CPUS"),
        ("partitions[1].memory_per_node", "300G (307200 MB)", "256000 MB", "sinfo MEMORY"),
        ("partitions[1].gpus_per_node", "8", "4 (gpu:4)", "sinfo GRES"),
        ("partitions[1].max_walltime", "2-00:00:00", "1-00:00:00", "scontrol MaxTime"),
    ]
    refused, gpu = report["test_only"]
    assert refused == {
        "partition": "standrd",
        "ok": False,
        "start": None,
        "message": "sbatch: error: invalid partition specified: standrd / "
        "allocation failure: Invalid partition name specified",
    }
    assert gpu["ok"] and gpu["start"]  # 1 GPU, 10 minutes: fits the real gpu partition


def test_a_site_that_cannot_be_reached_exits_5(
    sandbox: SandboxFacts, sandbox_home: Path, private_home: Path
) -> None:
    shutil.copy(sandbox_home / "profiles" / "sandbox-east.toml", private_home / "profiles")
    config = private_home / "config.d" / "sandbox.toml"
    port = sandbox.site("sandbox-east").ssh_port
    config.write_text(config.read_text().replace(f"port = {port}", "port = 1"))
    result = aif("profile", "check", "sandbox-east")
    assert result.exit_code == 5
    assert errors(result).count("\n") == 1 and errors(result).startswith("aif: error: ")
    assert "127.0.0.1:1" in result.stderr, result.stderr
    assert result.stdout == ""
