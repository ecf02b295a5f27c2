"""The holder: one process per site keeping one authenticated SSH connection for every aif process.

Run as ``python -m gateway.transports.mux.holder TARGET_KEY PERSIST_S`` (the
client starts it, detached, when it found none). It takes the site's lock
file (a second holder for the site exits at once), logs in with the same
``SshTransport`` a direct command uses (strict host keys and all), then serves
exec requests on ``$AIF_HOME/mux/SITE.sock`` (0600 in a 0700 directory, and
only from processes of its own uid, checked with SO_PEERCRED), each on its own
thread and SSH channel. It stops after ``PERSIST_S`` seconds without a
request, when its SSH connection dies, on a ``stop`` request and on SIGTERM.

Stopping unlinks the socket first (new clients find none and connect
directly), then declines the requests already queued, so no client ever loses
an answer because its holder was leaving; requests being run are answered.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.errors import AifError, ConnectionLost
from gateway.transports.base import Transport
from gateway.transports.mux.protocol import (
    OTHER_TARGET,
    STOPPING,
    VERSION,
    ExecRequest,
    ProtocolError,
    SharedTarget,
    encode,
    ensure_private_directory,
    lock_path,
    mux_directory,
    parse_exec,
    peer_uid,
    reachable_path,
    receive_header,
    socket_path,
)

_TICK_S = 0.25  # how often the accept loop looks at the idle time and the connection
_READ_REQUEST_S = 30.0  # a client that connected sends its whole request at once
_LOCK_WAIT_S = 3.0  # a holder that is stopping (another target) releases the lock soon


class Holder:
    """Serves one transport's ``run`` on a unix socket until idle, dead or stopped."""

    def __init__(
        self,
        transport: Transport,
        target_key: str,
        path: Path,
        persist_s: float,
        *,
        allowed_uid: int | None = None,
        is_alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.transport = transport
        self.target_key = target_key
        self.path = path
        self.persist_s = persist_s
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self.is_alive = is_alive
        self.served = 0  # requests run, for tests and the log
        self._listener: socket.socket | None = None
        self._inode = 0
        self._active = 0
        self._last = time.monotonic()
        self._stop_reason = ""
        self._lock = threading.Condition()

    def bind(self) -> None:
        """Listen on the socket path, replacing a stale socket atomically."""
        ensure_private_directory(self.path.parent)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        partial.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with reachable_path(partial) as name:
                listener.bind(name)
            os.chmod(partial, 0o600)
            listener.listen(128)
            os.replace(partial, self.path)
        except BaseException:
            listener.close()
            partial.unlink(missing_ok=True)
            raise
        self._inode = self.path.stat().st_ino
        self._listener = listener

    def stop(self, reason: str) -> None:
        with self._lock:
            if not self._stop_reason:
                self._stop_reason = reason

    def serve(self) -> str:
        """Accept requests until it is time to stop; returns why it stopped."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("bind() first")
        listener.settimeout(_TICK_S)
        while True:
            reason = self._why_stop()
            if reason:
                break
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                self.stop(f"cannot accept: {exc}")
                continue
            with self._lock:
                self._active += 1
            threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()
        self._unlink()
        self._decline_queued(listener)
        listener.close()
        with self._lock:
            while self._active:
                self._lock.wait(1.0)
        return reason

    def _why_stop(self) -> str:
        with self._lock:
            if self._stop_reason:
                return self._stop_reason
            if self._active:
                return ""
            if time.monotonic() - self._last >= self.persist_s:
                return f"idle for {self.persist_s:g} s"
        if not self.is_alive():
            return "its SSH connection is gone"
        return ""

    def _unlink(self) -> None:
        # Only our own socket: a newer holder may have replaced it.
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()

    def _decline_queued(self, listener: socket.socket) -> None:
        """Answer the clients that connected before the unlink: 'not run, go direct'."""
        listener.setblocking(False)
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._active += 1
            threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(_READ_REQUEST_S)
            answer = self._answer(conn)
            conn.settimeout(_READ_REQUEST_S)
            conn.sendall(encode(answer))
        except (OSError, ProtocolError):
            pass  # the client went away: it reports a lost answer itself
        finally:
            conn.close()
            with self._lock:
                self._active -= 1
                self._last = time.monotonic()
                self._lock.notify_all()

    def _answer(self, conn: socket.socket) -> dict[str, object]:
        if peer_uid(conn) != self.allowed_uid:
            return _declined("this holder serves another user")
        header = receive_header(conn)
        if header.get("v") != VERSION:
            return _declined(f"protocol version {header.get('v')!r} is not {VERSION}")
        op = header.get("op")
        if op == "stop":
            self.stop("asked to stop")
            return {"status": "stopping"}
        if op != "exec":
            return _declined(f"unknown operation {op!r}")
        request = parse_exec(header, conn)
        if request.target != self.target_key:
            # The user's config changed: make way for a holder of the new target.
            self.stop("a client asked for another target")
            return _declined(OTHER_TARGET)
        with self._lock:
            stopping = bool(self._stop_reason)
        if stopping or not self.is_alive():
            return _declined(STOPPING)
        conn.settimeout(None)
        try:
            return answer_exec(self.transport, request)
        finally:
            self.served += 1


def answer_exec(transport: Transport, request: ExecRequest) -> dict[str, object]:
    """Run one request with ``transport``: the answer to send back, whatever happened."""
    try:
        result = transport.run(request.argv, stdin=request.stdin, timeout=request.timeout)
    except AifError as exc:
        return {"status": "error", "kind": type(exc).__name__, "message": exc.message}
    except ValueError as exc:
        return {"status": "error", "kind": "ValueError", "message": str(exc)}
    except Exception as exc:  # the command may have run: the client must not run it again
        message = f"site {transport.site}: {type(exc).__name__}: {exc}; it may or may not have run"
        return {"status": "error", "kind": ConnectionLost.__name__, "message": message}
    return {
        "status": "ok",
        "returncode": result.returncode,
        "stdout": result.stdout,
        "stderr": result.stderr,
    }


def _declined(reason: str) -> dict[str, object]:
    return {"status": "declined", "reason": reason}


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} [{os.getpid()}] {message}", file=sys.stderr, flush=True)


def _take_lock(path: Path) -> int | None:
    """The site's lock (held for the holder's life), or None when another holder has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    give_up = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= give_up:
                os.close(fd)
                return None
            time.sleep(0.05)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd


def main(argv: list[str] | None = None) -> int:
    from gateway.home import aif_home

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m gateway.transports.mux.holder TARGET_KEY PERSIST_S", file=sys.stderr)
        return 2
    target = SharedTarget.from_key(args[0])
    persist_s = float(args[1])
    home = aif_home()
    ensure_private_directory(mux_directory(home))
    lock = _take_lock(lock_path(home, target.site))
    if lock is None:
        return 0  # another holder serves this site
    # Only the holder imports paramiko: its clients never do.
    from gateway.errors import SiteUnreachable
    from gateway.transports.mux.client import direct_transport

    transport = direct_transport(target)
    try:
        transport.connect()
    except SiteUnreachable as exc:
        _log(f"not holding {target.site}: {exc.message}")
        return 1
    holder = Holder(
        transport, target.key, socket_path(home, target.site), persist_s, is_alive=lambda: transport.connected
    )
    signal.signal(signal.SIGTERM, lambda *_: holder.stop("SIGTERM"))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        holder.bind()
    except OSError as exc:  # e.g. a file system without unix sockets: clients go direct
        _log(f"cannot listen on {holder.path}: {exc}")
        transport.close()
        return 1
    _log(f"holding {target.site} for {persist_s:g} s idle")
    reason = holder.serve()
    _log(f"stopped after {holder.served} requests: {reason}")
    transport.close()
    os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
