"""`aif profile check`: its test jobs, and the command over a fake site replaying recorded Slurm output."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.profile_check import test_jobs as make_test_jobs
from gateway.profiles import QosRule, load_profile, load_profiles
from gateway.transports.fake import FakeTransport

TESTS = Path(__file__).resolve().parents[1]
DATA = TESTS / "data" / "slurm"
GOLDEN = TESTS / "golden" / "sandbox"


def directives(script: str) -> list[str]:
    return re.findall(r"^#SBATCH (\S+)$", script, flags=re.MULTILINE)


# --- the test jobs ----------------------------------------------------------------------------


def test_one_small_job_per_partition_rendered_for_that_partition() -> None:
    profile = load_profile(GOLDEN / "sandbox-north.toml")
    standard, gpu = make_test_jobs(profile, account="sandbox", user="aifuser")
    assert (standard.partition, standard.problem, gpu.partition, gpu.problem) == ("standard", "", "gpu", "")
    assert directives(standard.script) == [
        "--job-name=aif-profile-check.aif-check",
        "--account=sandbox",
        "--partition=standard",
        "--nodes=1",
        "--ntasks-per-node=1",
        "--time=00:10:00",
        "--chdir=/home/aifuser/aif/sandbox-north/aif-profile-check/aif-check",
        "--output=/home/aifuser/aif/sandbox-north/aif-profile-check/aif-check/slurm-%j.out",
    ]
    assert "--partition=gpu" in directives(gpu.script)
    assert "--gpus-per-node=1" in directives(gpu.script)
    assert standard.script.startswith("#!/bin/bash -l\n")
    assert standard.script.rstrip().endswith("\ntrue")


@pytest.mark.parametrize("site", sorted(load_profiles(Path("/nonexistent"))))
def test_every_shipped_partition_gets_a_test_job_with_its_own_directives(site: str) -> None:
    profile = load_profiles(Path("/nonexistent"))[site]
    account = profile.account_example or "project1"
    jobs = make_test_jobs(profile, account=account, user="someone")
    assert [j.partition for j in jobs] == [p.name for p in profile.partitions]
    for job, partition in zip(jobs, profile.partitions, strict=True):
        assert job.problem == ""
        lines = directives(job.script)
        assert f"--partition={partition.name}" in lines
        assert f"--account={account}" in lines
        assert any("gpu" in line for line in lines) == bool(partition.gpus_per_node)
        if profile.slurm.qos_required or partition.qos:
            assert any(line.startswith("--qos=") for line in lines)
        if partition.whole_node:
            assert "--exclusive" in lines


def test_a_partition_whose_qos_rules_start_above_one_node_is_tested_at_their_smallest_size() -> None:
    profile = load_profile(GOLDEN / "sandbox-north.toml")
    standard, gpu = profile.partitions
    big = replace(
        profile,
        slurm=replace(profile.slurm, qos_required=True),
        partitions=(replace(standard, max_nodes=100), gpu),
        qos_rules=(
            QosRule("bprod", "standard", 65, 100, "00:05:00", 300),
            QosRule("gpu", "gpu", 1, 2, "1-00:00:00", 86400),
        ),
    )
    standard_job, gpu_job = make_test_jobs(big, account=None, user="u")
    assert {"--nodes=65", "--qos=bprod", "--time=00:05:00"} <= set(directives(standard_job.script))
    assert {"--nodes=1", "--qos=gpu", "--time=00:10:00"} <= set(directives(gpu_job.script))


def test_a_partition_no_job_can_fit_is_reported_not_sent() -> None:
    profile = load_profile(GOLDEN / "sandbox-east.toml")
    broken = replace(
        profile,
        slurm=replace(profile.slurm, qos_required=True),
        qos_rules=(QosRule("wide", "standard", 4, 8, "01:00:00", 3600),),  # more nodes than max_nodes = 2
    )
    [job] = make_test_jobs(broken, account=None, user="u")
    assert job.script == ""
    assert job.problem == (
        "aif-profile-check fits no partition at sandbox-east: standard: 4 nodes asked, at most 2"
    )


# --- the command --------------------------------------------------------------------------------


def aif(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def north(aif_home: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTransport:
    """sandbox-north as the sandbox writes it, reached through a fake transport (scripted by each test)."""
    from gateway import context, site
    from gateway.site import SiteBackend, SlurmCliBackend

    (aif_home / "profiles").mkdir()
    shutil.copy(GOLDEN / "sandbox-north.toml", aif_home / "profiles")
    (aif_home / "config.toml").write_text('[sites.sandbox-north]\naccount = "sandbox"\nuser = "aifuser"\n')
    fake = FakeTransport(site="sandbox-north")

    def open_backend(profile: Any, access: Any, on_command: Any = None, **_: Any) -> SiteBackend:
        if access.transport == "pyslurm":
            return site.open_backend(profile, access, on_command)
        return SlurmCliBackend(transport=fake, accounting="jobcomp")

    monkeypatch.setattr(context, "open_backend", open_backend)
    return fake


def replay(fake: FakeTransport, recording: str) -> None:
    fake.respond(["bash", "-c"], stdout=(DATA / recording).read_text())


def one_line_error(result: Result) -> str:
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("aif: error: ")
    return result.stderr.strip()


def test_a_profile_that_agrees_exits_0_after_one_command(north: FakeTransport) -> None:
    replay(north, "profile-check-north.stdout")
    result = aif("profile", "check", "sandbox-north")
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert len(north.calls) == 1
    argv = north.calls[0].argv
    assert argv[:2] == ("bash", "-c")
    assert len(argv) == 4 + 2  # the program, $0, and one test script per partition
    assert "--partition=standard" in argv[4] and "--partition=gpu" in argv[5]
    assert "mismatch:" not in result.stdout
    assert "note: partitions[1].gpu_model: the site's GRES in gpu names no GPU type" in result.stdout
    assert "2026-11-29T08:08:30" in result.stdout
    assert result.stdout.rstrip().endswith("sandbox-north: the profile agrees with the site")


def test_json_of_a_profile_that_agrees(north: FakeTransport) -> None:
    replay(north, "profile-check-north.stdout")
    result = aif("profile", "check", "sandbox-north", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert list(report) == ["site", "profile", "ok", "mismatches", "notes", "test_only"]
    assert (report["site"], report["ok"], report["mismatches"], len(report["notes"])) == (
        "sandbox-north",
        True,
        [],
        2,
    )
    assert report["test_only"][1] == {
        "partition": "gpu",
        "ok": True,
        "start": "2026-11-29T08:08:30",
        "message": "sbatch: Job 10 to start at 2026-11-29T08:08:30 using 1 processors on nodes north-n1 "
        "in partition gpu",
    }


def test_a_wrong_profile_lists_each_key_and_exits_1(north: FakeTransport, aif_home: Path) -> None:
    path = aif_home / "profiles" / "sandbox-north.toml"
    text = path.read_text().replace('name = "standard"', 'name = "standrd"')
    gpu_at = text.index('name = "gpu"')
    text = text[:gpu_at] + text[gpu_at:].replace("cpus_per_node = 64", "cpus_per_node = 96", 1)
    path.write_text(text)
    replay(north, "profile-check-north-wrong.stdout")
    result = aif("profile", "check", "sandbox-north")
    assert result.exit_code == 1
    assert one_line_error(result) == (
        "aif: error: site sandbox-north: the profile disagrees with the site: "
        "2 mismatches, 1 test job refused"
    )
    assert [
        line.split(": profile says")[0] for line in result.stdout.splitlines() if line.startswith("mismatch:")
    ] == [
        "mismatch: partitions[0].name",
        "mismatch: partitions[1].cpus_per_node",
    ]
    assert "invalid partition specified: standrd" in result.stdout
    json_result = aif("profile", "check", "sandbox-north", "--json")
    assert json_result.exit_code == 1
    report = json.loads(json_result.stdout)
    assert report["ok"] is False
    assert [m["key"] for m in report["mismatches"]] == ["partitions[0].name", "partitions[1].cpus_per_node"]
    assert [(t["partition"], t["ok"], t["start"]) for t in report["test_only"]] == [
        ("standrd", False, None),
        ("gpu", True, "2026-11-29T08:08:46"),
    ]


def test_a_site_whose_controller_is_down_exits_5(north: FakeTransport) -> None:
    north.respond(["bash", "-c"], stderr=(DATA / "profile-check-ctld-down.stderr").read_text(), returncode=1)
    result = aif("profile", "check", "sandbox-north")
    assert result.exit_code == 5
    assert one_line_error(result) == (
        "aif: error: site sandbox-north: asking for its partitions failed: "
        "slurm_load_partitions: Unable to contact slurm controller (connect failure)"
    )
    assert result.stdout == ""


def test_a_site_that_cannot_be_reached_exits_5(north: FakeTransport) -> None:
    north.fail_on_call(1)
    result = aif("profile", "check", "sandbox-north", "--json")
    assert result.exit_code == 5
    one_line_error(result)
    assert result.stdout == ""


def test_what_cannot_be_checked_is_one_line(north: FakeTransport, aif_home: Path) -> None:
    assert aif("profile", "check", "nosuch").exit_code == 2
    lumi = aif("profile", "check", "lumi")  # no account configured
    assert lumi.exit_code == 3
    assert "needs an account" in one_line_error(lumi)
    (aif_home / "config.toml").write_text('[sites.sandbox-north]\ntransport = "pyslurm"\n')
    result = aif("profile", "check", "sandbox-north")
    assert result.exit_code == 2
    assert "needs the ssh or local transport" in one_line_error(result)
    assert north.calls == []
