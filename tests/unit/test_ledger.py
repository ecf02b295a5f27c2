"""The local ledger: schema, migrations, state rules, concurrency."""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import ledger as ledger_mod
from gateway import ledger_store
from gateway.errors import AifError, ConfigError, UsageError
from gateway.ledger import (
    SCHEMA_VERSION,
    Ledger,
    LedgerJob,
    StateChange,
    new_job_id,
    spec_sha256,
)
from gateway.states import TERMINAL_STATES

HASH = hashlib.sha256(b"spec").hexdigest()
ID_RE = re.compile(r"aif-[a-z2-7]{10}")


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    with Ledger() as led:
        yield led


def intent(led: Ledger, **overrides: Any) -> LedgerJob:
    fields: dict[str, Any] = {
        "site": "leonardo",
        "name": "train",
        "spec_path": "/specs/train.toml",
        "spec_hash": HASH,
        "workdir": "/scratch/u/train",
        "outputs": ("ckpt/", "metrics.json"),
        "stdout_path": "/scratch/u/train/slurm-%j.out",
        "array_size": None,
        "depends_on": None,
    }
    fields.update(overrides)
    return led.record_intent(**fields)


def submitted(led: Ledger, slurm_id: str, **overrides: Any) -> LedgerJob:
    job = intent(led, **overrides)
    return led.mark_submitted(job.id, slurm_id)


def ids(jobs: list[LedgerJob]) -> list[str]:
    return [j.id for j in jobs]


def states(led: Ledger, job_id: str) -> list[tuple[str, str]]:
    return [(c.state, c.reason) for c in led.history(job_id)]


# --------------------------------------------------------------------------
# Opening, pragmas, migrations
# --------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    site         TEXT NOT NULL,
    slurm_job_id TEXT,
    name         TEXT NOT NULL,
    spec_path    TEXT NOT NULL,
    spec_hash    TEXT NOT NULL,
    token        TEXT NOT NULL UNIQUE,
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    workdir      TEXT NOT NULL DEFAULT '',
    outputs      TEXT NOT NULL DEFAULT '[]',
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE TABLE state_changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    state  TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    at     TEXT NOT NULL
);
CREATE INDEX state_changes_job ON state_changes(job_id, seq);
INSERT INTO jobs (id, site, slurm_job_id, name, spec_path, spec_hash, token, state, reason,
                  workdir, outputs, created_at, updated_at)
VALUES ('aif-oldoldold1', 'lumi', '4242', 'old', '/s.toml', '{hash}', 'tok-old', 'RUNNING',
        'None', '/w', '["a"]', '2024-01-01T00:00:00.000000+00:00',
        '2024-01-01T00:05:00.000000+00:00');
INSERT INTO state_changes (job_id, state, reason, at) VALUES
    ('aif-oldoldold1', 'SUBMITTING', '', '2024-01-01T00:00:00.000000+00:00'),
    ('aif-oldoldold1', 'PENDING', '', '2024-01-01T00:00:01.000000+00:00'),
    ('aif-oldoldold1', 'RUNNING', 'None', '2024-01-01T00:05:00.000000+00:00');
PRAGMA user_version = 1;
"""


def make_v1(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA.replace("{hash}", HASH))
    conn.close()


def columns(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_default_path_pragmas_and_version(aif_home: Path) -> None:
    with Ledger() as led:
        assert led.path == aif_home / "ledger.sqlite"
        conn = led._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
        assert led.schema_version() == SCHEMA_VERSION
    assert (aif_home / "ledger.sqlite").exists()
    # Reopening an up-to-date ledger changes nothing.
    with Ledger() as led:
        assert led.schema_version() == SCHEMA_VERSION


def test_path_is_injectable(tmp_path: Path, aif_home: Path) -> None:
    path = tmp_path / "sub" / "dir" / "l.sqlite"
    with Ledger(path) as led:
        job = intent(led)
    with Ledger(str(path)) as led:
        assert led.get(job.id) == job
    assert not (aif_home / "ledger.sqlite").exists()


def test_v1_ledger_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_v1(path)
    assert "message" not in columns(path)
    with Ledger(path) as led:
        assert led.schema_version() == SCHEMA_VERSION == 5
        old = led.get("aif-oldoldold1")
        assert old.state == "RUNNING" and old.reason == "None" and old.slurm_job_id == "4242"
        assert old.outputs == ("a",)
        assert (old.message, old.stdout_path, old.array_size, old.depends_on) == ("", "", None, None)
        assert states(led, old.id) == [("SUBMITTING", ""), ("PENDING", ""), ("RUNNING", "None")]
        assert led.unfinished_by_site() == {"lumi": [old]}
        # The migrated ledger takes new rows, including ones using v2 columns.
        new = intent(led, array_size=4, depends_on=old.id)
        assert led.get(new.id).depends_on == old.id
        led.update_states([(old.id, "COMPLETED", "")])
        assert led.get(old.id).state == "COMPLETED"
    assert {"message", "stdout_path", "array_size", "depends_on"} <= columns(path)
    assert user_version(path) == SCHEMA_VERSION


def test_migration_is_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.sqlite"
    make_v1(path)

    def broken_v6(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE extra (x INTEGER)")
        raise sqlite3.OperationalError("boom in v6")

    # The migrations are run where the ledger is opened (gateway.ledger_store).
    monkeypatch.setattr(ledger_store, "_MIGRATIONS", (*ledger_store._MIGRATIONS, broken_v6))
    monkeypatch.setattr(ledger_store, "SCHEMA_VERSION", 6)
    with pytest.raises(ConfigError, match="boom in v6"):
        Ledger(path)
    # Nothing of v2 to v6 survived: still a clean v1 ledger.
    assert user_version(path) == 1
    assert "message" not in columns(path)
    monkeypatch.undo()
    with Ledger(path) as led:
        assert led.schema_version() == 5
        assert led.get("aif-oldoldold1").name == "old"


def test_newer_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as led:
        job = intent(led)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match=r"schema version 6.*upgrade aif"):
        Ledger(path)
    # Refusing must not have touched it.
    assert user_version(path) == SCHEMA_VERSION + 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT id FROM jobs").fetchall() == [(job.id,)]
    conn.close()


def test_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not sqlite, not at all" * 100)
    with pytest.raises(ConfigError, match="cannot use the ledger"):
        Ledger(path)


def test_stored_columns_hold_no_secret_material(ledger: Ledger) -> None:
    # Adding a column is a deliberate act: review it against "no secrets stored".
    assert columns(ledger.path) == {
        "seq", "id", "site", "slurm_job_id", "name", "spec_path", "spec_hash", "token",
        "state", "reason", "message", "workdir", "outputs", "stdout_path", "array_size",
        "depends_on", "created_at", "updated_at",
        # v3: the submission key, the spec's content label and claim generation, the
        # site's record directory and the Slurm job name (spec name + aif id): no secrets.
        "submission_key", "item", "claim_gen", "journal_dir", "slurm_name",
        # v4: the federation's ranking (sites, scores, reasons): no secrets.
        "placement",
        # v5: a task of an array of specs: the array's submission token and the task: no secrets.
        "array_token", "array_task",
    }  # fmt: skip


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------


def test_record_intent_round_trips_every_field(ledger: Ledger, tmp_path: Path) -> None:
    spec = tmp_path / "train.toml"
    spec.write_bytes(b"[job]\nname = 'train'\n")
    parent = submitted(ledger, "100")
    job = intent(
        ledger,
        site="mn5",
        name="sweep ü",
        spec_path=str(spec),
        spec_hash=spec_sha256(spec),
        workdir="/gpfs/w",
        outputs=["out/a", "out/b c"],
        stdout_path="/gpfs/w/aif-%A_%a.out",
        array_size=8,
        depends_on=parent.id,
    )
    assert ID_RE.fullmatch(job.id)
    assert job.token and job.token != parent.token
    assert job.spec_hash == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert job.state == "SUBMITTING" and job.reason == "" and job.message == ""
    assert job.slurm_job_id is None
    assert job.outputs == ("out/a", "out/b c")
    assert job.created_at == job.updated_at
    assert job.created_at.endswith("+00:00")

    done = ledger.mark_submitted(job.id, "12345_[0-7]", state="RUNNING")
    expected = LedgerJob(
        id=job.id,
        site="mn5",
        slurm_job_id="12345_[0-7]",
        name="sweep ü",
        spec_path=str(spec),
        spec_hash=job.spec_hash,
        token=job.token,
        state="RUNNING",
        reason="",
        message="",
        workdir="/gpfs/w",
        outputs=("out/a", "out/b c"),
        stdout_path="/gpfs/w/aif-%A_%a.out",
        array_size=8,
        depends_on=parent.id,
        created_at=job.created_at,
        updated_at=done.updated_at,
    )
    assert done == expected
    assert done.updated_at >= done.created_at
    with Ledger(ledger.path) as other:
        assert other.get(job.id) == expected
        assert other.find_by_token(job.token) == expected
    assert ledger.find_by_token("no-such-token") is None


def test_record_intent_validates(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="sha256"):
        intent(ledger, spec_hash="abc")
    with pytest.raises(ValueError, match="array_size"):
        intent(ledger, array_size=0)
    with pytest.raises(UsageError, match="no job aif-nothere12 in the ledger"):
        intent(ledger, depends_on="aif-nothere12")
    assert ledger.list_jobs() == []


def test_record_invalid(ledger: Ledger) -> None:
    job = ledger.record_invalid(spec_path="/bad.toml", spec_hash=HASH, message="line 3: no nodes")
    assert job.state == "INVALID" and job.message == "line 3: no nodes" and job.site == ""
    assert job.slurm_job_id is None and ID_RE.fullmatch(job.id)
    assert states(ledger, job.id) == [("INVALID", "")]
    assert ledger.list_jobs(active_only=True) == []
    assert ledger.unfinished_by_site() == {}


def test_mark_submitted_and_not_submitted(ledger: Ledger) -> None:
    a = intent(ledger)
    a2 = ledger.mark_submitted(a.id, "777")
    assert (a2.state, a2.slurm_job_id) == ("PENDING", "777")
    assert ledger.mark_submitted(a.id, "777") == a2  # idempotent
    with pytest.raises(ValueError, match="cannot become Slurm job 778"):
        ledger.mark_submitted(a.id, "778")
    with pytest.raises(ValueError, match="Slurm job state"):
        ledger.mark_submitted(intent(ledger).id, "1", state="REJECTED")

    b = intent(ledger)
    b2 = ledger.mark_not_submitted(b.id, "REJECTED", "sbatch: error: Invalid account")
    assert (b2.state, b2.message, b2.slurm_job_id) == (
        "REJECTED", "sbatch: error: Invalid account", None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="cannot become"):
        ledger.mark_submitted(b.id, "9")
    c = ledger.mark_not_submitted(intent(ledger).id, "UNREACHABLE", "ssh: connection refused")
    assert c.state == "UNREACHABLE"
    with pytest.raises(ValueError, match="REJECTED, UNREACHABLE or NOT_SENT"):
        ledger.mark_not_submitted(intent(ledger).id, "FAILED", "x")
    with pytest.raises(UsageError, match="no job aif-zzzzzzzzzz in the ledger"):
        ledger.mark_submitted("aif-zzzzzzzzzz", "1")
    assert states(ledger, b.id) == [("SUBMITTING", ""), ("REJECTED", "")]


# --------------------------------------------------------------------------
# State updates
# --------------------------------------------------------------------------


def test_paths_are_set_only_while_every_job_is_submitting_and_then_all_at_once(ledger: Ledger) -> None:
    a, b = intent(ledger), intent(ledger)
    ledger.record_paths(
        [(a.id, "/w/a", "/w/a/out", "name-a"), (b.id, "/w/b", "/w/b/out", "arr", "aif-tok-x", 1)]
    )
    got_a, got_b = ledger.get(a.id), ledger.get(b.id)
    assert (got_a.workdir, got_a.stdout_path, got_a.slurm_name, got_a.array_token) == (
        "/w/a",
        "/w/a/out",
        "name-a",
        "",
    )
    assert (got_b.array_token, got_b.array_task, got_b.slurm_name) == ("aif-tok-x", 1, "arr")
    ledger.mark_submitted(b.id, "5")
    with pytest.raises(ValueError, match=f"job {b.id} is PENDING; its paths are fixed"):
        ledger.record_paths([(a.id, "/w/a2", "/w/a2/out"), (b.id, "/w/b2", "/w/b2/out")])
    assert ledger.get(a.id).workdir == "/w/a" and ledger.get(b.id).workdir == "/w/b"  # nothing changed
    with pytest.raises(UsageError, match="no job aif-zzzzzzzzzz"):
        ledger.record_paths([("aif-zzzzzzzzzz", "/w", "/w/out")])
    with pytest.raises(AifError, match="FOREIGN KEY"):
        ledger.record_attempts([(a.id, "s", "submitted", ""), ("aif-zzzzzzzzzz", "s", "submitted", "")])
    assert ledger.attempts(a.id) == []  # the batch was one transaction


def test_a_batch_is_one_transaction_whose_failed_writes_are_undone_alone(ledger: Ledger) -> None:
    other = Ledger(ledger.path)  # another process's view
    try:
        with ledger.batch():
            a = intent(ledger)
            b = intent(ledger)
            ledger.record_paths([(a.id, "/w/a", "/w/a/out")])
            assert {a.id, b.id}.isdisjoint(j.id for j in other.list_jobs())  # not committed yet
            ledger.mark_submitted(b.id, "7")
            with pytest.raises(ValueError, match="paths are fixed"):
                ledger.record_paths([(b.id, "/w/b", "/w/b/out")])  # b is PENDING now: refused
            ledger.record_attempts([(a.id, "s", "submitted", "")])
            with pytest.raises(UsageError):
                ledger.record_paths([(a.id, "/x", "/x/out"), ("aif-zzzzzzzzzz", "/y", "/y/out")])
        seen = {j.id: j for j in other.list_jobs()}
        assert seen[a.id].workdir == "/w/a"  # the failed write undone alone; the rest committed
        assert seen[b.id].slurm_job_id == "7" and seen[b.id].workdir == "/scratch/u/train"
        assert other.attempts(a.id) != []
        with pytest.raises(RuntimeError), ledger.batch():
            c = intent(ledger)
            raise RuntimeError("out of the block")
        assert all(j.id != c.id for j in other.list_jobs())  # all of it undone
    finally:
        other.close()


def test_history_only_on_change(ledger: Ledger) -> None:
    job = submitted(ledger, "1")
    assert ledger.update_states([(job.id, "PENDING", "")]) == []
    changes = ledger.update_states([(job.id, "PENDING", "Priority")])
    assert [(c.state, c.reason) for c in changes] == [("PENDING", "Priority")]
    ledger.update_states([(job.id, "PENDING", "Priority")] * 3)
    ledger.update_states([(job.id, "RUNNING", "None"), (job.id, "RUNNING", "None")])
    ledger.update_states([(job.id, "RUNNING", "None")])
    assert states(ledger, job.id) == [
        ("SUBMITTING", ""),
        ("PENDING", ""),
        ("PENDING", "Priority"),
        ("RUNNING", "None"),
    ]
    hist = ledger.history(job.id)
    assert all(isinstance(c, StateChange) and c.job_id == job.id for c in hist)
    assert [c.at for c in hist] == sorted(c.at for c in hist)
    assert ledger.get(job.id).updated_at == hist[-1].at


def test_terminal_states_are_sticky(ledger: Ledger) -> None:
    job = submitted(ledger, "1")
    ledger.update_states([(job.id, "RUNNING", "None")])
    ledger.update_states([(job.id, "FAILED", "NonZeroExitCode")])
    # Stale answers from a lagging squeue/sacct do not resurrect it.
    for stale in ("RUNNING", "PENDING", "UNKNOWN"):
        assert ledger.update_states([(job.id, stale, "None")]) == []
    assert ledger.get(job.id).state == "FAILED"
    # Slurm may refine one terminal state into a more precise one.
    ledger.update_states([(job.id, "OUT_OF_MEMORY", "")])
    assert ledger.get(job.id).state == "OUT_OF_MEMORY"
    assert states(ledger, job.id)[-2:] == [("FAILED", "NonZeroExitCode"), ("OUT_OF_MEMORY", "")]

    # Jobs never submitted are never changed by the scheduler's view.
    rejected = ledger.mark_not_submitted(intent(ledger).id, "REJECTED", "no")
    invalid = ledger.record_invalid(spec_path="/x", spec_hash=HASH, message="bad")
    for j in (rejected, invalid):
        assert ledger.update_states([(j.id, "RUNNING", ""), (j.id, "COMPLETED", "")]) == []
        assert ledger.get(j.id) == j
    for state in TERMINAL_STATES:
        assert ledger_mod.is_terminal(state)
    assert not ledger_mod.is_terminal("PENDING")


def test_update_states_is_one_transaction(ledger: Ledger) -> None:
    a = submitted(ledger, "1")
    with pytest.raises(UsageError, match="no job aif-missing000 in the ledger"):
        ledger.update_states([(a.id, "RUNNING", ""), ("aif-missing000", "RUNNING", "")])
    assert ledger.get(a.id).state == "PENDING"  # rolled back with the batch
    with pytest.raises(ValueError, match="Slurm job state"):
        ledger.update_states([(a.id, "SUBMITTING", "")])
    with pytest.raises(ValueError, match="Slurm job state"):
        ledger.update_states([(a.id, "running", "")])
    assert ledger.update_states([]) == []
    assert ledger.update_states(iter([(a.id, "RUNNING", "")]))[0].state == "RUNNING"


# --------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------


def test_get_missing_and_prefix(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match=r"^no job aif-abcdefghij in the ledger$"):
        ledger.get("aif-abcdefghij")
    fake_ids = iter(["aif-abcde22222", "aif-abcxy33333", "aif-q777777777"])
    monkeypatch.setattr(ledger_mod, "new_job_id", lambda: next(fake_ids))
    a, b, c = intent(ledger), intent(ledger), intent(ledger)
    assert ledger.get("aif-abcd") == a
    assert ledger.get("aif-q77") == c
    with pytest.raises(UsageError, match=r"aif-abc matches several jobs.*aif-abcde22222"):
        ledger.get("aif-abc")
    with pytest.raises(UsageError, match="no job aif-a in the ledger"):
        ledger.get("aif-a")  # too short to be taken as a prefix
    with pytest.raises(UsageError, match="no job abcde in the ledger"):
        ledger.get("abcde")
    assert ledger.history("aif-abcx")[0].job_id == b.id


def test_list_jobs_and_unfinished_by_site(ledger: Ledger) -> None:
    l1 = submitted(ledger, "11", site="lumi")
    m1 = submitted(ledger, "21", site="mn5")
    l2 = submitted(ledger, "12", site="lumi")
    pending_intent = intent(ledger, site="lumi")  # no Slurm id yet
    done = submitted(ledger, "13", site="lumi")
    ledger.update_states([(done.id, "COMPLETED", ""), (l2.id, "RUNNING", "None")])
    invalid = ledger.record_invalid(spec_path="/x", spec_hash=HASH, message="bad", site="mn5")

    assert ids(ledger.list_jobs()) == [invalid.id, done.id, pending_intent.id, l2.id, m1.id, l1.id]
    assert ids(ledger.list_jobs(limit=2)) == [invalid.id, done.id]
    assert ids(ledger.list_jobs(site="lumi")) == [done.id, pending_intent.id, l2.id, l1.id]
    assert ids(ledger.list_jobs(site="lumi", active_only=True)) == [pending_intent.id, l2.id, l1.id]
    assert ids(ledger.list_jobs(active_only=True, limit=1)) == [pending_intent.id]
    assert ledger.list_jobs(site="nowhere") == []

    unfinished = ledger.unfinished_by_site()
    assert list(unfinished) == ["lumi", "mn5"]
    assert ids(unfinished["lumi"]) == [l1.id, l2.id]
    assert ids(unfinished["mn5"]) == [m1.id]
    assert unfinished["lumi"][1].state == "RUNNING"


# --------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------


def test_ids_unique_across_10k_allocations(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as led:
        led._conn.execute("PRAGMA synchronous = OFF")  # speed only; same code path
        jobs = [intent(led) for _ in range(10_000)]
        assert len({j.id for j in jobs}) == 10_000
        assert len({j.token for j in jobs}) == 10_000
        assert all(ID_RE.fullmatch(j.id) for j in jobs)
        assert len(led.list_jobs()) == 10_000


def test_id_and_token_collisions_are_retried(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    first = intent(ledger)
    fake_ids = iter([first.id, first.id, "aif-fresh22222"])
    tokens = iter([first.token, "tok-fresh"])
    monkeypatch.setattr(ledger_mod, "new_job_id", lambda: next(fake_ids))
    monkeypatch.setattr(ledger_mod, "new_submission_token", lambda: next(tokens))
    second = intent(ledger)
    assert (second.id, second.token) == ("aif-fresh22222", "tok-fresh")


def test_new_job_id_format() -> None:
    assert ID_RE.fullmatch(new_job_id())


# --------------------------------------------------------------------------
# Concurrency: several aif processes on one ledger
# --------------------------------------------------------------------------

WORKERS = 4
JOBS_PER_WORKER = 50


def _worker(path: str, worker: int, barrier: Any) -> None:
    barrier.wait()  # all open the (not yet existing) ledger at once
    with Ledger(path) as led:
        mine: list[str] = []
        for i in range(JOBS_PER_WORKER):
            job = led.record_intent(
                site=f"site{worker % 2}",
                name=f"w{worker}-{i}",
                spec_path=f"/specs/{worker}/{i}.toml",
                spec_hash=HASH,
                workdir="/w",
                outputs=(f"out-{worker}-{i}",),
                stdout_path="/w/out",
                array_size=None,
                depends_on=mine[-1] if mine else None,
            )
            led.mark_submitted(job.id, f"{worker}{i:04d}")
            led.update_states([(job.id, "RUNNING", "None")])
            mine.append(job.id)
        # Everything this worker still runs, in one batch, like a status poller,
        # plus stale answers that must be ignored.
        led.update_states([(j, "COMPLETED", "") for j in mine])
        led.update_states([(j, "RUNNING", "None") for j in mine[::7]])


def test_concurrent_processes_keep_the_ledger_consistent(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "ledger.sqlite"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_worker, args=(str(path), w, barrier)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * WORKERS

    with Ledger(path) as led:
        jobs = led.list_jobs()
        assert len(jobs) == WORKERS * JOBS_PER_WORKER
        assert len({j.id for j in jobs}) == len(jobs)
        assert len({j.token for j in jobs}) == len(jobs)
        assert len({j.slurm_job_id for j in jobs}) == len(jobs)
        assert {j.state for j in jobs} == {"COMPLETED"}
        assert led.unfinished_by_site() == {}
        for j in jobs:
            assert states(led, j.id) == [
                ("SUBMITTING", ""),
                ("PENDING", ""),
                ("RUNNING", "None"),
                ("COMPLETED", ""),
            ]
            worker, i = (int(x) for x in j.name[1:].split("-"))
            assert j.slurm_job_id == f"{worker}{i:04d}"
            assert j.outputs == (f"out-{worker}-{i}",)
            if i:
                assert led.get(j.depends_on or "").name == f"w{worker}-{i - 1}"
        total = led._conn.execute("SELECT count(*) FROM state_changes").fetchone()[0]
        assert total == 4 * WORKERS * JOBS_PER_WORKER
        assert led._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert led._conn.execute("PRAGMA foreign_key_check").fetchall() == []
