"""`aif list`: the jobs in the ledger (no site is asked), in a module of its own so that it
loads nothing more than it needs."""

from __future__ import annotations

import click

from gateway.cli.app import command, console, jobs_table, json_option


@command("list")
@click.option(
    "--limit", type=int, default=None, help="Show the newest N jobs (default 50; with --all: every row)."
)
@click.option("--all", "show_all", is_flag=True, help="Show every row, INVALID ones included.")
@json_option
def list_command(limit: int | None, show_all: bool, as_json: bool) -> None:
    """By default the newest 50, without INVALID rows (specs refused before
    anything was submitted), and how many more there are; --all shows every
    row, --limit N the newest N.
    """
    from gateway.errors import UsageError
    from gateway.ledger import SUMMARY_FIELDS, Ledger

    if limit is not None and limit < 0:
        raise UsageError(f"--limit: {limit} is not allowed; expected 0 or more")
    if limit is None and not show_all:
        limit = 50
    with Ledger() as ledger:
        if as_json:
            rows = ledger.summaries(limit, include_invalid=show_all)
            shown = len(rows)
        else:
            jobs = ledger.list_jobs(limit, include_invalid=show_all)
            shown = len(jobs)
        total = ledger.count_jobs(include_invalid=show_all) if shown == limit else shown
    more = f"{shown} of {total} jobs shown, newest first: --limit N or --all for more"
    if as_json:
        import json

        # One job a line, through json's C encoder: 10,000 rows in milliseconds (indent= is pure Python).
        lines = (json.dumps(dict(zip(SUMMARY_FIELDS, row, strict=True))) for row in rows)
        click.echo("[\n" + ",\n".join(lines) + "\n]" if rows else "[]")
        if total > shown:
            click.echo(more, err=True)
    else:
        console().print(jobs_table(jobs, "ledger"))
        if total > shown:
            click.echo(more)
