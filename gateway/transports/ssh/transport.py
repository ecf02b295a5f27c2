"""``SshTransport``: commands and files (SFTP) at one site, over one reused connection.

Each argv element is shell-quoted (the remote login shell parses the command
line), so no argument can run anything. The connection is opened lazily,
re-opened before a command when it died, and never used to re-send a command
that may have run: a drop (or timeout) while a command runs raises
``ConnectionLost`` and the caller decides whether retrying is safe.
``connection_for`` keeps one transport per site per process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import posixpath
import shlex
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import paramiko
from paramiko.sftp_client import SFTPClient

from gateway.errors import ConnectionLost, SiteUnreachable
from gateway.transports.base import (
    DEFAULT_TIMEOUT,
    CommandHook,
    CommandResult,
    Progress,
    describe_argv,
    start_command,
)
from gateway.transports.local import (
    TreeEntry,
    atomic_destination,
    copy_tree_entries,
    decode_output,
    safe_name,
)
from gateway.transports.ssh.config import ResolvedEndpoint, SshTarget, _one_line, resolve_route
from gateway.transports.ssh.connection import _connect_route, _Connection

_T = TypeVar("_T")

_RECV_CHUNK = 64 * 1024
_SEND_CHUNK = 32 * 1024  # paramiko's maximum packet size
# After a channel closes without an exit status, how long to wait for the
# transport thread to notice that the whole connection is gone.
_DROP_DETECT_SECONDS = 0.5
# What OpenSSH's ssh exits with when the remote command ended without an
# exit status (killed by a signal).
_NO_EXIT_STATUS = 255


class SshTransport:
    """Runs commands at one site over one lazily opened, reused SSH connection."""

    def __init__(
        self,
        target: SshTarget,
        *,
        on_command: CommandHook | None = None,
        tcp_nodelay: bool = True,  # False only to measure what Nagle costs
    ) -> None:
        self.target = target
        self.site = target.site
        self.on_command = on_command
        self.tcp_nodelay = tcp_nodelay
        self.connect_count = 0  # successful logins, for tests and `-v`
        self._route: tuple[ResolvedEndpoint, ...] | None = None
        self._connection: _Connection | None = None
        # Guards opening and replacing the connection; commands themselves
        # run concurrently on separate channels.
        self._lock = threading.Lock()
        # connect_soon's login: its thread, what it failed with (for the first command),
        # and whether close() came while it was still logging in.
        self._early: threading.Thread | None = None
        self._early_failure: Exception | None = None
        self._closed_early = False

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def route(self) -> tuple[ResolvedEndpoint, ...]:
        """Jump hosts then the site, as resolved from the target and ssh config."""
        if self._route is None:
            self._route = resolve_route(self.target)
        return self._route

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and connection.is_alive()

    def connect(self) -> None:
        """Log in now instead of at the first command (raises SiteUnreachable)."""
        with self._lock:
            self._live_connection()

    def connect_soon(self) -> None:
        """Start logging in now, in a background thread, so that the handshake overlaps the
        caller's own work. The first command waits for it; if it failed, that command fails
        with the same error (not a second attempt at once). Nothing runs at the site."""
        with self._lock:
            if (self._connection is not None and self._connection.is_alive()) or (
                self._early is not None and self._early.is_alive()
            ):
                return
            self._closed_early = False
            self._early = threading.Thread(
                target=self._log_in_early, name=f"aif-login-{self.site}", daemon=True
            )
            self._early.start()

    def _log_in_early(self) -> None:
        with self._lock:
            if self._closed_early:
                return
            try:
                self._live_connection()
            except Exception as exc:  # kept for the first command, which raises it
                self._early_failure = exc
            if self._closed_early:  # closed while logging in: nobody will use it
                self._early_failure = None
                self._drop_connection()

    def close(self) -> None:
        early = self._early
        if early is not None and early.is_alive():
            # Never wait for a login nobody used (a slow site would hold the exit up):
            # it drops its connection itself once it is done; its thread is a daemon.
            self._closed_early = True
            if not self._lock.acquire(blocking=False):
                return
        else:
            self._lock.acquire()
        try:
            self._drop_connection()
        finally:
            self._lock.release()

    # -- commands --------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult:
        command = start_command(self.site, argv, self.on_command)
        # The remote side runs this through the user's login shell: quoting
        # every argument keeps each one a single literal word.
        command_line = shlex.join(command)
        channel = self._open_channel()
        try:
            channel.exec_command(command_line)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            channel.close()
            self._forget_if_dead()
            raise ConnectionLost(
                f"site {self.site}: could not start {describe_argv(command)}: {_one_line(exc)}; "
                "it may or may not have run"
            ) from None
        return self._exchange(channel, command, stdin, timeout)

    def _open_channel(self) -> paramiko.Channel:
        with self._lock:
            connection = self._live_connection()
            try:
                return connection.transport.open_session(timeout=self.target.connect_timeout)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                if connection.is_alive():
                    raise SiteUnreachable(
                        f"site {self.site} refused a new session: {_one_line(exc)}"
                    ) from None
            # The connection looked alive but was not. Nothing has been sent
            # yet, so logging in again once is safe.
            self._drop_connection()
            connection = self._live_connection()
            try:
                return connection.transport.open_session(timeout=self.target.connect_timeout)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._drop_connection()
                raise SiteUnreachable(f"site {self.site}: cannot open a session: {_one_line(exc)}") from None

    def _exchange(
        self,
        channel: paramiko.Channel,
        command: tuple[str, ...],
        stdin: bytes | None,
        timeout: float,
    ) -> CommandResult:
        """Feed stdin and collect output concurrently, within ``timeout``.

        Three threads, because each side can block the other: the remote
        stops reading stdin when its output fills the channel window, and
        paramiko only re-opens the window as we read stdout *and* stderr.
        """
        deadline = time.monotonic() + timeout
        stdout: list[bytes] = []
        stderr: list[bytes] = []
        workers = [
            threading.Thread(target=_drain, args=(channel.recv, stdout), daemon=True),
            threading.Thread(target=_drain, args=(channel.recv_stderr, stderr), daemon=True),
        ]
        if stdin:
            workers.append(threading.Thread(target=_feed, args=(channel, stdin), daemon=True))
        else:
            # The remote waits for EOF on stdin even when we send nothing.
            channel.shutdown_write()
        for worker in workers:
            worker.start()
        finished = True
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            finished = finished and not worker.is_alive()
        if finished:
            finished = channel.status_event.wait(max(0.0, deadline - time.monotonic()))
        if not finished:
            # Closing wakes every worker (recv returns b"", send returns 0).
            channel.close()
            for worker in workers:
                worker.join(1.0)
            # The command may have taken effect (or still be running): the
            # caller must treat this like a drop, not like a refused connect.
            raise ConnectionLost(
                f"site {self.site}: command timed out after {timeout:g} s: {describe_argv(command)}"
            )
        returncode = channel.exit_status
        channel.close()
        if returncode == -1:
            # No exit status: either the connection died under the command,
            # or the command was killed by a signal (paramiko ignores
            # "exit-signal"). The transport thread tells the two apart.
            if self._connection_died():
                raise ConnectionLost(
                    f"connection to site {self.site} dropped while running "
                    f"{describe_argv(command)}: it may or may not have run"
                )
            returncode = _NO_EXIT_STATUS
        return CommandResult(
            argv=command,
            returncode=returncode,
            stdout=decode_output(b"".join(stdout)),
            stderr=decode_output(b"".join(stderr)),
        )

    # -- files (SFTP) ------------------------------------------------------------

    def read_file(self, remote_path: str, offset: int = 0) -> bytes:
        """A remote file from byte ``offset`` on (logs: follow one as it grows).

        FileNotFoundError / PermissionError pass through.
        """

        def read(sftp: SFTPClient) -> bytes:
            with sftp.open(remote_path, "rb") as remote:
                if offset:
                    remote.seek(offset)
                remote.prefetch()
                return remote.read()

        return self._with_sftp(read, f"reading {remote_path}")

    def get_file(self, remote_path: str, local_path: str | Path, progress: Progress | None = None) -> int:
        """Download one file; returns its size. It appears locally only when complete."""
        destination = Path(local_path)

        def download(sftp: SFTPClient) -> int:
            fd, partial = atomic_destination(destination)
            try:
                with os.fdopen(fd, "wb") as writer:
                    size = sftp.getfo(remote_path, writer, callback=progress, prefetch=True)
                os.replace(partial, destination)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            return size

        return self._with_sftp(download, f"fetching {remote_path}")

    def list_tree(self, remote_dir: str) -> list[TreeEntry]:
        """Every directory and regular file below ``remote_dir``, parents first.

        Symlinks to files are followed; symlinks to directories are skipped
        so a link loop cannot make a fetch run forever.
        """

        def walk(sftp: SFTPClient) -> list[TreeEntry]:
            entries: list[TreeEntry] = []
            if not stat.S_ISDIR(sftp.stat(remote_dir).st_mode or 0):
                raise NotADirectoryError(f"{remote_dir} is not a directory at site {self.site}")
            _walk_sftp(sftp, remote_dir, "", entries)
            return entries

        return self._with_sftp(walk, f"listing {remote_dir}")

    def get_tree(
        self, remote_dir: str, local_dir: str | Path, progress: Progress | None = None
    ) -> list[TreeEntry]:
        """Download a whole directory below ``local_dir``; returns what was copied."""

        def copy_file(relpath: str, destination: Path, file_progress: Progress | None) -> int:
            return self.get_file(posixpath.join(remote_dir, relpath), destination, file_progress)

        return copy_tree_entries(self.list_tree(remote_dir), Path(local_dir), copy_file, progress)

    def _with_sftp(self, operation: Callable[[SFTPClient], _T], what: str) -> _T:
        with self._lock:
            connection = self._live_connection()
            if connection.sftp is None:
                try:
                    connection.sftp = self._clients_sftp(connection)
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    raise SiteUnreachable(
                        f"site {self.site} offers no SFTP for {what}: {_one_line(exc)}"
                    ) from None
            sftp = connection.sftp
        try:
            return operation(sftp)
        except (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError):
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if self._connection_died():
                raise ConnectionLost(f"connection to site {self.site} dropped while {what}") from None
            raise OSError(f"site {self.site}: {what} failed: {_one_line(exc)}") from None

    @staticmethod
    def _clients_sftp(connection: _Connection) -> SFTPClient:
        sftp = SFTPClient.from_transport(connection.transport)
        if sftp is None:
            raise paramiko.SSHException("the SFTP subsystem did not start")
        return sftp

    # -- connection management ---------------------------------------------------

    def _live_connection(self) -> _Connection:
        """The cached connection, (re)opened if missing or dead; hold the lock."""
        connection = self._connection
        if connection is not None and connection.is_alive():
            return connection
        failure, self._early_failure = self._early_failure, None
        if failure is not None:
            raise failure  # connect_soon's login failed a moment ago: that is the answer
        self._drop_connection()
        connection = _connect_route(self.site, self.route, self.target.connect_timeout, self.tcp_nodelay)
        self._connection = connection
        self.connect_count += 1
        return connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _connection_died(self) -> bool:
        """Whether the cached connection is gone (and then forget it)."""
        connection = self._connection
        if connection is None:
            return True
        # The transport thread closes the channels a moment before it marks
        # itself inactive: give it that moment.
        give_up = time.monotonic() + _DROP_DETECT_SECONDS
        while connection.is_alive():
            if time.monotonic() >= give_up:
                return False
            time.sleep(0.01)
        self._forget_if_dead()
        return True

    def _forget_if_dead(self) -> None:
        with self._lock:
            if self._connection is not None and not self._connection.is_alive():
                self._drop_connection()


def _drain(receive: Callable[[int], bytes], chunks: list[bytes]) -> None:
    while True:
        try:
            data = receive(_RECV_CHUNK)
        except (OSError, EOFError, paramiko.SSHException):
            return
        if not data:
            return
        chunks.append(data)


def _feed(channel: paramiko.Channel, data: bytes) -> None:
    try:
        for start in range(0, len(data), _SEND_CHUNK):
            piece = data[start : start + _SEND_CHUNK]
            while piece:
                sent = channel.send(piece)
                if sent == 0:
                    return  # the channel closed: the remote stopped reading
                piece = piece[sent:]
    except (OSError, EOFError, paramiko.SSHException):
        return  # the remote exited without reading everything, like EPIPE
    finally:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            channel.shutdown_write()


def _walk_sftp(sftp: SFTPClient, directory: str, prefix: str, entries: list[TreeEntry]) -> None:
    for attributes in sorted(sftp.listdir_attr(directory), key=lambda item: item.filename):
        name = attributes.filename
        if not safe_name(name):
            continue
        path = posixpath.join(directory, name)
        relpath = f"{prefix}{name}"
        mode = attributes.st_mode or 0
        if stat.S_ISLNK(mode):
            try:
                target = sftp.stat(path)
            except OSError:
                continue  # a dangling link has nothing to copy
            if stat.S_ISREG(target.st_mode or 0):
                entries.append(TreeEntry(relpath, target.st_size or 0, False))
        elif stat.S_ISDIR(mode):
            entries.append(TreeEntry(relpath, 0, True))
            _walk_sftp(sftp, path, f"{relpath}/", entries)
        elif stat.S_ISREG(mode):
            entries.append(TreeEntry(relpath, attributes.st_size or 0, False))


# -- one connection per site per process ---------------------------------------------

_connections: dict[str, SshTransport] = {}
_connections_lock = threading.Lock()


def connection_for(target: SshTarget, on_command: CommandHook | None = None) -> SshTransport:
    """The process-wide transport for ``target.site``, created on first use.

    Asking again for the same site with a different target (the user's
    config changed) closes the old connection and starts a new one.
    """
    with _connections_lock:
        transport = _connections.get(target.site)
        if transport is not None and transport.target != target:
            transport.close()
            transport = None
        if transport is None:
            transport = SshTransport(target, on_command=on_command)
            _connections[target.site] = transport
        else:
            # This caller's hook, or none: an earlier `aif -v` in the same process must not
            # keep echoing commands for a caller that did not ask for it.
            transport.on_command = on_command
        return transport


def close_all() -> None:
    """Close every cached connection (also run at interpreter exit)."""
    with _connections_lock:
        transports = list(_connections.values())
        _connections.clear()
    for transport in transports:
        transport.close()


# paramiko's transport threads are daemons; closing first avoids noisy
# errors from half-torn-down sessions when the interpreter exits.
atexit.register(close_all)
