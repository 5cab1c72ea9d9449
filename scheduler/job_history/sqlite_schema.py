"""The job database's SQLite schema, and a Job's row in it.

The schema version is kept in ``PRAGMA user_version``; a database newer than
this code is refused.  A new Job field needs a new column and a new version.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from scheduler.job_history.database import JobStoreError
from scheduler.jobs import MUTABLE_FIELDS, Job, JobStatus

SCHEMA_VERSION = 1

# The Job fields, in column order.
FIELDS = (
    "id",
    "command",
    "created_at",
    "task_id",
    "key",
    "scheduled_at",
    "target",
    "timeout",
    "env",
    "cwd",
    "attempt",
    "status",
    "worker",
    "exit_code",
    "signal",
    "started_at",
    "finished_at",
    "reason",
)
COLUMNS = ", ".join(f'"{name}"' for name in FIELDS)
SELECT_JOB = f"SELECT {COLUMNS} FROM jobs"

_SCHEMA = (
    # AUTOINCREMENT, although ids are always given: sqlite_sequence then
    # remembers the highest id ever stored, so pruning the newest job cannot
    # make max_job_id hand out its id again after a restart.
    """CREATE TABLE IF NOT EXISTS jobs (
        "id" INTEGER PRIMARY KEY AUTOINCREMENT,
        "command" TEXT NOT NULL,
        "created_at" REAL NOT NULL,
        "task_id" INTEGER,
        "key" TEXT UNIQUE,
        "scheduled_at" REAL,
        "target" TEXT NOT NULL,
        "timeout" REAL,
        "env" TEXT NOT NULL,
        "cwd" TEXT,
        "attempt" INTEGER NOT NULL,
        "status" TEXT NOT NULL,
        "worker" TEXT,
        "exit_code" INTEGER,
        "signal" INTEGER,
        "started_at" REAL,
        "finished_at" REAL,
        "reason" TEXT,
        "output_dropped" INTEGER NOT NULL DEFAULT 0
    )""",
    'CREATE INDEX IF NOT EXISTS jobs_status ON jobs ("status")',
    'CREATE INDEX IF NOT EXISTS jobs_task ON jobs ("task_id", "id")',
    'CREATE INDEX IF NOT EXISTS jobs_worker ON jobs ("worker", "id")',
    'CREATE INDEX IF NOT EXISTS jobs_scheduled ON jobs ("scheduled_at")',
    # No foreign key: output may reach the store before its job's first put.
    """CREATE TABLE IF NOT EXISTS output (
        "job_id" INTEGER NOT NULL,
        "seq" INTEGER NOT NULL,
        "stream" TEXT NOT NULL,
        "data" TEXT NOT NULL,
        PRIMARY KEY ("job_id", "seq")
    ) WITHOUT ROWID""",
)

# output_dropped is only set when the row is created: a put carries the Job,
# and must not reset what the output cap has counted for it.  An update sets
# only the fields that can change, so SQLite leaves the indexes over the
# others (key, task, scheduled time) alone: fewer pages per commit.
UPSERT = (
    f'INSERT INTO jobs ({COLUMNS}, "output_dropped") VALUES ({", ".join("?" * (len(FIELDS) + 1))}) '
    f'ON CONFLICT ("id") DO UPDATE SET '
    + ", ".join(f'"{name}" = excluded."{name}"' for name in FIELDS if name in MUTABLE_FIELDS)
)

ACTIVE_SQL = ", ".join(f"'{status.value}'" for status in JobStatus if not status.final)


def create_or_check(conn: sqlite3.Connection, name: str) -> None:
    """Create the tables and indexes a new database lacks; refuse one newer than this code."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise JobStoreError(
            f"{name}: job database schema version {version} is newer than this "
            f"scheduler's ({SCHEMA_VERSION})"
        )
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")


def job_row(job: Job) -> tuple[object, ...]:
    """The job's values in ``FIELDS`` order."""
    return (
        job.id,
        job.command,
        job.created_at,
        job.task_id,
        job.key,
        job.scheduled_at,
        job.target,
        job.timeout,
        json.dumps(dict(job.env), sort_keys=True),
        job.cwd,
        job.attempt,
        JobStatus(job.status).value,
        job.worker,
        job.exit_code,
        job.signal,
        job.started_at,
        job.finished_at,
        job.reason,
    )


def row_job(row: Sequence[Any]) -> Job:
    """The Job of a row selected with ``COLUMNS``."""
    values = dict(zip(FIELDS, row, strict=True))
    values["env"] = json.loads(values["env"])
    values["status"] = JobStatus(values["status"])
    return Job(**values)
