"""Arrays of specs on the real sandbox: many specs of one shape in one `aif submit` become ONE
Slurm array job, and every spec stays its own aif job (status, wait, logs, fetch, cancel).

Independent witnesses: Slurm's own commands over the system's OpenSSH, and the files Slurm
wrote at the site (the sandbox sites share this machine's disk). Cost: about 20 s in all
(the kill test about 11 s: it restarts sandbox-east afresh).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gateway.ledger import Ledger
from gateway.sandbox.manager import SandboxFacts
from gateway.states import JobState
from tests.integration.test_faults import AIF, EAST, aif_process, record_dir
from tests.integration.test_lifecycle import aif, aif_json, at_site, toml_string, write_spec

pytestmark = pytest.mark.integration

WORK_AREA = Path("/home/aifuser/aif") / EAST
OUTPUTS = '[data]\noutputs = ["out.txt"]'


def spec_text(name: str, script: str, walltime: str = "00:05:00", extra: str = "") -> str:
    return (
        f"[job]\nname = {toml_string(name)}\nscript = {toml_string(script)}\n{extra}\n"
        f'[resources]\nwalltime = "{walltime}"\n'
    )


def array_ids_at(sandbox: SandboxFacts, names: set[str]) -> dict[str, set[str]]:
    """Per array name: the Slurm array ids squeue shows for it (%F: the array's own id)."""
    queue = at_site(sandbox, EAST, "squeue", "--me", "-h", "-t", "all", "-o", "'%F|%K|%j'")
    assert queue.returncode == 0, queue.stderr
    found: dict[str, set[str]] = {}
    for line in queue.stdout.splitlines():
        array_id, _, rest = line.partition("|")
        _, _, name = rest.partition("|")
        if name in names:
            found.setdefault(name, set()).add(array_id)
    return found


def test_twenty_specs_of_one_shape_are_one_array_and_twenty_aif_jobs(
    sandbox_home: Path, sandbox: SandboxFacts, tmp_path: Path
) -> None:
    prefix = f"arr{int(time.time()) % 100000}x"
    paths = []
    for i in range(20):
        script = f"echo {prefix}{i} runs in $(pwd) as $AIF_JOB_ID\necho {i} > out.txt"
        if i == 7:
            script += "\nexit 3"
        paths.append(
            str(write_spec(tmp_path, f"{prefix}{i}", spec_text(f"{prefix}{i}", script, extra=OUTPUTS)))
        )
    result = aif("-v", "submit", "--site", EAST, "--json", *paths)
    assert result.exit_code == 0, result.stderr
    sent = [line for line in result.stderr.splitlines() if line.startswith("+ [sandbox-east]")]
    assert len(sent) == 1  # one command at the site, one sbatch in it
    jobs = json.loads(result.stdout)
    array_id = jobs[0]["slurm_job_id"].split("_")[0]
    assert [j["slurm_job_id"] for j in jobs] == [f"{array_id}_{i}" for i in range(20)]
    assert len({j["id"] for j in jobs}) == 20 and {j["how"] for j in jobs} == {"submitted"}
    with Ledger() as ledger:
        names = {ledger.get(j["id"]).slurm_name for j in jobs}
    assert len(names) == 1
    assert array_ids_at(sandbox, names) == {names.pop(): {array_id}}  # Slurm holds ONE array job

    waited = aif("wait", *[j["id"] for j in jobs], "--timeout", "120")
    assert waited.exit_code == 7  # task 7 failed: `wait` says so, the others completed
    states = {s["id"]: s["state"] for s in aif_json("status", *[j["id"] for j in jobs])}
    assert [states[j["id"]] for j in jobs] == ["FAILED" if i == 7 else "COMPLETED" for i in range(20)]
    for i in (0, 7, 19):
        log = aif("logs", jobs[i]["id"]).stdout
        assert log.startswith(
            f"{prefix}{i} runs in {WORK_AREA}/{prefix}{i}/{jobs[i]['id']} as {jobs[i]['id']}\n"
        )
    fetched = aif_json("fetch", jobs[12]["id"], str(tmp_path / "got"))
    assert fetched["outputs"] == ["out.txt"] and (tmp_path / "got" / "out.txt").read_text() == "12\n"


def test_cancel_of_one_task_leaves_the_others(
    sandbox_home: Path, sandbox: SandboxFacts, tmp_path: Path
) -> None:
    """Each task takes a whole node of sandbox-east (2 nodes): two run, three wait. Cancelling one
    running and one pending task signals those two alone, never the array."""
    prefix = f"arc{int(time.time()) % 100000}x"
    whole_node = "cpus_per_task = 64\n"
    paths = [
        str(
            write_spec(
                tmp_path,
                f"{prefix}{i}",
                spec_text(f"{prefix}{i}", "sleep 120").replace("[resources]\n", "[resources]\n" + whole_node),
            )
        )
        for i in range(5)
    ]
    jobs = aif_json("submit", "--site", EAST, *paths)
    ids = [j["id"] for j in jobs]
    deadline = time.monotonic() + 30
    while [s["state"] for s in aif_json("status", *ids)][:2] != ["RUNNING", "RUNNING"]:
        assert time.monotonic() < deadline, "the first two tasks did not start"
        time.sleep(0.5)
    cancelled = aif_json("cancel", ids[0], ids[4])
    assert [(c["id"], c["state"], c["cancelled"]) for c in cancelled] == [
        (ids[0], "CANCELLED", True),
        (ids[4], "CANCELLED", True),
    ]
    array_id = jobs[0]["slurm_job_id"].split("_")[0]
    queue = at_site(sandbox, EAST, "squeue", "-h", "-t", "pending,running", "-j", array_id, "-o", "'%i|%T'")
    left = dict(line.split("|") for line in queue.stdout.split())
    assert set(left) == {f"{array_id}_1", f"{array_id}_[2-3]"} or set(left) == {
        f"{array_id}_1",
        f"{array_id}_2",
        f"{array_id}_3",
    }, left
    states = [s["state"] for s in aif_json("status", *ids)]
    assert states[0] == states[4] == "CANCELLED" and states[1] == "RUNNING"
    assert states[2] in ("PENDING", "RUNNING") and states[3] in ("PENDING", "RUNNING")
    assert aif("cancel", *ids[1:4]).exit_code == 0


def test_no_coalesce_sends_twenty_jobs(sandbox_home: Path, sandbox: SandboxFacts, tmp_path: Path) -> None:
    prefix = f"anc{int(time.time()) % 100000}x"
    paths = [str(write_spec(tmp_path, f"{prefix}{i}", spec_text(f"{prefix}{i}", "true"))) for i in range(20)]
    jobs = aif_json("submit", "--site", EAST, "--no-coalesce", *paths)
    slurm_ids = [j["slurm_job_id"] for j in jobs]
    assert len(set(slurm_ids)) == 20 and not any("_" in s for s in slurm_ids)
    queue = at_site(sandbox, EAST, "squeue", "--me", "-h", "-t", "all", "-o", "'%i|%j'")
    names = {line.split("|")[1].split(".")[0] for line in queue.stdout.splitlines() if f"|{prefix}" in line}
    assert names == {f"{prefix}{i}" for i in range(20)}  # twenty Slurm jobs, each under its spec's name
    assert aif("wait", *[j["id"] for j in jobs], "--timeout", "120").exit_code == 0


def test_killed_mid_submit_of_arrays_then_rerun_with_the_key_runs_each_spec_once(
    sandbox_home: Path, sandbox: SandboxFacts, tmp_path: Path
) -> None:
    """200 specs in 40 shapes (40 arrays of 5): aif is killed (-9) once some are claimed. The
    arrays leave squeue (the cluster is reinstalled) before anyone looks; status settles each
    spec from the site's record and the job-completion log, the rerun with the key sends only
    the rest, and every spec ran exactly once: its name is in exactly one task's output."""
    prefix = f"akl{int(time.time()) % 100000}x"
    paths = [
        str(
            write_spec(
                tmp_path,
                f"{prefix}{i}",
                spec_text(f"{prefix}{i}", f"echo {prefix}{i}", f"00:{1 + i // 5:02d}:00"),
            )
        )
        for i in range(200)
    ]
    key = f"test-{prefix}"
    process = aif_process("submit", "--site", EAST, "--key", key, *paths)
    record = record_dir(key)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if record.is_dir() and len(os.listdir(record)) >= 10:
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    from gateway.sandbox import manager

    # The arrays sent before the kill, as the site's record names them (intent ... ARRAY_TOKEN TASK).
    sent_arrays = {
        "aif-array." + fields[3].removeprefix("aif-tok-")
        for claim in record.iterdir()
        if len(fields := claim.read_text().split("\n")[0].split("\t")) == 5
    }
    assert sent_arrays
    deadline = time.monotonic() + 60
    while sent_arrays & set(
        at_site(sandbox, EAST, "squeue", "--me", "-h", "-t", "pending,running", "-o", "%j").stdout.split()
    ):
        assert time.monotonic() < deadline, "the arrays sent before the kill did not finish"
        time.sleep(0.5)
    arrays_before = {p.name for p in (WORK_AREA / ".aif" / "arrays").iterdir()}
    manager.restart_cluster_fresh(EAST, sandbox.aif_home)
    env = dict(os.environ, AIF_LOST_SUBMISSION_AFTER="0", AIF_JUST_SUBMITTED_GRACE="0")
    settled = subprocess.run([*AIF, "status", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in settled.stderr
    with Ledger() as ledger:
        jobs = ledger.jobs_with_key(key)
    assert len(jobs) == 200
    sent = [j for j in jobs if j.slurm_job_id]
    assert 0 < len(sent) < 200, "aif was not killed mid-submit"
    assert {j.state for j in sent} == {JobState.COMPLETED}  # from the job-completion log, by name
    assert {j.state for j in jobs if not j.slurm_job_id} <= {JobState.NOT_SENT}
    again = aif("submit", "--site", EAST, "--key", key, "--json", *paths)
    assert again.exit_code == 0, again.output + again.stderr
    rerun = json.loads(again.stdout)
    assert sum(1 for j in rerun if j["how"] == "submitted") == 200 - len(sent)
    assert aif("wait", *[j["id"] for j in rerun], "--timeout", "120").exit_code == 0
    third = aif_json("submit", "--site", EAST, "--key", key, *paths)
    assert {j["how"] for j in third} == {"sent before"}
    # Every spec ran exactly once: Slurm wrote each task's output, each names its spec.
    with Ledger() as ledger:
        tokens = {ledger.get(j["id"]).array_token.removeprefix("aif-tok-") for j in rerun}
    outputs = [
        path.read_text()
        for directory in (WORK_AREA / ".aif" / "arrays").iterdir()
        if directory.name in tokens
        for path in directory.iterdir()
    ]
    assert sorted(text.strip() for text in outputs) == sorted(f"{prefix}{i}" for i in range(200))
    assert tokens & arrays_before  # some arrays went before the kill
