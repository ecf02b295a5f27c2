"""What `aif submit` and `aif explain` say about a job that was not sent, or may have been."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import Result

from gateway.federation.ranking import TIE_RULE
from gateway.ledger import Ledger, LedgerJob
from gateway.states import JobState
from tests.unit.test_cli import GPU_SPEC, aif, one_line_error


def recorded(site: str = "lumi", placement: dict[str, Any] | None = None) -> LedgerJob:
    """A job recorded as about to be sent (SUBMITTING), with the ranking it was placed by."""
    with Ledger() as ledger:
        [job] = ledger.record_intents(
            [
                {
                    "site": site,
                    "name": "train",
                    "spec_path": "train.toml",
                    "spec_hash": "0" * 64,
                    "workdir": "/w/train",
                    "outputs": (),
                    "stdout_path": "/w/train/slurm-%j.out",
                    "array_size": None,
                    "depends_on": None,
                    "placement": json.dumps(placement or {}),
                }
            ]
        )
        return job


def submitted_as(monkeypatch: pytest.MonkeyPatch, job: LedgerJob) -> None:
    """`aif submit` reports ``job`` as it stands, whatever it was asked to send."""
    from gateway import lifecycle
    from gateway.submission import SubmitReport, SubmittedJob

    def submit(*_: Any, **__: Any) -> SubmitReport:
        return SubmitReport(key="k1", jobs=[SubmittedJob(job, "holds the data", "in doubt")])

    monkeypatch.setattr(lifecycle, "submit", submit)


@pytest.mark.parametrize("as_json", [True, False])
def test_a_lost_answer_with_no_reason_says_it_may_have_been_sent_and_what_settles_it(
    monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    job = recorded()  # SUBMITTING, no reason yet: the answer was lost and the site not asked since
    submitted_as(monkeypatch, job)
    result = aif("submit", *(["--json"] if as_json else []), str(GPU_SPEC))
    assert result.exit_code == 5
    said = (
        f"the answer from lumi was lost: it may have been sent; "
        f"`aif status {job.id}` settles it from the site's record"
    )
    if as_json:
        assert one_line_error(result).rstrip("\n") == f"aif: error: {job.id} at lumi: {said}"
    else:
        assert f"{job.id}: {said}\n" in result.stdout
        counted = "aif: error: 1 of 1 jobs not submitted or not confirmed (see above)"
        assert result.stderr.splitlines()[-1] == counted
    assert "()" not in result.output


def test_a_lost_answer_with_a_reason_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    job = recorded()
    with Ledger() as ledger:
        job = ledger.mark_unresolved(job.id, "maybe sent: not found by its token or its name")
    submitted_as(monkeypatch, job)
    result = aif("submit", "--json", str(GPU_SPEC))
    assert result.exit_code == 5
    assert one_line_error(result).rstrip("\n") == (
        f"aif: error: {job.id} at lumi: the answer from lumi was lost (maybe sent: not found by its "
        f"token or its name); `aif status {job.id}` settles it from the site's record"
    )


PLACEMENT = {
    "headline": "train goes to lumi: holds the data; next best bsc (score 60 s)",
    "pinned": False,
    "ranking": [
        {"site": "lumi", "score": 0.0, "terms": {"time_to_start": 0.0}, "reasons": ["holds the data"]},
        {"site": "bsc", "score": 60.0, "terms": {"time_to_start": 60.0}, "reasons": []},
    ],
    "excluded": [{"site": "mimer", "reasons": ["does not hold dataset x"]}],
    "tie_rule": TIE_RULE,
}


def first_line(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[0]


def test_explain_says_a_job_never_sent_was_not_sent_and_its_state() -> None:
    job = recorded(placement=PLACEMENT)
    with Ledger() as ledger:
        ledger.mark_not_submitted(
            job.id, JobState.UNREACHABLE, "site lumi: Unable to contact slurm controller"
        )
    assert first_line(aif("explain", job.id)) == (
        f"{job.id} (train) was not sent (UNREACHABLE) at lumi: site lumi: Unable to contact slurm controller"
    )


def test_explain_says_where_a_sent_job_went_and_its_state() -> None:
    job = recorded(placement=PLACEMENT)
    with Ledger() as ledger:
        ledger.mark_submitted(job.id, "42")
    assert first_line(aif("explain", job.id)) == f"{job.id} (train) went to lumi as Slurm job 42, now PENDING"


def test_explain_says_a_job_whose_answer_was_lost_may_have_been_sent() -> None:
    job = recorded(placement=PLACEMENT)
    assert first_line(aif("explain", job.id)) == (
        f"{job.id} (train) may have been sent at lumi (SUBMITTING): `aif status {job.id}` settles it"
    )


@pytest.mark.parametrize(
    ("headline", "shown"),
    [
        ("train goes to lumi: ", "train goes to lumi (pinned: no ranking)"),  # as aif kept it before
        (
            "train goes to lumi: pinned: no ranking, the site's load not probed",
            "train goes to lumi: pinned: no ranking, the site's load not probed",
        ),
    ],
)
def test_explain_of_a_pinned_job_says_so_once_and_no_tie_rule(headline: str, shown: str) -> None:
    pinned = {
        "headline": headline,
        "pinned": True,
        "ranking": [{"site": "lumi", "score": 0.0, "terms": {}, "reasons": []}],
        "excluded": [],
        "tie_rule": TIE_RULE,
    }
    job = recorded(placement=pinned)
    said = aif("explain", job.id)
    assert said.exit_code == 0, said.output
    assert said.stdout.splitlines()[1] == shown
    assert TIE_RULE not in " ".join(said.stdout.split())


def test_explain_prints_the_tie_rule_the_job_was_ranked_by() -> None:
    job = recorded(placement=PLACEMENT)
    shown = aif("explain", job.id)
    assert shown.exit_code == 0, shown.output
    assert " ".join(shown.stdout.split()).count(TIE_RULE) == 1  # the console may wrap it


def test_load_names_every_site_it_cannot_use_and_why() -> None:
    result = aif("load", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["site"]: row for row in json.loads(result.stdout)}
    assert {"lumi", "mimer", "bsc"} <= set(rows)
    lumi = rows["lumi"]
    assert not lumi["probed"] and not lumi["reachable"] and "needs an account" in lumi["problem"]
    people = aif("load")
    assert "needs an account" in people.stdout and "lumi" in people.stdout


def test_explain_of_a_job_that_failed_over_says_so_under_its_ranking() -> None:
    job = recorded(site="bsc", placement=PLACEMENT)  # ranked lumi first, sent to bsc
    shown = aif("explain", job.id)
    assert shown.exit_code == 0, shown.output
    said = " ".join(shown.stdout.split())
    assert "next best bsc (score 60 s) (it failed over to bsc: see the attempts)" in said
