"""Shared polling (gateway.polling) and its use by status and wait, over fake transports.

The budget's decisions are pure; the sharing is tested with two stores over one
directory standing for two aif processes, and with threads racing for one site.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway import slurm
from gateway.config import SiteAccess, UserConfig
from gateway.context import Context, Timing
from gateway.errors import SiteUnreachable
from gateway.ledger import Ledger
from gateway.polling import (
    Answer,
    Budget,
    FilePollStore,
    MemoryPollStore,
    PollRules,
    SharedAnswers,
    next_budget,
    queue_digest,
)
from gateway.profiles import load_profile
from gateway.site import SlurmCliBackend
from gateway.states import JobState
from gateway.status import refresh, wait
from gateway.transports.base import CommandResult
from gateway.transports.fake import FakeCall, FakeTransport

REPO = Path(__file__).resolve().parents[2]
SITE = "testsite"
RULES = PollRules(interval_s=1.0, max_interval_s=10.0, growth=1.5)


# -- the budget (pure) ------------------------------------------------------------------------


def test_the_first_answer_starts_at_the_base_interval() -> None:
    budget = next_budget(Budget(5.0), RULES, asked_at=100.0, digest="a")
    assert budget == Budget(1.0, 100.0, "a")
    assert budget.due_in(100.4) == pytest.approx(0.6)
    assert Budget(1.0).due_in(100.0) == 0.0  # never asked: due now


def test_the_interval_grows_while_nothing_changes_and_resets_when_something_does() -> None:
    budget = next_budget(Budget(1.0), RULES, asked_at=0.0, digest="a")
    intervals = []
    for at in range(1, 9):
        budget = next_budget(budget, RULES, asked_at=float(at), digest="a")
        intervals.append(budget.interval_s)
    assert intervals == [1.5, 2.25, 3.375, 5.0625, 7.59375, 10.0, 10.0, 10.0]
    changed = next_budget(budget, RULES, asked_at=9.0, digest="b")
    assert changed.interval_s == 1.0 and changed.digest == "b"


def test_a_site_that_cannot_be_asked_doubles_up_to_the_cap() -> None:
    budget = next_budget(Budget(1.0), RULES, asked_at=0.0, digest="a")
    doubled = []
    for at in range(1, 6):
        budget = next_budget(budget, RULES, asked_at=float(at), digest=None)
        doubled.append(budget.interval_s)
    assert doubled == [2.0, 4.0, 8.0, 10.0, 10.0]
    # Reachable again: its answer differs from "no answer", so back to the base.
    assert next_budget(budget, RULES, asked_at=6.0, digest="a").interval_s == 1.0


def squeue_record(job_id: str, state: str, reason: str, start: str = "N/A", token: str = "t") -> str:
    sep = slurm.FIELD_SEPARATOR
    fields = [job_id, job_id, job_id, "N/A", state, "standard", "", "", start, "", "0", reason]
    return sep.join([*fields, f"aif:{token}", "name"]) + slurm.RECORD_END


def test_the_queue_digest_sees_states_and_reasons_not_estimates() -> None:
    base = squeue_record("1", "PENDING", "Resources", "2030-01-01T00:00:00")
    moved = squeue_record("1", "PENDING", "Resources", "2030-01-01T00:05:00")
    assert queue_digest(base + "\n") == queue_digest(moved + "\n")
    assert queue_digest(base) != queue_digest(squeue_record("1", "RUNNING", "None"))
    assert queue_digest(base) != queue_digest(squeue_record("1", "PENDING", "Priority"))
    two = base + "\n" + squeue_record("2", "PENDING", "Resources") + "\n"
    other_order = squeue_record("2", "PENDING", "Resources") + "\n" + base + "\n"
    assert queue_digest(two) == queue_digest(other_order) != queue_digest(base)


def test_an_answer_is_usable_only_after_accept_after_and_not_from_the_future() -> None:
    answer = Answer(taken_at=100.0)
    assert answer.usable(accept_after=99.0, now=100.5)
    assert not answer.usable(accept_after=100.0, now=100.5)  # exactly as old as allowed: due
    assert not answer.usable(accept_after=0.0, now=95.0)  # taken "later" than now: the clock went back


# -- asking through a store ---------------------------------------------------------------------


@dataclass
class Now:
    at: float = 1000.0

    def __call__(self) -> float:
        return self.at


QUEUE = slurm.squeue_argv()


def site_with_queue(text: str = "") -> FakeTransport:
    fake = FakeTransport(SITE)
    fake.respond(["squeue"], stdout=text)
    fake.respond(["sacct"], stdout="")
    return fake


def shared(fake: FakeTransport, store: object, now: Now, **kwargs: object) -> SharedAnswers:
    return SharedAnswers(fake, store, now=now, **kwargs)  # type: ignore[arg-type]


def test_an_answer_younger_than_max_age_is_used_instead_of_asking() -> None:
    fake, store, now = site_with_queue("x"), MemoryPollStore(RULES), Now()
    assert shared(fake, store, now, max_age=1.0).run(QUEUE).stdout == "x"
    now.at += 0.9
    again = shared(fake, store, now, max_age=1.0)
    assert again.run(QUEUE).stdout == "x" and again.asked == 0
    now.at += 0.2  # 1.1 s old now
    assert shared(fake, store, now, max_age=1.0).asked == 0
    late = shared(fake, store, now, max_age=1.0)
    late.run(QUEUE)
    assert late.asked == 1 and len(fake.calls) == 2


def test_an_answer_older_than_the_newest_change_of_the_jobs_is_not_used() -> None:
    fake, store, now = site_with_queue(), MemoryPollStore(RULES), Now()
    shared(fake, store, now, max_age=5.0).run(QUEUE)
    now.at += 1
    # A job sent (or changed) after that answer was taken may be missing from it.
    newer = shared(fake, store, now, max_age=5.0, newest_change=1000.5)
    newer.run(QUEUE)
    assert newer.asked == 1
    assert shared(fake, store, now, max_age=5.0, newest_change=1000.5).run(QUEUE) is not None
    assert len(fake.calls) == 2


def test_max_age_none_is_the_sites_current_interval() -> None:
    fake, store, now = (
        site_with_queue(squeue_record("1", "PENDING", "Resources")),
        MemoryPollStore(RULES),
        Now(),
    )
    for _ in range(4):  # every 1.2 s: asked at 0 (1 s), 1.2 (1.5 s), not at 2.4, at 3.6 (2.25 s)
        shared(fake, store, now).run(QUEUE)
        now.at += 1.2
    assert store.read(SITE).budget.interval_s == 2.25
    assert len(fake.calls) == 3
    # 1.2 s after the last answer, within its 2.25 s: a waiter uses it, a status asks.
    assert shared(fake, store, now).run(QUEUE) and len(fake.calls) == 3
    assert shared(fake, store, now, max_age=1.0).run(QUEUE) and len(fake.calls) == 4


def test_different_queries_are_kept_apart() -> None:
    fake, store, now = site_with_queue(), MemoryPollStore(RULES), Now()
    first = slurm.sacct_argv(["1", "2"], "jobcomp")
    other = slurm.sacct_argv(["3"], "jobcomp")
    for argv in (first, other, first, other):
        shared(fake, store, now, max_age=1.0).run(argv)
    assert len(fake.calls) == 2
    assert store.read(SITE).budget.asked_at is None  # sacct does not move the queue's budget


def test_a_failure_is_shared_too_and_doubles_the_interval() -> None:
    fake, store, now = site_with_queue(), MemoryPollStore(RULES), Now()
    fake.fail_on_call(1)
    with pytest.raises(SiteUnreachable, match="scripted failure"):
        shared(fake, store, now).run(QUEUE)
    with pytest.raises(SiteUnreachable, match="scripted failure"):
        shared(fake, store, now).run(QUEUE)  # the same failure, not asked again
    assert len(fake.calls) == 1
    assert store.read(SITE).budget.interval_s == 2.0


def test_commands_with_input_are_never_shared() -> None:
    fake, store, now = (
        FakeTransport(SITE, default=CommandResult((), 0, "ok", "")),
        MemoryPollStore(RULES),
        Now(),
    )
    for _ in range(2):
        shared(fake, store, now, max_age=10.0).run(["bash", "-c", "x"], stdin=b"data")
    assert len(fake.calls) == 2


def test_two_processes_share_answers_through_files(tmp_path: Path) -> None:
    fake, now = site_with_queue("q"), Now()
    first, second = FilePollStore(tmp_path / "polls", RULES), FilePollStore(tmp_path / "polls", RULES)
    shared(fake, first, now, max_age=1.0).run(QUEUE)
    user = shared(fake, second, now, max_age=1.0)
    assert user.run(QUEUE).stdout == "q" and user.asked == 0
    for path in (tmp_path / "polls" / f"{SITE}.json", tmp_path / "polls" / f"{SITE}.lock"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "polls").st_mode) == 0o700


def test_an_unreadable_file_is_asked_again(tmp_path: Path) -> None:
    fake, now = site_with_queue("q"), Now()
    store = FilePollStore(tmp_path, RULES)
    shared(fake, store, now, max_age=5.0).run(QUEUE)
    (tmp_path / f"{SITE}.json").write_text("{not json")
    assert shared(fake, store, now, max_age=5.0).run(QUEUE).stdout == "q"
    assert len(fake.calls) == 2
    assert json.loads((tmp_path / f"{SITE}.json").read_text())["budget"]["asked_at"] == 1000.0


def test_a_store_that_cannot_be_written_only_stops_the_sharing(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    fake, now = site_with_queue("q"), Now()
    store = FilePollStore(blocker / "polls", RULES)  # below a file: never creatable
    for _ in range(2):
        assert shared(fake, store, now, max_age=5.0).run(QUEUE).stdout == "q"
    assert len(fake.calls) == 2


def test_processes_asking_at_once_send_one_query(tmp_path: Path) -> None:
    """Single flight: the first holds the site's lock while it asks; the others use its answer."""
    started = threading.Event()

    def slow_squeue(call: FakeCall) -> CommandResult:
        started.set()
        time.sleep(0.3)
        return CommandResult(call.argv, 0, "q", "")

    fake = FakeTransport(SITE)
    fake.respond(["squeue"], handler=slow_squeue)
    results: list[str] = []

    def one_process() -> None:
        store = FilePollStore(tmp_path, RULES)  # its own store object, as another process has
        results.append(SharedAnswers(fake, store, now=time.time, max_age=1.0).run(QUEUE).stdout)

    threads = [threading.Thread(target=one_process) for _ in range(8)]
    threads[0].start()
    started.wait(5)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == ["q"] * 8
    assert len(fake.calls) == 1


# -- status and wait over a shared store ---------------------------------------------------------


@dataclass
class FakeClock:
    # Ahead of the ledger's (real) times, so its changes are older than the answers.
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc) + timedelta(seconds=5))
    ticks: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.ticks

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.ticks += seconds
        self.at += timedelta(seconds=seconds)


@dataclass
class Queue:
    """A site's queue: job id -> (token, state, reason)."""

    jobs: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def squeue(self, call: FakeCall) -> CommandResult:
        text = "".join(
            squeue_record(job_id, state, reason, token=token) + "\n"
            for job_id, (token, state, reason) in self.jobs.items()
        )
        return CommandResult(call.argv, 0, text, "")


def context(fake: FakeTransport, ledger_path: Path, clock: FakeClock, polls: object) -> Context:
    profile = load_profile(REPO / "tests" / "data" / "profiles" / "testsite.toml")
    return Context(
        profiles={SITE: profile},
        config=UserConfig(sites={SITE: SiteAccess(account="proj_1", user="me")}),
        ledger_opener=lambda: Ledger(ledger_path),
        backend_factory=lambda name, timeout: SlurmCliBackend(transport=fake, accounting="jobcomp"),
        clock=clock,
        timing=Timing(just_submitted_grace_s=0, lost_submission_after_s=0),
        polls=polls,  # type: ignore[arg-type]
    )


def submitted_jobs(path: Path, count: int, queue: Queue) -> list[str]:
    with Ledger(path) as ledger:
        jobs = ledger.record_intents(
            [
                {
                    "site": SITE,
                    "name": f"j{i}",
                    "spec_path": "x.toml",
                    "spec_hash": "0" * 64,
                    "workdir": "",
                    "outputs": (),
                    "stdout_path": "",
                    "array_size": None,
                    "depends_on": None,
                }
                for i in range(count)
            ]
        )
        ledger.mark_submitted_many((job.id, str(10 + i)) for i, job in enumerate(jobs))
    for i, job in enumerate(jobs):
        queue.jobs[str(10 + i)] = (job.token, "PENDING", "Resources")
    return [job.id for job in jobs]


def queue_site(queue: Queue) -> FakeTransport:
    fake = FakeTransport(SITE)
    fake.respond(["squeue"], handler=queue.squeue)
    fake.respond(["sacct"], stdout="")
    return fake


def test_a_second_process_status_uses_the_first_ones_answer(tmp_path: Path) -> None:
    queue = Queue()
    ids = submitted_jobs(tmp_path / "l.sqlite", 3, queue)
    fake, clock = queue_site(queue), FakeClock()
    one = context(fake, tmp_path / "l.sqlite", clock, FilePollStore(tmp_path / "polls"))
    two = context(fake, tmp_path / "l.sqlite", clock, FilePollStore(tmp_path / "polls"))
    assert [j.reason for j in refresh(one).jobs] == ["Resources"] * 3
    queue.jobs["10"] = (queue.jobs["10"][0], "RUNNING", "None")
    clock.sleep(0.5)
    assert [j.state for j in refresh(two).jobs] == [JobState.PENDING] * 3  # the shared answer, 0.5 s old
    assert len(fake.calls_to(["squeue"])) == 1
    clock.sleep(0.6)  # older than the poll interval: asked again
    assert refresh(two, [ids[0]]).jobs[0].state is JobState.RUNNING
    clock.sleep(0.01)
    assert refresh(one, [ids[0]], max_age=0).jobs[0].state is JobState.RUNNING  # cancel's way: always asks
    assert len(fake.calls_to(["squeue"])) == 3


def test_status_without_a_store_asks_every_time(tmp_path: Path) -> None:
    queue = Queue()
    submitted_jobs(tmp_path / "l.sqlite", 2, queue)
    fake = queue_site(queue)
    ctx = context(fake, tmp_path / "l.sqlite", FakeClock(), None)
    refresh(ctx)
    refresh(ctx)
    assert len(fake.calls_to(["squeue"])) == 2


def test_wait_backs_off_while_nothing_changes_and_resets_on_a_change(tmp_path: Path) -> None:
    queue = Queue()
    [job_id] = submitted_jobs(tmp_path / "l.sqlite", 1, queue)
    token = queue.jobs["10"][0]
    clock = FakeClock()
    fake = FakeTransport(SITE)
    asked: list[float] = []  # when (the clock's ticks)

    def squeue(call: FakeCall) -> CommandResult:
        asked.append(clock.ticks)
        if len(asked) == 6:
            queue.jobs["10"] = (token, "RUNNING", "None")
        if len(asked) == 9:
            queue.jobs["10"] = (token, "COMPLETED", "None")
        return queue.squeue(call)

    fake.respond(["squeue"], handler=squeue)
    ctx = context(fake, tmp_path / "l.sqlite", clock, MemoryPollStore(RULES))
    report = wait(ctx, [job_id])
    assert report.jobs[0].state is JobState.COMPLETED
    # Pending and unchanged: 1, 1.5, 2.25, 3.375 s; the 5th answer is the same again (5.06 s);
    # the 6th says RUNNING: back to 1 s, then 1.5 s, and the 9th answer ends it.
    between = [round(b - a, 3) for a, b in itertools.pairwise(asked)]
    assert between == [1.0, 1.5, 2.25, 3.375, 5.062, 1.0, 1.5, 2.25]
    # Asleep, it looks at the store every base interval (1 s) for another process's answer.
    assert max(clock.sleeps) == 1.0


def test_a_waiter_uses_another_processes_answer_before_its_own_turn(tmp_path: Path) -> None:
    """A status (or another wait) asking meanwhile wakes the waiter up early: no query of its own."""
    queue = Queue()
    [job_id] = submitted_jobs(tmp_path / "l.sqlite", 1, queue)
    token = queue.jobs["10"][0]
    clock = FakeClock()
    fake = queue_site(queue)
    store = MemoryPollStore(RULES)
    ctx = context(fake, tmp_path / "l.sqlite", clock, store)
    other = context(fake, tmp_path / "l.sqlite", clock, store)
    naps = 0

    def sleep(seconds: float) -> None:
        nonlocal naps
        FakeClock.sleep(clock, seconds)
        naps += 1
        if naps == 8:  # about 5 s in, its interval is long by now: someone else asks
            queue.jobs["10"] = (token, "COMPLETED", "None")
            refresh(other, max_age=0)

    clock.sleep = sleep  # type: ignore[method-assign]
    report = wait(ctx, [job_id])
    assert report.jobs[0].state is JobState.COMPLETED
    waiter_asked = len(fake.calls_to(["squeue"])) - 1
    # It asked at 0, 1, 2.5 and 4.75 s (then due at 8.1 s), and ended with the other's answer at 6.75 s.
    assert waiter_asked == 4 and clock.ticks == 6.75


def test_concurrent_waits_share_one_budget(tmp_path: Path) -> None:
    """Five waiting "processes" (threads, each with its own store over one directory) on
    jobs of one site send about one squeue per interval between them, not five."""
    queue = Queue()
    ids = submitted_jobs(tmp_path / "l.sqlite", 5, queue)
    fake = FakeTransport(SITE)
    lock = threading.Lock()

    def squeue(call: FakeCall) -> CommandResult:
        with lock:
            if len(fake.calls_to(["squeue"])) >= 4:  # the 5th answer: every job ended
                for job_id, (token, _, _) in list(queue.jobs.items()):
                    queue.jobs[job_id] = (token, "COMPLETED", "None")
            return queue.squeue(call)

    fake.respond(["squeue"], handler=squeue)
    rules = PollRules(interval_s=0.2, max_interval_s=0.5)
    timing = Timing(just_submitted_grace_s=0, lost_submission_after_s=0, poll_interval_s=0.2)
    reports = []

    def one(job_id: str) -> None:
        ctx = context(fake, tmp_path / "l.sqlite", FakeClock(), FilePollStore(tmp_path / "polls", rules))
        ctx.clock = _RealClock()
        ctx.timing = timing
        reports.append(wait(ctx, [job_id], timeout=20))

    threads = [threading.Thread(target=one, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.jobs[0].state for r in reports] == [JobState.COMPLETED] * 5
    # Five independent pollers would have asked 5 x 5 times.
    assert len(fake.calls_to(["squeue"])) <= 7


class _RealClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def test_an_older_answer_never_overwrites_a_newer_change(tmp_path: Path) -> None:
    queue = Queue()
    [job_id] = submitted_jobs(tmp_path / "l.sqlite", 1, queue)
    with Ledger(tmp_path / "l.sqlite") as ledger:
        read = ledger.get(job_id)
        ledger.update_states([(job_id, "RUNNING", "None")])  # another process, meanwhile
        assert (
            ledger.update_states(
                [(job_id, "PENDING", "Resources")], unchanged_since={job_id: read.updated_at}
            )
            == []
        )
        assert ledger.get(job_id).state is JobState.RUNNING
        now = ledger.get(job_id)
        [change] = ledger.update_states([(job_id, "COMPLETED", "")], unchanged_since={job_id: now.updated_at})
        assert change.state is JobState.COMPLETED
