"""One exception tree for every error a user can see.

Each class carries the message shown to the user and the process exit code.
The CLI turns these into output in exactly one place (``gateway.cli``).
The exit codes are a public contract used by scripts: never renumber them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_NO_FIT = 4
EXIT_UNREACHABLE = 5
EXIT_REJECTED = 6
EXIT_JOB_FAILED = 7
EXIT_TIMEOUT = 8


def one_line(text: str) -> str:
    """``text`` with every character that is not printable escaped (``\\n``, ``\\x1b``, ``\\u2028``).

    Users' values end up in messages (a variable name may hold a newline, a
    file name an escape sequence): escaped, they can neither break the one
    line nor drive the terminal.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class AifError(Exception):
    """Base of every error meant for the user: one clear line, one exit code.

    The message is made one line here (:func:`one_line`), whatever it holds.
    """

    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(AifError):
    """The command line itself is wrong (missing argument, unknown site name...)."""

    exit_code = EXIT_USAGE


class InvalidInput(AifError):
    """A spec, profile or config file is not valid."""

    exit_code = EXIT_INVALID


class SpecError(InvalidInput):
    """The job spec is not valid."""


class ProfileError(InvalidInput):
    """A site profile is not valid."""


class ConfigError(InvalidInput):
    """The user's configuration is not valid or lacks what a site needs."""


class BackendMissing(InvalidInput):
    """An optional backend (such as pyslurm) was asked for but is not installed."""


class HomeUnusable(AifError):
    """$AIF_HOME, or a file aif keeps there, cannot be created, read or written.

    Permissions, a read-only or full file system: nothing wrong with the
    user's input, so this is exit 1, not "invalid input".
    """


class NoFit(AifError):
    """No site or partition can run the job; the message says why for each."""

    exit_code = EXIT_NO_FIT


class SiteUnreachable(AifError):
    """The site could not be reached (connection, authentication, controller down)."""

    exit_code = EXIT_UNREACHABLE


class ConnectionLost(SiteUnreachable):
    """The connection dropped while a command ran: whether it took effect is unknown.

    Submission treats this differently from a failed connect: the job may
    exist, so it is looked up by its token before anything is sent again.
    """


class HostKeyRejected(SiteUnreachable):
    """The site's SSH host key is unknown or changed: we refuse to talk to it."""


class ProfileMismatch(AifError):
    """`aif profile check` found the site disagreeing with its profile (the report says where)."""


class SchedulerRejected(AifError):
    """The site's scheduler refused the job; the message is the scheduler's own."""

    exit_code = EXIT_REJECTED


class JobUnsuccessful(AifError):
    """A job the user waited for ended in a state other than COMPLETED."""

    exit_code = EXIT_JOB_FAILED


class WaitTimeout(AifError):
    """`aif wait --timeout` ran out while jobs were still queued or running."""

    exit_code = EXIT_TIMEOUT


class SandboxError(AifError):
    """The local Slurm sandbox could not be brought up, down or inspected."""

    exit_code = EXIT_INTERNAL


EXIT_INTERRUPTED = 130


class Interrupted(AifError):
    """The user stopped aif (Ctrl-C) mid-way; the message says what was done and how to finish."""

    exit_code = EXIT_INTERRUPTED


class SandboxDown(SandboxError):
    """`aif sandbox status` found some part of the sandbox not up (its table says which)."""
