"""The site layer over the fake transport: query counts, fallbacks, folding, fetch paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import slurm
from gateway.errors import AifError, SiteUnreachable
from gateway.site import SlurmCliBackend, describe_command, fetch_path, fold_array
from gateway.transports.fake import FakeTransport
from gateway.transports.local import LocalTransport

RECORDED = Path(__file__).resolve().parents[1] / "data" / "slurm"


def squeue_text() -> str:
    return (RECORDED / "squeue-mixed.stdout").read_text()


def test_status_of_many_jobs_is_one_squeue() -> None:
    records = slurm.parse_squeue(squeue_text())
    plain = [r.job_id for r in records if r.array_job_id is None][:4]
    fake = FakeTransport(site="s").respond(["squeue"], stdout=squeue_text())
    found = SlurmCliBackend(transport=fake, accounting="jobcomp").jobs(plain)
    assert set(found) == set(plain)
    assert [c.argv[0] for c in fake.calls] == ["squeue"]


def test_jobs_that_left_the_queue_cost_one_sacct() -> None:
    fake = (
        FakeTransport(site="s")
        .respond(["squeue"], stdout="")
        .respond(["sacct"], stdout=(RECORDED / "sacct-jobcomp.stdout").read_text())
    )
    known = slurm.parse_sacct((RECORDED / "sacct-jobcomp.stdout").read_text())
    wanted = [*[r.job_id for r in known][:3], "99999"]
    found = SlurmCliBackend(transport=fake, accounting="jobcomp").jobs(wanted)
    assert "99999" not in found and len(found) == 3
    sacct_calls = fake.calls_to(["sacct"])
    assert len(sacct_calls) == 1 and "--completion" in sacct_calls[0].argv


def test_squeue_failure_is_unreachable() -> None:
    fake = FakeTransport(site="s").respond(
        ["squeue"], stderr="slurm_load_jobs error: Unable to contact slurm controller", returncode=1
    )
    with pytest.raises(SiteUnreachable, match="Unable to contact slurm controller"):
        SlurmCliBackend(transport=fake, accounting="jobcomp").jobs(["1"])


def test_an_array_is_running_while_any_task_runs_and_failed_if_any_failed() -> None:
    base = slurm.JobRecord("7_0", "7", "a", slurm.JobState.COMPLETED, "COMPLETED", "", "", 0, "p", "n")
    running = slurm.JobRecord("7_1", "7", "a", slurm.JobState.RUNNING, "RUNNING", "", "", None, "p", "n")
    failed = slurm.JobRecord(
        "7_2", "7", "a", slurm.JobState.FAILED, "FAILED", "NonZeroExitCode", "", 3, "p", "n"
    )
    assert fold_array("7", [base, running, failed]).state is slurm.JobState.RUNNING
    assert fold_array("7", [base, failed]).state is slurm.JobState.FAILED
    assert fold_array("7", [base]).job_id == "7"


def test_submit_is_one_command_with_the_bundle_on_stdin() -> None:
    items = [slurm.SubmissionItem(f"#!/bin/bash\necho {i}\n", "/w") for i in range(3)]
    fake = FakeTransport(site="s").respond(["bash", "-c"], stdout="0\t0\t11\n1\t1\tsbatch: error: nope\n")
    outcomes = SlurmCliBackend(transport=fake, accounting="jobcomp").submit(items)
    assert len(fake.calls) == 1 and fake.calls[0].stdin == slurm.build_submission_bundle(items)
    assert outcomes[0].ok and outcomes[0].job_id == "11"
    assert not outcomes[1].ok and not outcomes[1].unknown and "nope" in outcomes[1].error
    assert outcomes[2].unknown  # no answer line: look for its token before retrying


def test_fetch_copies_trees_and_single_files_and_names_missing_ones(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    (remote / "results").mkdir(parents=True)
    (remote / "results" / "a.txt").write_text("a")
    (remote / "model.pt").write_text("m")
    local = LocalTransport("s")
    fetch_path(local, str(remote / "results"), tmp_path / "out" / "results", None)
    fetch_path(local, str(remote / "model.pt"), tmp_path / "out" / "model.pt", None)
    assert (tmp_path / "out" / "results" / "a.txt").read_text() == "a"
    assert (tmp_path / "out" / "model.pt").read_text() == "m"
    with pytest.raises(AifError, match="does not exist"):
        fetch_path(local, str(remote / "absent"), tmp_path / "out" / "absent", None)


def test_verbose_lines_abbreviate_the_batch_program() -> None:
    line = describe_command("north", ["bash", "-c", "a\nb\nc", "aif-submit"])
    assert line == "+ [north] bash -c <3-line program> aif-submit"
    assert describe_command("north", ["squeue", "--me", "a b"]) == "+ [north] squeue --me 'a b'"
