"""The `aif` command. Each command is a few lines over a library call.

Errors become output in exactly one place (:class:`AifGroup.main`): one
line on stderr, the error's exit code, never a traceback for bad input.
Imports of the heavy layers happen inside commands so ``aif --help`` and
``aif render`` start fast. The federation's commands (``rank``, ``load``,
``explain``) are in ``federation.py`` beside this file, the sandbox's in
``sandbox.py``.
"""

from __future__ import annotations

import json
import os
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
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"aif: error: {message}", err=True)
    sys.exit(code)


class AifGroup(click.Group):
    """Turns every AifError into one line on stderr and its exit code."""

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


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


@click.group(cls=AifGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aif")
@click.option("-v", "--verbose", is_flag=True, help="Print every command run at a site to stderr.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """One portable job spec, run at any of Europe's AI Factories."""
    from gateway.home import loose_home_warning

    ctx.obj = {"verbose": verbose}
    warning = loose_home_warning()
    if warning:
        click.echo(f"aif: warning: {warning}", err=True)


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
    table = new_table(
        "AI Factory sites", ("site", "factory", "country", "sectors", "GPUs/node", "data up to", "usable")
    )
    for s in summaries:
        table.add_row(
            s.name,
            s.factory,
            s.country,
            ", ".join(s.sectors),
            s.gpus,
            s.max_sensitivity,
            "yes" if s.usable else "no (see below)",
        )
    console().print(table)
    for s in summaries:
        if not s.usable:
            console().print(s.problem if s.name in s.problem else f"{s.name}: {s.problem}")


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


@profile.command("check")
@click.argument("site")
@json_option
@click.pass_context
def profile_check(ctx: click.Context, site: str, as_json: bool) -> None:
    """Compare SITE's profile with what the site has; exit 1 if they disagree, 5 if unreachable.

    One command at the site: sinfo, scontrol show partition, and sbatch
    --test-only of a small job per partition (it uses up job ids, runs nothing).
    """
    from gateway.errors import ProfileMismatch
    from gateway.profile_check import check_profile

    with open_context(ctx) as lctx:
        report = check_profile(lctx, site)
    if as_json:
        print_json(report.to_json())
    else:
        click.echo(f"{report.site}: {report.profile_source} compared with the site")
        for mismatch in report.mismatches:
            click.echo(f"mismatch: {mismatch.line()}")
        for note in report.notes:
            click.echo(f"note: {note}")
        table = new_table("sbatch --test-only", ("partition", "runs", "starts / why not"))
        for t in report.test_only:
            table.add_row(t.partition, "yes" if t.ok else "NO", t.start or t.message)
        console().print(table)
        if report.ok:
            click.echo(f"{report.site}: the profile agrees with the site")
    if not report.ok:
        # What disagrees was just printed (or is in the JSON); the error line counts it.
        raise ProfileMismatch(report.summary())


# -- the job lifecycle --------------------------------------------------------------------


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

    return open_lifecycle_context(command_hook(ctx))


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


@main.command()
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
    as_json: bool,
) -> None:
    """Submit one or more job SPECS (TOML)."""
    from gateway import lifecycle
    from gateway.errors import SchedulerRejected, SiteUnreachable
    from gateway.states import JobState

    with open_context(ctx) as lctx:
        if dry_run:
            _print_dry_runs(lifecycle.dry_run(lctx, list(specs), site=site), as_json)
            return
        report = lifecycle.submit(
            lctx, list(specs), site=site, after=after, key=key, failover=not no_failover, refresh=refresh
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
                click.echo(
                    f"{r.job.id}: answer from {r.job.site} lost, maybe sent; "
                    f"`aif status {r.job.id}` settles it from the site's record"
                )
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
            detail = first.message or f"the answer from {first.site} was lost ({first.reason})"
            raise error(f"{first.id} at {first.site}: {detail}")
        # Each job's line above already said why: the error line only counts them.
        what = "rejected" if error is SchedulerRejected else "not submitted or not confirmed"
        raise error(f"{len(jobs)} of {len(results)} jobs {what} (see above)")


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


@main.command()
@click.argument("ids", nargs=-1)
@click.option("--history", is_flag=True, help="Also show each job's state changes with their times.")
@json_option
@click.pass_context
def status(ctx: click.Context, ids: Sequence[str], history: bool, as_json: bool) -> None:
    """Ask the sites for the state of jobs (default: every unfinished job): one query per site.

    An answer another aif process got from a site within the poll interval
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


@main.command("list")
@click.option(
    "--limit", type=int, default=None, help="Show the newest N jobs (default 50; with --all: every row)."
)
@click.option("--all", "show_all", is_flag=True, help="Show every row, INVALID ones included.")
@json_option
def list_command(limit: int | None, show_all: bool, as_json: bool) -> None:
    """The jobs in the ledger, newest first (no site is asked).

    By default the newest 50, without INVALID rows (specs refused before
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
        # One job a line, through json's C encoder: 10,000 rows in milliseconds (indent= is pure Python).
        lines = (json.dumps(dict(zip(SUMMARY_FIELDS, row, strict=True))) for row in rows)
        click.echo("[\n" + ",\n".join(lines) + "\n]" if rows else "[]")
        if total > shown:
            click.echo(more, err=True)
    else:
        console().print(jobs_table(jobs, "ledger"))
        if total > shown:
            click.echo(more)


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


@main.command()
@click.argument("ids", nargs=-1, required=True)
@click.option(
    "--timeout", "timeout_text", metavar="SECONDS", help="Give up after this many seconds (exit 8)."
)
@json_option
@click.pass_context
def wait(ctx: click.Context, ids: Sequence[str], timeout_text: str | None, as_json: bool) -> None:
    """Wait until jobs end: exit 0 when all COMPLETED, 7 when any ended otherwise."""
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


@main.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing output until the job ends.")
@click.option("--task", type=int, default=None, help="Array task index (default 0).")
@click.pass_context
def logs(ctx: click.Context, job_id: str, follow: bool, task: int | None) -> None:
    """Print a job's output."""
    from gateway import lifecycle

    def write(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    with open_context(ctx) as lctx:
        if follow:
            lifecycle.follow_log(lctx, job_id, write, task=task)
        else:
            write(lifecycle.read_log(lctx, job_id, task=task))


@main.command()
@click.argument("ids", nargs=-1, required=True)
@json_option
@click.pass_context
def cancel(ctx: click.Context, ids: Sequence[str], as_json: bool) -> None:
    """Cancel jobs (only ones confirmed at the site by their token) and confirm they left the queue."""
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


@main.command()
@click.argument("job_id")
@click.argument("dest", required=False, type=click.Path(file_okay=False))
@json_option
@click.pass_context
def fetch(ctx: click.Context, job_id: str, dest: str | None, as_json: bool) -> None:
    """Copy a job's outputs (the spec's [data] outputs) back to DEST (default ./ID)."""
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


# The federation's and the sandbox's commands live beside this file; importing them
# registers them on `main` (they import only click at start-up, like this file).
from gateway.cli import federation as _federation_commands  # noqa: E402,F401
from gateway.cli import sandbox as _sandbox_commands  # noqa: E402,F401


def run() -> None:  # pragma: no cover - console entry for `python -m gateway`
    main(prog_name="aif")


if __name__ == "__main__":  # pragma: no cover
    run()


__all__ = ["EXIT_USAGE", "main"]
