"""The forked login (gateway.transports.mux.forked) without a network: a real fork of this
process, with a stand-in for the SSH transport that leaves its traces in files (the child is
another process), and the rules that keep a command from running twice."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from gateway.errors import AifError, ConfigError, ConnectionLost, SiteUnreachable
from gateway.transports.base import DEFAULT_TIMEOUT, CommandResult
from gateway.transports.mux import SharedTarget
from gateway.transports.mux import forked as forked_module
from gateway.transports.mux.forked import ForkedTransport

TARGET = SharedTarget(site="alpha", host="login.alpha.example", port=2222, user="me")

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


class StandIn:
    """What the child logs in with: answers with the pid that ran the command."""

    def __init__(
        self, traces: Path, refuse_login: bool = False, login_error: type[AifError] = SiteUnreachable
    ) -> None:
        self.site = TARGET.site
        self.traces = traces
        self.refuse_login = refuse_login
        self.login_error = login_error
        self.soon = 0

    def trace(self, name: str) -> None:
        (self.traces / f"{name}.{os.getpid()}").touch()

    def connect(self) -> None:
        if self.refuse_login:
            raise self.login_error("cannot connect to site alpha at login.alpha.example:2222: refused")
        deadline = time.monotonic() + 30
        while (self.traces / "slow-login").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # a slow site: the login lasts until the test removes the file
        self.trace("login")

    def connect_soon(self) -> None:
        self.soon += 1

    def run(
        self, argv: Sequence[str], stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> CommandResult:
        self.trace("run")
        if argv[0] == "block":
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not list(self.traces.glob("closed.*")):
                time.sleep(0.01)
        if argv[0] == "die":
            os._exit(3)
        out = f"{os.getpid()} {' '.join(argv)} {(stdin or b'').decode()}"
        return CommandResult(argv=tuple(argv), returncode=0, stdout=out, stderr="")

    def close(self) -> None:
        self.trace("closed")


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    return tmp_path


class MakeForked(Protocol):
    def __call__(
        self, refuse_login: bool = False, login_error: type[AifError] = SiteUnreachable
    ) -> tuple[ForkedTransport, StandIn]: ...


@pytest.fixture
def forked(monkeypatch: pytest.MonkeyPatch, traces: Path) -> Iterator[MakeForked]:
    """Makes forked transports over a stand-in login; every one is closed after the test."""
    made: list[ForkedTransport] = []

    def make(
        refuse_login: bool = False, login_error: type[AifError] = SiteUnreachable
    ) -> tuple[ForkedTransport, StandIn]:
        stand_in = StandIn(traces, refuse_login, login_error)
        monkeypatch.setattr(forked_module, "direct_transport", lambda target: stand_in)
        transport = ForkedTransport(TARGET)
        made.append(transport)
        return transport, stand_in

    yield make
    for transport in made:
        transport.close()


def waiting_for_answer(
    transport: ForkedTransport, argv: list[str]
) -> tuple[threading.Thread, list[BaseException]]:
    """``transport.run(argv)`` on a thread of its own, started: the ConnectionLost it ends with."""
    lost: list[BaseException] = []

    def wait() -> None:
        try:
            transport.run(argv)
        except ConnectionLost as exc:  # the parent's view: maybe sent
            lost.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, lost


def child_pid(transport: ForkedTransport) -> int:
    assert transport._child is not None, "no child was forked (does this process have threads?)"
    return transport._child.pid


def exited(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            return True
        time.sleep(0.01)
    return False


def test_commands_run_in_the_child_that_logged_in_with_their_stdin(forked: MakeForked, traces: Path) -> None:
    transport, stand_in = forked()
    transport.connect_soon()
    pid = child_pid(transport)
    assert pid != os.getpid() and stand_in.soon == 0
    first = transport.run(["sbatch", "--parsable"], stdin=b"#!/bin/bash\ntrue\n")
    second = transport.run(["squeue"])
    assert (
        first.stdout == f"{pid} sbatch --parsable #!/bin/bash\ntrue\n" and second.stdout == f"{pid} squeue "
    )
    assert transport.child_runs == 2 and [p.name for p in traces.glob("login.*")] == [f"login.{pid}"]
    transport.close()
    assert exited(pid) and (traces / f"closed.{pid}").exists()


def test_the_parent_going_away_mid_command_drops_the_childs_connection_at_once(
    forked: MakeForked, traces: Path
) -> None:
    """Ctrl-C (or a kill) of aif closes its end: the child closes the SSH connection at once, as
    aif's own would have dropped, so the site's program stops as it would have."""
    transport, _ = forked()
    transport.connect_soon()
    pid = child_pid(transport)
    waiting, errors = waiting_for_answer(transport, ["block"])
    deadline = time.monotonic() + 10
    while not (traces / f"run.{pid}").exists():
        assert time.monotonic() < deadline, "the child never ran the command"
        time.sleep(0.01)
    transport.close()
    waiting.join(10)
    assert exited(pid, within=5.0) and (traces / f"closed.{pid}").exists()
    assert len(errors) == 1 and "it may or may not have run" in str(errors[0])


def test_a_child_gone_before_the_request_was_written_leaves_the_command_to_a_direct_connection(
    forked: MakeForked, traces: Path
) -> None:
    transport, _ = forked()
    transport.connect_soon()
    pid = child_pid(transport)
    os.kill(pid, signal.SIGKILL)
    assert exited(pid)
    result = transport.run(["squeue"])
    assert result.stdout.startswith(f"{os.getpid()} squeue") and transport.child_runs == 0


def test_an_answer_lost_with_the_child_is_connection_lost_and_never_sent_again(
    forked: MakeForked, traces: Path
) -> None:
    transport, _ = forked()
    transport.connect_soon()
    pid = child_pid(transport)
    with pytest.raises(ConnectionLost, match="it may or may not have run"):
        transport.run(["die"])
    assert [p.name for p in traces.glob("run.*")] == [f"run.{pid}"]  # ran once, in the child only


def test_a_failed_login_is_the_commands_error_and_nothing_runs_anywhere(
    forked: MakeForked, traces: Path
) -> None:
    transport, _ = forked(refuse_login=True)
    transport.connect_soon()
    with pytest.raises(SiteUnreachable, match="cannot connect to site alpha"):
        transport.run(["sbatch"])
    assert not list(traces.glob("run.*"))


def test_a_process_with_threads_logs_in_on_a_thread_not_a_fork(forked: MakeForked, traces: Path) -> None:
    transport, stand_in = forked()
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        transport.connect_soon()
    finally:
        stop.set()
        other.join()
    assert transport._child is None and stand_in.soon == 1
    assert transport.run(["squeue"]).stdout.startswith(f"{os.getpid()} squeue")


def test_the_child_keeps_none_of_the_parents_files_open(forked: MakeForked, traces: Path) -> None:
    """A lock the parent holds when it forks (flock: of the open file, shared by a fork) is
    free once the parent lets go, while the child still serves it."""
    import fcntl

    lock_file = traces / "held.lock"
    held = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    transport, _ = forked()
    transport.connect_soon()
    pid = child_pid(transport)
    assert transport.run(["squeue"]).stdout.startswith(f"{pid} ")  # the child is up and serving
    os.close(held)
    again = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child held it
    finally:
        os.close(again)


def test_a_child_forked_ahead_is_given_its_site_by_the_first_transport(
    forked: MakeForked, traces: Path
) -> None:
    """The CLI forks the child before it knows the site (paramiko loads meanwhile); the first
    transport hands it the site; an unused one is dropped and exits; a dead one is replaced."""
    transport, _ = forked()
    forked_module.fork_ahead()
    ahead = forked_module._ahead
    assert ahead is not None
    transport.connect_soon()
    assert child_pid(transport) == ahead.pid and forked_module._ahead is None
    assert transport.run(["squeue"]).stdout.startswith(f"{ahead.pid} squeue")

    forked_module.fork_ahead()
    unused = forked_module._ahead
    assert unused is not None
    forked_module.drop_ahead()
    assert exited(unused.pid) and not list(traces.glob(f"login.{unused.pid}"))

    forked_module.fork_ahead()
    dead = forked_module._ahead
    assert dead is not None
    os.kill(dead.pid, signal.SIGKILL)
    assert exited(dead.pid)
    other, _ = forked()
    other.connect_soon()
    assert child_pid(other) != dead.pid
    assert other.run(["squeue"]).stdout.startswith(f"{child_pid(other)} squeue")


def test_a_request_the_parent_gave_up_on_during_the_login_is_not_run(
    forked: MakeForked, traces: Path
) -> None:
    """Ctrl-C while the child still logs in: the request is already in the pair, the parent
    leaves; the child, logged in, reads it, sees the parent gone, and runs nothing."""
    (traces / "slow-login").touch()
    transport, _ = forked()
    transport.connect_soon()
    pid = child_pid(transport)
    waiting, outcome = waiting_for_answer(transport, ["sbatch"])
    time.sleep(0.3)  # the request is written; the child is still logging in
    transport.close()
    waiting.join(10)
    assert len(outcome) == 1
    (traces / "slow-login").unlink()
    assert exited(pid) and (traces / f"login.{pid}").exists()
    assert not list(traces.glob("run.*"))  # never run, anywhere


def test_after_close_nothing_goes_over_a_new_connection(forked: MakeForked, traces: Path) -> None:
    transport, _ = forked()
    transport.connect_soon()
    child = transport._child
    assert child is not None
    transport.close()
    # A thread that held the child from before close() writes into the closed pair: not sent.
    transport._child = child
    with pytest.raises(SiteUnreachable, match="closed before sbatch could be sent"):
        transport.run(["sbatch"])
    assert not list(traces.glob("run.*"))


def test_a_config_error_at_login_is_that_error_and_the_next_command_logs_in_again(
    forked: MakeForked, traces: Path
) -> None:
    transport, stand_in = forked(refuse_login=True, login_error=ConfigError)
    transport.connect_soon()
    with pytest.raises(ConfigError, match="cannot connect to site alpha"):
        transport.run(["sbatch"])
    assert transport._child is None and not list(traces.glob("run.*"))
    stand_in.refuse_login = False  # fixed meanwhile: the next command logs in on its own
    assert transport.run(["squeue"]).stdout.startswith(f"{os.getpid()} squeue")
