"""The holder's wire format and the checks both ends share (no paramiko here).

One request per unix-socket connection. A message is a 4-byte big-endian
length, that many bytes of a JSON header, then the body the header announces
(only a request has one: the command's stdin, ``header["stdin"]`` bytes).

Request: ``{"v": 1, "op": "exec", "target": KEY, "argv": [...], "timeout": S,
"stdin": N}`` or ``{"v": 1, "op": "stop"}``. Answer: ``{"status": "ok",
"returncode": R, "stdout": "...", "stderr": "..."}``, ``{"status": "error",
"kind": "ConnectionLost"|"SiteUnreachable"|..., "message": "..."}`` (what the
holder's SSH transport raised), or ``{"status": "declined", "reason": "..."}``:
the holder did not run the command (stopping, another target, another user),
so the client may safely run it itself.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from gateway.errors import ConnectionLost
from gateway.record import Record
from gateway.transports.base import CommandResult, describe_argv

VERSION = 1
_LENGTH = struct.Struct(">I")
MAX_HEADER = 256 * 1024 * 1024  # a squeue of a huge queue still fits; garbage does not
MAX_BODY = 1024 * 1024 * 1024
# AF_UNIX paths longer than this (108 on Linux, with the NUL) are reached through /proc/self/fd.
_MAX_SUN_PATH = 100
DEFAULT_PERSIST_S = 60
# The reasons a holder declines with when it is leaving: a new holder is then worth starting.
STOPPING = "the holder is stopping"
OTHER_TARGET = "this holder serves another target"
LEAVING = (STOPPING, OTHER_TARGET)


class ProtocolError(Exception):
    """The other end broke off or sent something that is not a message."""


class SharedTarget(Record):
    """An ``SshTarget``'s fields, as plain data: the client must not import paramiko.

    The holder builds its ``SshTarget`` from these; :attr:`key` tells a holder
    serving another target (the user's config changed) from the right one.
    """

    site: str
    host: str
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    proxy_jump: str | None = None
    connect_timeout: float = 15.0

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_key(cls, key: str) -> SharedTarget:
        data = json.loads(key)
        if not isinstance(data, dict):
            raise ValueError("a shared target is a JSON object")
        return cls(**data)


def mux_directory(home: Path) -> Path:
    return home / "mux"


def socket_path(home: Path, site: str) -> Path:
    return mux_directory(home) / f"{site}.sock"


def lock_path(home: Path, site: str) -> Path:
    return mux_directory(home) / f"{site}.lock"


def log_path(home: Path, site: str) -> Path:
    return mux_directory(home) / f"{site}.log"


def ensure_private_directory(directory: Path) -> Path:
    """The mux directory, created 0700; refused when someone else owns it or may enter it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.lstat()
    if info.st_uid != os.getuid():
        raise PermissionError(f"{directory} belongs to another user")
    if info.st_mode & 0o077:
        os.chmod(directory, 0o700)
    return directory


@contextmanager
def reachable_path(path: Path) -> Iterator[str]:
    """A name for ``path`` short enough for AF_UNIX (via /proc/self/fd when it is long)."""
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# -- framing -------------------------------------------------------------------------


def encode(header: dict[str, object], body: bytes = b"") -> bytes:
    data = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return _LENGTH.pack(len(data)) + data + body


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes, or ProtocolError when the other end closes first."""
    chunks = []
    left = size
    while left:
        try:
            chunk = sock.recv(min(left, 1024 * 1024))
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ProtocolError(f"connection reset ({exc.strerror})") from None
        if not chunk:
            raise ProtocolError("the other end closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive_header(sock: socket.socket) -> dict[str, object]:
    (size,) = _LENGTH.unpack(receive_exactly(sock, _LENGTH.size))
    if size > MAX_HEADER:
        raise ProtocolError(f"a header of {size} bytes is too long")
    try:
        header = json.loads(receive_exactly(sock, size))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header is not a JSON object")
    return header


def receive_body(sock: socket.socket, header: dict[str, object], field: str) -> bytes:
    size = header.get(field, 0)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BODY:
        raise ProtocolError(f"bad body length {size!r}")
    return receive_exactly(sock, size)


# -- requests ------------------------------------------------------------------------


class ExecRequest(Record):
    target: str
    argv: tuple[str, ...]
    stdin: bytes | None
    timeout: float


def exec_request(target: SharedTarget, argv: Sequence[str], stdin: bytes | None, timeout: float) -> bytes:
    header: dict[str, object] = {
        "v": VERSION,
        "op": "exec",
        "target": target.key,
        "argv": list(argv),
        "timeout": timeout,
        "stdin": len(stdin) if stdin is not None else -1,
    }
    return encode(header, stdin or b"")


def parse_exec(header: dict[str, object], sock: socket.socket) -> ExecRequest:
    """The rest of an exec request (its stdin is read from ``sock``); ProtocolError if malformed."""
    target, argv, timeout = header.get("target"), header.get("argv"), header.get("timeout")
    if not isinstance(target, str):
        raise ProtocolError("no target")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ProtocolError("argv must be a non-empty list of strings")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 10**7:
        raise ProtocolError("bad timeout")
    stdin = None if header.get("stdin") == -1 else receive_body(sock, header, "stdin")
    return ExecRequest(target, tuple(argv), stdin, float(timeout))


def command_result(command: tuple[str, ...], answer: dict[str, object], who: str) -> CommandResult:
    """An "ok" answer as the command's result (its errors are the caller's to read first);
    anything else is not an answer, so the command may or may not have run. ``who``
    answered, for the message ("site S: the shared connection's holder")."""
    returncode, stdout, stderr = answer.get("returncode"), answer.get("stdout"), answer.get("stderr")
    if answer.get("status") != "ok" or not (
        isinstance(returncode, int) and isinstance(stdout, str) and isinstance(stderr, str)
    ):
        raise ConnectionLost(
            f"{who} answered {describe_argv(command)} with something that is not an answer: "
            "it may or may not have run"
        )
    return CommandResult(argv=command, returncode=returncode, stdout=stdout, stderr=stderr)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
