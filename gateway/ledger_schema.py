"""The ledger's schema: its migrations, in order (version N is reached by the first N)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

# --------------------------------------------------------------------------
# Schema and migrations
# --------------------------------------------------------------------------

Migration = Callable[[sqlite3.Connection], None]


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """The first schema: jobs and their state history."""
    conn.execute(
        """
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
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE state_changes (
            seq    INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            state  TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            at     TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX state_changes_job ON state_changes(job_id, seq)")


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """What happened (message), where output goes, arrays, dependencies."""
    conn.execute("ALTER TABLE jobs ADD COLUMN message TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE jobs ADD COLUMN stdout_path TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE jobs ADD COLUMN array_size INTEGER")
    conn.execute("ALTER TABLE jobs ADD COLUMN depends_on TEXT REFERENCES jobs(id)")
    conn.execute("CREATE INDEX jobs_site_state ON jobs(site, state)")


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """Idempotency keys, the site's own record, and the second proof of identity."""
    conn.execute("ALTER TABLE jobs ADD COLUMN submission_key TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE jobs ADD COLUMN item TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE jobs ADD COLUMN claim_gen INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE jobs ADD COLUMN journal_dir TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE jobs ADD COLUMN slurm_name TEXT NOT NULL DEFAULT ''")
    conn.execute("CREATE INDEX jobs_key ON jobs(submission_key)")


def _migrate_v4(conn: sqlite3.Connection) -> None:
    """Why a job went where it went (the ranking, as JSON) and every submission attempt."""
    conn.execute("ALTER TABLE jobs ADD COLUMN placement TEXT NOT NULL DEFAULT ''")
    conn.execute(
        """
        CREATE TABLE attempts (
            seq     INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            site    TEXT NOT NULL,
            at      TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail  TEXT NOT NULL DEFAULT ''
        )
        """
    )
    conn.execute("CREATE INDEX attempts_job ON attempts(job_id, seq)")


def _migrate_v5(conn: sqlite3.Connection) -> None:
    """Specs sent as tasks of one array: the array's token and the job's task in it."""
    conn.execute("ALTER TABLE jobs ADD COLUMN array_token TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE jobs ADD COLUMN array_task INTEGER")


# Version N of the schema is reached by applying _MIGRATIONS[:N]. Only append.
_MIGRATIONS: tuple[Migration, ...] = (_migrate_v1, _migrate_v2, _migrate_v3, _migrate_v4, _migrate_v5)
SCHEMA_VERSION = len(_MIGRATIONS)
