"""One live SSH connection: the socket, the logins and the jump hosts of a route.

``_connect_route`` opens a socket to the route's first server (TCP with
TCP_NODELAY, quick acknowledgements and keepalive, or the ssh config's
ProxyCommand), logs in, and reaches each further server (ProxyJump) through a
direct-tcpip channel of the one before. ``_login`` checks the host key (``known_hosts``), offers the keys
(``identities``) and turns every failure into ``SiteUnreachable`` or
``HostKeyRejected``: failing to connect means nothing was sent.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

import paramiko
from paramiko.sftp_client import SFTPClient

from gateway.errors import HostKeyRejected, SiteUnreachable
from gateway.transports.ssh.config import ResolvedEndpoint, _one_line
from gateway.transports.ssh.identities import _Identities, _identities, _OfferKeys
from gateway.transports.ssh.known_hosts import (
    _changed_key_message,
    _fingerprint,
    _load_known_hosts,
    _RejectUnknownHostKey,
)

# paramiko's transport threads log failures with full tracebacks; with no
# handler configured, logging's last-resort handler would print them on the
# user's terminal. Errors reach the user as one line via our exceptions; an
# application that configures logging (e.g. for -v) still sees these.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# Keepalives stop idle NAT/firewall state from expiring under a connection
# that aif keeps open for a whole session.
_KEEPALIVE_SECONDS = 30


class _Connection:
    """An authenticated SSH session, plus the jump-host sessions it rides on."""

    def __init__(self, clients: list[paramiko.SSHClient], first_socket: Any) -> None:
        self._clients = clients  # jump hosts first, the site last
        self._first_socket = first_socket  # a TCP socket or a paramiko.ProxyCommand
        self.sftp: SFTPClient | None = None

    @property
    def transport(self) -> paramiko.Transport:
        transport = self._clients[-1].get_transport()
        if transport is None:
            raise paramiko.SSHException("SSH session not active")
        return transport

    def is_alive(self) -> bool:
        return all(
            (transport := client.get_transport()) is not None and transport.is_active()
            for client in self._clients
        )

    def close(self) -> None:
        if self.sftp is not None:
            # Closing a dead session must never fail.
            with contextlib.suppress(Exception):
                self.sftp.close()
            self.sftp = None
        for client in reversed(self._clients):
            client.close()
        _close_socket(self._first_socket)


def _close_socket(sock: Any) -> None:
    """Close what _open_socket gave, and reap a ProxyCommand's process."""
    if sock is None:
        return
    with contextlib.suppress(Exception):  # already closed with its transport
        sock.close()
    if isinstance(sock, _ProxyCommand):
        sock.reap()


class _ProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand, safe to close twice and reaped when done.

    paramiko closes it from the transport thread as well as from
    ``Transport.close``; its own ``close`` signals the pid unconditionally,
    which fails (or hits a reused pid) once the process has been reaped.
    """

    def __init__(self, command_line: str) -> None:
        super().__init__(command_line)
        self._close_lock = threading.Lock()

    def close(self) -> None:
        with self._close_lock:
            if self.process.poll() is None:
                self.process.terminate()

    def reap(self) -> None:
        with self._close_lock:
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()


def _socket_reason(exc: OSError, timeout: float) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name ({exc.strerror})"
    return (exc.strerror or _one_line(exc)).rstrip(".").lower()


def _open_socket(endpoint: ResolvedEndpoint, timeout: float, tcp_nodelay: bool) -> Any:
    if endpoint.proxy_command:
        # The user's own ~/.ssh/config asked for it; paramiko runs it without
        # a shell (shlex-split), so shell syntax in it is not supported.
        return _ProxyCommand(endpoint.proxy_command)
    sock = socket.create_connection((endpoint.hostname, endpoint.port), timeout=timeout)
    if tcp_nodelay:
        # Without this, Nagle's algorithm meets delayed ACKs and every small
        # command pays ~40 ms (measured: bare exec 44 ms -> under 3 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _TCP_QUICKACK is not None and isinstance(sock, socket.socket):
            sock = _QuickAckSocket(fileno=sock.detach())
            sock.settimeout(timeout)  # the new object's own timeout mode (the fd is non-blocking)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges at once what it receives (Linux's TCP_QUICKACK).

    The other half of the Nagle problem is on the server's side, out of our
    reach: sshd sets TCP_NODELAY only for sessions with a terminal. Right
    after the login it sends us a small message (its host keys); its answer
    to our first channel open then waits until we acknowledge that one, and
    Linux delays an acknowledgement by up to 40 ms when it has nothing to
    send with it. Measured on the sandbox (tcpdump): the first session of a
    connection opened in 41-44 ms in three runs of four, in under 1 ms with
    this. TCP_QUICKACK does not stay set (the kernel may fall back to
    delaying), so it is set again after every read: one cheap system call.
    """

    __slots__ = ()

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        with contextlib.suppress(OSError):  # a closed socket: the caller sees that itself
            self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK or 0, 1)
        return data


def _login(
    site: str,
    endpoint: ResolvedEndpoint,
    sock: Any,
    timeout: float,
) -> paramiko.SSHClient:
    """Handshake, check the host key, authenticate; errors become SiteUnreachable."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_RejectUnknownHostKey(site, endpoint))
    identities: _Identities | None = None
    try:
        revoked = _load_known_hosts(client, site, endpoint)
        identities = _identities(endpoint)
        client.connect(
            endpoint.hostname,
            port=endpoint.port,
            username=endpoint.user,
            sock=sock,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
            auth_strategy=_OfferKeys(endpoint.user, identities.keys),
        )
    except HostKeyRejected:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRejected(_changed_key_message(site, endpoint, exc)) from None
    except paramiko.AuthenticationException:
        client.close()
        tried = ", ".join(identities.tried) if identities and identities.tried else "none"
        notes = "; ".join(identities.notes) if identities else ""
        raise SiteUnreachable(
            f"cannot log in to site {site} at {endpoint.address}: authentication failed for "
            f"user {endpoint.user} (keys tried: {tried})" + (f"; {notes}" if notes else "")
        ) from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        client.close()
        reason = _socket_reason(exc, timeout) if isinstance(exc, OSError) else _one_line(exc)
        if isinstance(exc, EOFError):
            reason = "the server closed the connection during the handshake"
        raise SiteUnreachable(f"cannot connect to site {site} at {endpoint.address}: {reason}") from None
    except Exception as exc:  # paramiko raises bare Exception on a few odd paths
        client.close()
        raise SiteUnreachable(
            f"cannot connect to site {site} at {endpoint.address}: {_one_line(exc)}"
        ) from None
    finally:
        if identities is not None:
            identities.close()
    transport = client.get_transport()
    if transport is None:
        raise SiteUnreachable(f"cannot connect to site {site} at {endpoint.address}: no session")
    server_key = transport.get_remote_server_key()
    if any(server_key == key for key in revoked):
        # Checked after login (paramiko has no hook in between); nothing has
        # been run yet, and a publickey signature is useless to anyone else.
        client.close()
        raise HostKeyRejected(
            f"site {site}: host key for {endpoint.known_hosts_name} ({_fingerprint(server_key)}) "
            "is marked @revoked in known_hosts: refusing to connect"
        )
    transport.set_keepalive(_KEEPALIVE_SECONDS)
    return client


def _connect_route(
    site: str, route: Sequence[ResolvedEndpoint], timeout: float, tcp_nodelay: bool
) -> _Connection:
    clients: list[paramiko.SSHClient] = []
    sock: Any = None
    try:
        first = route[0]
        try:
            sock = _open_socket(first, timeout, tcp_nodelay)
        except (OSError, paramiko.SSHException) as exc:
            reason = _socket_reason(exc, timeout) if isinstance(exc, OSError) else _one_line(exc)
            raise SiteUnreachable(
                f"cannot connect to site {site} at {_where(first, route)}: {reason}"
            ) from None
        clients.append(_login(site, first, sock, timeout))
        for previous, endpoint in itertools.pairwise(route):
            # Each further hop rides on a direct-tcpip channel of the previous
            # one (there is no TCP socket of ours to tune on this side).
            previous_transport = clients[-1].get_transport()
            try:
                if previous_transport is None:
                    raise paramiko.SSHException("SSH session not active")
                channel = previous_transport.open_channel(
                    "direct-tcpip",
                    (endpoint.hostname, endpoint.port),
                    ("127.0.0.1", 0),
                    timeout=timeout,
                )
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise SiteUnreachable(
                    f"cannot connect to site {site}: jump host {previous.address} could not "
                    f"reach {endpoint.address}: {_one_line(exc)}"
                ) from None
            clients.append(_login(site, endpoint, channel, timeout))
    except BaseException:
        for client in reversed(clients):
            client.close()
        _close_socket(sock)
        raise
    return _Connection(clients, sock)


def _where(endpoint: ResolvedEndpoint, route: Sequence[ResolvedEndpoint]) -> str:
    if len(route) == 1:
        return endpoint.address
    return f"{route[-1].address} (jump host {endpoint.address})"
