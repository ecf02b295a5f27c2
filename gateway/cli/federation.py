"""`aif rank`, `aif load` and `aif explain`: the federation as people and scripts see it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from gateway.cli.app import command, console, json_option, new_table, open_context, print_json

if TYPE_CHECKING:
    from gateway.ledger import LedgerJob


@command("rank")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--refresh", is_flag=True, help="Probe the sites' load now, whatever the snapshots' age.")
@json_option
@click.pass_context
def rank(ctx: click.Context, spec: str, refresh: bool, as_json: bool) -> None:
    from gateway import placement
    from gateway.submission import no_site_error

    with open_context(ctx) as lctx:
        job_spec, ranking = placement.rank_spec(lctx, spec, refresh=refresh)
    if as_json:
        print_json(ranking.to_json())
        if ranking.winner is None:
            raise no_site_error(job_spec, ranking)
        return
    console().print(ranking.headline(job_spec.name))
    table = new_table("ranking", ("site", "score (s)", "time to start", "data", "sector", "why"))
    for s in ranking.ranked:
        terms = s.terms
        table.add_row(
            s.site,
            f"{s.score:.0f}",
            f"{terms['time_to_start']:.0f}",
            f"{terms['data']:.0f}",
            f"{terms['sector_bonus']:.0f}",
            "; ".join(s.reasons),
        )
    console().print(table)
    excluded = new_table("excluded", ("site", "why not"))
    for e in ranking.excluded:
        excluded.add_row(e.site, "; ".join(e.reasons))
    console().print(excluded)
    console().print(_score_rule(ranking.tie_rule))
    if ranking.winner is None:
        raise no_site_error(job_spec, ranking)


@command("load")
@click.option("--refresh", is_flag=True, help="Probe now, whatever the snapshots' age.")
@json_option
@click.pass_context
def load(ctx: click.Context, refresh: bool, as_json: bool) -> None:
    from gateway import placement

    with open_context(ctx) as lctx:
        loads = placement.site_loads(lctx, refresh=refresh)
    if as_json:
        print_json([site_load.to_json() for site_load in loads])
        return
    table = new_table(
        "site load",
        ("site", "reachable", "latency", "GPUs free/total", "CPUs free/total", "pending jobs (GPUs)", "age"),
    )
    for x in loads:
        pending = f"{x.pending_jobs} ({x.pending_gpus})" if x.queue_visible else "not visible"
        table.add_row(
            x.site,
            "yes" if x.reachable else f"no: {x.problem}",
            f"{x.latency_s * 1000:.0f} ms" if x.probed else "-",
            f"{x.gpus_free}/{x.gpus_total}" if x.reachable else "-",
            f"{x.cpus_free}/{x.cpus_total}" if x.reachable else "-",
            pending if x.reachable else "-",
            f"{x.age_s:.0f} s" if x.probed else "-",
        )
    console().print(table)


@command("explain")
@click.argument("job_id")
@json_option
def explain(job_id: str, as_json: bool) -> None:
    from gateway import placement
    from gateway.ledger import Ledger

    with Ledger() as ledger:
        why = placement.explain(ledger, job_id)
    if as_json:
        print_json(why.to_json())
        return
    placed = why.placement
    console().print(_where_it_went(why.job))
    if placed.get("headline"):
        headline = placed["headline"]
        if placed.get("pinned") and "pinned" not in headline:
            # Placed before the ranking said so itself: no reasons after its colon, none were weighed.
            headline = headline.rstrip(": ") + " (pinned: no ranking)"
        ranked: list[dict[str, Any]] = placed.get("ranking") or []
        first = ranked[0].get("site") if ranked else None
        if first and why.job.site and first != why.job.site:
            headline += f" (it failed over to {why.job.site}: see the attempts)"
        console().print(headline)
    table = new_table("ranking when it was placed", ("site", "score (s)", "terms", "why"))
    for s in placed.get("ranking", []):
        terms = ", ".join(f"{k} {v:g}" for k, v in s.get("terms", {}).items())
        table.add_row(s["site"], f"{s['score']:g}", terms, "; ".join(s.get("reasons", [])))
    console().print(table)
    excluded = new_table("excluded", ("site", "why not"))
    for e in placed.get("excluded", []):
        excluded.add_row(e["site"], "; ".join(e["reasons"]))
    console().print(excluded)
    if placed.get("tie_rule") and not placed.get("pinned"):
        console().print(_score_rule(placed["tie_rule"]))
    attempts = new_table("submission attempts", ("site", "at", "outcome", "detail"))
    for attempt in why.attempts:
        attempts.add_row(*attempt)
    console().print(attempts)


def _score_rule(tie_rule: str) -> str:
    """The footer of a ranking: how the score is made and how ties are broken."""
    return f"score = time to start + data - sector bonus, in seconds; {tie_rule}"


def _where_it_went(job: LedgerJob) -> str:
    """The job's first line: where it went and its state now, or that it was never sent (or may have been)."""
    who = f"{job.id} ({job.name})"
    at = f" at {job.site}" if job.site else ""
    if job.slurm_job_id:
        return f"{who} went to {job.site} as Slurm job {job.slurm_job_id}, now {job.state}"
    if job.unresolved:
        return f"{who} may have been sent{at} ({job.state}): `aif status {job.id}` settles it"
    return f"{who} was not sent ({job.state}){at}" + (f": {job.message}" if job.message else "")
