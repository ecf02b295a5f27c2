"""The click side of `aif`: the root group, the helpers every command uses, and lazy loading.

Errors become output in exactly one place (:class:`AifGroup.main`): one
line on stderr, the error's exit code, never a traceback for bad input.

Start-up is paid per command: the root group knows each command's name,
module and summary from :mod:`gateway.cli.registry` and imports a command's
module only when that command runs, so ``aif --help`` lists every command
without loading any. Inside the commands, the heavy layers are imported
where they are used. The commands themselves are in ``foundation.py``
(render, sites, profile), ``jobs.py`` (the job lifecycle at the sites),
``listing.py`` (list), ``federation.py`` (rank, load, explain) and
``sandbox.py`` beside this file; each definition starts with :func:`command`
or :func:`group`, which take the summary from the registry.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from gateway import __version__
from gateway.cli import VERSION_LINE
from gateway.cli.registry import COMMANDS
from gateway.errors import EXIT_INTERNAL, AifError

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

_consoles: dict[bool, Console] = {}

# The commands that only read local files (spec, profiles, config, ledger) and end: the cycle
# collector stays off through them (see gateway.cli). Every other one may run long (a wait,
# the sandbox's daemons) and turns it back on as it starts.
LOCAL_COMMANDS = frozenset({"render", "sites", "list", "explain"})
# The cycle collector's first threshold for the other commands (Python's default is 700).
YOUNG_OBJECTS = 10_000


def console(stderr: bool = False) -> Console:
    """The one rich console per stream; markup off so user strings are never read as markup."""
    if stderr not in _consoles:
        from rich.console import Console

        stream = sys.stderr if stderr else sys.stdout
        # Logs and pipes get rich's 80 columns otherwise, too narrow for the job tables.
        width = None if stream.isatty() or "COLUMNS" in os.environ else 120
        _consoles[stderr] = Console(
            markup=False, highlight=False, stderr=stderr, soft_wrap=False, width=width
        )
    return _consoles[stderr]


def new_table(title: str, columns: Sequence[str]) -> Any:
    """A rich table whose cells fold instead of being cut: ids must stay copyable."""
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(columns):
        # The first column is the key (job id, site): kept whole on one line.
        table.add_column(column, overflow="fold", no_wrap=index == 0)
    return table


def print_json(data: object) -> None:
    """``data`` as JSON: a list one item a line, a dict one key a line (a list under a key
    one item a line), each item compact. json's C encoder writes every line; ``indent=``
    would send all of it through the pure-Python encoder (slow for hundreds of jobs)."""
    import json  # only --json output needs it: `aif --help` does not load it

    def lines(value: object, margin: str) -> str:
        if isinstance(value, list) and value:
            inner = margin + "  "
            return "[\n" + ",\n".join(inner + json.dumps(item) for item in value) + "\n" + margin + "]"
        return json.dumps(value)

    if isinstance(data, dict) and data:
        members = (f"  {json.dumps(key)}: {lines(value, '  ')}" for key, value in data.items())
        click.echo("{\n" + ",\n".join(members) + "\n}")
    else:
        click.echo(lines(data, ""))


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"aif: error: {message}", err=True)
    sys.exit(code)


class AifGroup(click.Group):
    """Turns every AifError into one line on stderr and its exit code.

    Loads a command's module when the command is asked for (:meth:`get_command`);
    the help lists the commands from the registry without loading them.
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("standalone_mode", True)
        try:
            return super().main(*args, **kwargs)
        except AifError as exc:
            fail(exc.message, exc.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AifError as exc:
            fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            sys.exit(EXIT_INTERNAL)
        finally:
            forked = sys.modules.get("gateway.transports.mux.forked")
            if forked is not None:
                forked.drop_ahead()  # a login child forked ahead that the command did not use

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            # Importing the module defines the command, which registers it on this group.
            importlib.import_module(f"gateway.cli.{COMMANDS[cmd_name].module}")
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in COMMANDS:
            # An unknown name: click suggests the closest of the loaded commands, so load them all.
            load_all_commands()
        name, command, rest = super().resolve_command(ctx, args)
        if name == "submit" and _names_a_site(rest):
            # The site's login child is forked now: it imports paramiko on the other core while
            # this process loads the command's modules and reads the specs (see open_context).
            from gateway.transports.mux.forked import fork_ahead

            fork_ahead()
        if name not in LOCAL_COMMANDS:
            # Back on (some of these wait for hours), over a heap that start-up left frozen and
            # with a young generation large enough that importing the command's modules and
            # reading a few hundred specs is not walked again and again: 200 specs in one
            # `aif submit`, 8-15 ms less (gc.disable() measured as the bound).
            gc.freeze()
            gc.set_threshold(YOUNG_OBJECTS, 10, 10)
            gc.enable()
        return name, command, rest

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Stand-ins carrying each command's summary: click shortens and lists them as it
        # would the commands themselves, and no command's module is imported.
        stand_ins = click.Group(commands=[click.Command(n, help=e.summary) for n, e in COMMANDS.items()])
        stand_ins.format_commands(ctx, formatter)


def _names_a_site(args: Sequence[str]) -> bool:
    """A submission to a named site that will log in to it (not a dry run nor a help text)."""
    words = set(args)
    named = "--site" in words or any(a.startswith("--site=") for a in args)
    return named and not words & {"--dry-run", "--help", "-h"}


def load_all_commands() -> None:
    """Import every command's module (an unknown command's suggestion, the tests)."""
    for entry in sorted({e.module for e in COMMANDS.values()}):
        importlib.import_module(f"gateway.cli.{entry}")


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


@click.group(cls=AifGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aif", message=VERSION_LINE)
@click.option("-v", "--verbose", is_flag=True, help="Print every command run at a site to stderr.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """One portable job spec, run at any of Europe's AI Factories."""
    from gateway.home import loose_home_warning

    ctx.obj = {"verbose": verbose}
    warning = loose_home_warning()
    if warning:
        click.echo(f"aif: warning: {warning}", err=True)


def command(name: str) -> Callable[[Callable[..., Any]], click.Command]:
    """Defines the top-level command NAME on :func:`main`.

    Its help is its summary in the registry, then the function's docstring
    (the details, if any): the summary is written once, in the registry.
    """

    def define(f: Callable[..., Any]) -> click.Command:
        return main.command(name, help=_help(name, f))(f)

    return define


def group(name: str) -> Callable[[Callable[..., Any]], click.Group]:
    """Defines the top-level command group NAME on :func:`main`, like :func:`command`."""

    def define(f: Callable[..., Any]) -> click.Group:
        return main.group(name, help=_help(name, f))(f)

    return define


def _help(name: str, f: Callable[..., Any]) -> str:
    details = inspect.getdoc(f)
    summary = COMMANDS[name].summary
    return f"{summary}\n\n{details}" if details else summary


def command_hook(ctx: click.Context) -> Callable[[str, Sequence[str]], None] | None:
    """With -v, every command run at a site is printed as `+ [SITE] argv` on stderr."""
    if not ctx.find_root().obj.get("verbose"):
        return None
    from gateway.site import describe_command

    def hook(site: str, argv: Sequence[str]) -> None:
        click.echo(describe_command(site, argv), err=True)

    return hook


def open_context(ctx: click.Context) -> Any:
    """The lifecycle's context for this command: profiles, config, ledger, backends."""
    from gateway.context import open_context as open_lifecycle_context

    # A CLI process has no thread of its own: a site's early login may run in a forked child.
    return open_lifecycle_context(command_hook(ctx), login_in_child=True)


def job_json(job: Any) -> dict[str, object]:
    return {
        "id": job.id,
        "site": job.site,
        "slurm_job_id": job.slurm_job_id,
        "state": str(job.state),
        "reason": job.reason,
        "name": job.name,
        "message": job.message,
        "key": job.submission_key,
        "submitted_at": job.created_at,
        "updated_at": job.updated_at,
    }


def jobs_table(jobs: Sequence[Any], title: str, problems: dict[str, str] | None = None) -> Any:
    """The jobs as a table; a site's problem (unreachable...) shows in its jobs' reason column."""
    table = new_table(title, ("id", "name", "site", "slurm id", "state", "reason / message", "updated"))
    problems = problems or {}
    for job in jobs:
        note = job.reason or job.message
        state = str(job.state)
        if job.site in problems and not job.terminal:
            # What the site said last, not what it says now: it cannot be asked.
            note = f"site problem: {problems[job.site]}"
            state = f"{state} (last seen)"
        table.add_row(
            job.id,
            job.name,
            job.site or "-",
            job.slurm_job_id or "-",
            state,
            note,
            job.updated_at[:19].replace("T", " "),
        )
    return table
