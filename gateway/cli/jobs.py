"""The job lifecycle at the sites: `aif submit`, `status`, `wait`, `logs`, `cancel` and `fetch`.

`aif list` (the ledger only) is in ``listing.py``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from gateway.cli.app import (
    command,
    console,
    job_json,
    jobs_table,
    json_option,
    new_table,
    open_context,
    print_json,
)


@command("submit")
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--site", help="Submit to this site instead of letting aif choose.")
@click.option("--after", metavar="ID", help="Start only after job ID completed successfully.")
@click.option(
    "--key",
    metavar="KEY",
    help="Idempotency key: the same key with the same specs never submits twice (pipelines: "
    "pass the same key on every retry). Default: a new key, printed.",
)
@click.option("--dry-run", is_flag=True, help="Validate, place and render; submit nothing.")
@click.option(
    "--no-failover", is_flag=True, help="If the chosen site is down, fail instead of trying the next one."
)
@click.option("--refresh", is_flag=True, help="Probe the sites' load now, whatever the snapshots' age.")
@click.option(
    "--no-coalesce",
    is_flag=True,
    help="Send each spec as its own Slurm job, never specs of one shape as one array job.",
)
@json_option
@click.pass_context
def submit(
    ctx: click.Context,
    specs: Sequence[str],
    site: str | None,
    after: str | None,
    key: str | None,
    dry_run: bool,
    no_failover: bool,
    refresh: bool,
    no_coalesce: bool,
    as_json: bool,
) -> None:
    from gateway import lifecycle
    from gateway.errors import SchedulerRejected, SiteUnreachable
    from gateway.states import JobState

    with open_context(ctx) as lctx:
        if dry_run:
            _print_dry_runs(lifecycle.dry_run(lctx, list(specs), site=site), as_json)
            return
        report = lifecycle.submit(
            lctx,
            list(specs),
            site=site,
            after=after,
            key=key,
            failover=not no_failover,
            refresh=refresh,
            coalesce=not no_coalesce,
        )
    results = report.jobs
    if as_json:
        print_json(
            [{**job_json(r.job), "why": r.why, "how": r.how, "placement": _placement(r.job)} for r in results]
        )
    else:
        for r in results:
            if r.job.slurm_job_id:
                how = "" if r.how == "submitted" else f"; {r.how}, not sent again"
                click.echo(
                    f"{r.job.id}: submitted to {r.job.site} as Slurm job {r.job.slurm_job_id} ({r.why}{how})"
                )
            elif r.job.unresolved:
                click.echo(f"{r.job.id}: {_lost_answer(r.job)}")
            else:
                click.echo(f"{r.job.id}: {r.job.state} at {r.job.site}: {r.job.message}", err=True)
        if not all(r.job.slurm_job_id for r in results):
            click.echo(
                f"submission key {report.key}: the same command with --key {report.key} "
                "sends what was not sent, and nothing twice",
                err=True,
            )
    rejected = [r.job for r in results if r.job.state is JobState.REJECTED]
    unsettled = [r.job for r in results if r.job.state is JobState.UNREACHABLE or r.job.unresolved]
    for jobs, error in ((rejected, SchedulerRejected), (unsettled, SiteUnreachable)):
        if not jobs:
            continue
        first = jobs[0]
        if as_json:  # nothing else was said on stderr: the error line carries the first reason
            detail = first.message or _lost_answer(first)
            raise error(f"{first.id} at {first.site}: {detail}")
        # Each job's line above already said why: the error line only counts them.
        what = "rejected" if error is SchedulerRejected else "not submitted or not confirmed"
        raise error(f"{len(jobs)} of {len(results)} jobs {what} (see above)")


def _lost_answer(job: Any) -> str:
    """A job whose answer was lost: why it is in doubt (when aif knows more than that) and what settles it."""
    doubt = f" ({job.reason})" if job.reason else ": it may have been sent"
    settles = f"`aif status {job.id}` settles it from the site's record"
    return f"the answer from {job.site} was lost{doubt}; {settles}"


def _placement(job: Any) -> Any:
    """The ranking kept with the job (terms per site), as JSON."""
    return json.loads(job.placement) if job.placement else None


def _print_dry_runs(runs: Sequence[Any], as_json: bool) -> None:
    if as_json:
        print_json(
            [
                {
                    "spec": r.spec,
                    "site": r.site,
                    "why": r.why,
                    "partition": r.rendered.partition,
                    "script": r.rendered.script,
                }
                for r in runs
            ]
        )
        return
    for r in runs:
        click.echo(f"# {r.spec} -> {r.site} ({r.why})")
        click.echo(r.rendered.script)


@command("status")
@click.argument("ids", nargs=-1)
@click.option("--history", is_flag=True, help="Also show each job's state changes with their times.")
@json_option
@click.pass_context
def status(ctx: click.Context, ids: Sequence[str], history: bool, as_json: bool) -> None:
    """An answer another aif process got from a site within the poll interval
    (AIF_POLL_INTERVAL, default 1 s) is used instead of asking it again.
    """
    from gateway.errors import SiteUnreachable
    from gateway.status import refresh

    with open_context(ctx) as lctx:
        report = refresh(lctx, list(ids) or None)
        changes = (
            {j.id: [(c.at, c.state.value, c.reason) for c in lctx.ledger.history(j.id)] for j in report.jobs}
            if history
            else {}
        )
    if as_json:
        import json

        rows = [
            {
                **job_json(j),
                **(
                    {"history": [dict(zip(("at", "state", "reason"), c, strict=True)) for c in changes[j.id]]}
                    if history
                    else {}
                ),
            }
            for j in report.jobs
        ]
        # One job a line, through json's C encoder (indent= is pure Python: slow for 1,000 jobs).
        click.echo("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]" if rows else "[]")
    else:
        console().print(jobs_table(report.jobs, "jobs", report.unreachable))
        for job_id, entries in changes.items():
            table = new_table(f"{job_id} history", ("at", "state", "reason"))
            for entry in entries:
                table.add_row(*entry)
            console().print(table)
    if report.unreachable:
        # One error line naming every site that could not be asked, each once.
        raise SiteUnreachable(
            "; ".join(why if site in why else f"{site}: {why}" for site, why in report.unreachable.items())
        )


def seconds(option: str, text: str | None) -> float | None:
    """A duration given on the command line: a finite number, 0 or more (never NaN or inf)."""
    import math

    from gateway.errors import UsageError

    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(
            f"{option}: {text} is not allowed; expected a number of seconds, 0 or more (e.g. 600)"
        )
    return value


@command("wait")
@click.argument("ids", nargs=-1, required=True)
@click.option(
    "--timeout", "timeout_text", metavar="SECONDS", help="Give up after this many seconds (exit 8)."
)
@json_option
@click.pass_context
def wait(ctx: click.Context, ids: Sequence[str], timeout_text: str | None, as_json: bool) -> None:
    from gateway import lifecycle
    from gateway.errors import JobUnsuccessful, WaitTimeout
    from gateway.states import JobState, is_terminal

    timeout = seconds("--timeout", timeout_text)
    with open_context(ctx) as lctx:
        if as_json:
            report = lifecycle.wait(lctx, list(ids), timeout=timeout)
            print_json([job_json(j) for j in report.jobs])
        else:
            report = _wait_live(lctx, list(ids), timeout)
    unfinished = [j for j in report.jobs if not is_terminal(j.state)]
    if unfinished:
        problems = "".join(f"; {why}" for why in report.unreachable.values())
        raise WaitTimeout(
            f"timed out after {timeout:g} s: "
            + ", ".join(f"{j.id} is {j.state}" for j in unfinished)
            + problems
        )
    failed = [j for j in report.jobs if j.state is not JobState.COMPLETED]
    if failed:
        raise JobUnsuccessful(
            ", ".join(f"{j.id} ended {j.state}" + (f" ({j.reason})" if j.reason else "") for j in failed)
        )


def _wait_live(lctx: Any, ids: list[str], timeout: float | None) -> Any:
    import time

    from rich.live import Live

    from gateway import lifecycle

    started = time.monotonic()

    def view(report: Any) -> Any:
        return jobs_table(report.jobs, f"waiting {time.monotonic() - started:.0f} s", report.unreachable)

    err = console(stderr=True)
    drawn = False
    try:
        with Live(console=err, auto_refresh=False, transient=False) as live:

            def update(report: Any) -> None:
                nonlocal drawn
                live.update(view(report), refresh=True)
                drawn = True

            return lifecycle.wait(lctx, ids, timeout=timeout, on_update=update)
    finally:
        # On a terminal Live ends its last line itself; into a file or pipe it does not,
        # and the error line that may follow would be glued to the table.
        if drawn and not err.is_terminal:
            err.line()


@command("logs")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing output until the job ends.")
@click.option("--task", type=int, default=None, help="Array task index (default 0).")
@click.pass_context
def logs(ctx: click.Context, job_id: str, follow: bool, task: int | None) -> None:
    from gateway import lifecycle

    def write(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    with open_context(ctx) as lctx:
        if follow:
            lifecycle.follow_log(lctx, job_id, write, task=task)
        else:
            write(lifecycle.read_log(lctx, job_id, task=task))


@command("cancel")
@click.argument("ids", nargs=-1, required=True)
@json_option
@click.pass_context
def cancel(ctx: click.Context, ids: Sequence[str], as_json: bool) -> None:
    from gateway import lifecycle
    from gateway.errors import AifError

    with open_context(ctx) as lctx:
        results = lifecycle.cancel(lctx, list(ids))
    if as_json:
        print_json(
            [
                {**job_json(r.job), "was": str(r.was), "cancelled": r.cancelled, "why_not": r.why_not}
                for r in results
            ]
        )
    else:
        for r in results:
            if r.cancelled:
                click.echo(f"{r.job.id}: cancelled (was {r.was})")
            else:
                click.echo(f"{r.job.id}: {r.why_not}, nothing to cancel")
    unconfirmed = [r for r in results if not r.cancelled and not r.job.terminal]
    if unconfirmed:
        raise AifError("; ".join(f"{r.job.id} {r.why_not}" for r in unconfirmed))


@command("fetch")
@click.argument("job_id")
@click.argument("dest", required=False, type=click.Path(file_okay=False))
@json_option
@click.pass_context
def fetch(ctx: click.Context, job_id: str, dest: str | None, as_json: bool) -> None:
    from pathlib import Path

    from gateway import lifecycle

    with open_context(ctx) as lctx:
        if as_json:
            job, where, fetched = lifecycle.fetch(lctx, job_id, Path(dest) if dest else None)
            print_json({"id": job.id, "dest": str(where), "outputs": fetched})
            return
        # Whatever can be refused without the site is refused before a progress bar is drawn.
        job_id = lifecycle.fetchable_job(lctx.ledger, job_id).id
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        with Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console(stderr=True),
        ) as bar:
            task = bar.add_task(f"fetch {job_id}", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total or None)

            job, where, fetched = lifecycle.fetch(
                lctx, job_id, Path(dest) if dest else None, progress=progress
            )
    click.echo(f"{job.id}: fetched {', '.join(fetched)} into {where}")
