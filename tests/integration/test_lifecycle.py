"""The whole job lifecycle against the real sandbox: real Slurm daemons, real sshd.

Every command goes through the CLI, in process, as a user or a script would
run it; jobs reach Slurm over SSH with strict host-key checking.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.errors import ConnectionLost
from gateway.ledger import Ledger
from gateway.sandbox.manager import SandboxFacts

pytestmark = pytest.mark.integration

NORTH = "sandbox-north"


def aif(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def aif_json(*args: str) -> Any:
    result = aif(*args, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, once non-ASCII stays literal)."""
    return json.dumps(value, ensure_ascii=False)


def write_spec(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(body)
    return path


def script_spec(name: str, script: str, extra: str = "") -> str:
    return (
        f'[job]\nname = "{name}"\nscript = """\n{script}\n"""\n{extra}\n[resources]\nwalltime = "00:05:00"\n'
    )


def at_site(sandbox: SandboxFacts, site: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command at a sandbox site with the system's OpenSSH: an independent witness."""
    facts = sandbox.site(site)
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(facts.identity_file),
            "-o",
            f"UserKnownHostsFile={facts.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-p",
            str(facts.ssh_port),
            f"{facts.user}@{facts.host}",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gpu_job_is_placed_run_followed_and_fetched(sandbox_home: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    [job] = aif_json("submit", str(repo / "examples" / "ehr-gpu-demo.toml"))
    assert job["site"] == NORTH  # the only site holding ehr-demo and accepting sensitive data
    assert "ehr-demo" in job["why"]
    assert job["slurm_job_id"] and job["state"] == "PENDING"
    result = aif("wait", job["id"], "--timeout", "120")
    assert result.exit_code == 0, result.output
    log = aif("logs", job["id"])
    assert log.exit_code == 0
    assert f"Slurm job {job['slurm_job_id']}" in log.stdout
    assert "GPUs visible: 0,1 (2 on this node)" in log.stdout
    assert "epoch 3" in log.stdout
    dest = tmp_path / "results"
    fetched = aif_json("fetch", job["id"], str(dest))
    assert fetched["outputs"] == ["results/"]
    assert (dest / "results" / "train.log").read_text().count("epoch") == 3
    assert (dest / "results" / "status.txt").read_text() == "done\n"


def test_status_costs_one_query_per_site(sandbox_home: Path, tmp_path: Path) -> None:
    north = [write_spec(tmp_path, f"n{i}", script_spec(f"n{i}", "true")) for i in range(3)]
    south = [write_spec(tmp_path, f"s{i}", script_spec(f"s{i}", "true")) for i in range(2)]
    jobs = aif_json("submit", "--site", NORTH, *map(str, north))
    jobs += aif_json("submit", "--site", "sandbox-south", *map(str, south))
    ids = [j["id"] for j in jobs]
    result = aif("-v", "status", *ids)
    assert result.exit_code == 0, result.stderr
    commands = [line for line in result.stderr.splitlines() if line.startswith("+ [")]
    assert sum(line.startswith("+ [sandbox-north] squeue") for line in commands) == 1
    assert sum(line.startswith("+ [sandbox-south] squeue") for line in commands) == 1
    assert aif("wait", *ids, "--timeout", "120").exit_code == 0


def test_many_specs_go_to_one_site_in_one_command(sandbox_home: Path, tmp_path: Path) -> None:
    specs = [write_spec(tmp_path, f"b{i}", script_spec(f"b{i}", f"echo batch {i}")) for i in range(10)]
    result = aif("-v", "submit", "--site", "sandbox-east", "--json", *map(str, specs))
    assert result.exit_code == 0, result.stderr
    sent = [line for line in result.stderr.splitlines() if line.startswith("+ [sandbox-east]")]
    assert len(sent) == 1 and "bash -c" in sent[0]
    jobs = json.loads(result.stdout)
    assert len({j["slurm_job_id"] for j in jobs}) == 10
    assert aif("wait", *[j["id"] for j in jobs], "--timeout", "120").exit_code == 0
    assert "batch 7" in aif("logs", jobs[7]["id"]).stdout


def test_failed_job_makes_wait_exit_7(sandbox_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "fails", script_spec("fails", "echo about to fail; exit 3"))
    [job] = aif_json("submit", "--site", "sandbox-east", str(spec))
    result = aif("wait", job["id"], "--timeout", "120")
    assert result.exit_code == 7
    assert f"{job['id']} ended FAILED" in result.stderr
    [status] = aif_json("status", job["id"])
    assert status["state"] == "FAILED"


def test_cancel_confirms_the_job_left_the_queue(
    sandbox_home: Path, tmp_path: Path, sandbox: SandboxFacts
) -> None:
    spec = write_spec(tmp_path, "sleeper", script_spec("sleeper", "sleep 300"))
    [job] = aif_json("submit", "--site", "sandbox-south", str(spec))
    [cancelled] = aif_json("cancel", job["id"])
    assert cancelled["state"] == "CANCELLED"
    queue = at_site(sandbox, "sandbox-south", "squeue", "-h", "-t", "PENDING,RUNNING", "-o", "%i")
    assert job["slurm_job_id"] not in queue.stdout.split()
    again = aif("cancel", job["id"])
    assert again.exit_code == 0 and "already ended" in again.stdout


def test_array_job(sandbox_home: Path, tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        "arr",
        script_spec(
            "arr",
            'echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT"',
            "[array]\nsize = 4\nparallel = 2\n",
        ),
    )
    [job] = aif_json("submit", "--site", "sandbox-east", str(spec))
    assert aif("wait", job["id"], "--timeout", "120").exit_code == 0
    assert "task 2 of 4" in aif("logs", job["id"], "--task", "2").stdout


def test_dependency_at_one_site_and_refusal_across_sites(sandbox_home: Path, tmp_path: Path) -> None:
    first = write_spec(
        tmp_path, "first", script_spec("first", "sleep 3; date +%s.%N > /tmp/aif-first-$SLURM_JOB_ID")
    )
    second = write_spec(tmp_path, "second", script_spec("second", "echo second ran"))
    [a] = aif_json("submit", "--site", NORTH, str(first))
    [b] = aif_json("submit", "--site", NORTH, "--after", a["id"], str(second))
    [b_status] = aif_json("status", b["id"])
    assert b_status["state"] == "PENDING"
    assert aif("wait", a["id"], b["id"], "--timeout", "120").exit_code == 0
    with Ledger() as ledger:
        a_done = [c for c in ledger.history(a["id"]) if c.state == "COMPLETED"]
        b_run = [c for c in ledger.history(b["id"]) if c.state in ("RUNNING", "COMPLETED")]
    assert a_done and b_run and b_run[0].at >= a_done[0].at
    across = aif("submit", "--site", "sandbox-south", "--after", a["id"], str(second))
    assert across.exit_code == 2
    assert "dependencies across sites are not supported yet" in across.stderr
    # after a failed parent the job could never start: refused (Slurm would silently
    # drop the dependency once it forgot the parent, and run the job anyway)
    failing = write_spec(tmp_path, "failing", script_spec("failing", "exit 1"))
    [f] = aif_json("submit", "--site", NORTH, str(failing))
    assert aif("wait", f["id"], "--timeout", "120").exit_code == 7
    refused = aif("submit", "--site", NORTH, "--after", f["id"], str(second))
    assert refused.exit_code == 2
    assert "ended FAILED, so this one could never start" in refused.stderr


HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    "; touch {marker}",
    "' ; touch {marker} ; '",
    '" ; touch {marker} ; "',
    "line one\nline two\n#SBATCH --partition=gpu",
    "${IFS}touch${IFS}{marker}",
    "&& touch {marker} || true",
    "\\ \\\\ \\n",
    "ümlaut ✓ 🚀",
]


def test_hostile_strings_run_for_real_and_come_back_literally(
    sandbox_home: Path, tmp_path: Path, sandbox: SandboxFacts
) -> None:
    marker = f"/tmp/aif-pwned-{secrets.token_hex(4)}"
    values = [v.replace("{marker}", marker) for v in HOSTILE]
    lines = ["[job]", 'name = "hostile"', 'workdir = "{name}/{id}"']
    lines.append("command = [" + ", ".join(toml_string(v) for v in ["printf", "ARG<%s>\\n", *values]) + "]")
    lines += ["[resources]", 'walltime = "00:05:00"', "[environment.variables]"]
    lines += [f"HOSTILE_{i} = {toml_string(v)}" for i, v in enumerate(values)]
    spec = write_spec(tmp_path, "hostile", "\n".join(lines) + "\n")
    [job] = aif_json("submit", "--site", NORTH, str(spec))
    assert aif("wait", job["id"], "--timeout", "120").exit_code == 0
    out = aif("logs", job["id"]).stdout
    for value in values:
        assert f"ARG<{value}>" in out
    assert not Path(marker).exists()
    assert at_site(sandbox, NORTH, "test", "-e", marker).returncode == 1
    # the variables reached the job as literal text too
    env_spec = write_spec(
        tmp_path,
        "hostile-env",
        "\n".join(
            ["[job]", 'name = "hostile-env"', "script = '''", "env | grep ^HOSTILE_ | sort", "'''"]
            + ["[resources]", 'walltime = "00:05:00"', "[environment.variables]"]
            + [f"HOSTILE_{i} = {toml_string(v)}" for i, v in enumerate(values) if "\n" not in v]
        )
        + "\n",
    )
    [env_job] = aif_json("submit", "--site", NORTH, str(env_spec))
    assert aif("wait", env_job["id"], "--timeout", "120").exit_code == 0
    env_out = aif("logs", env_job["id"]).stdout
    for i, value in enumerate(values):
        if "\n" not in value:
            assert f"HOSTILE_{i}={value}" in env_out
    assert not Path(marker).exists()


def test_hostile_names_and_paths_are_refused_before_anything_is_sent(
    sandbox_home: Path, tmp_path: Path
) -> None:
    bodies = [
        '[job]\nname = "x; touch /tmp/y"\ncommand = ["true"]\n',
        '[job]\nname = "ok"\ncommand = ["true"]\nworkdir = "a b/$(id)"\n',
        '[job]\nname = "ok"\ncommand = ["true"]\nworkdir = "../../etc"\n',
    ]
    for body in bodies:
        spec = write_spec(tmp_path, "bad", body)
        result = aif("-v", "submit", "--site", NORTH, str(spec))
        assert result.exit_code == 3, result.output
        assert "+ [" not in result.stderr  # nothing was run at the site
        assert result.stderr.count("\n") == 1


# -- failures: each leaves no job and a ledger entry saying what happened --------------------


def clone_home(sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private AIF_HOME that sees the sandbox sites, for tests that break the config."""
    home = tmp_path / "home"
    shutil.copytree(sandbox.aif_home / "profiles", home / "profiles")
    shutil.copytree(sandbox.aif_home / "config.d", home / "config.d")
    monkeypatch.setenv("AIF_HOME", str(home))
    return home


def test_scheduler_rejection_exits_6_with_slurms_message(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = clone_home(sandbox, tmp_path, monkeypatch)
    profile = home / "profiles" / "sandbox-east.toml"
    profile.write_text(profile.read_text().replace('name = "standard"', 'name = "nosuch"'))
    spec = write_spec(tmp_path, "rej", script_spec("rej", "true"))
    result = aif("submit", "--site", "sandbox-east", str(spec))
    assert result.exit_code == 6
    assert "invalid partition" in result.stderr.lower()
    with Ledger() as ledger:
        [job] = ledger.list_jobs()
    assert job.state == "REJECTED" and job.slurm_job_id is None and "partition" in job.message.lower()


def test_unreachable_site_exits_5_and_submits_nothing(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = clone_home(sandbox, tmp_path, monkeypatch)
    config = home / "config.d" / "sandbox.toml"
    config.write_text(config.read_text().replace("port = 2233", "port = 2299"))
    spec = write_spec(tmp_path, "unr", script_spec("unr", "true"))
    result = aif("submit", "--site", "sandbox-east", str(spec))
    assert result.exit_code == 5
    assert "sandbox-east" in result.stderr and "Traceback" not in result.output
    with Ledger() as ledger:
        [job] = ledger.list_jobs()
    assert job.state == "UNREACHABLE" and job.slurm_job_id is None


def test_unknown_host_key_is_refused(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = clone_home(sandbox, tmp_path, monkeypatch)
    empty = home / "empty_known_hosts"
    empty.write_text("")
    config = home / "config.d" / "sandbox.toml"
    original = str(sandbox.site("sandbox-east").known_hosts)
    config.write_text(config.read_text().replace(original, str(empty)))
    spec = write_spec(tmp_path, "hk", script_spec("hk", "true"))
    result = aif("submit", "--site", "sandbox-east", str(spec))
    assert result.exit_code == 5
    assert "known_hosts" in result.stderr
    with Ledger() as ledger:
        [job] = ledger.list_jobs()
    assert job.state == "UNREACHABLE"


def test_lost_answer_is_adopted_not_resubmitted(
    sandbox_home: Path, sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection breaks after sbatch succeeded, before its answer is read: one job, one entry.

    The break is noted in a file: the SSH transport may run in aif's forked login child."""
    from gateway.transports.ssh import SshTransport

    real_run = SshTransport.run
    broken = tmp_path / "broken"

    def run_then_drop(
        self: SshTransport, argv: Any, stdin: bytes | None = None, timeout: float = 60.0
    ) -> Any:
        result = real_run(self, argv, stdin=stdin, timeout=timeout)
        if list(argv)[:2] == ["bash", "-c"] and not broken.exists():
            broken.write_text(result.stdout)
            self.close()  # the answer is never read: the connection is gone
            raise ConnectionLost(f"site {self.site}: connection lost while a command ran")
        return result

    monkeypatch.setattr(SshTransport, "run", run_then_drop)
    spec = write_spec(tmp_path, "once", script_spec("once", "sleep 2"))
    [job] = aif_json("submit", "--site", "sandbox-south", str(spec))
    assert broken.exists(), "the connection was not broken"
    slurm_id = broken.read_text().split("\t")[2].strip()
    assert job["slurm_job_id"] == slurm_id and job["state"] == "PENDING"
    with Ledger() as ledger:
        entry = ledger.get(job["id"])
        same_spec = [j for j in ledger.list_jobs() if j.spec_path == str(spec)]
    assert len(same_spec) == 1
    queue = at_site(sandbox, "sandbox-south", "squeue", "-h", "-t", "all", "-O", "JobID:20,Comment:200")
    tagged = [line for line in queue.stdout.splitlines() if entry.token in line]
    assert len(tagged) == 1 and tagged[0].split()[0] == slurm_id
    monkeypatch.setattr(SshTransport, "run", real_run)
    assert aif("wait", job["id"], "--timeout", "120").exit_code == 0


def test_logs_follow_streams_until_the_job_ends(sandbox_home: Path, tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, "ticker", script_spec("ticker", "for i in 1 2 3; do echo tick $i; sleep 1; done")
    )
    [job] = aif_json("submit", "--site", "sandbox-east", str(spec))
    result = aif("logs", "--follow", job["id"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-3:] == ["tick 1", "tick 2", "tick 3"]
    [status] = aif_json("status", "--history", job["id"])
    assert status["state"] == "COMPLETED"
    states = [change["state"] for change in status["history"]]
    assert states[0] == "SUBMITTING" and states[-1] == "COMPLETED" and "PENDING" in states


def test_one_bad_spec_means_nothing_is_submitted(sandbox_home: Path, tmp_path: Path) -> None:
    good = [write_spec(tmp_path, f"g{i}", script_spec(f"g{i}", "true")) for i in range(2)]
    bad = write_spec(tmp_path, "bad", '[job]\nname = "bad"\ncommand = ["true"]\n[resources]\ngpus = 1\n')
    result = aif("-v", "submit", "--site", NORTH, str(good[0]), str(bad), str(good[1]))
    assert result.exit_code == 3
    assert "resources.gpus: unknown key" in result.stderr and "nothing was submitted" in result.stderr
    assert "+ [" not in result.stderr
    with Ledger() as ledger:
        mine = [j for j in ledger.list_jobs() if j.spec_path in {str(p) for p in [*good, bad]}]
    assert [(j.spec_path, j.state) for j in mine] == [(str(bad), "INVALID")]
    assert "resources.gpus" in mine[0].message
