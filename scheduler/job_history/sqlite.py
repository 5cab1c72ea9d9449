"""The SQLite backend of the job history (``jobs.sqlite``): a ``Database``.

WAL mode with ``synchronous = NORMAL``: a power cut cannot corrupt the
database but may lose the last commits.  The database holds every job's env
and output, so a new one is created private (0600) before SQLite opens it;
SQLite gives its -wal and -shm files the database file's permissions.  An
existing database keeps its mode.  Error messages name the file, not its
folder (they can reach clients); the log has the full path.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger

from scheduler.alert_deliveries import Delivery
from scheduler.alert_rules import ENDED_BADLY
from scheduler.alerts import Alert
from scheduler.audit import AuditEntry
from scheduler.job_history.database import (
    REVISIONS_PER_TASK,
    AlertAttempt,
    AlertsQueued,
    AuditQuery,
    ChannelChange,
    Chunk,
    JobStoreClosed,
    NameTaken,
    NewAlerts,
    NewAuditEntry,
    NewRevision,
    Outcome,
    Put,
    Write,
)
from scheduler.job_history.output import Tally, fit_chunk, merge_streams, with_marker
from scheduler.job_history.sqlite_schema import (
    ACTIVE_SQL,
    ALERT_COLUMNS,
    AUDIT_COLUMNS,
    COLUMNS,
    INSERT_ALERT,
    INSERT_AUDIT,
    INSERT_REVISION,
    REVISION_COLUMNS,
    SELECT_JOB,
    TRIM_REVISIONS,
    UPSERT,
    alert_row,
    audit_row,
    create_or_check,
    job_row,
    revision_row,
    row_audit,
    row_delivery,
    row_job,
    row_revision,
)
from scheduler.job_outcomes import MAX_ENDS, TaskOutcomes
from scheduler.jobs import Job, JobStatus, fire_key
from scheduler.triggers import Revision

log = Logger()

# Errors caused by one record's content, not by the database: SQLite undoes
# only the failing statement, so the rest of the batch can still commit.
_BAD_RECORD = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, ValueError, OverflowError)

# The statuses a task's retries apply to (scheduler.job_retry.RETRIED).
_ENDED_BADLY_SQL = ", ".join(f"'{status.value}'" for status in sorted(ENDED_BADLY))
_RETRIED_SQL = ", ".join(f"'{status.value}'" for status in (JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.LOST))

# Well under SQLite's limit on bound parameters, even in old builds.
_DELETE_CHUNK = 500


def _filters(
    status: str | None, task_id: int | None, worker: str | None, before_id: int | None
) -> tuple[str, list[object]]:
    """The WHERE clause (or "") and its parameters for the filters given."""
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (
        ("status", status),
        ("task_id", task_id),
        ("worker", worker),
        ("id", before_id),
    ):
        if value is not None:
            clauses.append(f'"{column}" {"<" if column == "id" else "="} ?')
            params.append(str(value) if column == "status" else value)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def create_private(path: str) -> None:
    """Create *path* empty and 0600 unless it exists (SQLite takes an empty file as a new database).

    ``:memory:`` and ``file:`` URIs are left to SQLite.
    """
    if path == ":memory:" or path.startswith("file:") or not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SqliteDatabase:
    """The blocking SQLite work of the job history (a ``Database``).

    One connection, used by the history's thread and, for the start-up reads
    and ``fired``, by the reactor thread: the lock keeps the two apart.
    """

    def __init__(
        self,
        path: str,
        *,
        output_cap: int,
        keep_per_task: int,
        keep_seconds: float,
        connect: Callable[..., sqlite3.Connection],
        keep_revisions: int = REVISIONS_PER_TASK,
        outbox_limit: int = 10_000,
        keep_audit_seconds: float = 90 * 86400,
    ) -> None:
        # Audit entries older than this go at each prune.
        self.keep_audit_seconds = keep_audit_seconds
        self.path = path
        # Most pending rows in the alert outbox; alerts past it are refused.
        self.outbox_limit = outbox_limit
        self.name = os.path.basename(path) or path
        self.output_cap = output_cap
        self.keep_per_task = keep_per_task
        self.keep_seconds = keep_seconds
        self.keep_revisions = keep_revisions
        self._connect = connect
        self.connection: sqlite3.Connection | None = None
        self.lock = threading.Lock()
        # Output accounting of the jobs still writing output; touched only
        # under the lock.
        self._tallies: dict[int, Tally] = {}

    def open(self) -> None:
        create_private(self.path)
        conn = self._connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                # Some file systems (network mounts) cannot share WAL memory;
                # the store still works, with readers and the writer contending.
                log.warn("{path}: SQLite would not use WAL mode (using {mode})", path=self.path, mode=mode)
            # With WAL, NORMAL keeps the database consistent across a power
            # cut and only risks the last commits; FULL would fsync every one.
            conn.execute("PRAGMA synchronous = NORMAL")
            create_or_check(conn, self.name)
        except BaseException:
            conn.close()
            raise
        self.connection = conn

    def _open_connection(self) -> sqlite3.Connection:
        if self.connection is None:
            raise JobStoreClosed(f"{self.name}: job store is not open")
        return self.connection

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        conn = self._open_connection()
        with self.lock:
            return conn.execute(sql, params).fetchall()

    # -- start-up reads -------------------------------------------------------

    def load_active(self) -> list[tuple[Job, int]]:
        rows = self._rows(
            f"SELECT {COLUMNS}, (SELECT COALESCE(MAX(seq), 0) FROM output WHERE job_id = jobs.id) "
            f"FROM jobs WHERE status IN ({ACTIVE_SQL}) ORDER BY id"
        )
        return [(row_job(row[:-1]), int(row[-1])) for row in rows]

    def recent_keys(self, since: float) -> set[str]:
        rows = self._rows('SELECT "key" FROM jobs WHERE scheduled_at >= ? AND "key" IS NOT NULL', (since,))
        return {row[0] for row in rows}

    def fired(self, task_id: int, scheduled: float) -> bool:
        return bool(self._rows('SELECT 1 FROM jobs WHERE "key" = ?', (fire_key(task_id, scheduled),)))

    def last_scheduled(self, until: float | None = None) -> dict[int, float]:
        rows = self._rows(
            "SELECT task_id, MAX(scheduled_at) FROM jobs "
            "WHERE task_id IS NOT NULL AND scheduled_at IS NOT NULL AND scheduled_at <= ? GROUP BY task_id",
            (until if until is not None else float("inf"),),
        )
        return {int(task_id): float(when) for task_id, when in rows}

    def unretried(self) -> list[Job]:
        # The newest job of each task (the (task_id, id) index answers the
        # MAX per task), kept if it ended in a status that retries: a retry
        # is a later job of the same task, so a newest job has none yet.
        rows = self._rows(
            f"{SELECT_JOB} WHERE id IN (SELECT MAX(id) FROM jobs WHERE task_id IS NOT NULL GROUP BY task_id) "
            f"AND status IN ({_RETRIED_SQL}) ORDER BY id"
        )
        return [row_job(row) for row in rows]

    def outcomes(self) -> dict[int, TaskOutcomes]:
        outcomes: dict[int, TaskOutcomes] = {}

        def of(task_id: int) -> TaskOutcomes:
            found = outcomes.get(task_id)
            if found is None:
                found = outcomes[task_id] = TaskOutcomes()
            return found

        # Each task's newest job, through the (task_id, id) index.
        for task_id, created in self._rows(
            "SELECT task_id, created_at FROM jobs WHERE id IN "
            "(SELECT MAX(id) FROM jobs WHERE task_id IS NOT NULL GROUP BY task_id)"
        ):
            of(int(task_id)).last_job = float(created)
        # Each task's newest success, and the bad ends after it: the newest
        # success per task is worked out once (an aggregate, materialised),
        # not searched for again for each bad end.
        newest_ok = (
            "SELECT task_id, MAX(id) AS id FROM jobs WHERE task_id IS NOT NULL AND status = 'succeeded' GROUP BY task_id"
        )
        for task_id, finished in self._rows(
            "SELECT j.task_id, COALESCE(j.finished_at, j.created_at) FROM jobs AS j "
            f"WHERE j.id IN (SELECT id FROM ({newest_ok}))"
        ):
            of(int(task_id)).last_success = float(finished)
        rows = self._rows(
            f"WITH ok AS ({newest_ok}) "
            "SELECT j.task_id, j.status, j.attempt, COALESCE(j.finished_at, j.created_at) FROM jobs AS j "
            "LEFT JOIN ok ON ok.task_id = j.task_id "
            f"WHERE j.task_id IS NOT NULL AND j.status IN ({_ENDED_BADLY_SQL}) AND j.id > COALESCE(ok.id, 0) "
            "ORDER BY j.task_id, j.id"
        )
        for task_id, status, attempt, finished in rows:
            ends = of(int(task_id)).bad_ends
            ends.append((JobStatus(status), int(attempt), float(finished)))
            if len(ends) > MAX_ENDS:
                del ends[0]
        return outcomes

    def last_at_work(self) -> float | None:
        # Ids grow with creation, so the newest thousand jobs hold it, read
        # through the primary key without a scan.
        rows = self._rows(
            "SELECT MAX(MAX(created_at, COALESCE(started_at, 0), COALESCE(finished_at, 0))) "
            "FROM (SELECT created_at, started_at, finished_at FROM jobs ORDER BY id DESC LIMIT 1000)"
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def max_task_id(self) -> int:
        rows = self._rows(
            "SELECT MAX(COALESCE((SELECT MAX(task_id) FROM jobs), 0), "
            "COALESCE((SELECT MAX(task_id) FROM task_revisions), 0))"
        )
        return int(rows[0][0])

    def max_job_id(self) -> int:
        rows = self._rows(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM jobs), 0), "
            "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0))"
        )
        return int(rows[0][0])

    # -- writes, on the history's thread --------------------------------------

    def row(self, job: Job) -> tuple[object, ...]:
        return job_row(job)

    def revision_row(self, revision: Revision) -> tuple[object, ...]:
        return revision_row(revision)

    def alert_row(self, alert: Alert) -> tuple[object, ...]:
        return alert_row(alert)

    def audit_row(self, entry: AuditEntry) -> tuple[object, ...]:
        return audit_row(entry)

    def write_batch(self, writes: Sequence[Write]) -> list[Outcome]:
        conn = self._open_connection()
        with self.lock:
            try:
                if conn.in_transaction:
                    # A failed ROLLBACK last time must not wedge every later batch.
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                outcomes: list[Outcome] = []
                for write in writes:
                    if isinstance(write, Chunk):
                        self._append(conn, write)
                    elif isinstance(write, Put):
                        outcomes.append(self._upsert(conn, write))
                    elif isinstance(write, NewRevision):
                        outcomes.append(self._add_revision(conn, write))
                    elif isinstance(write, NewAuditEntry):
                        outcomes.append(self._add_audit(conn, write))
                    elif isinstance(write, NewAlerts):
                        outcomes.append(self._add_alerts(conn, write))
                    elif isinstance(write, AlertAttempt):
                        self._record_attempt(conn, write)
                        outcomes.append(None)
                    else:
                        outcomes.append(self._change_channel(conn, write))
                conn.execute("COMMIT")
            except BaseException:
                # The rollback undoes appends that the tallies have counted.
                self._tallies.clear()
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error as error:
                        log.error("job store could not roll back: {error}", error=error)
                raise
        return outcomes

    def _upsert(self, conn: sqlite3.Connection, put: Put) -> Exception | None:
        tally = self._tallies.get(put.job_id)
        try:
            conn.execute(UPSERT, (*put.row, tally.dropped if tally is not None else 0))
        except _BAD_RECORD as error:
            log.warn("job store refused job {job_id}: {error}", job_id=put.job_id, error=error)
            return error
        if put.final:
            # Late output re-reads the tally from the database; finished jobs
            # must not pile up in memory.
            self._tallies.pop(put.job_id, None)
        return None

    def _add_revision(self, conn: sqlite3.Connection, revision: NewRevision) -> Outcome:
        try:
            cursor = conn.execute(INSERT_REVISION, revision.row)
        except _BAD_RECORD as error:
            log.warn("job store refused a revision of task {task_id}: {error}", task_id=revision.task_id, error=error)
            return error
        new_id = cursor.lastrowid
        assert new_id is not None
        # In the same transaction: a task's revisions never exceed the bound,
        # and once at it each new one deletes the oldest (one index range).
        conn.execute(TRIM_REVISIONS, (revision.task_id, self.keep_revisions))
        return new_id

    def _add_audit(self, conn: sqlite3.Connection, entry: NewAuditEntry) -> Outcome:
        try:
            cursor = conn.execute(INSERT_AUDIT, entry.row)
        except _BAD_RECORD as error:
            log.warn("job store refused an audit entry: {error}", error=error)
            return error
        new_id = cursor.lastrowid
        assert new_id is not None
        return new_id

    def _add_alerts(self, conn: sqlite3.Connection, alerts: NewAlerts) -> AlertsQueued:
        # Counted in the transaction that adds them, so the bound holds
        # however many batches race; the (state, next_attempt_at) index answers.
        pending = int(conn.execute("SELECT COUNT(*) FROM alert_outbox WHERE state = 'pending'").fetchone()[0])
        added = refused = 0
        for row in alerts.rows:
            if pending >= self.outbox_limit:
                # A duplicate of a kept row is not refused: it is already queued.
                kept = conn.execute(
                    'SELECT 1 FROM alert_outbox WHERE "key" = ? AND "channel" = ?', (row[0], row[1])
                ).fetchone()
                refused += kept is None
                continue
            if conn.execute(INSERT_ALERT, row).rowcount:
                added += 1
                pending += 1
        return AlertsQueued(added, refused, pending)

    def _record_attempt(self, conn: sqlite3.Connection, attempt: AlertAttempt) -> None:
        conn.execute(
            "UPDATE alert_outbox SET state = ?, attempts = ?, next_attempt_at = ?, last_attempt_at = ?, "
            "reply = ?, sent_at = ? WHERE id = ?",
            (
                attempt.state,
                attempt.attempts,
                attempt.next_attempt_at,
                attempt.last_attempt_at,
                attempt.reply,
                attempt.sent_at,
                attempt.row_id,
            ),
        )

    def _change_channel(self, conn: sqlite3.Connection, change: ChannelChange) -> Exception | None:
        if change.config is None:
            conn.execute("DELETE FROM alert_channels WHERE name = ?", (change.name,))
            return None
        try:
            conn.execute("INSERT INTO alert_channels (name, config) VALUES (?, ?)", (change.name, change.config))
        except sqlite3.IntegrityError:
            return NameTaken(f"a channel named {change.name!r} exists")
        return None

    def _tally(self, conn: sqlite3.Connection, job_id: int) -> Tally:
        tally = self._tallies.get(job_id)
        if tally is None:
            kept, lowest = conn.execute(
                "SELECT COALESCE(SUM(length(CAST(data AS BLOB))), 0), MIN(seq) FROM output WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            row = conn.execute("SELECT output_dropped FROM jobs WHERE id = ?", (job_id,)).fetchone()
            dropped = int(row[0]) if row is not None else 0
            lowest_seq = int(lowest) if lowest is not None else None
            tally = self._tallies[job_id] = Tally.from_stored(int(kept), dropped, lowest_seq)
        return tally

    def _append(self, conn: sqlite3.Connection, chunk: Chunk) -> None:
        tally = self._tally(conn, chunk.job_id)
        if tally.refuses(chunk.seq):
            return
        fitted = fit_chunk(chunk.data, self.output_cap)
        before = tally.dropped
        inserted = conn.execute(
            "INSERT OR IGNORE INTO output (job_id, seq, stream, data) VALUES (?, ?, ?, ?)",
            (chunk.job_id, chunk.seq, chunk.stream, fitted.data),
        ).rowcount
        if not inserted:
            return
        tally.count(fitted)
        if tally.kept > self.output_cap:
            self._trim(conn, chunk.job_id, tally)
        if tally.dropped != before:
            conn.execute("UPDATE jobs SET output_dropped = ? WHERE id = ?", (tally.dropped, chunk.job_id))

    def _trim(self, conn: sqlite3.Connection, job_id: int, tally: Tally) -> None:
        """Delete the job's oldest chunks until its output fits the cap."""
        cursor = conn.execute(
            "SELECT seq, length(CAST(data AS BLOB)) FROM output WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        try:
            last = tally.trim(((int(seq), int(size)) for seq, size in iter(cursor.fetchone, None)), self.output_cap)
        finally:
            cursor.close()
        if last is not None:
            conn.execute("DELETE FROM output WHERE job_id = ? AND seq <= ?", (job_id, last))

    # -- reads, on the history's thread ---------------------------------------

    def get(self, job_id: int) -> Job | None:
        conn = self._open_connection()
        with self.lock:
            row = conn.execute(f"{SELECT_JOB} WHERE id = ?", (job_id,)).fetchone()
        return row_job(row) if row is not None else None

    def query(
        self,
        status: str | None,
        task_id: int | None,
        worker: str | None,
        limit: int,
        before_id: int | None,
    ) -> list[Job]:
        where, params = _filters(status, task_id, worker, before_id)
        # A negative LIMIT means no limit to SQLite.
        params.append(max(0, limit))
        return [row_job(row) for row in self._rows(f"{SELECT_JOB}{where} ORDER BY id DESC LIMIT ?", params)]

    def count(self, status: str | None, task_id: int | None, worker: str | None) -> int:
        where, params = _filters(status, task_id, worker, None)
        return int(self._rows(f"SELECT COUNT(*) FROM jobs{where}", params)[0][0])

    def newest(self, task_ids: Sequence[int]) -> list[Job]:
        # One statement, one (task_id, id) index lookup per task: the cost
        # grows with the tasks asked for, not with the jobs kept.
        rows = self._rows(
            f"{SELECT_JOB} WHERE id IN (SELECT (SELECT MAX(id) FROM jobs WHERE task_id = asked.value) "
            "FROM json_each(?) AS asked)",
            (json.dumps([int(task_id) for task_id in task_ids]),),
        )
        return [row_job(row) for row in rows]

    def output(self, job_id: int) -> str | None:
        conn = self._open_connection()
        with self.lock:
            row = conn.execute("SELECT output_dropped FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            text = "".join(
                data
                for (data,) in conn.execute("SELECT data FROM output WHERE job_id = ? ORDER BY seq", (job_id,))
            )
        return with_marker(text, row[0])

    def output_parts(self, job_id: int) -> tuple[int, list[tuple[str, str]]] | None:
        conn = self._open_connection()
        with self.lock:
            row = conn.execute("SELECT output_dropped FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            chunks = conn.execute("SELECT stream, data FROM output WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
        return int(row[0] or 0), merge_streams(chunks)

    def revisions(self, task_id: int, limit: int, before_id: int | None) -> list[Revision]:
        where = "task_id = ?" if before_id is None else "task_id = ? AND id < ?"
        params: list[object] = [task_id] if before_id is None else [task_id, before_id]
        # A negative LIMIT means no limit to SQLite.
        params.append(max(0, limit))
        rows = self._rows(
            f"SELECT {REVISION_COLUMNS} FROM task_revisions WHERE {where} ORDER BY id DESC LIMIT ?", params
        )
        return [row_revision(row) for row in rows]

    def audit(self, query: AuditQuery) -> tuple[list[AuditEntry], int]:
        clauses: list[str] = []
        params: list[object] = []
        for clause, value in (
            ('"who" = ?', query.who),
            ('"action" = ?', query.action),
            ('"task_id" = ?', query.task_id),
            ('"at" >= ?', query.since),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        paged = where + (" AND " if clauses else " WHERE ") + '"id" < ?' if query.before_id is not None else where
        conn = self._open_connection()
        with self.lock:
            rows = conn.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log{paged} ORDER BY id DESC LIMIT ?",
                [*params, *([query.before_id] if query.before_id is not None else []), max(0, query.limit)],
            ).fetchall()
            (total,) = conn.execute(f"SELECT COUNT(*) FROM audit_log{where}", params).fetchone()
        return [row_audit(row) for row in rows], int(total)

    # -- the alert outbox ------------------------------------------------------

    def channels(self) -> dict[str, str]:
        return {name: config for name, config in self._rows("SELECT name, config FROM alert_channels")}

    def due_alerts(
        self, now: float, limit: int, skip_ids: Sequence[int], skip_channels: Sequence[str]
    ) -> tuple[list[Delivery], float | None, int]:
        where = "state = 'pending'"
        params: list[object] = []
        if skip_ids:
            where += f" AND id NOT IN ({', '.join('?' * len(skip_ids))})"
            params.extend(skip_ids)
        if skip_channels:
            where += f" AND channel NOT IN ({', '.join('?' * len(skip_channels))})"
            params.extend(skip_channels)
        conn = self._open_connection()
        with self.lock:
            rows = conn.execute(
                f"SELECT {ALERT_COLUMNS} FROM alert_outbox WHERE {where} AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at, id LIMIT ?",
                (*params, now, max(0, limit)),
            ).fetchall()
            (next_due,) = conn.execute(
                f"SELECT MIN(next_attempt_at) FROM alert_outbox WHERE {where}", params
            ).fetchone()
            (pending,) = conn.execute("SELECT COUNT(*) FROM alert_outbox WHERE state = 'pending'").fetchone()
        return [row_delivery(row) for row in rows], next_due, int(pending)

    def deliveries(
        self, task_id: int | None, state: str | None, channel: str | None, limit: int, before_id: int | None
    ) -> list[Delivery]:
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (("task_id", task_id), ("state", state), ("channel", channel)):
            if value is not None:
                clauses.append(f'"{column}" = ?')
                params.append(value)
        if before_id is not None:
            clauses.append('"id" < ?')
            params.append(before_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(max(0, limit))
        rows = self._rows(f"SELECT {ALERT_COLUMNS} FROM alert_outbox{where} ORDER BY id DESC LIMIT ?", params)
        return [row_delivery(row) for row in rows]

    def output_tail(self, job_id: int, max_bytes: int) -> str | None:
        conn = self._open_connection()
        with self.lock:
            row = conn.execute("SELECT output_dropped FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            # Newest chunks first, only until enough: the whole kept output
            # may be a megabyte, the tail a few kilobytes.
            chunks: list[str] = []
            size = 0
            cursor = conn.execute("SELECT data FROM output WHERE job_id = ? ORDER BY seq DESC", (job_id,))
            try:
                for (data,) in iter(cursor.fetchone, None):
                    chunks.append(data)
                    size += len(data)
                    if size >= max_bytes:
                        break
            finally:
                cursor.close()
        return "".join(reversed(chunks))

    def prune(self, now: float) -> int:
        conn = self._open_connection()
        with self.lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                # Jobs that ended without a finish time (cancelled while
                # queued, say) age from their creation instead of living forever.
                doomed = [
                    int(job_id)
                    for (job_id,) in conn.execute(
                        f"""SELECT id FROM (
                            SELECT id, COALESCE(finished_at, created_at) AS ended,
                                   ROW_NUMBER() OVER (
                                       PARTITION BY task_id
                                       ORDER BY COALESCE(finished_at, created_at) DESC, id DESC
                                   ) AS newest
                            FROM jobs WHERE status NOT IN ({ACTIVE_SQL})
                        ) WHERE ended < ? OR newest > ?""",
                        (now - self.keep_seconds, self.keep_per_task),
                    ).fetchall()
                ]
                for start in range(0, len(doomed), _DELETE_CHUNK):
                    ids = doomed[start : start + _DELETE_CHUNK]
                    marks = ", ".join("?" * len(ids))
                    conn.execute(f"DELETE FROM output WHERE job_id IN ({marks})", ids)
                    conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
                    # An alert's delivery log goes with its job; a pending one stays.
                    conn.execute(f"DELETE FROM alert_outbox WHERE state != 'pending' AND job_id IN ({marks})", ids)
                # Alerts of no kept job (worker offline, stale tasks) age like jobs.
                conn.execute(
                    "DELETE FROM alert_outbox WHERE state != 'pending' AND created_at < ? "
                    "AND (job_id IS NULL OR job_id NOT IN (SELECT id FROM jobs))",
                    (now - self.keep_seconds,),
                )
                conn.execute("DELETE FROM audit_log WHERE at < ?", (now - self.keep_audit_seconds,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error as error:
                        log.error("job store could not roll back a prune: {error}", error=error)
                raise
            for job_id in doomed:
                self._tallies.pop(job_id, None)
        return len(doomed)

    def close(self) -> None:
        with self.lock:
            conn, self.connection = self.connection, None
            self._tallies.clear()
            if conn is not None:
                conn.close()

