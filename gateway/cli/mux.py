"""`aif mux`: the holders of shared SSH connections (``gateway.transports.mux``)."""

from __future__ import annotations

import click

from gateway.cli.app import group, json_option, print_json


@group("mux")
def mux() -> None:
    pass  # a group: its commands are below


@mux.command("status")
@json_option
def mux_status(as_json: bool) -> None:
    """The sites whose connection a holder keeps now, and its pid."""
    from gateway.transports.mux import holder_pids

    held = holder_pids()
    if as_json:
        print_json([{"site": site, "pid": pid} for site, pid in held.items()])
        return
    if not held:
        click.echo("no shared connection is held")
    for site, pid in held.items():
        click.echo(f"{site}: held by pid {pid}")


@mux.command("stop")
@click.argument("sites", nargs=-1)
def mux_stop(sites: tuple[str, ...]) -> None:
    """Stop the holders of SITES (default: all); commands they are running are answered first.

    The next command at such a site connects directly (and, with sharing on, starts a new holder).
    """
    from gateway.transports.mux import stop_holders

    stopped = stop_holders(sites=list(sites) or None)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "no holder was running")
