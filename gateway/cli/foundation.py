"""`aif render`, `aif sites` and `aif profile validate | check`: specs, sites and their profiles."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from gateway.cli.app import command, console, group, json_option, new_table, open_context, print_json


@command("render")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--site", required=True, help="The site to render for (see `aif sites`).")
@click.option("--account", help="Override the account from your config.")
@json_option
def render(spec: str, site: str, account: str | None, as_json: bool) -> None:
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


@command("sites")
@json_option
def sites(as_json: bool) -> None:
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


@group("profile")
def profile() -> None:
    pass  # a group: its commands are below


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
