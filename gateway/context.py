"""Everything the lifecycle works with, in one object it is given: profiles, config,
ledger, a backend per site, a clock and the timing rules.

The CLI builds the real one (:func:`open_context`); unit tests build one over
``FakeTransport`` backends, a temporary ledger and a fake clock. Sites are
talked to in parallel, each within its own deadline (:meth:`Context.per_site`):
seven dead sites cost one timeout, not seven, and one site's trouble is that
site's reported problem, never an abort of the others.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Generic, Protocol, TypeVar

from gateway.config import UserConfig
from gateway.errors import AifError, ConfigError, ConnectionLost, SiteUnreachable
from gateway.home import aif_home
from gateway.ledger import Ledger
from gateway.polling import FilePollStore, PollRules, PollStore, polls_directory
from gateway.profile_rules import load_sites
from gateway.profiles import SiteProfile, get_profile
from gateway.record import Record
from gateway.site import SiteBackend, open_backend
from gateway.transports.base import CommandHook

T = TypeVar("T")
R = TypeVar("R")


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


# Environment variables that override Timing (tests shorten them; sites never need to).
_TIMING_ENV = {
    "just_submitted_grace_s": "AIF_JUST_SUBMITTED_GRACE",
    "lost_submission_after_s": "AIF_LOST_SUBMISSION_AFTER",
    "site_timeout_s": "AIF_SITE_TIMEOUT",
    "poll_interval_s": "AIF_POLL_INTERVAL",
    "poll_max_interval_s": "AIF_POLL_MAX_INTERVAL",
}


class Timing(Record):
    """How long aif waits before it concludes something.

    ``just_submitted_grace_s``: a job may not show in squeue for a moment
    after sbatch answered; not finding it sooner proves nothing.
    ``lost_submission_after_s``: a submission still unresolved after this
    long may be fenced in the site's record (proving it was never sent);
    sooner, it may still be on its way.
    ``site_timeout_s``: the deadline of one query at one site.
    ``poll_interval_s``: a site is asked about its jobs at most this often by all
    aif processes together (``gateway.polling``), and ``aif status`` uses an
    answer up to this old; while nothing changes, waiting backs off up to
    ``poll_max_interval_s``.
    """

    just_submitted_grace_s: float = 30.0
    lost_submission_after_s: float = 120.0
    site_timeout_s: float = 60.0
    cancel_confirm_s: float = 20.0
    poll_interval_s: float = 1.0
    poll_max_interval_s: float = 10.0

    def poll_rules(self) -> PollRules:
        return PollRules(
            interval_s=self.poll_interval_s,
            max_interval_s=max(self.poll_interval_s, self.poll_max_interval_s),
        )

    @classmethod
    def from_env(cls) -> Timing:
        values: dict[str, float] = {}
        for name, variable in _TIMING_ENV.items():
            text = os.environ.get(variable)
            if text is None:
                continue
            try:
                value = float(text)
            except ValueError:
                value = -1.0
            if not value >= 0 or value == float("inf"):
                raise ConfigError(f"${variable}: {text!r} is not a number of seconds (0 or more)")
            values[name] = value
        return cls(**values)


class SiteResult(Record, Generic[R]):
    """One site's answer, or its problem (one line) and how long it took.

    ``nothing_ran``: the problem came before anything ran at the site (no
    connection, a refused login); False when the command may have run
    (the connection dropped, or no answer came by the deadline).
    """

    site: str
    value: R | None
    problem: str
    seconds: float
    nothing_ran: bool = False


@dataclass
class Context:
    """What the lifecycle works with. The ledger opens on first use (a dry run never writes one)."""

    profiles: Mapping[str, SiteProfile]  # a ProfileSet: broken profiles are set aside there
    config: UserConfig
    ledger_opener: Callable[[], Ledger]
    backend_factory: Callable[[str, float], SiteBackend]
    clock: Clock = field(default_factory=SystemClock)
    timing: Timing = field(default_factory=Timing)
    # Status answers shared with other processes (None: every query asks the site).
    polls: PollStore | None = None
    _ledger: Ledger | None = None
    _open: dict[str, SiteBackend] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = self.ledger_opener()
        return self._ledger

    def backend(self, site: str) -> SiteBackend:
        """One backend (one connection) per site for the life of the context."""
        with self._lock:
            if site not in self._open:
                self._open[site] = self.backend_factory(site, self.timing.site_timeout_s)
            return self._open[site]

    def prepare(self, sites: Iterable[str]) -> None:
        """Start reaching ``sites`` now, so that the login overlaps what the caller does next:
        each backend is opened here and logs in on a background thread (paramiko imported on
        this thread: importing it on another would only contend for the interpreter), or in a
        forked child that imports it on another core (``open_backend``'s ``login_in_child``).
        Errors are left for the first real command at the site, which meets and reports them."""
        for site in sites:
            with contextlib.suppress(Exception):  # the first real command meets it and says so
                self.backend(site).prepare()

    def per_site(
        self,
        work: Mapping[str, T],
        call: Callable[[SiteBackend, T], R],
        *,
        deadline: float | None = None,
    ) -> dict[str, SiteResult[R]]:
        """``call(backend, work[site])`` for every site at once, each within the deadline.

        Any error at one site (unreachable, unexpected output, a bug's
        exception) becomes that site's problem. A site that has not answered
        by the deadline (``clock.monotonic()`` time) is reported as such; its
        thread is a daemon, so it never holds the process up.
        """
        if not work:
            return {}
        results: dict[str, SiteResult[R]] = {}
        started = self.clock.monotonic()
        done = threading.Condition()

        def run(site: str, item: T) -> None:
            t0 = time.monotonic()
            try:
                value = call(self.backend(site), item)
                result: SiteResult[R] = SiteResult(site, value, "", time.monotonic() - t0)
            except ConnectionLost as exc:
                result = SiteResult(site, None, exc.message, time.monotonic() - t0)
            except SiteUnreachable as exc:
                result = SiteResult(site, None, exc.message, time.monotonic() - t0, nothing_ran=True)
            except AifError as exc:
                result = SiteResult(site, None, exc.message, time.monotonic() - t0)
            except (KeyboardInterrupt, SystemExit):
                if threading.current_thread() is threading.main_thread():
                    raise  # Ctrl-C is the user's: the caller says what was done
                result = SiteResult(site, None, f"site {site}: interrupted", time.monotonic() - t0)
            except Exception as exc:  # one site's surprise must not stop the others
                result = SiteResult(
                    site, None, f"site {site}: {type(exc).__name__}: {exc}", time.monotonic() - t0
                )
            with done:
                results[site] = result
                done.notify_all()

        if len(work) == 1 and deadline is None:
            # One site and no deadline: no thread needed (Ctrl-C reaches the call at once).
            [(site, item)] = work.items()
            run(site, item)
            return results
        for site, item in work.items():
            threading.Thread(target=run, args=(site, item), name=f"aif-{site}", daemon=True).start()
        with done:
            # Without a deadline each site is bounded by its own command timeouts.
            while len(results) < len(work):
                left = 0.5 if deadline is None else deadline - self.clock.monotonic()
                if left <= 0:
                    break
                done.wait(timeout=min(left, 0.5))
            for site in work:
                if site not in results:
                    waited = self.clock.monotonic() - started
                    results[site] = SiteResult(
                        site, None, f"site {site}: no answer within {waited:.0f} s", waited
                    )
            return dict(results)

    def close(self) -> None:
        with self._lock:
            for backend in self._open.values():
                # Closing a dead connection must not hide the real outcome.
                with contextlib.suppress(Exception):
                    backend.close()
            self._open.clear()
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_context(on_command: CommandHook | None = None, *, login_in_child: bool = False) -> Context:
    """The real context: the user's profiles and config, the ledger, SSH/local/pyslurm backends,
    status answers shared through ``$AIF_HOME/polls``. ``login_in_child``: see ``open_backend``
    (the CLI's choice; a library caller's process may have threads of its own)."""
    profiles, config = load_sites()

    def backend_for(site: str, timeout: float) -> SiteBackend:
        return open_backend(
            get_profile(profiles, site),
            config.access(site),
            on_command,
            timeout=timeout,
            login_in_child=login_in_child,
        )

    timing = Timing.from_env()
    return Context(
        profiles=profiles,
        config=config,
        ledger_opener=Ledger,
        backend_factory=backend_for,
        timing=timing,
        polls=FilePollStore(polls_directory(aif_home()), timing.poll_rules()),
    )
