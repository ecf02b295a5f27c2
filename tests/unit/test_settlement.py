"""Settling a lost answer keeps every attempt: the one left in doubt and what it came to.

The simulated site of tests/unit/test_lifecycle.py answers the submission program, the
record reader and squeue; its transport loses the submission's answer and then cannot be
asked, so the job stays in doubt until `aif status` (``refresh``) settles it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import slurm
from gateway.context import Context
from gateway.lifecycle import refresh, submit
from gateway.settlement import ATTEMPT_IN_DOUBT
from gateway.site import SlurmCliBackend
from gateway.states import JobState
from gateway.transports.fake import FakeTransport
from tests.unit.test_lifecycle import SITE, FakeClock, SimulatedSite, make_context, specs


@pytest.fixture
def site() -> SimulatedSite:
    return SimulatedSite()


def transport_of(ctx: Context) -> FakeTransport:
    backend = ctx.backend(SITE)
    assert isinstance(backend, SlurmCliBackend) and isinstance(backend.transport, FakeTransport)
    return backend.transport


def outcomes(ctx: Context, job_id: str) -> list[tuple[str, str, str]]:
    """(site, outcome, detail) of every attempt, oldest first."""
    return [(site, outcome, detail) for site, _, outcome, detail in ctx.ledger.attempts(job_id)]


def lose_the_answer_and_the_site(ctx: Context) -> None:
    """The submission runs at the site, its answer is lost, and its record cannot be read then."""
    fake = transport_of(ctx)
    fake.drop_after_success(["bash", "-c", slurm.submission_program()])
    fake.fail_on_call(len(fake.calls) + 2)  # the record read that would settle it at once


def test_a_job_settled_as_sent_keeps_the_attempt_in_doubt_and_what_it_came_to(
    site: SimulatedSite, tmp_path: Path
) -> None:
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    lose_the_answer_and_the_site(ctx)
    [sent] = submit(ctx, specs(tmp_path, 1), site=SITE).jobs
    assert sent.job.state is JobState.SUBMITTING
    assert outcomes(ctx, sent.job.id) == [(SITE, ATTEMPT_IN_DOUBT, "")]
    refresh(ctx, [sent.job.id])
    settled = ctx.ledger.get(sent.job.id)
    assert settled.slurm_job_id == "101"
    assert outcomes(ctx, sent.job.id) == [
        (SITE, ATTEMPT_IN_DOUBT, ""),
        (SITE, "settled from the site's record: accepted as Slurm job 101", ""),
    ]
    refresh(ctx, [sent.job.id])  # settled already: nothing more to say
    assert len(outcomes(ctx, sent.job.id)) == 2
    assert len(site.queue) == 1


def test_a_job_settled_as_never_sent_says_why(site: SimulatedSite, tmp_path: Path) -> None:
    site.controller_down = True
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    lose_the_answer_and_the_site(ctx)
    [sent] = submit(ctx, specs(tmp_path, 1), site=SITE).jobs
    refresh(ctx, [sent.job.id])
    settled = ctx.ledger.get(sent.job.id)
    assert settled.state is JobState.UNREACHABLE
    [doubt, after] = outcomes(ctx, sent.job.id)
    assert doubt == (SITE, ATTEMPT_IN_DOUBT, "")
    assert after[:2] == (SITE, "settled from the site's record: site down: nothing was sent")
    assert "Unable to contact slurm controller" in after[2]


def test_an_array_found_by_its_token_says_so(site: SimulatedSite, tmp_path: Path) -> None:
    """The array was sent, then the program died before any answer: the record holds intents
    with no answer, and the queue holds the array's token."""
    site.die_after_array_sbatch = True
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    fake = transport_of(ctx)
    fake.fail_on_call(len(fake.calls) + 2)  # the record read right after the submission
    jobs = [j.job for j in submit(ctx, specs(tmp_path, 2), site=SITE).jobs]
    assert all(j.unresolved for j in jobs)
    refresh(ctx, [j.id for j in jobs])
    for task, job in enumerate(jobs):
        assert outcomes(ctx, job.id) == [
            (SITE, ATTEMPT_IN_DOUBT, ""),
            (SITE, f"settled from its token in the site's queue: accepted as Slurm job 101_{task}", ""),
        ]


def test_an_answer_settled_within_the_submission_is_one_attempt(site: SimulatedSite, tmp_path: Path) -> None:
    """The submission reads the site's record at once: its one attempt says what it came to."""
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    transport_of(ctx).drop_after_success(["bash", "-c", slurm.submission_program()])
    [sent] = submit(ctx, specs(tmp_path, 1), site=SITE).jobs
    assert sent.job.slurm_job_id == "101"
    assert outcomes(ctx, sent.job.id) == [(SITE, "accepted as Slurm job 101", "")]
