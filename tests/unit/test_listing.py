"""`aif list` at scale: the newest 50 by default and how many more, --limit, --all, fast --json."""

from __future__ import annotations

import json

from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.ledger import SUMMARY_FIELDS, Ledger

HASH = "0" * 64


def aif(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def fill(count: int, invalid: int = 0) -> list[str]:
    """``count`` submitted jobs then ``invalid`` INVALID rows; returns every id, newest first."""
    with Ledger() as ledger:
        jobs = ledger.record_intents(
            [
                {
                    "site": "lumi",
                    "name": f"j{i}",
                    "spec_path": f"j{i}.toml",
                    "spec_hash": HASH,
                    "workdir": "/w",
                    "outputs": ("out/",) if i % 2 else (),
                    "stdout_path": "/w/slurm-%j.out",
                    "array_size": None,
                    "depends_on": None,
                }
                for i in range(count)
            ]
        )
        ledger.mark_submitted_many((job.id, str(100 + i)) for i, job in enumerate(jobs))
        bad = [ledger.record_invalid(spec_path="x", spec_hash=HASH, message="no") for _ in range(invalid)]
    return [j.id for j in reversed(bad)] + [j.id for j in reversed(jobs)]


def ids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [row["id"] for row in json.loads(result.stdout)]


def test_the_newest_50_by_default_and_how_many_more() -> None:
    every = fill(60, invalid=2)
    submitted = every[2:]
    result = aif("list", "--json")
    assert ids(result) == submitted[:50]
    assert "50 of 60 jobs shown, newest first: --limit N or --all for more" in result.stderr
    table = aif("list")
    assert "50 of 60 jobs shown" in table.stdout and submitted[0] in table.stdout
    assert submitted[50] not in table.stdout


def test_limit_and_all() -> None:
    every = fill(60, invalid=2)
    assert ids(aif("list", "--limit", "3", "--json")) == every[2:5]
    assert "3 of 60 jobs shown" in aif("list", "--limit", "3", "--json").stderr
    everything = aif("list", "--all", "--json")
    assert ids(everything) == every and everything.stderr == ""
    assert ids(aif("list", "--all", "--limit", "4", "--json")) == every[:4]
    assert ids(aif("list", "--limit", "0", "--json")) == []


def test_nothing_more_to_say_when_everything_is_shown() -> None:
    fill(5)
    result = aif("list", "--json")
    assert len(ids(result)) == 5 and result.stderr == ""
    assert "shown" not in aif("list").stdout


def test_json_rows_are_the_job_contract() -> None:
    fill(2)
    [row, _] = json.loads(aif("list", "--json").stdout)
    assert tuple(row) == SUMMARY_FIELDS
    assert row["slurm_job_id"] == "101" and row["state"] == "PENDING" and row["key"] == ""
    assert aif("list", "--json").stdout.count("\n") == 4  # "[", one job a line, "]"


def test_an_empty_ledger_is_an_empty_list() -> None:
    result = aif("list", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == [] and result.stderr == ""
