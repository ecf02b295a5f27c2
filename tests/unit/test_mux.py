"""The shared SSH connection (gateway.transports.mux) without a network: the wire format,
the holder over a real unix socket in front of a FakeTransport, the uid check, and the
client's fallback to a direct connection and its exactly-once rule."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError, ConnectionLost, HostKeyRejected
from gateway.transports.base import CommandResult
from gateway.transports.fake import FakeCall, FakeTransport
from gateway.transports.mux import SharedTarget, SharedTransport, stop_holders
from gateway.transports.mux import protocol as wire
from gateway.transports.mux.holder import Holder

TARGET = SharedTarget(site="alpha", host="login.alpha.example", port=2222, user="me")


# -- the wire format -------------------------------------------------------------------


def test_exec_request_round_trips_with_stdin_and_without() -> None:
    for stdin in (b"#!/bin/sh\n" * 5000, b"", None):
        ours, theirs = socket.socketpair()
        with ours, theirs:
            argv = ["sbatch", "--parsable", 'it\'s "quoted" $(not run)', "\udcff"]
            ours.sendall(wire.exec_request(TARGET, argv, stdin, 12.5))
            header = wire.receive_header(theirs)
            request = wire.parse_exec(header, theirs)
        assert request == wire.ExecRequest(TARGET.key, tuple(argv), stdin, 12.5)
        assert SharedTarget.from_key(request.target) == TARGET


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # closed before a length
        b"\x00\x00\x00\x10{}",  # closed inside the header
        b"\x00\x00\x00\x03abc",  # not JSON
        b"\x00\x00\x00\x02[]",  # JSON but no object
        b"\xff\xff\xff\xff",  # longer than any header may be
    ],
)
def test_broken_messages_are_protocol_errors(raw: bytes) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(raw)
        ours.shutdown(socket.SHUT_WR)
        with pytest.raises(wire.ProtocolError):
            wire.receive_header(theirs)


@pytest.mark.parametrize(
    "header",
    [
        {"target": "t", "argv": [], "timeout": 1, "stdin": -1},
        {"target": "t", "argv": ["ok", 3], "timeout": 1, "stdin": -1},
        {"target": "t", "argv": ["ok"], "timeout": True, "stdin": -1},
        {"target": "t", "argv": ["ok"], "timeout": 1, "stdin": "many"},
        {"argv": ["ok"], "timeout": 1, "stdin": -1},
    ],
)
def test_malformed_exec_requests_are_refused(header: dict[str, object]) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(wire.ProtocolError):
        wire.parse_exec(header, theirs)


def test_peer_uid_is_the_connecting_process() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert wire.peer_uid(theirs) == os.getuid()


def test_long_socket_paths_are_reached_through_proc(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    with wire.reachable_path(deep / "x.sock") as name:
        assert name.startswith("/proc/self/fd/") and name.endswith("/x.sock")
    with wire.reachable_path(Path("/tmp/x.sock")) as name:
        assert name == "/tmp/x.sock"


# -- a holder in a thread, in front of a FakeTransport ------------------------------------


class Running:
    """A holder serving in a thread; ``reason`` is why it stopped."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder
        self.reason = ""
        holder.bind()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.reason = self.holder.serve()

    def stop(self) -> str:
        self.holder.stop("test over")
        self.thread.join(5)
        assert not self.thread.is_alive()
        return self.reason


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def site(home: Path) -> FakeTransport:
    return FakeTransport("alpha")


def start_holder(home: Path, site: FakeTransport, **options: object) -> Running:
    options.setdefault("persist_s", 60.0)
    return Running(
        Holder(site, TARGET.key, wire.socket_path(home, "alpha"), **options)  # type: ignore[arg-type]
    )


@pytest.fixture
def holder(home: Path, site: FakeTransport) -> Iterator[Running]:
    running = start_holder(home, site)
    yield running
    running.stop()


class Direct(FakeTransport):
    """Stands in for the direct SshTransport a client falls back to."""


def client(home: Path, direct: FakeTransport | None = None) -> tuple[SharedTransport, list[str]]:
    """A client whose direct connection is ``direct`` and whose holder starts are recorded."""
    shared = SharedTransport(TARGET, home=home)
    started: list[str] = []
    fallback = direct if direct is not None else Direct("alpha")
    shared._new_direct = lambda: fallback  # type: ignore[method-assign,assignment,return-value]
    shared._start_holder = lambda: started.append("holder")  # type: ignore[method-assign]
    return shared, started


def test_a_command_runs_through_the_holder_with_its_stdin(
    home: Path, site: FakeTransport, holder: Running
) -> None:
    site.respond(["sbatch"], stdout="123\n", stderr="warn\n", returncode=0)
    site.respond(["false"], returncode=3)
    shared, started = client(home)
    hooked: list[tuple[str, ...]] = []
    shared.on_command = lambda _site, argv: hooked.append(tuple(argv))
    result = shared.run(["sbatch", "--parsable"], stdin=b"#!/bin/sh\n", timeout=7)
    assert result == CommandResult(("sbatch", "--parsable"), 0, "123\n", "warn\n")
    assert shared.run(["false"]).returncode == 3
    assert site.calls == [
        FakeCall(("sbatch", "--parsable"), b"#!/bin/sh\n", 7.0),
        FakeCall(("false",), None, 60.0),
    ]
    assert shared.shared_runs == 2 and started == [] and hooked == [("sbatch", "--parsable"), ("false",)]
    assert holder.holder.served == 2


def test_socket_and_directory_are_private(home: Path, holder: Running) -> None:
    path = wire.socket_path(home, "alpha")
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_requests_are_served_concurrently(home: Path, site: FakeTransport, holder: Running) -> None:
    both_running = threading.Barrier(2, timeout=5)

    def meet(call: FakeCall) -> CommandResult:
        both_running.wait()  # would time out if the holder ran one request at a time
        return CommandResult(call.argv, 0, "met", "")

    site.respond(["slow"], handler=meet)
    shared, _ = client(home)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(shared.run(["slow"]).stdout)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == ["met", "met"]


def test_another_uid_is_declined_and_nothing_runs(home: Path, site: FakeTransport) -> None:
    running = start_holder(home, site, allowed_uid=os.getuid() + 1)
    try:
        direct = Direct("alpha").respond(["squeue"], stdout="direct\n")
        shared, started = client(home, direct)
        assert shared.run(["squeue"]).stdout == "direct\n"
        # That holder stays (it serves its own user): no second one is started.
        assert site.calls == [] and direct.commands == [("squeue",)] and started == []
    finally:
        running.stop()


def test_no_socket_or_a_stale_one_falls_back_to_direct_and_starts_a_holder(home: Path) -> None:
    direct = Direct("alpha").respond(["squeue"], stdout="direct\n")
    shared, started = client(home, direct)
    assert shared.run(["squeue"]).stdout == "direct\n"
    assert started == ["holder"]
    # A socket file nobody listens on (a holder killed with -9).
    path = wire.socket_path(home, "alpha")
    wire.ensure_private_directory(path.parent)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with wire.reachable_path(path) as name:
        stale.bind(name)
    stale.close()
    shared, started = client(home, direct)
    assert shared.run(["squeue"]).stdout == "direct\n" and started == ["holder"]
    # Once direct, this process stays direct.
    assert shared.run(["squeue"]).stdout == "direct\n" and started == ["holder"]
    assert len(direct.commands) == 3


def test_a_lost_answer_is_connection_lost_and_never_sent_again(home: Path) -> None:
    """A holder that took the request and died: the command may have run."""
    path = wire.socket_path(home, "alpha")
    wire.ensure_private_directory(path.parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with wire.reachable_path(path) as name:
        listener.bind(name)
    listener.listen(1)
    taken: list[wire.ExecRequest] = []

    def take_and_die() -> None:
        conn, _ = listener.accept()
        taken.append(wire.parse_exec(wire.receive_header(conn), conn))
        conn.close()

    thread = threading.Thread(target=take_and_die, daemon=True)
    thread.start()
    direct = Direct("alpha")
    shared, started = client(home, direct)
    with pytest.raises(ConnectionLost, match="may or may not have run"):
        shared.run(["sbatch"], stdin=b"script")
    thread.join(5)
    listener.close()
    assert [t.argv for t in taken] == [("sbatch",)]
    assert direct.calls == [] and started == []


def test_a_holder_that_never_answers_is_connection_lost_after_the_deadline(
    home: Path, site: FakeTransport, holder: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.transports.mux import client as mux_client

    monkeypatch.setattr(mux_client, "_ANSWER_MARGIN_S", 0.1)
    release = threading.Event()
    site.respond(["hang"], handler=lambda call: (release.wait(5), CommandResult(call.argv, 0, "", ""))[1])
    shared, started = client(home)
    try:
        with pytest.raises(ConnectionLost, match="no answer in time"):
            shared.run(["hang"], timeout=0.2)
    finally:
        release.set()
    assert started == []


def test_the_holders_transport_errors_reach_the_client_as_the_same_kind(
    home: Path, site: FakeTransport, holder: Running
) -> None:
    def raise_(error: Exception) -> object:
        def handler(call: FakeCall) -> CommandResult:
            raise error

        return handler

    site.respond(["drop"], handler=raise_(ConnectionLost("site alpha: dropped")))  # type: ignore[arg-type]
    site.respond(["key"], handler=raise_(HostKeyRejected("site alpha: changed key")))  # type: ignore[arg-type]
    site.respond(["bug"], handler=raise_(RuntimeError("boom")))  # type: ignore[arg-type]
    shared, started = client(home)
    with pytest.raises(ConnectionLost, match=r"^site alpha: dropped$"):
        shared.run(["drop"])
    with pytest.raises(HostKeyRejected, match="changed key"):
        shared.run(["key"])
    with pytest.raises(ConnectionLost, match="RuntimeError: boom; it may or may not have run"):
        shared.run(["bug"])
    with pytest.raises(ValueError, match="NUL"):
        shared.run(["echo", "a\0b"])  # refused by the client before anything is sent
    assert started == []


def test_a_session_the_holder_could_not_open_runs_directly(home: Path, site: FakeTransport) -> None:
    """SiteUnreachable from the holder means nothing ran (e.g. the site's MaxSessions)."""
    site.fail_on_call(1)
    running = start_holder(home, site)
    try:
        direct = Direct("alpha").respond(["squeue"], stdout="direct\n")
        shared, started = client(home, direct)
        assert shared.run(["squeue"]).stdout == "direct\n"
        assert direct.commands == [("squeue",)] and started == []
    finally:
        running.stop()


def test_another_target_is_declined_and_the_holder_makes_way(home: Path, site: FakeTransport) -> None:
    running = start_holder(home, site)
    other = SharedTarget(site="alpha", host="new.alpha.example")
    direct = Direct("alpha").respond(["squeue"], stdout="direct\n")
    shared = SharedTransport(other, home=home)
    shared._new_direct = lambda: direct  # type: ignore[method-assign,assignment,return-value]
    shared._start_holder = lambda: None  # type: ignore[method-assign]
    assert shared.run(["squeue"]).stdout == "direct\n"
    running.thread.join(5)
    assert running.reason == "a client asked for another target" and site.calls == []
    assert not wire.socket_path(home, "alpha").exists()


def test_the_holder_stops_when_idle_and_when_its_connection_dies(home: Path, site: FakeTransport) -> None:
    running = start_holder(home, site, persist_s=0.3)
    running.thread.join(5)
    assert running.reason == "idle for 0.3 s"
    assert not wire.socket_path(home, "alpha").exists()
    alive = [True]
    running = start_holder(home, site, is_alive=lambda: alive[0])
    alive[0] = False
    running.thread.join(5)
    assert running.reason == "its SSH connection is gone"


def test_stop_holders_asks_each_holder_and_clears_stale_sockets(home: Path, site: FakeTransport) -> None:
    running = start_holder(home, site)
    stale = wire.socket_path(home, "beta")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with wire.reachable_path(stale) as name:
        sock.bind(name)
    sock.close()
    assert stop_holders(home) == ["alpha"]
    running.thread.join(5)
    assert running.reason == "asked to stop"
    assert not stale.exists() and not wire.socket_path(home, "alpha").exists()
    assert stop_holders(home / "nowhere") == []


def test_queued_requests_of_a_stopping_holder_are_declined_not_lost(home: Path, site: FakeTransport) -> None:
    """A client that connected just before the holder left runs its command directly."""
    site.respond(["squeue"], stdout="held\n")
    holder = Holder(site, TARGET.key, wire.socket_path(home, "alpha"), 60.0)
    holder.bind()
    direct = Direct("alpha").respond(["squeue"], stdout="direct\n")
    shared, started = client(home, direct)
    results: list[str] = []
    asking = threading.Thread(target=lambda: results.append(shared.run(["squeue"]).stdout))
    asking.start()  # connects into the backlog: nobody accepts yet
    time.sleep(0.2)
    holder.stop("leaving")
    assert holder.serve() == "leaving"
    asking.join(5)
    assert results == ["direct\n"] and site.calls == [] and started == ["holder"]


# -- the config ------------------------------------------------------------------------


def test_sharing_is_off_by_default_and_set_globally_or_per_site(tmp_path: Path) -> None:
    assert load_config(tmp_path).access("lumi").share_connection is False
    (tmp_path / "config.toml").write_text(
        "[ssh]\nshare_connection = true\npersist_s = 120\n\n"
        "[sites.lumi]\nuser = 'me'\n\n[sites.leonardo]\nshare_connection = false\n"
    )
    config = load_config(tmp_path)
    assert config.access("lumi").share_connection is True and config.access("lumi").persist_s == 120
    assert config.access("meluxina").share_connection is True
    assert config.access("leonardo").share_connection is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[ssh]\nshare_conection = true\n", "unknown key, did you mean 'share_connection'?"),
        ("[ssh]\nshare_connection = 'yes'\n", "expected true or false"),
        ("[ssh]\npersist_s = 0\n", "expected an integer from 1 to 86400"),
        ("[sites.lumi]\nshare = true\n", "did you mean 'share_connection'?"),
        ("[shh]\nshare_connection = true\n", "did you mean 'ssh'?"),
    ],
)
def test_bad_sharing_settings_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        load_config(tmp_path)


def test_the_shared_client_imports_no_paramiko() -> None:
    import subprocess
    import sys

    code = "import sys, gateway.transports.mux, gateway.site; print('paramiko' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
