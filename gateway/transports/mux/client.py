"""``SharedTransport``: a site's commands through its holder, or directly when there is none.

This module never imports paramiko: when the holder answers, a command costs
a unix-socket round trip instead of an SSH handshake. When the socket is
absent, stale (no holder behind it) or the holder declines (stopping, another
target), the command has not run anywhere and goes over a direct
``SshTransport`` instead (then paramiko is imported), and a holder is started
for the next process. Once a process went direct it stays direct.

Exactly once: after the request has been handed to a holder, an answer that
never comes (the holder died, or the deadline passed) raises ``ConnectionLost``
like a drop of a direct connection does; the command is never sent again.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import errors
from gateway.home import aif_home
from gateway.transports.base import (
    DEFAULT_TIMEOUT,
    CommandHook,
    CommandResult,
    Progress,
    describe_argv,
    start_command,
)
from gateway.transports.mux.protocol import (
    DEFAULT_PERSIST_S,
    LEAVING,
    ProtocolError,
    SharedTarget,
    command_result,
    encode,
    ensure_private_directory,
    exec_request,
    log_path,
    mux_directory,
    reachable_path,
    receive_header,
    socket_path,
)

if TYPE_CHECKING:
    from gateway.transports.ssh import SshTransport

_CONNECT_S = 2.0  # a live holder accepts at once; this only bounds a wedged one
_ANSWER_MARGIN_S = 5.0  # the holder's own deadline comes first
_KINDS: dict[str, type[errors.AifError]] = {
    kind.__name__: kind for kind in (errors.ConnectionLost, errors.SiteUnreachable, errors.HostKeyRejected)
}


class _NotRun(Exception):
    """The holder could not be asked or declined: the command ran nowhere.

    ``start_holder``: no holder will serve the next process either (none runs,
    or it is leaving), so starting one is worth it.
    """

    def __init__(self, start_holder: bool) -> None:
        super().__init__()
        self.start_holder = start_holder


class DirectFiles:
    """Files (SFTP) over a direct SSH connection, for a transport whose commands may go through
    another process: the class gives ``_direct_transport``."""

    def _direct_transport(self) -> SshTransport:
        raise NotImplementedError

    def read_file(self, remote_path: str, offset: int = 0) -> bytes:
        return self._direct_transport().read_file(remote_path, offset)

    def get_file(self, remote_path: str, local_path: str | Path, progress: Progress | None = None) -> int:
        return self._direct_transport().get_file(remote_path, local_path, progress)

    def list_tree(self, remote_dir: str) -> list[Any]:
        return self._direct_transport().list_tree(remote_dir)

    def get_tree(self, remote_dir: str, local_dir: str | Path, progress: Progress | None = None) -> list[Any]:
        return self._direct_transport().get_tree(remote_dir, local_dir, progress)


class SharedTransport(DirectFiles):
    """Runs commands at one site through its holder process, falling back to direct SSH."""

    def __init__(
        self,
        target: SharedTarget,
        *,
        persist_s: float = DEFAULT_PERSIST_S,
        on_command: CommandHook | None = None,
        home: Path | None = None,
    ) -> None:
        self.target = target
        self.site = target.site
        self.persist_s = persist_s
        self.on_command = on_command
        self.home = home if home is not None else aif_home()
        self.shared_runs = 0  # commands the holder ran, for tests and benches
        self.holders_started = 0
        self._direct: SshTransport | None = None
        self._lock = threading.Lock()

    # -- commands ------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult:
        command = start_command(self.site, argv, self.on_command)
        if self._direct is None:
            try:
                return self._through_holder(command, stdin, timeout)
            except _NotRun as not_run:
                if not_run.start_holder:
                    self._start_holder()
        return self._direct_transport().run(command, stdin=stdin, timeout=timeout)

    def _through_holder(self, command: tuple[str, ...], stdin: bytes | None, timeout: float) -> CommandResult:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_CONNECT_S)
            try:
                with reachable_path(socket_path(self.home, self.site)) as name:
                    sock.connect(name)
            except OSError:
                raise _NotRun(start_holder=True) from None  # no socket or no holder: nothing was sent
            sock.settimeout(timeout + _ANSWER_MARGIN_S)
            try:
                sock.sendall(exec_request(self.target, command, stdin, timeout))
                answer = receive_header(sock)
            except (OSError, ProtocolError) as exc:
                raise errors.ConnectionLost(
                    f"site {self.site}: the shared connection's holder gave no answer to "
                    f"{describe_argv(command)} ({_reason(exc)}): it may or may not have run"
                ) from None
        finally:
            sock.close()
        return self._result(command, answer)

    def _result(self, command: tuple[str, ...], answer: dict[str, Any]) -> CommandResult:
        status = answer.get("status")
        if status == "declined":
            # A holder that is leaving (or serves another target) makes way for a new one.
            raise _NotRun(start_holder=answer.get("reason") in LEAVING)
        if status == "error":
            message = str(answer.get("message", ""))
            kind = str(answer.get("kind", ""))
            if kind == "ValueError":
                raise ValueError(message)
            if kind == errors.SiteUnreachable.__name__:
                # Nothing ran (no session could be opened, e.g. the site's MaxSessions).
                raise _NotRun(start_holder=False)
            raise _KINDS.get(kind, errors.ConnectionLost)(message)
        result = command_result(command, answer, f"site {self.site}: the shared connection's holder")
        self.shared_runs += 1
        return result

    # -- the direct connection (files: DirectFiles) and the holder ---------------------

    def _direct_transport(self) -> SshTransport:
        with self._lock:
            if self._direct is None:
                self._direct = self._new_direct()
            return self._direct

    def _new_direct(self) -> SshTransport:
        return direct_transport(self.target)  # no hook: run() announced the command already

    def _start_holder(self) -> None:
        """Start a holder for the next process (at most one per site runs: it takes a lock)."""
        with self._lock:
            if self.holders_started:
                return
            self.holders_started += 1
        import subprocess
        import sys

        try:
            ensure_private_directory(mux_directory(self.home))
            argv = [
                sys.executable,
                "-m",
                "gateway.transports.mux.holder",
                self.target.key,
                f"{self.persist_s:g}",
            ]
            log_fd = os.open(log_path(self.home, self.site), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(log_fd, "ab") as log:
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # not killed by the terminal's Ctrl-C with us
                    close_fds=True,
                    env={**os.environ, "AIF_HOME": str(self.home)},
                )
        except OSError:
            pass  # sharing is an optimisation: the direct connection serves this process

    def close(self) -> None:
        with self._lock:
            direct = self._direct
        if direct is not None:
            direct.close()


def direct_transport(target: SharedTarget) -> SshTransport:
    """The ``SshTransport`` for a shared target (this imports paramiko)."""
    from gateway.transports.ssh import SshTarget, SshTransport

    return SshTransport(
        SshTarget(
            site=target.site,
            host=target.host,
            port=target.port,
            user=target.user,
            identity_file=Path(target.identity_file) if target.identity_file else None,
            known_hosts=Path(target.known_hosts) if target.known_hosts else None,
            proxy_jump=target.proxy_jump,
            connect_timeout=target.connect_timeout,
        )
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


# -- one shared transport per site per process, and stopping holders ---------------------

_transports: dict[str, SharedTransport] = {}
_transports_lock = threading.Lock()


def shared_connection_for(
    target: SharedTarget, *, persist_s: float = DEFAULT_PERSIST_S, on_command: CommandHook | None = None
) -> SharedTransport:
    """The process-wide shared transport for ``target.site`` (like ``ssh.connection_for``)."""
    with _transports_lock:
        transport = _transports.get(target.site)
        if transport is None or transport.target != target or transport.home != aif_home():
            if transport is not None:
                transport.close()
            transport = SharedTransport(target, persist_s=persist_s, on_command=on_command)
            _transports[target.site] = transport
        transport.on_command = on_command
        transport.persist_s = persist_s
        return transport


def stop_holders(
    home: Path | None = None, sites: Sequence[str] | None = None, wait_s: float = 5.0
) -> list[str]:
    """Ask every holder under ``home`` (of ``sites``, or all) to stop and wait for them to exit.

    Returns the sites asked. Sockets no holder listens on any more are removed.
    """
    import time

    directory = mux_directory(home if home is not None else aif_home())
    if not directory.is_dir():
        return []
    asked = []
    for path in sorted(directory.glob("*.sock")):
        if sites is not None and path.stem not in sites:
            continue
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(_CONNECT_S)
        try:
            with reachable_path(path) as name:
                sock.connect(name)
            sock.sendall(encode({"v": 1, "op": "stop"}))
            receive_header(sock)
            asked.append(path.stem)
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)  # a holder that died without cleaning up
        except (OSError, ProtocolError):
            pass
        finally:
            sock.close()
    # A holder stops within a tick once its running commands are answered; its lock tells.
    import fcntl

    give_up = time.monotonic() + wait_s
    for site in asked:
        lock = directory / f"{site}.lock"
        while time.monotonic() < give_up:
            try:
                fd = os.open(lock, os.O_RDWR)
            except OSError:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break  # no holder has it any more
            except BlockingIOError:
                time.sleep(0.05)
            finally:
                os.close(fd)
    return asked


def holder_pids(home: Path | None = None) -> dict[str, int]:
    """The running holders' pids by site (from their lock files), for tests and `aif sandbox down`."""
    import fcntl

    directory = mux_directory(home if home is not None else aif_home())
    found: dict[str, int] = {}
    for lock in sorted(directory.glob("*.lock")) if directory.is_dir() else []:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                continue  # free: no holder
            except BlockingIOError:
                pass
            text = os.read(fd, 32).decode(errors="replace").strip()
            if text.isdigit():
                found[lock.stem] = int(text)
        finally:
            os.close(fd)
    return found


__all__ = ["DirectFiles", "SharedTransport", "holder_pids", "shared_connection_for", "stop_holders"]
