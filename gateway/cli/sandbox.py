"""`aif sandbox up | down | status`: the local Slurm federation (root)."""

from __future__ import annotations

from typing import Any

import click

from gateway.cli.app import console, group, json_option, new_table, print_json


@group("sandbox")
def sandbox() -> None:
    pass  # a group: its commands are below


@sandbox.command("up")
@json_option
def sandbox_up(as_json: bool) -> None:
    """Start the sandbox (installs Slurm, munge and OpenSSH from Debian if missing)."""
    from gateway.sandbox import manager

    status = manager.up(progress=None if as_json else lambda line: click.echo(line, err=True))
    _print_sandbox(status, as_json)


@sandbox.command("down")
def sandbox_down() -> None:
    """Stop every sandbox daemon."""
    from gateway.sandbox import manager

    manager.down()
    click.echo("sandbox stopped")


@sandbox.command("status")
@json_option
def sandbox_status(as_json: bool) -> None:
    """Whether each sandbox site's controller, nodes and sshd answer (exit 1 unless all do)."""
    from gateway.errors import SandboxDown
    from gateway.sandbox import manager

    status = manager.status()
    _print_sandbox(status, as_json)
    if not status.up:
        # What is down was just printed (the problems, or the JSON's "problems").
        raise SandboxDown("the sandbox is not up")


def _print_sandbox(status: Any, as_json: bool) -> None:
    data = status.to_dict()
    if as_json:
        print_json(data)
        return
    table = new_table(
        "aif sandbox: " + ("up" if data.get("up") else "down"),
        ("site", "ssh port", "controller", "nodes", "sshd"),
    )
    for site in data.get("sites", []):
        nodes = ", ".join(f"{n} {state}" for n, state in site.get("node_states", {}).items())
        table.add_row(
            site["name"],
            str(site["ssh_port"]),
            "up" if site["controller"] else "down",
            nodes or ("up" if site["nodes"] else "down"),
            "up" if site["sshd"] else "down",
        )
    console().print(table)
    for problem in data.get("problems", []):
        console(stderr=True).print(f"problem: {problem}")
