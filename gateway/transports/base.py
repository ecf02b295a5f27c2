"""The one small protocol every transport implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class CommandResult:
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
