"""Shared polling: every aif process on this machine together asks a site about its jobs
at most once per poll interval. Part of the api layer (used by ``gateway.status``).

A site's controller pays for every ``squeue``; a pipeline of fifty ``aif wait``
processes must not cost it fifty times one. So the answers to the status
queries (``squeue``, and ``sacct`` for jobs that left the queue) are kept in
``$AIF_HOME/polls/SITE.json`` with the time each was taken, beside the site's
poll *budget*: its current interval and what its queue said last. Like the
federation's snapshots (``gateway.federation.snapshot``), one lock file per
site: the process that asks holds it, the others wait and then use its answer.

When an answer may be used instead of asking (``usable``): it was taken after
``accept_after``, which is the later of

- now minus the freshness the caller wants: ``aif status`` the base interval
  (an answer at most that old is the truth it would have got), ``aif wait``
  the site's current interval (the budget), ``aif cancel`` none (it asks);
- the newest ledger change of the jobs asked: a job sent (or seen changing)
  after an answer was taken may be missing from it, or ahead of it, and its
  absence would mean nothing. The identity of every job is still confirmed
  from the answer's records (token, Slurm name) as if it had just arrived.

A site that could not be asked is shared too (its problem, for the same
time): a dead site is not hammered by every process. The budget's interval
grows by ``growth`` after each ``squeue`` answer in which no job changed
(state and reason of every job of the user's at the site), goes back to the
base interval when something changed, doubles when the site could not be
asked, and never exceeds ``max_interval_s``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway import slurm
from gateway.errors import ConnectionLost, HomeUnusable, SiteUnreachable
from gateway.home import ensure_home
from gateway.record import Record
from gateway.site import FileTransport
from gateway.transports.base import DEFAULT_TIMEOUT, CommandResult, Progress

# Answers older than this are dropped when the file is written (sacct answers
# for other job sets accumulate otherwise); the queue's answer is always kept.
_KEEP_ANSWERS_S = 120.0
# An answer "taken" further in the future than this is from a clock that was
# set back: never used.
_CLOCK_SLACK_S = 1.0


class PollRules(Record):
    """How often a site may be asked: the base interval, its growth and its cap."""

    interval_s: float = 1.0
    max_interval_s: float = 10.0
    growth: float = 1.5


class Budget(Record):
    """A site's poll budget: its current interval, when its queue was last asked, what it said."""

    interval_s: float
    asked_at: float | None = None  # the clock's time (epoch seconds); None: never asked
    digest: str = ""  # the jobs' states in that answer ('' when it failed)

    def due_in(self, now: float) -> float:
        """Seconds until the site may be asked again (0 or less: now)."""
        return 0.0 if self.asked_at is None else self.asked_at + self.interval_s - now


def next_budget(budget: Budget, rules: PollRules, *, asked_at: float, digest: str | None) -> Budget:
    """The budget after asking the queue at ``asked_at``: ``digest`` of its answer, None if
    the site could not be asked. Nothing changed: the interval grows; something did: back
    to the base interval; a failure: it doubles. Never above the cap."""
    if digest is None:
        interval = budget.interval_s * 2.0
    elif budget.asked_at is None or digest != budget.digest:
        interval = rules.interval_s
    else:
        interval = budget.interval_s * rules.growth
    interval = max(rules.interval_s, min(interval, rules.max_interval_s))
    return Budget(interval_s=interval, asked_at=asked_at, digest=digest or "")


class Answer(Record):
    """What one status query gave, and when it was asked (the clock's epoch seconds).

    ``problem`` is set when the site could not be asked at all (then there is
    no result); ``nothing_ran`` says whether the command surely did not run.
    """

    taken_at: float
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    problem: str = ""
    nothing_ran: bool = False

    def usable(self, accept_after: float, now: float) -> bool:
        """Taken after ``accept_after`` (strictly: an answer exactly one interval old is due)."""
        return accept_after < self.taken_at <= now + _CLOCK_SLACK_S

    def replay(self, argv: Sequence[str]) -> CommandResult:
        """The answer as if the command had just run (its failure raised as it was)."""
        if self.problem:
            raise SiteUnreachable(self.problem) if self.nothing_ran else ConnectionLost(self.problem)
        return CommandResult(tuple(argv), self.returncode, self.stdout, self.stderr)


class SitePolls(Record):
    """Everything kept for one site: its budget and its latest answers by query."""

    budget: Budget
    answers: Mapping[str, Answer] = field(default_factory=dict)


def query_key(argv: Sequence[str]) -> str:
    """The name an answer is kept under: its command line (the same query, the same key)."""
    import hashlib  # here: a submission, which imports this module, asks no query through it

    return hashlib.sha256("\0".join(argv).encode()).hexdigest()[:24]


def is_queue_query(argv: Sequence[str]) -> bool:
    """The query that sets the budget: squeue of all the user's jobs."""
    return bool(argv) and argv[0] == "squeue"


_STATE_FIELDS = tuple(slurm.SQUEUE_FIELDS.index(name) for name in ("JobID", "JobArrayID", "State", "Reason"))
_SPLITS = max(_STATE_FIELDS) + 1


def queue_digest(stdout: str) -> str:
    """What must stay the same for "nothing changed": each job's id, state and reason.

    Not the whole text: a pending job's estimated start moves at every
    backfill pass without anything happening to it.
    """
    rows = []
    for chunk in stdout.split(slurm.RECORD_END)[:-1]:
        fields = chunk.lstrip("\n").split(slurm.FIELD_SEPARATOR, _SPLITS)
        rows.append("\x1f".join(fields[i] for i in _STATE_FIELDS if i < len(fields)))
    rows.sort()
    import hashlib  # loaded by query_key already: a dictionary lookup

    return hashlib.sha256("\x1e".join(rows).encode()).hexdigest()[:24]


def with_answer(polls: SitePolls, rules: PollRules, argv: Sequence[str], answer: Answer) -> SitePolls:
    """``polls`` with a new answer kept (old ones dropped) and, for the queue, the budget moved on."""
    answers = {
        key: kept
        for key, kept in polls.answers.items()
        if kept.taken_at >= answer.taken_at - max(_KEEP_ANSWERS_S, 2 * rules.max_interval_s)
    }
    answers[query_key(argv)] = answer
    budget = polls.budget
    if is_queue_query(argv):
        digest = None if answer.problem or answer.returncode != 0 else queue_digest(answer.stdout)
        budget = next_budget(budget, rules, asked_at=answer.taken_at, digest=digest)
    return SitePolls(budget=budget, answers=answers)


# -- where answers are kept -------------------------------------------------------------------


class PollStore(Protocol):
    """Where the answers and budgets live: files shared by every process, or one process's memory."""

    rules: PollRules

    def read(self, site: str) -> SitePolls: ...

    def locked(self, site: str) -> contextlib.AbstractContextManager[None]: ...

    def write(self, site: str, polls: SitePolls) -> None: ...

    def stamp(self, site: str) -> object:
        """Changes whenever a new answer for ``site`` is kept (cheap: no answer is read)."""
        ...


class FilePollStore:
    """``$AIF_HOME/polls/SITE.json`` and ``SITE.lock``: shared by every aif process of the user."""

    def __init__(self, directory: Path, rules: PollRules | None = None) -> None:
        self.directory = directory
        self.rules = rules or PollRules()

    def _path(self, site: str) -> Path:
        return self.directory / f"{site}.json"

    # Sharing only saves queries: a home where polls/ cannot be written (read-only,
    # full) makes every process ask for itself, as before; it never fails a status.

    @contextlib.contextmanager
    def locked(self, site: str) -> Iterator[None]:
        try:
            ensure_home(self.directory)
            fd = os.open(self.directory / f"{site}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except (OSError, HomeUnusable):
            yield  # no lock to take: this process asks on its own
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def stamp(self, site: str) -> object:
        try:
            info = os.stat(self._path(site))
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns)  # a new file replaces the old one at every write

    def read(self, site: str) -> SitePolls:
        try:
            return _polls_from_json(json.loads(self._path(site).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return SitePolls(Budget(self.rules.interval_s))  # none yet, or unreadable: ask

    def write(self, site: str, polls: SitePolls) -> None:
        path = self._path(site)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            ensure_home(self.directory)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(_polls_to_json(polls), handle)
            partial.replace(path)  # readers see the old file or the new one, never half of one
        except (OSError, HomeUnusable):
            with contextlib.suppress(OSError):
                partial.unlink()


class MemoryPollStore:
    """The same rules inside one process (tests, and ``wait`` when nothing is shared)."""

    def __init__(self, rules: PollRules | None = None) -> None:
        self.rules = rules or PollRules()
        self._polls: dict[str, SitePolls] = {}
        self._writes: dict[str, int] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def locked(self, site: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(site, threading.Lock())
        with lock:
            yield

    def read(self, site: str) -> SitePolls:
        return self._polls.get(site) or SitePolls(Budget(self.rules.interval_s))

    def write(self, site: str, polls: SitePolls) -> None:
        self._polls[site] = polls
        self._writes[site] = self._writes.get(site, 0) + 1

    def stamp(self, site: str) -> object:
        return self._writes.get(site, 0)


def _polls_to_json(polls: SitePolls) -> dict[str, Any]:
    budget = polls.budget
    return {
        "budget": {"interval_s": budget.interval_s, "asked_at": budget.asked_at, "digest": budget.digest},
        "answers": {
            key: {
                "taken_at": a.taken_at,
                "returncode": a.returncode,
                "stdout": a.stdout,
                "stderr": a.stderr,
                "problem": a.problem,
                "nothing_ran": a.nothing_ran,
            }
            for key, a in polls.answers.items()
        },
    }


def _polls_from_json(data: dict[str, Any]) -> SitePolls:
    raw = data["budget"]
    asked_at = raw["asked_at"]
    budget = Budget(
        interval_s=float(raw["interval_s"]),
        asked_at=None if asked_at is None else float(asked_at),
        digest=str(raw["digest"]),
    )
    answers = {
        str(key): Answer(
            taken_at=float(a["taken_at"]),
            returncode=int(a["returncode"]),
            stdout=str(a["stdout"]),
            stderr=str(a["stderr"]),
            problem=str(a["problem"]),
            nothing_ran=bool(a["nothing_ran"]),
        )
        for key, a in data["answers"].items()
    }
    return SitePolls(budget=budget, answers=answers)


# -- asking through the store ---------------------------------------------------------------


@dataclass
class SharedAnswers:
    """A transport for a site's read-only status queries that asks the site only when no
    usable answer is kept (see the module's rules), and keeps what it got for the others.

    ``max_age``: the freshness wanted, in seconds; None for the site's current
    interval (the budget). ``newest_change``: the newest ledger change of the
    jobs asked (the clock's epoch seconds). Wrap only queries that change
    nothing at the site: their answers are replayed.
    """

    inner: FileTransport
    store: PollStore
    now: Callable[[], float]
    max_age: float | None = None
    newest_change: float = 0.0
    asked: int = 0  # how many commands really ran at the site through this wrapper
    site: str = field(init=False)

    def __post_init__(self) -> None:
        self.site = self.inner.site

    def _accept_after(self, polls: SitePolls, now: float) -> float:
        max_age = polls.budget.interval_s if self.max_age is None else self.max_age
        return max(now - max_age, self.newest_change)

    def run(
        self, argv: Sequence[str], stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> CommandResult:
        if stdin is not None:
            return self.inner.run(argv, stdin=stdin, timeout=timeout)
        key = query_key(argv)
        site = self.inner.site
        now = self.now()
        polls = self.store.read(site)
        # Freshness is fixed when the caller asks: an answer someone else started
        # after that, while this process waited for the lock, is as good as its own.
        accept_after = self._accept_after(polls, now)
        kept = polls.answers.get(key)
        if kept is None or not kept.usable(accept_after, now):
            with self.store.locked(site):
                polls = self.store.read(site)
                kept = polls.answers.get(key)
                if kept is None or not kept.usable(accept_after, self.now()):
                    kept = self._ask(polls, argv, timeout)
        return kept.replay(argv)

    def _ask(self, polls: SitePolls, argv: Sequence[str], timeout: float) -> Answer:
        """Run the query at the site (the lock is held) and keep its answer, or its failure."""
        taken_at = self.now()  # before it runs: the answer is at least this fresh
        self.asked += 1
        try:
            result = self.inner.run(argv, timeout=timeout)
            answer = Answer(taken_at, result.returncode, result.stdout, result.stderr)
        except ConnectionLost as exc:
            answer = Answer(taken_at, problem=exc.message)
        except SiteUnreachable as exc:
            answer = Answer(taken_at, problem=exc.message, nothing_ran=True)
        self.store.write(self.inner.site, with_answer(polls, self.store.rules, argv, answer))
        return answer

    # Files are never shared: straight to the site.
    def read_file(self, remote_path: str) -> bytes:
        return self.inner.read_file(remote_path)

    def get_tree(self, remote_dir: str, local_dir: Path, progress: Progress | None = None) -> object:
        return self.inner.get_tree(remote_dir, local_dir, progress)

    def get_file(self, remote_path: str, local_path: Path, progress: Progress | None = None) -> object:
        return self.inner.get_file(remote_path, local_path, progress)

    def close(self) -> None:
        """Nothing: the connection belongs to the backend this wrapper was lent to."""


def polls_directory(home: Path) -> Path:
    return home / "polls"


__all__ = [
    "Answer",
    "Budget",
    "FilePollStore",
    "MemoryPollStore",
    "PollRules",
    "PollStore",
    "SharedAnswers",
    "SitePolls",
    "is_queue_query",
    "next_budget",
    "polls_directory",
    "query_key",
    "queue_digest",
    "with_answer",
]
