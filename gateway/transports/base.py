"""The one small protocol every transport implements."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.record import Record

DEFAULT_TIMEOUT = 60.0


def describe_argv(argv: Sequence[str], limit: int = 200) -> str:
    """A command as one short, shell-quoted line for error messages."""
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CommandResult(Record):
    """What one command at a site gave back."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Transport(Protocol):
    """Runs one command at a site.

    ``argv`` is a list of plain arguments: the transport quotes them itself
    when a shell stands in between (SSH), so no argument can run anything.
    ``stdin`` is sent and then closed. Connection problems raise
    ``gateway.errors.SiteUnreachable``; a command that runs and fails is a
    normal ``CommandResult`` with a non-zero ``returncode``.
    """

    site: str

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult: ...

    def close(self) -> None: ...


# Called as on_command(site, argv) just before each command (the CLI's verbose
# mode prints it); never given stdin, which may hold secrets.
CommandHook = Callable[[str, Sequence[str]], None]
# Called as progress(bytes_done, bytes_total) while files are copied back.
Progress = Callable[[int, int], None]


def start_command(site: str, argv: Sequence[str], on_command: CommandHook | None) -> tuple[str, ...]:
    """Check an argv every transport can run (a program, no NUL) and announce it to the hook."""
    command = tuple(argv)
    if not command:
        raise ValueError("run() needs at least the program name")
    if any("\0" in arg for arg in command):
        raise ValueError("an argument contains a NUL byte, which no command can receive")
    if on_command is not None:
        on_command(site, command)
    return command
