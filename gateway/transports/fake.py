"""A scripted transport for unit tests: no processes, no network.

    fake = FakeTransport("alpha")
    fake.respond(["sbatch"], stdout="42\\n")
    fake.respond(["squeue"], stdout="42|PENDING\\n")        # first squeue
    fake.respond(["squeue"], stdout="42|RUNNING\\n")        # every later squeue
    fake.respond(["scancel"], handler=lambda call: CommandResult(call.argv, 0, "", ""))
    fake.drop_after_success(["sbatch"])   # sbatch runs, then the link "drops"
    fake.fail_on_call(3)                  # the 3rd call never reaches the site

The longest matching argv prefix wins. Several responses for one prefix are
used in order, and the last one repeats. An argv nothing matches raises
``UnexpectedCommand`` unless a ``default`` result was given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConnectionLost, SiteUnreachable
from gateway.record import Record
from gateway.transports.base import DEFAULT_TIMEOUT, CommandHook, CommandResult, Progress, start_command
from gateway.transports.local import (
    TreeEntry,
    atomic_destination,
    copy_tree_entries,
)


class UnexpectedCommand(AssertionError):
    """The code under test ran a command the test did not script."""


class FakeCall(Record):
    """One call the code under test made, in order."""

    argv: tuple[str, ...]
    stdin: bytes | None
    timeout: float
    # "ok": answered; "failed": SiteUnreachable before running;
    # "dropped": the scripted command ran, then ConnectionLost was raised.
    outcome: str = "ok"


Handler = Callable[[FakeCall], CommandResult]


class _Scripted(Record):
    """What to answer to one call: a fixed result or a handler."""

    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    handler: Handler | None = None

    def answer(self, call: FakeCall) -> CommandResult:
        if self.handler is not None:
            return self.handler(call)
        return CommandResult(call.argv, self.returncode, self.stdout, self.stderr)


@dataclass
class _DropRule:
    prefix: tuple[str, ...]
    remaining: int


@dataclass
class FakeTransport:
    """Answers commands from a script and records every call."""

    site: str = "fake"
    default: CommandResult | None = None
    on_command: CommandHook | None = None
    # Files the fake "site" holds, for read_file/get_file/get_tree; keys are
    # absolute remote paths.
    files: dict[str, bytes] = field(default_factory=dict)
    calls: list[FakeCall] = field(default_factory=list)
    closed: bool = False
    _scripts: dict[tuple[str, ...], list[_Scripted]] = field(default_factory=dict)
    _fail_on: set[int] = field(default_factory=set)
    _drop_on: set[int] = field(default_factory=set)
    _drop_rules: list[_DropRule] = field(default_factory=list)

    # -- scripting ---------------------------------------------------------

    def respond(
        self,
        prefix: Sequence[str],
        stdout: str = "",
        stderr: str = "",
        returncode: int = 0,
        *,
        handler: Handler | None = None,
    ) -> FakeTransport:
        """Answer argv starting with ``prefix``; returns self for chaining."""
        scripted = _Scripted(returncode, stdout, stderr, handler)
        self._scripts.setdefault(tuple(prefix), []).append(scripted)
        return self

    def fail_on_call(self, n: int, *, after_running: bool = False) -> None:
        """Make the ``n``-th call (1-based) raise SiteUnreachable (nothing ran).

        With ``after_running`` the scripted command is answered first (its
        handler runs, so any side effect happens) and only then the link
        "drops" with ConnectionLost: the caller cannot know whether it ran.
        """
        (self._drop_on if after_running else self._fail_on).add(n)

    def drop_after_success(self, prefix: Sequence[str], times: int = 1) -> None:
        """The next ``times`` calls matching ``prefix`` run, then raise ConnectionLost."""
        self._drop_rules.append(_DropRule(tuple(prefix), times))

    # -- inspection --------------------------------------------------------

    @property
    def commands(self) -> list[tuple[str, ...]]:
        """The argv of every call, in order."""
        return [call.argv for call in self.calls]

    def calls_to(self, prefix: Sequence[str]) -> list[FakeCall]:
        """The calls whose argv starts with ``prefix``."""
        wanted = tuple(prefix)
        return [call for call in self.calls if call.argv[: len(wanted)] == wanted]

    # -- the Transport protocol -------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult:
        command = start_command(self.site, argv, self.on_command)
        number = len(self.calls) + 1
        call = FakeCall(command, stdin, timeout)
        if number in self._fail_on:
            self.calls.append(FakeCall(command, stdin, timeout, "failed"))
            raise SiteUnreachable(f"cannot connect to site {self.site} (scripted failure)")
        result = self._answer(call)
        if number in self._drop_on or self._take_drop_rule(command):
            self.calls.append(FakeCall(command, stdin, timeout, "dropped"))
            raise ConnectionLost(
                f"connection to site {self.site} dropped while running {command[0]} "
                "(scripted drop): it may or may not have run"
            )
        self.calls.append(call)
        return result

    def close(self) -> None:
        self.closed = True

    # -- files -------------------------------------------------------------

    def read_file(self, remote_path: str, offset: int = 0) -> bytes:
        try:
            return self.files[remote_path][offset:]
        except KeyError:
            raise FileNotFoundError(f"{remote_path} not found at site {self.site}") from None

    def get_file(self, remote_path: str, local_path: str | Path, progress: Progress | None = None) -> int:
        data = self.read_file(remote_path)
        fd, partial = atomic_destination(Path(local_path))
        with open(fd, "wb") as writer:
            writer.write(data)
        partial.replace(local_path)
        if progress is not None:
            progress(len(data), len(data))
        return len(data)

    def list_tree(self, remote_dir: str) -> list[TreeEntry]:
        root = remote_dir.rstrip("/") + "/"
        directories: set[str] = set()
        files: list[TreeEntry] = []
        for path, data in self.files.items():
            if not path.startswith(root):
                continue
            relpath = path[len(root) :]
            parts = relpath.split("/")
            for depth in range(1, len(parts)):
                directories.add("/".join(parts[:depth]))
            files.append(TreeEntry(relpath, len(data), False))
        if not files:
            raise FileNotFoundError(f"{remote_dir} not found at site {self.site}")
        entries = [TreeEntry(name, 0, True) for name in directories] + files
        return sorted(entries, key=lambda entry: entry.relpath)

    def get_tree(
        self, remote_dir: str, local_dir: str | Path, progress: Progress | None = None
    ) -> list[TreeEntry]:
        root = remote_dir.rstrip("/")

        def copy_file(relpath: str, destination: Path, file_progress: Progress | None) -> int:
            return self.get_file(f"{root}/{relpath}", destination, file_progress)

        return copy_tree_entries(self.list_tree(remote_dir), Path(local_dir), copy_file, progress)

    # -- internals ---------------------------------------------------------

    def _answer(self, call: FakeCall) -> CommandResult:
        for length in range(len(call.argv), -1, -1):
            queue = self._scripts.get(call.argv[:length])
            if queue:
                # Consume scripted answers in order; the last one repeats.
                scripted = queue.pop(0) if len(queue) > 1 else queue[0]
                return scripted.answer(call)
        if self.default is not None:
            return CommandResult(call.argv, self.default.returncode, self.default.stdout, self.default.stderr)
        raise UnexpectedCommand(f"FakeTransport({self.site}) has no response for {call.argv!r}")

    def _take_drop_rule(self, command: tuple[str, ...]) -> bool:
        for rule in self._drop_rules:
            if rule.remaining > 0 and command[: len(rule.prefix)] == rule.prefix:
                rule.remaining -= 1
                return True
        return False
