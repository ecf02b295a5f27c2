"""The pyslurm backend, against pyslurm's documented API (mocked: no libslurm 25.11 here)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pytest_mock import MockerFixture

from gateway.errors import BackendMissing, SiteUnreachable
from gateway.pyslurm_backend import PyslurmBackend
from gateway.site import JobQuery
from gateway.slurm import JobState, Outcome, SubmissionItem


@pytest.fixture
def fake_pyslurm(mocker: MockerFixture) -> Any:
    module = mocker.MagicMock(name="pyslurm")
    mocker.patch.dict(sys.modules, {"pyslurm": module})
    return module


def job(job_id: int, state: str, comment: str | None = None, **extra: Any) -> SimpleNamespace:
    base = extra.get("array_id") or job_id
    return SimpleNamespace(
        id=job_id, state=state, state_reason="None", comment=comment or f"aif:tok-{base}", name="j", **extra
    )


def q(slurm_id: str, token: str = "tok") -> JobQuery:
    return JobQuery(slurm_id, f"{token}-{slurm_id}", "j")


def test_submit_uses_job_submit_description(fake_pyslurm: Any, tmp_path: Path) -> None:
    fake_pyslurm.JobSubmitDescription.return_value.submit.return_value = 42
    backend = PyslurmBackend(site="login")
    workdir = tmp_path / "w"
    [outcome] = backend.submit(
        [SubmissionItem("#!/bin/bash\ntrue\n", str(workdir), ("--dependency=afterok:7",))]
    )
    assert outcome.ok and outcome.job_id == "42"
    fake_pyslurm.JobSubmitDescription.assert_called_once_with(
        script="#!/bin/bash\ntrue\n", working_directory=str(workdir)
    )
    desc = fake_pyslurm.JobSubmitDescription.return_value
    desc.load_sbatch_options.assert_called_once_with()
    assert desc.dependencies == "afterok:7"
    assert workdir.is_dir()


def test_submit_failure_is_a_rejection_with_slurms_message(fake_pyslurm: Any, tmp_path: Path) -> None:
    fake_pyslurm.JobSubmitDescription.return_value.submit.side_effect = RuntimeError(
        "Invalid partition name specified"
    )
    [outcome] = PyslurmBackend(site="login").submit([SubmissionItem("#!/bin/bash\ntrue\n", str(tmp_path))])
    assert not outcome.ok and not outcome.unknown
    assert outcome.error == "Invalid partition name specified"


def test_jobs_one_load_for_all_and_array_folding(fake_pyslurm: Any) -> None:
    fake_pyslurm.Jobs.load.return_value = {
        1: job(1, "RUNNING"),
        2: job(2, "COMPLETED", exit_code=0),
        3: job(3, "RUNNING", array_id=3, array_task_id=0),
        4: job(4, "PENDING", array_id=3, array_task_id=1),
    }
    found = PyslurmBackend(site="login").jobs([q("1"), q("2"), q("3"), q("99")])
    assert fake_pyslurm.Jobs.load.call_count == 1
    records = {k.removeprefix("tok-"): v.record for k, v in found.items() if v.record is not None}
    assert records["1"].state is JobState.RUNNING
    assert records["2"].state is JobState.COMPLETED
    assert records["3"].state is JobState.RUNNING  # an array runs while any task does
    assert "99" not in records


def test_jobs_are_confirmed_by_their_token(fake_pyslurm: Any) -> None:
    fake_pyslurm.Jobs.load.return_value = {1: job(1, "RUNNING", comment="aif:someone-else")}
    found = PyslurmBackend(site="login").jobs([q("1")])
    assert found["tok-1"].record is None and "reused the id" in found["tok-1"].problem


def test_submit_keeps_the_site_record(fake_pyslurm: Any, tmp_path: Path) -> None:
    fake_pyslurm.JobSubmitDescription.return_value.submit.return_value = 42
    backend = PyslurmBackend(site="login")
    record = tmp_path / "rec"
    claim = "0123456789abcdef0123456789abcdef-0.0"
    item = SubmissionItem("#!/bin/bash\ntrue\n", "", claim=claim, token="aif-tok-1", aif_id="aif-a")
    [outcome] = backend.submit([item], str(record))
    assert outcome.ok
    assert (record / claim).read_text() == "intent\taif-tok-1\taif-a\nanswer\t0\t42\n"
    # The same claim again is never sent twice.
    [again] = backend.submit([item], str(record))
    assert again.kind is Outcome.CLAIMED and fake_pyslurm.JobSubmitDescription.call_count == 1
    read = backend.read_record([str(record)])
    assert read.claims[0][claim].slurm_job_id == "42"


def test_find_tokens_and_cancel(fake_pyslurm: Any) -> None:
    fake_pyslurm.Jobs.load.return_value = {5: job(5, "PENDING", comment="aif:tok-a")}
    backend = PyslurmBackend(site="login")
    assert backend.find_tokens(["tok-a", "tok-b"]) == {"tok-a": "5"}
    loaded = fake_pyslurm.Job.load.return_value
    loaded.name = "j.aif-a"
    backend.cancel([("5", "j.aif-a")])
    fake_pyslurm.Job.load.assert_called_once_with(5)
    loaded.cancel.assert_called_once_with()
    # An id that names another job now is never signalled.
    backend.cancel([("5", "other.aif-b")])
    loaded.cancel.assert_called_once_with()
    loaded.cancel.side_effect = RuntimeError("Access/permission denied")
    with pytest.raises(SiteUnreachable, match="permission denied"):
        backend.cancel([("5", "j.aif-a")])


def test_missing_pyslurm_is_a_clear_error(mocker: MockerFixture) -> None:
    mocker.patch.dict(sys.modules, {"pyslurm": None})  # import raises ImportError
    with pytest.raises(BackendMissing, match=r"pip install 'aif\[pyslurm\]'"):
        PyslurmBackend(site="login").jobs([q("1")])


def test_slurm_conf_is_exported_before_libslurm_loads(
    fake_pyslurm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_CONF", raising=False)
    fake_pyslurm.Jobs.load.return_value = {}
    PyslurmBackend(site="login", slurm_conf="/etc/slurm/site.conf").jobs([q("1")])
    import os

    assert os.environ["SLURM_CONF"] == "/etc/slurm/site.conf"
