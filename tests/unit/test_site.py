"""The site layer over the fake transport: query counts, fallbacks, folding, fetch paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import site as site_module
from gateway import slurm
from gateway.errors import AifError, SiteUnreachable
from gateway.site import (
    JobQuery,
    SlurmCliBackend,
    confirm_in_accounting,
    confirm_in_queue,
    describe_command,
    fetch_path,
    fold_array,
)
from gateway.states import JobState
from gateway.transports.fake import FakeTransport
from gateway.transports.local import LocalTransport

RECORDED = Path(__file__).resolve().parents[1] / "data" / "slurm"


def squeue_text() -> str:
    return (RECORDED / "squeue-mixed.stdout").read_text()


def queries_for(records: list[slurm.JobRecord]) -> list[JobQuery]:
    """Queries that match the records: their own token (comment) and name."""
    return [
        JobQuery(r.job_id, r.comment.removeprefix(slurm.COMMENT_PREFIX), r.name)
        for r in records
        if r.array_job_id is None
    ]


def test_status_of_many_jobs_is_one_squeue() -> None:
    records = [r for r in slurm.parse_squeue(squeue_text()) if r.comment.startswith("aif:")]
    queries = queries_for(records)[:4]
    fake = FakeTransport(site="s").respond(["squeue"], stdout=squeue_text())
    found = SlurmCliBackend(transport=fake, accounting="jobcomp").jobs(queries)
    assert {k for k, v in found.items() if v.record is not None and v.in_queue} == {q.token for q in queries}
    assert [c.argv[0] for c in fake.calls] == ["squeue"]


def test_jobs_that_left_the_queue_cost_one_sacct() -> None:
    fake = (
        FakeTransport(site="s")
        .respond(["squeue"], stdout="")
        .respond(["sacct"], stdout=(RECORDED / "sacct-jobcomp.stdout").read_text())
    )
    known = slurm.parse_sacct((RECORDED / "sacct-jobcomp.stdout").read_text())
    queries = [
        *[JobQuery(r.job_id, f"tok{i}", r.name) for i, r in enumerate(known)][:3],
        JobQuery("99999", "tok", "x.aif-x"),
    ]
    found = SlurmCliBackend(transport=fake, accounting="jobcomp").jobs(queries)
    assert found["tok"].record is None and "no finished job 99999" in found["tok"].problem
    assert sum(1 for v in found.values() if v.record is not None) == 3
    sacct_calls = fake.calls_to(["sacct"])
    assert len(sacct_calls) == 1 and "--completion" in sacct_calls[0].argv


def record(job_id: str, name: str, state: JobState, comment: str = "") -> slurm.JobRecord:
    return slurm.JobRecord(
        job_id, None, name, state, state.value, "", comment, None, "p", "n", raw_job_id=job_id
    )


def test_a_reused_slurm_id_is_never_taken_for_the_job() -> None:
    """Defect 1: after a restart, job 5 is someone else: neither squeue nor sacct may be believed blindly."""
    ours = JobQuery("5", "aif-tok-old", "train.aif-oldoldold1")
    queue = [record("5", "other.aif-newnewnew1", JobState.RUNNING, "aif:aif-tok-new")]
    seen = confirm_in_queue(queue, [ours])
    assert seen["aif-tok-old"].record is None and "reused the id" in seen["aif-tok-old"].problem
    # The finished record of the old job 5 carries its name: that is the second proof.
    finished = [
        record("5", "train.aif-oldoldold1", JobState.COMPLETED),
        record("5", "other.aif-newnewnew1", JobState.RUNNING),
    ]
    confirmed = confirm_in_accounting(finished, [ours], seen)
    old = confirmed["aif-tok-old"]
    assert old.record is not None and old.record.state is JobState.COMPLETED
    assert not old.in_queue  # never a reason to signal it
    # Without its own record, the new job 5 is not the old job: no state is taken.
    alone = confirm_in_accounting(finished[1:], [ours], seen)
    assert alone["aif-tok-old"].record is None and "another job" in alone["aif-tok-old"].problem


def test_two_ledger_jobs_with_one_slurm_id_each_get_their_own_answer() -> None:
    """The old and the new job 5 are both asked about: each is matched by its own token."""
    old = JobQuery("5", "aif-tok-old", "train.aif-oldoldold1")
    new = JobQuery("5", "aif-tok-new", "other.aif-newnewnew1")
    queue = [record("5", "other.aif-newnewnew1", JobState.RUNNING, "aif:aif-tok-new")]
    seen = confirm_in_queue(queue, [old, new])
    assert seen["aif-tok-new"].in_queue and seen["aif-tok-old"].record is None


def test_a_job_of_an_older_aif_cannot_be_confirmed_once_it_left_the_queue() -> None:
    old = JobQuery("5", "aif-tok-old", "")
    found = confirm_in_accounting([record("5", "train", JobState.COMPLETED)], [old], {})
    assert found["aif-tok-old"].record is None and "older aif" in found["aif-tok-old"].problem


def test_confirming_looks_each_id_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Matching is an index, not a loop inside a loop (that took 0.53 s of 1.2 s at 700 jobs)."""
    queue = [record(str(i), f"j.aif-{i}", JobState.PENDING, f"aif:t{i}") for i in range(1, 701)]
    queries = [JobQuery(str(i), f"t{i}", f"j.aif-{i}") for i in range(1, 701)]
    compared = 0
    real_unique = site_module._unique

    def counting(records: list[slurm.JobRecord]) -> list[slurm.JobRecord]:
        nonlocal compared
        compared += len(records)
        return real_unique(records)

    monkeypatch.setattr(site_module, "_unique", counting)
    found = confirm_in_queue(queue, queries)
    assert all(v.in_queue for v in found.values())
    assert compared == 700  # each query sees only its own record


def test_squeue_failure_is_unreachable() -> None:
    fake = FakeTransport(site="s").respond(
        ["squeue"], stderr="slurm_load_jobs error: Unable to contact slurm controller", returncode=1
    )
    with pytest.raises(SiteUnreachable, match="Unable to contact slurm controller"):
        SlurmCliBackend(transport=fake, accounting="jobcomp").jobs([JobQuery("1", "t", "n")])


def test_an_array_is_running_while_any_task_runs_and_failed_if_any_failed() -> None:
    base = slurm.JobRecord("7_0", "7", "a", JobState.COMPLETED, "COMPLETED", "", "", 0, "p", "n")
    running = slurm.JobRecord("7_1", "7", "a", JobState.RUNNING, "RUNNING", "", "", None, "p", "n")
    failed = slurm.JobRecord("7_2", "7", "a", JobState.FAILED, "FAILED", "NonZeroExitCode", "", 3, "p", "n")
    assert fold_array("7", [base, running, failed]).state is JobState.RUNNING
    assert fold_array("7", [base, failed]).state is JobState.FAILED
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
