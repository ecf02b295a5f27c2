"""The `aif` command. Each command is a few lines over a library call.

Errors become output in exactly one place (:class:`AifGroup.main`): one
line on stderr, the error's exit code, never a traceback for bad input.
Imports of the heavy layers happen inside commands so ``aif --help`` and
``aif render`` start fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from gateway import __version__
from gateway.errors import EXIT_INTERNAL, EXIT_USAGE, AifError

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

_consoles: dict[bool, Console] = {}


def console(stderr: bool = False) -> Console:
    """The one rich console per stream; markup off so user strings are never read as markup."""
    if stderr not in _consoles:
        from rich.console import Console

        _consoles[stderr] = Console(markup=False, highlight=False, stderr=stderr, soft_wrap=False)
    return _consoles[stderr]


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"aif: error: {message}", err=True)
    sys.exit(code)


class AifGroup(click.Group):
    """Turns every AifError into one line on stderr and its exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
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


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


@click.group(cls=AifGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aif")
@click.option("-v", "--verbose", is_flag=True, help="Print every command run at a site to stderr.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """One portable job spec, run at any of Europe's AI Factories."""
    ctx.obj = {"verbose": verbose}


# -- foundation commands -------------------------------------------------------------------


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--site", required=True, help="The site to render for (see `aif sites`).")
@click.option("--account", help="Override the account from your config.")
@json_option
def render(spec: str, site: str, account: str | None, as_json: bool) -> None:
    """Print the batch script SPEC would be submitted as at SITE."""
    from gateway import api

    rendered = api.render(spec, site, account=account)
    if as_json:
        print_json(
            {
                "site": rendered.site,
                "partition": rendered.partition,
                "qos": rendered.qos,
                "workdir": rendered.workdir,
                "stdout_path": rendered.stdout_path,
                "script": rendered.script,
            }
        )
    else:
        click.echo(rendered.script, nl=False)


@main.command()
@json_option
def sites(as_json: bool) -> None:
    """List the sites aif knows, and whether you can use them."""
    from gateway import api

    summaries = api.list_sites()
    if as_json:
        print_json([s.to_json() for s in summaries])
        return
    from rich.table import Table

    table = Table(title="AI Factory sites", show_lines=False)
    for column in ("site", "factory", "country", "sectors", "GPUs/node", "data up to", "usable"):
        table.add_column(column)
    for s in summaries:
        table.add_row(
            s.name,
            s.factory,
            s.country,
            ", ".join(s.sectors),
            s.gpus,
            s.max_sensitivity,
            "yes" if s.usable else f"no: {s.problem}",
        )
    console().print(table)


@main.group()
def profile() -> None:
    """Work with site profiles."""


@profile.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
def profile_validate(files: Sequence[str], as_json: bool) -> None:
    """Check site profile FILES; exit 3 if any is invalid."""
    from gateway import api
    from gateway.errors import EXIT_INVALID

    results = api.validate_profiles(list(files))
    if as_json:
        print_json([{"path": r.path, "ok": r.ok, "message": r.message} for r in results])
    else:
        for r in results:
            if r.ok:
                click.echo(f"{r.path}: ok ({r.message})")
            else:
                click.echo(f"aif: error: {r.message}", err=True)
    if not all(r.ok for r in results):
        sys.exit(EXIT_INVALID)


def run() -> None:  # pragma: no cover - console entry for `python -m gateway`
    main(prog_name="aif")


if __name__ == "__main__":  # pragma: no cover
    run()


__all__ = ["EXIT_USAGE", "main"]
