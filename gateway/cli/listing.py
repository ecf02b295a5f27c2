"""`aif list`: the jobs in the ledger (no site is asked), in a module of its own so that it
loads nothing more than it needs."""

from __future__ import annotations

import click

from gateway.cli.app import command, console, job_json, jobs_table, json_option, print_json


@command("list")
@click.option("--limit", type=int, default=None, help="Show only the newest N jobs (of those shown).")
@click.option("--all", "show_all", is_flag=True, help="Also show INVALID rows.")
@json_option
def list_command(limit: int | None, show_all: bool, as_json: bool) -> None:
    """By default INVALID rows (specs refused before anything was submitted)
    are hidden; --all shows every row.
    """
    from gateway import lifecycle
    from gateway.errors import UsageError
    from gateway.ledger import Ledger

    if limit is not None and limit < 0:
        raise UsageError(f"--limit: {limit} is not allowed; expected 0 or more")
    with Ledger() as ledger:
        jobs = lifecycle.list_jobs(ledger, limit, include_invalid=show_all)
    if as_json:
        print_json([job_json(j) for j in jobs])
    else:
        console().print(jobs_table(jobs, "ledger"))
