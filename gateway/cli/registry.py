"""Every top-level `aif` command: the module that defines it and its summary.

The summary is the first paragraph of the command's help, written only here:
``aif --help`` lists the commands from this table without importing their
modules, and each command's definition (``gateway.cli.app.command``) starts
its help with the same text. Plain data, no click: reading it costs nothing.
"""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    module: str  # under gateway.cli
    summary: str


COMMANDS: dict[str, Entry] = {
    # foundation.py: no site is asked
    "render": Entry("foundation", "Print the batch script SPEC would be submitted as at SITE."),
    "sites": Entry("foundation", "List the sites aif knows, and whether you can use them."),
    "profile": Entry("foundation", "Work with site profiles."),
    # jobs.py: the job lifecycle at the sites; listing.py: the ledger alone
    "submit": Entry("jobs", "Submit one or more job SPECS (TOML)."),
    "status": Entry(
        "jobs", "Ask the sites for the state of jobs (default: every unfinished job): one query per site."
    ),
    "list": Entry("listing", "The jobs in the ledger, newest first (no site is asked)."),
    "wait": Entry("jobs", "Wait until jobs end: exit 0 when all COMPLETED, 7 when any ended otherwise."),
    "logs": Entry("jobs", "Print a job's output."),
    "cancel": Entry(
        "jobs",
        "Cancel jobs (only ones confirmed at the site by their token) and confirm they left the queue.",
    ),
    "fetch": Entry("jobs", "Copy a job's outputs (the spec's [data] outputs) back to DEST (default ./ID)."),
    # federation.py: the federation as people and scripts see it
    "rank": Entry(
        "federation",
        "Where SPEC would start soonest: the eligible sites in order, each term, every exclusion.",
    ),
    "load": Entry(
        "federation",
        "Each usable site's load: reachable or why not, free GPUs and CPUs, queue, snapshot age.",
    ),
    "explain": Entry(
        "federation",
        "Why a job went where it went: the ranking when it was placed, and every submission attempt.",
    ),
    # mux.py: the shared SSH connections
    "mux": Entry("mux", "Show or stop the holders of shared SSH connections ([ssh] share_connection)."),
    # sandbox.py: the local Slurm federation
    "sandbox": Entry(
        "sandbox", "A federation of real Slurm clusters on this machine, to try aif (needs root)."
    ),
}
