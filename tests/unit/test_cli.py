"""The CLI contract scripts rely on: exit codes, one-line errors, --json shapes."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

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
    assert "gateway/cli/__init__.py" in names and "gateway/cli/federation.py" in names
    # The bash programs aif runs at a site are files read at import.
    assert "gateway/slurm/submit.sh" in names
    assert "gateway/slurm/scancel_by_name.sh" in names
    assert "gateway/slurm/probe.sh" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"aif = gateway.cli:main" in entry_points


# -- aif list -----------------------------------------------------------------------------

HASH = "0" * 64


def ledger_with_one_invalid_and_one_submitted() -> tuple[str, str]:
    """(invalid id, submitted id): a spec refused before submission, and a submitted job."""
    from gateway.ledger import Ledger

    with Ledger() as ledger:
        job = ledger.record_intent(
            site="lumi",
            name="train",
            spec_path="train.toml",
            spec_hash=HASH,
            workdir="/w",
            outputs=(),
            stdout_path="/w/slurm-%j.out",
            array_size=None,
            depends_on=None,
        )
        ledger.mark_submitted(job.id, "42")
        # The newest row: a default listing must skip it, even with --limit 1.
        invalid = ledger.record_invalid(spec_path="bad.toml", spec_hash=HASH, message="job.name: required")
    return invalid.id, job.id


@pytest.mark.parametrize("limit", ["-1", "-100"])
def test_list_refuses_a_negative_limit_exit_2(limit: str) -> None:
    result = aif("list", "--limit", limit)
    assert result.exit_code == 2
    assert f"--limit: {limit} is not allowed; expected 0 or more" in one_line_error(result)


def test_list_hides_invalid_rows_unless_all() -> None:
    invalid, submitted = ledger_with_one_invalid_and_one_submitted()
    shown = [j["id"] for j in json.loads(aif("list", "--json").stdout)]
    assert shown == [submitted]
    every = [j["id"] for j in json.loads(aif("list", "--all", "--json").stdout)]
    assert every == [invalid, submitted]
    # --limit counts the rows shown: the newest submitted job, not the newest row.
    assert [j["id"] for j in json.loads(aif("list", "--limit", "1", "--json").stdout)] == [submitted]
    table = aif("list").stdout
    assert submitted in table and invalid not in table
    assert "INVALID" in aif("list", "--all").stdout
    assert "--all" in aif("list", "--help").stdout and "INVALID" in aif("list", "--help").stdout


# -- aif wait --timeout -----------------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["-1", "-0.5", "nan", "NaN", "inf", "-inf", "Infinity", "soon"])
def test_wait_refuses_a_timeout_that_is_not_a_finite_positive_number_exit_2(timeout: str) -> None:
    result = aif("wait", "aif-whatever", "--timeout", timeout)
    assert result.exit_code == 2
    message = one_line_error(result)
    assert f"--timeout: {timeout} is not allowed; expected a number of seconds, 0 or more" in message


# -- commands that reach a site, over the fake transport -----------------------------------


@pytest.fixture
def fake_sites(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every site is a FakeTransport (created on first use); returns them by site name."""
    from gateway import context
    from gateway.site import SlurmCliBackend
    from gateway.transports.fake import FakeTransport

    opened: dict[str, Any] = {}

    def open_backend(profile: Any, access: Any, on_command: Any = None, **_: Any) -> SlurmCliBackend:
        transport = opened.setdefault(profile.name, FakeTransport(site=profile.name))
        return SlurmCliBackend(transport=transport, accounting="jobcomp")

    monkeypatch.setattr(context, "open_backend", open_backend)
    return opened


def submitted_job(*, array_size: int | None = None, site: str = "lumi", outputs: tuple[str, ...] = ()) -> Any:
    from gateway.ledger import Ledger

    with Ledger() as ledger:
        job = ledger.record_intent(
            site=site,
            name="train",
            spec_path="train.toml",
            spec_hash=HASH,
            workdir="/w/train",
            outputs=outputs,
            stdout_path="/w/train/slurm-%A_%a.out" if array_size else "/w/train/slurm-%j.out",
            array_size=array_size,
            depends_on=None,
        )
        return ledger.mark_submitted(job.id, "42")


def test_logs_of_an_array_task(fake_sites: dict[str, Any]) -> None:
    job = submitted_job(array_size=4)
    from gateway.transports.fake import FakeTransport

    fake_sites["lumi"] = FakeTransport(site="lumi", files={"/w/train/slurm-42_3.out": b"task three\n"})
    result = aif("logs", job.id, "--task", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == "task three\n"


@pytest.mark.parametrize(("task", "array_size"), [("4", 4), ("-1", 4), ("100000", 4), ("0", None)])
def test_logs_refuses_a_task_the_job_does_not_have_exit_2(
    fake_sites: dict[str, Any], task: str, array_size: int | None
) -> None:
    job = submitted_job(array_size=array_size)
    result = aif("logs", job.id, "--task", task)
    assert result.exit_code == 2
    message = one_line_error(result)
    if array_size:
        assert f"--task {task}: {job.id} is an array of 4 tasks; expected 0 to 3" in message
    else:
        assert f"--task {task}: {job.id} is not an array job; leave out --task" in message
    assert not fake_sites, "nothing may be asked of the site"


def test_fetch_of_an_unknown_job_draws_no_progress_bar() -> None:
    result = aif("fetch", "aif-nosuchjob0")
    assert result.exit_code == 2
    assert "no job aif-nosuchjob0 in the ledger" in one_line_error(result)


def test_fetch_of_a_job_it_cannot_fetch_draws_no_progress_bar(fake_sites: dict[str, Any]) -> None:
    invalid, _ = ledger_with_one_invalid_and_one_submitted()
    never = aif("fetch", invalid)
    assert never.exit_code == 2 and "was never submitted" in one_line_error(never)
    nothing = aif("fetch", submitted_job(outputs=()).id)
    assert nothing.exit_code == 2 and "lists no [data] outputs" in one_line_error(nothing)
    assert not fake_sites


def test_fetch_copies_the_outputs_with_a_progress_bar(fake_sites: dict[str, Any], tmp_path: Path) -> None:
    from gateway.transports.fake import FakeTransport

    job = submitted_job(outputs=("results/",))
    fake_sites["lumi"] = FakeTransport(site="lumi", files={"/w/train/results/metrics.json": b"{}"})
    result = aif("fetch", job.id, str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "results" / "metrics.json").read_bytes() == b"{}"
    assert f"{job.id}: fetched results/" in result.stdout
    assert f"fetch {job.id}" in result.stderr


def test_the_live_wait_table_ends_its_line_before_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import lifecycle

    job = submitted_job()

    def wait(ctx: Any, ids: Any, *, timeout: Any = None, on_update: Any = None, **_: Any) -> Any:
        report = lifecycle.StatusReport(jobs=[job], unreachable={})
        on_update(report)
        return report

    monkeypatch.setattr(lifecycle, "wait", wait)
    result = aif("wait", job.id, "--timeout", "1")
    assert result.exit_code == 8
    last = result.stderr.splitlines()[-1]
    assert last == f"aif: error: timed out after 1 s: {job.id} is PENDING"
    assert "waiting 0 s" in result.stderr and job.id in result.stderr.splitlines()[-3]


def test_wait_for_an_unknown_job_is_one_line() -> None:
    result = aif("wait", "aif-nosuchjob0")
    assert result.exit_code == 2
    assert "no job aif-nosuchjob0" in one_line_error(result)


@pytest.mark.parametrize("sites", [("lumi",), ("lumi", "bsc")])
def test_status_names_each_unreachable_site_once(
    monkeypatch: pytest.MonkeyPatch, sites: tuple[str, ...]
) -> None:
    from gateway import context
    from gateway.errors import SiteUnreachable

    jobs = [submitted_job(site=site) for site in sites]

    def open_backend(profile: Any, access: Any, on_command: Any = None, **_: Any) -> Any:
        raise SiteUnreachable(f"cannot connect to site {profile.name} at {profile.host}:22: timed out")

    monkeypatch.setattr(context, "open_backend", open_backend)
    result = aif("status", "--json")
    assert result.exit_code == 5
    assert {j["id"] for j in json.loads(result.stdout)} == {j.id for j in jobs}
    message = one_line_error(result)
    for site in sites:
        assert message.count(f"cannot connect to site {site} at ") == 1


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


def test_print_json_lays_out_one_item_a_line_and_reads_back_the_same(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.cli.app import print_json

    data = {"key": "k1", "jobs": [{"id": "a", "placement": {"ranking": [1, 2]}}, {"id": "é"}], "none": []}
    print_json(data)
    out = capsys.readouterr().out
    assert json.loads(out) == data
    assert out.splitlines() == [
        "{",
        '  "key": "k1",',
        '  "jobs": [',
        '    {"id": "a", "placement": {"ranking": [1, 2]}},',
        '    {"id": "\\u00e9"}',
        "  ],",
        '  "none": []',
        "}",
    ]
    for value in ([{"a": 1}, 2], [], {}, "x", None):
        print_json(value)
        assert json.loads(capsys.readouterr().out) == value
