"""``ForkedTransport``: log in from a forked child, on the other core, while this process works.

A command-line ``aif submit`` to a named site spends most of its own time on
three things in a row: importing paramiko (about 50 ms), reading and recording
the specs, and waiting for the site. The SSH login itself already overlaps the
second one (a background thread), but the import does not, and a thread cannot
help there: both are Python code and hold the interpreter. So the process forks:
the child, a copy of it taken before paramiko was imported, imports it and logs
in on another core while the parent goes on reading specs, then runs the
parent's commands over a socket pair, one at a time, with the holder's wire
format (``protocol``) and answers (``holder.answer_exec``). The CLI forks it
ahead (:func:`fork_ahead`, as soon as it knows the command will log in to a
site) and ``connect_soon`` hands it the site; else ``connect_soon`` forks.

It is the shared connection's holder (``holder``), private to one process and
alive only as long as it: the child stops when the parent closes its end (or
dies). Exactly once, as there: a request the child may have received and whose
answer never comes raises ``ConnectionLost`` (it may or may not have run) and is
never sent again; only a request that provably did not reach the child (the
child was gone before it could be written) goes over a direct connection, and
none after :meth:`ForkedTransport.close`. A request the child reads after the
parent went away (Ctrl-C during the login) is not run.

Forking is opt-in (the CLI asks for it; a library caller gets the thread) and
only from a process with no other thread; a failed fork falls back to the
thread. Files (SFTP) always go over the direct connection.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from gateway import errors
from gateway.transports.base import DEFAULT_TIMEOUT, CommandHook, CommandResult, start_command
from gateway.transports.mux.client import DirectFiles, direct_transport
from gateway.transports.mux.protocol import (
    VERSION,
    ExecRequest,
    ProtocolError,
    SharedTarget,
    command_result,
    encode,
    exec_request,
    parse_exec,
    receive_header,
)

if TYPE_CHECKING:
    from gateway.transports.ssh import SshTransport

_ANSWER_MARGIN_S = 5.0  # the child's own deadline (the command's timeout) comes first
_RAISED: dict[str, type[errors.AifError]] = {
    kind.__name__: kind
    for kind in (errors.SiteUnreachable, errors.HostKeyRejected, errors.ConfigError, errors.ConnectionLost)
}


class _NotSent(Exception):
    """The request never reached the child in full: it ran nowhere."""


class _Lost(Exception):
    """The child had the request and no answer came: it may or may not have run."""


class ForkedTransport(DirectFiles):
    """Runs commands at one site through a child process that logged in, else directly."""

    def __init__(self, target: SharedTarget, *, on_command: CommandHook | None = None) -> None:
        self.target = target
        self.site = target.site
        self.on_command = on_command
        self.child_runs = 0  # commands the child ran, for tests and benches
        self._child: _Child | None = None
        self._direct: SshTransport | None = None
        self._closed = False
        self._lock = threading.Lock()

    def connect_soon(self) -> None:
        """Start logging in now: in a forked child when this process has no other thread,
        else on a background thread. Nothing runs at the site."""
        with self._lock:
            if self._child is not None:
                return
            if self._direct is None:
                ahead = _take_ahead()
                if ahead is not None and ahead.log_in(self.target):
                    self._child = ahead
                    return
                if threading.active_count() == 1 and hasattr(os, "fork"):
                    with contextlib.suppress(OSError):  # no fork (limits): the thread serves
                        self._child = _Child.start(self.target)
                        return
        self._direct_transport().connect_soon()

    # -- commands ------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult:
        command = start_command(self.site, argv, self.on_command)
        child = self._child
        if child is not None:
            # The child may still be logging in: its answer can take that long more.
            wait_s = timeout + self.target.connect_timeout + _ANSWER_MARGIN_S
            try:
                answer = child.ask(exec_request(self.target, command, stdin, timeout), wait_s)
            except _NotSent:
                with self._lock:
                    if self._child is child:
                        self._child = None
                child.stop()
                if self._closed:  # a thread still at work after close(): no new connection
                    raise errors.SiteUnreachable(
                        f"site {self.site}: its connection was closed before {command[0]} could be sent"
                    ) from None
            except _Lost as lost:
                raise errors.ConnectionLost(
                    f"site {self.site}: the process logged in to it gave no answer to {command[0]} "
                    f"({lost or 'it stopped'}): it may or may not have run"
                ) from None
            else:
                if answer.get("login_failed"):
                    # Nothing ran; the next command tries a login of its own, as a thread's would.
                    with self._lock:
                        if self._child is child:
                            self._child = None
                    child.stop()
                return self._result(command, answer)
        return self._direct_transport().run(command, stdin=stdin, timeout=timeout)

    def _result(self, command: tuple[str, ...], answer: dict[str, Any]) -> CommandResult:
        status = answer.get("status")
        if status == "error":
            message = str(answer.get("message", ""))
            kind = str(answer.get("kind", ""))
            if kind == "ValueError":
                raise ValueError(message)
            if answer.get("login_failed"):  # nothing ran: never "may or may not have run"
                login_errors = (errors.HostKeyRejected, errors.ConfigError)
                raise next((k for k in login_errors if k.__name__ == kind), errors.SiteUnreachable)(message)
            raise _RAISED.get(kind, errors.ConnectionLost)(message)
        result = command_result(command, answer, f"site {self.site}: the process logged in to it")
        self.child_runs += 1
        return result

    # -- the direct connection (files: DirectFiles) ---------------------------------------

    def _direct_transport(self) -> SshTransport:
        with self._lock:
            if self._direct is None:
                self._direct = direct_transport(self.target)
            return self._direct

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
            direct = self._direct
        if child is not None:
            child.stop()
        if direct is not None:
            direct.close()


# -- a child forked ahead ---------------------------------------------------------------

_ahead: _Child | None = None
_ahead_lock = threading.Lock()


def fork_ahead() -> None:
    """Fork the login child now, before this process knows the site: it imports paramiko while
    this process loads its own modules and reads the user's config, then waits for the site
    (the first :meth:`ForkedTransport.connect_soon` hands it over). For the CLI, which calls
    :func:`drop_ahead` when its command ends, used or not. Only from a process with no other
    thread; a failed fork is no error (the transport forks, or logs in on a thread, later)."""
    global _ahead
    with _ahead_lock:
        if _ahead is None and threading.active_count() == 1 and hasattr(os, "fork"):
            with contextlib.suppress(OSError):
                _ahead = _Child.start(None)


def drop_ahead() -> None:
    """Stop a child forked ahead that nobody took (it exits at once, nothing ran)."""
    ahead = _take_ahead()
    if ahead is not None:
        ahead.stop()


def _take_ahead() -> _Child | None:
    global _ahead
    with _ahead_lock:
        ahead, _ahead = _ahead, None
    return ahead


class _Child:
    """The forked login process and this process's end of the socket pair to it."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.turn = threading.Lock()  # one request at a time on the pair

    @classmethod
    def start(cls, target: SharedTarget | None) -> _Child:
        """Fork the child; without a target it imports paramiko and waits for :meth:`log_in`."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            _serve_in_child(target, theirs)
        theirs.close()
        return cls(pid, ours)

    def log_in(self, target: SharedTarget) -> bool:
        """Give a child forked ahead its site; False (and it is stopped) when it is gone."""
        try:
            self.sock.sendall(encode({"v": VERSION, "op": "login", "target": target.key}))
        except OSError:
            self.stop()
            return False
        return True

    def ask(self, request: bytes, timeout: float) -> dict[str, Any]:
        """Send one request and wait for its answer; _NotSent when it provably never arrived."""
        with self.turn:
            return self._ask(request, timeout)

    def _ask(self, request: bytes, timeout: float) -> dict[str, Any]:
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(request)
        except OSError:
            # Not all of it was written: the child can never have read a whole request.
            raise _NotSent() from None
        try:
            return receive_header(self.sock)
        except (OSError, ProtocolError) as exc:
            self.stop()
            raise _Lost("no answer in time" if isinstance(exc, TimeoutError) else str(exc)) from None

    def stop(self) -> None:
        """Close our end (the child stops: its connection closes) and reap it if it is done."""
        with contextlib.suppress(OSError):
            # shutdown first: a close alone neither wakes a thread of ours blocked reading the
            # answer nor shows the child the end while that read is under way.
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)  # else init reaps it once this process exits


def _serve_in_child(target: SharedTarget | None, sock: socket.socket) -> NoReturn:
    """The child's whole life: (forked ahead: import paramiko, then wait for the target) log in,
    answer requests until the parent closes, exit.

    os._exit: none of the parent's cleanup (its ledger's connection, atexit) runs twice.
    """
    try:
        # Ctrl-C is the parent's to handle: it closes our end, and we drop the connection.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Nothing of ours reaches the user's terminal, and whoever reads the parent's output
        # (a pipe, `$(aif ...)`) sees its end when the parent exits, not when we do.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        # None of the parent's other files stays open here: a lock it holds on one (flock
        # belongs to the open file, which we share) is released when the parent closes it,
        # not when we exit. And none of its objects is finalized here (frozen: the cycle
        # collector leaves them), so nothing of the parent's closes a descriptor of ours.
        gc.freeze()
        _close_inherited(keep=sock.fileno())
        import gateway.transports.ssh  # noqa: F401  paramiko, while the parent goes on

        target = target or _await_target(sock)
        if target is not None:
            _log_in_and_serve(target, sock)
    finally:
        os._exit(0)


def _parent_gone(sock: socket.socket) -> bool:
    """True when the parent closed its end: it sends nothing while it waits for an answer, so
    anything to read (the end of the stream) means it is gone."""
    watch = select.poll()
    watch.register(sock, select.POLLIN)
    return bool(watch.poll(0))


def _close_inherited(keep: int) -> None:
    """Close every descriptor but 0-2 and ``keep``: the ones open, as /proc lists them (one
    close each, not one per possible number, where close_range is missing)."""
    try:
        opened = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every possible number
        limit = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else -1
        opened = list(range(3, limit if limit > 0 else 65536))
    for fd in opened:
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):  # the listing's own descriptor is already closed
                os.close(fd)


def _await_target(sock: socket.socket) -> SharedTarget | None:
    """The site a child forked ahead is given, or None when the parent has no use for it."""
    try:
        header = receive_header(sock)
        key = header.get("target")
        if header.get("v") != VERSION or header.get("op") != "login" or not isinstance(key, str):
            return None
        return SharedTarget.from_key(key)
    except (OSError, ProtocolError, ValueError, TypeError):
        return None


def _log_in_and_serve(target: SharedTarget, sock: socket.socket) -> None:
    """Log in (a failure answers every request: nothing runs), then answer until the parent closes."""
    transport = direct_transport(target)
    failure: dict[str, object] | None = None
    try:
        transport.connect()
    except errors.AifError as exc:  # nothing ran: every request is answered with it
        failure = {
            "status": "error",
            "kind": type(exc).__name__,
            "message": exc.message,
            "login_failed": True,
        }
    while True:
        try:
            header = receive_header(sock)
            if header.get("v") != VERSION or header.get("op") != "exec":
                break
            request = parse_exec(header, sock)
        except (OSError, ProtocolError):
            break  # the parent closed its end (or sent garbage): nothing more to run
        if _parent_gone(sock):
            break  # it gave up on this request (Ctrl-C while we logged in): not run
        answer = failure or _run_watching(sock, transport, request)
        try:
            sock.sendall(encode(answer))
        except OSError:
            break
    transport.close()


def _run_watching(sock: socket.socket, transport: SshTransport, request: ExecRequest) -> dict[str, object]:
    """The request's answer, run on a thread while watching the parent's end: when the parent is gone (Ctrl-C,
    killed) before the answer, the SSH connection is dropped at once, as the parent's own
    would have been (the site's program then stops after its running sbatch, its record
    written), and the child exits."""
    answers: list[dict[str, object]] = []
    done_r, done_w = socket.socketpair()

    def work() -> None:
        from gateway.transports.mux.holder import answer_exec

        try:
            answers.append(answer_exec(transport, request))
        finally:
            done_w.send(b"x")

    threading.Thread(target=work, daemon=True).start()
    watch = select.poll()
    watch.register(sock, select.POLLIN)
    watch.register(done_r, select.POLLIN)
    ready = {fd for fd, _ in watch.poll()}
    if done_r.fileno() not in ready:
        # The parent sends nothing while it waits for an answer: its end closed.
        transport.close()
        os._exit(0)
    return answers[0]
