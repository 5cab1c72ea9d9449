"""The job database's SQLite schema, and the rows of a Job and a task Revision in it.

The schema version is kept in ``PRAGMA user_version``; a database newer than
this code is refused, an older one is brought up to date in the transaction
that opens it.  A new Job field needs a new column, a new version and the
step from the one before in ``_MIGRATIONS`` (a new table only needs its
``CREATE ... IF NOT EXISTS`` in ``_SCHEMA``, which runs on every open).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.alert_deliveries import Delivery
from scheduler.alerts import Alert
from scheduler.audit import AuditEntry
from scheduler.job_history.database import JobStoreError
from scheduler.jobs import MUTABLE_FIELDS, Job, JobStatus
from scheduler.triggers import Revision, TriggeredBy

SCHEMA_VERSION = 4

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
    "triggered_by",
    "status",
    "worker",
    "exit_code",
    "signal",
    "started_at",
    "finished_at",
    "reason",
    "cancel_requested_at",
    "version",
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
        "triggered_by" TEXT,
        "status" TEXT NOT NULL,
        "worker" TEXT,
        "exit_code" INTEGER,
        "signal" INTEGER,
        "started_at" REAL,
        "finished_at" REAL,
        "reason" TEXT,
        "cancel_requested_at" REAL,
        "output_dropped" INTEGER NOT NULL DEFAULT 0,
        "version" INTEGER NOT NULL DEFAULT 1
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
    # AUTOINCREMENT: ids only grow, even when a task's newest revisions
    # are the ones deleted (never today), so they order revisions for good.
    """CREATE TABLE IF NOT EXISTS task_revisions (
        "id" INTEGER PRIMARY KEY AUTOINCREMENT,
        "task_id" INTEGER NOT NULL,
        "at" REAL NOT NULL,
        "action" TEXT NOT NULL,
        "by" TEXT NOT NULL,
        "before" TEXT,
        "after" TEXT
    )""",
    'CREATE INDEX IF NOT EXISTS task_revisions_task ON task_revisions ("task_id", "id")',
    # The alert outbox: one row per (key, channel), so an event seen twice
    # is queued once.  New tables need no schema version: _SCHEMA runs on
    # every open, and an older scheduler leaves them alone.
    """CREATE TABLE IF NOT EXISTS alert_outbox (
        "id" INTEGER PRIMARY KEY AUTOINCREMENT,
        "key" TEXT NOT NULL,
        "channel" TEXT NOT NULL,
        "event" TEXT NOT NULL,
        "task_id" INTEGER,
        "job_id" INTEGER,
        "created_at" REAL NOT NULL,
        "body" TEXT NOT NULL,
        "state" TEXT NOT NULL,
        "attempts" INTEGER NOT NULL,
        "next_attempt_at" REAL NOT NULL,
        "last_attempt_at" REAL,
        "reply" TEXT,
        "sent_at" REAL,
        UNIQUE ("key", "channel")
    )""",
    'CREATE INDEX IF NOT EXISTS alert_outbox_due ON alert_outbox ("state", "next_attempt_at")',
    'CREATE INDEX IF NOT EXISTS alert_outbox_task ON alert_outbox ("task_id", "id")',
    'CREATE INDEX IF NOT EXISTS alert_outbox_job ON alert_outbox ("job_id")',
    # A channel's config as JSON (secrets included: the file is 0600).
    """CREATE TABLE IF NOT EXISTS alert_channels (
        "name" TEXT PRIMARY KEY,
        "config" TEXT NOT NULL
    )""",
    # The audit log (scheduler/audit.py): append-only, pruned by age.
    """CREATE TABLE IF NOT EXISTS audit_log (
        "id" INTEGER PRIMARY KEY AUTOINCREMENT,
        "at" REAL NOT NULL,
        "action" TEXT NOT NULL,
        "who" TEXT NOT NULL,
        "address" TEXT,
        "task_id" INTEGER,
        "job_id" INTEGER,
        "detail" TEXT
    )""",
    'CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log ("at")',
    'CREATE INDEX IF NOT EXISTS audit_log_task ON audit_log ("task_id", "id")',
    'CREATE INDEX IF NOT EXISTS audit_log_who ON audit_log ("who", "id")',
)

# What turns a database of version N - 1 into version N.  A new database
# gets the whole schema at once and skips them.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ('ALTER TABLE jobs ADD COLUMN "triggered_by" TEXT',),
    3: ('ALTER TABLE jobs ADD COLUMN "cancel_requested_at" REAL',),
    4: ('ALTER TABLE jobs ADD COLUMN "version" INTEGER NOT NULL DEFAULT 1',),
}

REVISION_FIELDS = ("id", "task_id", "at", "action", "by", "before", "after")
REVISION_COLUMNS = ", ".join(f'"{name}"' for name in REVISION_FIELDS)
# The store gives the id: a Revision's own is ignored.
INSERT_REVISION = "INSERT INTO task_revisions ({}) VALUES ({})".format(
    ", ".join(f'"{name}"' for name in REVISION_FIELDS[1:]), ", ".join("?" * (len(REVISION_FIELDS) - 1))
)
# The task's revisions from the (keep + 1)th newest down; one index range.
TRIM_REVISIONS = (
    "DELETE FROM task_revisions WHERE task_id = ?1 AND id <= "
    "(SELECT id FROM task_revisions WHERE task_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)"
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
    # Version 0 is a new (empty) database: _SCHEMA creates all of it.
    if version > 0:
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
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
        _dumps_sorted(job.env) if job.env else "{}",
        job.cwd,
        job.attempt,
        _trigger_text(job.triggered_by) if job.triggered_by is not None else None,
        JobStatus(job.status).value,
        job.worker,
        job.exit_code,
        job.signal,
        job.started_at,
        job.finished_at,
        job.reason,
        job.cancel_requested_at,
        job.version,
    )


def row_job(row: Sequence[Any]) -> Job:
    """The Job of a row selected with ``COLUMNS``."""
    values = dict(zip(FIELDS, row, strict=True))
    values["env"] = json.loads(values["env"])
    values["status"] = JobStatus(values["status"])
    by = values["triggered_by"]
    values["triggered_by"] = TriggeredBy.from_json(json.loads(by)) if by is not None else None
    return Job(**values)


# Made once: json.dumps with any option builds a new encoder each call,
# and a job's row is encoded at each of its few changes.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_SORTED = json.JSONEncoder(sort_keys=True)


def _dumps(value: object) -> str:
    # Compact: it is stored once per job and revision.
    return _COMPACT.encode(value)


@functools.lru_cache(maxsize=1024)
def _trigger_text(by: TriggeredBy) -> str:
    # A job is written three or four times, and a batch's jobs share one
    # TriggeredBy: its JSON is made once (equal ones hash alike).
    return _dumps(by.as_json())


def _dumps_sorted(env: Mapping[str, str]) -> str:
    return _SORTED.encode(dict(env))


def revision_row(revision: Revision) -> tuple[object, ...]:
    """The revision's values for ``INSERT_REVISION``: ``REVISION_FIELDS`` but the id."""
    return (
        revision.task_id,
        revision.at,
        revision.action,
        _dumps(revision.by.as_json()),
        _dumps(dict(revision.before)) if revision.before is not None else None,
        _dumps(dict(revision.after)) if revision.after is not None else None,
    )


def row_revision(row: Sequence[Any]) -> Revision:
    """The Revision of a row selected with ``REVISION_COLUMNS``."""
    values = dict(zip(REVISION_FIELDS, row, strict=True))
    for name in ("before", "after"):
        if values[name] is not None:
            values[name] = json.loads(values[name])
    values["by"] = TriggeredBy.from_json(json.loads(values["by"]))
    return Revision(**values)


# -- the audit log ---------------------------------------------------------------

AUDIT_FIELDS = ("id", "at", "action", "who", "address", "task_id", "job_id", "detail")
AUDIT_COLUMNS = ", ".join(f'"{name}"' for name in AUDIT_FIELDS)
INSERT_AUDIT = "INSERT INTO audit_log ({}) VALUES ({})".format(
    ", ".join(f'"{name}"' for name in AUDIT_FIELDS[1:]), ", ".join("?" * (len(AUDIT_FIELDS) - 1))
)


def audit_row(entry: AuditEntry) -> tuple[object, ...]:
    """The entry's values for ``INSERT_AUDIT``: ``AUDIT_FIELDS`` but the id."""
    return (
        entry.at,
        entry.action,
        entry.who,
        entry.address,
        entry.task_id,
        entry.job_id,
        _dumps(dict(entry.detail)) if entry.detail is not None else None,
    )


def row_audit(row: Sequence[Any]) -> AuditEntry:
    """The AuditEntry of a row selected with ``AUDIT_COLUMNS``."""
    values = dict(zip(AUDIT_FIELDS, row, strict=True))
    if values["detail"] is not None:
        values["detail"] = json.loads(values["detail"])
    return AuditEntry(**values)


# -- the alert outbox ---------------------------------------------------------

ALERT_FIELDS = (
    "id",
    "key",
    "channel",
    "event",
    "task_id",
    "job_id",
    "created_at",
    "body",
    "state",
    "attempts",
    "next_attempt_at",
    "last_attempt_at",
    "reply",
    "sent_at",
)
ALERT_COLUMNS = ", ".join(f'"{name}"' for name in ALERT_FIELDS)
# A new row: due at once, never tried.
INSERT_ALERT = (
    'INSERT OR IGNORE INTO alert_outbox ("key", "channel", "event", "task_id", "job_id", "created_at", "body", '
    '"state", "attempts", "next_attempt_at") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \'pending\', 0, ?6)'
)


def alert_row(alert: Alert) -> tuple[object, ...]:
    """The alert's values for ``INSERT_ALERT``."""
    return (
        alert.key,
        alert.channel,
        alert.event,
        alert.task_id,
        alert.job_id,
        alert.created_at,
        _dumps(dict(alert.body)),
    )


def row_delivery(row: Sequence[Any]) -> Delivery:
    """The Delivery of a row selected with ``ALERT_COLUMNS``."""
    values = dict(zip(ALERT_FIELDS, row, strict=True))
    values["body"] = json.loads(values["body"])
    return Delivery(**values)
