"""The CLI contract scripts rely on: exit codes, one-line errors, --json shapes."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.cli import main

REPO = Path(__file__).resolve().parents[2]
GPU_SPEC = REPO / "tests" / "data" / "specs" / "gpu-example.toml"


def aif(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def one_line_error(result: Result) -> str:
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("aif: error: ")
    return result.stderr


def test_sites_json_lists_the_seven_factories() -> None:
    result = aif("sites", "--json")
    assert result.exit_code == 0
    sites = {s["name"]: s for s in json.loads(result.stdout)}
    assert {"lumi", "hammerhai", "pharos", "it4lia", "meluxina", "bsc", "mimer"} <= set(sites)
    lumi = sites["lumi"]
    assert lumi["country"] == "FI" and lumi["factory"] and "health" in lumi["sectors"]
    assert lumi["usable"] is False and "needs an account" in lumi["problem"]


def test_a_configured_account_makes_a_site_usable(aif_home: Path) -> None:
    (aif_home / "config.toml").write_text('[sites.lumi]\naccount = "project_465000123"\n')
    sites = {s["name"]: s for s in json.loads(aif("sites", "--json").stdout)}
    assert sites["lumi"]["usable"] is True


def test_render_needs_an_account_exit_3() -> None:
    result = aif("render", str(GPU_SPEC), "--site", "lumi")
    assert result.exit_code == 3
    assert "site lumi is not usable: it needs an account" in one_line_error(result)


def test_render_json(aif_home: Path) -> None:
    (aif_home / "config.toml").write_text('[sites.it4lia]\naccount = "AIFAC_F02_378"\nuser = "alice"\n')
    result = aif("render", str(GPU_SPEC), "--site", "it4lia", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["partition"] == "boost_usr_prod" and data["qos"] == "normal"
    assert "#SBATCH --gres=gpu:4" in data["script"]


def test_lumi_refuses_64_cores_per_node_exit_4(tmp_path: Path) -> None:
    spec = tmp_path / "big.toml"
    spec.write_text(
        '[job]\nname = "big"\ncommand = ["x"]\n[resources]\ngpus_per_node = 8\ncpus_per_task = 64\n'
    )
    result = aif("render", str(spec), "--site", "lumi", "--account", "project_465000123")
    assert result.exit_code == 4
    message = one_line_error(result)
    assert "small-g: 64 cores per node asked, 56 usable" in message
    assert "standard-g: 64 cores per node asked, 56 usable" in message


def test_unknown_site_is_a_usage_error_with_a_hint() -> None:
    result = aif("render", str(GPU_SPEC), "--site", "lumii")
    assert result.exit_code == 2
    assert "did you mean 'lumi'?" in one_line_error(result)


def test_unknown_job_id_is_a_usage_error() -> None:
    result = aif("status", "aif-doesnotexist")
    assert result.exit_code == 2
    assert "no job aif-doesnotexist" in one_line_error(result)


def test_profile_validate_exit_codes(tmp_path: Path) -> None:
    shipped = sorted(str(p) for p in (REPO / "profiles").glob("*.toml"))
    ok = aif("profile", "validate", *shipped)
    assert ok.exit_code == 0 and ok.stdout.count(": ok (") == 7
    bad = tmp_path / "bad.toml"
    shutil.copy(REPO / "profiles" / "lumi.toml", bad)
    bad.write_text(bad.read_text().replace('max_walltime = "3-00:00:00"', 'max_walltime = "72h"', 1))
    result = aif("profile", "validate", str(bad))
    assert result.exit_code == 3
    assert "max_walltime: '72h' is not allowed" in result.stderr


def test_submit_dry_run_sends_nothing(aif_home: Path) -> None:
    (aif_home / "config.toml").write_text('[sites.meluxina]\naccount = "p200981"\n')
    result = aif("-v", "submit", str(GPU_SPEC), "--site", "meluxina", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.stdout)
    assert run["site"] == "meluxina" and "#SBATCH --qos=short" in run["script"]
    assert "+ [" not in result.stderr
    assert not (aif_home / "ledger.sqlite").exists()


def test_wheel_ships_the_profiles(tmp_path: Path) -> None:
    """`pip install .` must give an aif that finds the profiles outside a checkout."""
    import subprocess
    import sys

    pytest.importorskip("hatchling")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("aif-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for site in ("lumi", "hammerhai", "pharos", "it4lia", "meluxina", "bsc", "mimer"):
        assert f"gateway/_profiles/{site}.toml" in names
    assert "gateway/cli.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"aif = gateway.cli:main" in entry_points


def _sandbox_status(up: bool, problems: tuple[str, ...]) -> object:
    from gateway.sandbox.manager import SandboxStatus, SiteStatus

    site = SiteStatus("sandbox-north", "north", 2231, "/x/slurm.conf", up, up, True, {"north-n1": "idle"})
    return SandboxStatus(up, "/x", 42 if up else None, up, (site,), problems)


@pytest.mark.parametrize("as_json", [False, True])
def test_sandbox_status_exits_1_unless_all_is_up(monkeypatch: pytest.MonkeyPatch, as_json: bool) -> None:
    from gateway.sandbox import manager

    flags = ["--json"] if as_json else []
    monkeypatch.setattr(manager, "status", lambda: _sandbox_status(True, ()))
    up = aif("sandbox", "status", *flags)
    assert (up.exit_code, up.stderr) == (0, "")

    problems = ("slurmctld-north is stopped (on request)", "north-n1 is unknown to slurmctld")
    monkeypatch.setattr(manager, "status", lambda: _sandbox_status(False, problems))
    down = aif("sandbox", "status", *flags)
    assert down.exit_code == 1
    # What is down is still shown in full, then one error line.
    if as_json:
        data = json.loads(down.stdout)
        assert data["sites"][0]["controller"] is False and data["problems"] == list(problems)
        assert down.stderr == "aif: error: the sandbox is not up\n"
    else:
        assert "aif sandbox: down" in down.stdout
        assert down.stderr == "".join(f"problem: {p}\n" for p in problems) + (
            "aif: error: the sandbox is not up\n"
        )
    assert "Traceback" not in down.output


def test_sandbox_status_exits_1_when_nothing_runs(aif_home: Path) -> None:
    """For real: nothing was ever started under this AIF_HOME."""
    result = aif("sandbox", "status")
    assert result.exit_code == 1
    assert result.stderr == "problem: sandbox is not running\naif: error: the sandbox is not up\n"
