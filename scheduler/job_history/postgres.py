"""The PostgreSQL backend of the job history (``--db postgresql://...``): a ``Database``,
and the leader lease's store.

psycopg 3's blocking API, on the history's one thread like SQLite's: one
connection for the history (autocommit, each write batch one explicit
transaction), one of its own for the lease (``PostgresLeaseStore``, on a
thread of its own).  The rows are SQLite's (``sqlite_schema``'s row
helpers); the SQL differs where the dialects do: ``ON CONFLICT DO NOTHING``
for ``INSERT OR IGNORE``, ``= ANY(array)`` for ``json_each``, a sequence
for ``sqlite_sequence``, and a savepoint per record that can be refused on
its own (PostgreSQL aborts the whole transaction on an error, SQLite only
the statement).  Output is stored as ``bytea``: process output may hold NUL
characters, which ``text`` refuses.

A lost connection fails the batch (or read) that found it, with an error
saying so; the next call connects again.  The password never reaches an
error message or the log: ``redact`` is the URL's only printed form.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

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
    Disowned,
    Fenced,
    FireTaken,
    JobStoreClosed,
    JobStoreError,
    NameTaken,
    NewAlerts,
    NewAuditEntry,
    NewRevision,
    Outcome,
    Put,
    Write,
)
from scheduler.job_history.output import FittedChunk, Tally, fit_chunk, merge_streams, with_marker
from scheduler.job_history.sqlite_schema import (
    ACTIVE_SQL,
    ALERT_COLUMNS,
    AUDIT_COLUMNS,
    AUDIT_FIELDS,
    COLUMNS,
    FIELDS,
    REVISION_COLUMNS,
    REVISION_FIELDS,
    SELECT_JOB,
    alert_row,
    audit_row,
    job_row,
    revision_row,
    row_audit,
    row_delivery,
    row_job,
    row_revision,
)
from scheduler.job_outcomes import MAX_ENDS, TaskOutcomes
from scheduler.jobs import MUTABLE_FIELDS, Job, JobStatus, fire_key
from scheduler.leader_lease import LeaseState
from scheduler.triggers import Revision

log = Logger()

SCHEMA_VERSION = 1

# Errors caused by one record's content, not by the database: its savepoint
# is rolled back and the rest of the batch commits.
_BAD_RECORD = (psycopg.IntegrityError, psycopg.DataError, ValueError, OverflowError)

_ENDED_BADLY_SQL = ", ".join(f"'{status.value}'" for status in sorted(ENDED_BADLY))
_RETRIED_SQL = ", ".join(f"'{status.value}'" for status in (JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.LOST))

# Every table of the history, and the lease's (the lease store creates its own).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS job_history_meta (
        "name" TEXT PRIMARY KEY,
        "value" BIGINT NOT NULL
    )""",
    # Ids are given by the scheduler; the sequence remembers the highest ever
    # stored, so pruning the newest job cannot hand its id out again.
    "CREATE SEQUENCE IF NOT EXISTS jobs_id_seq AS BIGINT",
    """CREATE TABLE IF NOT EXISTS jobs (
        "id" BIGINT PRIMARY KEY,
        "command" TEXT NOT NULL,
        "created_at" DOUBLE PRECISION NOT NULL,
        "task_id" BIGINT,
        "key" TEXT UNIQUE,
        "scheduled_at" DOUBLE PRECISION,
        "target" TEXT NOT NULL,
        "timeout" DOUBLE PRECISION,
        "env" TEXT NOT NULL,
        "cwd" TEXT,
        "attempt" BIGINT NOT NULL,
        "triggered_by" TEXT,
        "status" TEXT NOT NULL,
        "worker" TEXT,
        "exit_code" BIGINT,
        "signal" BIGINT,
        "started_at" DOUBLE PRECISION,
        "finished_at" DOUBLE PRECISION,
        "reason" TEXT,
        "cancel_requested_at" DOUBLE PRECISION,
        "output_dropped" BIGINT NOT NULL DEFAULT 0,
        "version" BIGINT NOT NULL DEFAULT 1,
        "node" TEXT
    )""",
    # The node that manages an active job, the last to write its record
    # (NULL: nobody yet); added to databases made before it.
    'ALTER TABLE jobs ADD COLUMN IF NOT EXISTS "node" TEXT',
    'CREATE INDEX IF NOT EXISTS jobs_active_node ON jobs ("node") WHERE "status" IN (\'queued\', \'running\')',
    # The jobs offered to the cluster (scheduler/job_claims.py), what a claim scans.
    'CREATE INDEX IF NOT EXISTS jobs_offered ON jobs ("target", "id") WHERE "status" = \'queued\' AND "node" IS NULL',
    'CREATE INDEX IF NOT EXISTS jobs_status ON jobs ("status")',
    # The leader's sweep asks for the jobs ended badly lately (retries owed).
    f'CREATE INDEX IF NOT EXISTS jobs_retried_finished ON jobs ("finished_at") WHERE "status" IN ({_RETRIED_SQL})',
    'CREATE INDEX IF NOT EXISTS jobs_task ON jobs ("task_id", "id")',
    'CREATE INDEX IF NOT EXISTS jobs_worker ON jobs ("worker", "id")',
    'CREATE INDEX IF NOT EXISTS jobs_scheduled ON jobs ("scheduled_at")',
    # No foreign key: output may reach the store before its job's first put.
    """CREATE TABLE IF NOT EXISTS output (
        "job_id" BIGINT NOT NULL,
        "seq" BIGINT NOT NULL,
        "stream" TEXT NOT NULL,
        "data" BYTEA NOT NULL,
        PRIMARY KEY ("job_id", "seq")
    )""",
    """CREATE TABLE IF NOT EXISTS task_revisions (
        "id" BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        "task_id" BIGINT NOT NULL,
        "at" DOUBLE PRECISION NOT NULL,
        "action" TEXT NOT NULL,
        "by" TEXT NOT NULL,
        "before" TEXT,
        "after" TEXT
    )""",
    'CREATE INDEX IF NOT EXISTS task_revisions_task ON task_revisions ("task_id", "id")',
    """CREATE TABLE IF NOT EXISTS alert_outbox (
        "id" BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        "key" TEXT NOT NULL,
        "channel" TEXT NOT NULL,
        "event" TEXT NOT NULL,
        "task_id" BIGINT,
        "job_id" BIGINT,
        "created_at" DOUBLE PRECISION NOT NULL,
        "body" TEXT NOT NULL,
        "state" TEXT NOT NULL,
        "attempts" BIGINT NOT NULL,
        "next_attempt_at" DOUBLE PRECISION NOT NULL,
        "last_attempt_at" DOUBLE PRECISION,
        "reply" TEXT,
        "sent_at" DOUBLE PRECISION,
        UNIQUE ("key", "channel")
    )""",
    'CREATE INDEX IF NOT EXISTS alert_outbox_due ON alert_outbox ("state", "next_attempt_at")',
    'CREATE INDEX IF NOT EXISTS alert_outbox_task ON alert_outbox ("task_id", "id")',
    'CREATE INDEX IF NOT EXISTS alert_outbox_job ON alert_outbox ("job_id")',
    """CREATE TABLE IF NOT EXISTS alert_channels (
        "name" TEXT PRIMARY KEY,
        "config" TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_log (
        "id" BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        "at" DOUBLE PRECISION NOT NULL,
        "action" TEXT NOT NULL,
        "who" TEXT NOT NULL,
        "address" TEXT,
        "task_id" BIGINT,
        "job_id" BIGINT,
        "detail" TEXT
    )""",
    'CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log ("at")',
    'CREATE INDEX IF NOT EXISTS audit_log_task ON audit_log ("task_id", "id")',
    'CREATE INDEX IF NOT EXISTS audit_log_who ON audit_log ("who", "id")',
)

# Two nodes opening a new database at once must not both create it.
_SCHEMA_LOCK = 0x5C4ED01E

# The ownership fence: a stored job's record is replaced only by the node
# that manages it (or by any node while nobody does: node NULL), so a node
# whose job was taken over by another cannot overwrite what that one records.
_OWNED = '(jobs."node" IS NULL OR jobs."node" = %s)'
_ROW_PLACEHOLDERS = f"({', '.join(['%s'] * (len(FIELDS) + 2))})"
_UPSERT_CONFLICT = (
    'ON CONFLICT ("id") DO UPDATE SET '
    + ", ".join(f'"{name}" = excluded."{name}"' for name in (*FIELDS, "node") if name in (*MUTABLE_FIELDS, "node"))
    + f" WHERE {_OWNED}"
)
_UPSERT = f'INSERT INTO jobs ({COLUMNS}, "output_dropped", "node") VALUES {_ROW_PLACEHOLDERS} {_UPSERT_CONFLICT}'
# The same upsert for several jobs' records at once: one statement and one
# result (the ids written; a record missing from them was refused by the
# ownership fence) instead of one per record.  Each column is one array
# parameter, so the statement's text is the same for any number of records
# (psycopg parses it once, the server plans it once; a VALUES list per
# record would be parsed again for every batch).
_JOB_TYPES: dict[str, str] = dict(
    re.findall(r'"(\w+)" (BIGINT|TEXT|DOUBLE PRECISION)', next(s for s in _SCHEMA if "TABLE IF NOT EXISTS jobs" in s))
)
_UPSERTED = (*FIELDS, "output_dropped", "node")
_UPSERT_MANY = (
    f'INSERT INTO jobs ({COLUMNS}, "output_dropped", "node") SELECT * FROM unnest('
    + ", ".join(f"%s::{_JOB_TYPES[name].lower()}[]" for name in _UPSERTED)
    + f") {_UPSERT_CONFLICT} RETURNING jobs.id"
).encode()
# An array's values must be of one type: the ints of a DOUBLE PRECISION
# column become floats, as the server would make them.  Any other mix is
# refused (DataError) and the batch goes the careful way, record by record.
_FLOAT_COLUMNS = frozenset(index for index, name in enumerate(_UPSERTED) if _JOB_TYPES[name] == "DOUBLE PRECISION")
# At most this many records an upsert (a bound on one statement's size).
_UPSERT_ROWS = 500
# One or two records: a VALUES list, cheaper than dumping arrays, and still
# parsed once (psycopg caches a statement of up to 50 parameters).
_UPSERT_FEW = {
    count: (
        f'INSERT INTO jobs ({COLUMNS}, "output_dropped", "node") VALUES {", ".join([_ROW_PLACEHOLDERS] * count)} '
        f"{_UPSERT_CONFLICT} RETURNING jobs.id"
    ).encode()
    for count in (1, 2)
}


def _upsert_columns(rows: Sequence[tuple[object, ...]]) -> list[list[object]]:
    """The records' values, one list a column (``_UPSERT_MANY``'s parameters but the last)."""
    columns: list[list[object]] = [list(values) for values in zip(*rows, strict=True)]
    for index in _FLOAT_COLUMNS:
        columns[index] = [float(value) if type(value) is int else value for value in columns[index]]  # type: ignore[arg-type]
    return columns


# A fired job's first record: a fire already recorded (its key) is left alone.
_INSERT_FIRE = (
    f'INSERT INTO jobs ({COLUMNS}, "output_dropped", "node") VALUES ({", ".join(["%s"] * (len(FIELDS) + 2))}) '
    "ON CONFLICT DO NOTHING RETURNING 1"
)
_QUALIFIED = ", ".join(f'jobs."{name}"' for name in FIELDS)
_UPDATED = (*(name for name in FIELDS if name in MUTABLE_FIELDS), "node")
_UPDATE_JOB = (
    "UPDATE jobs SET " + ", ".join(f'"{name}" = %s' for name in _UPDATED) + f" WHERE id = %s AND {_OWNED} RETURNING 1"
)
# The oldest offered jobs of the targets a node can serve, claimed for it.
# SKIP LOCKED: two nodes claiming at once take different rows, neither
# waits.  MATERIALIZED: the pick runs once (as "id IN (subquery)", the
# planner may run it again per row, and LIMIT no longer bounds the claim).
_CLAIM = (
    "WITH picked AS MATERIALIZED ("
    "SELECT id FROM jobs WHERE status = 'queued' AND node IS NULL AND target = ANY(%s::text[]) "
    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
    'UPDATE jobs SET "node" = %s FROM picked WHERE jobs.id = picked.id '
    f"RETURNING {', '.join(f'jobs.{column}' for column in COLUMNS.split(', '))}"
)
# At most this many targets named in one "jobs" notification (its payload is bounded).
_NOTIFIED_TARGETS = 50
# Job ids named in one "jobs" notification of ended jobs (each at most 20 bytes).
_NOTIFIED_ENDS = 300
# Job ids in each list of a "feed" notification (two lists: under PostgreSQL's
# 8000 bytes); a batch that changed more says "more" (its receivers reload).
_FEED_IDS = 150
# Output chunks in one read of the live feed's relay (scheduler/feed_relay.py);
# a read cut there says so, and the relay reads on.
_RELAYED_CHUNKS = 2000
# Active jobs of other nodes in one reload of the relay.
_RELAYED_ACTIVE = 1000


class _Offered:
    """The mark (``OFFERED``) ending a put's row that offers its job to the cluster."""

    def __repr__(self) -> str:
        return "OFFERED"


#: Ends the row of a put whose job is offered: stored with ``node`` NULL, and
#: the other nodes notified ("jobs") in the same transaction.
OFFERED = _Offered()

_INSERT_REVISION = "INSERT INTO task_revisions ({}) VALUES ({}) RETURNING id".format(
    ", ".join(f'"{name}"' for name in REVISION_FIELDS[1:]), ", ".join(["%s"] * (len(REVISION_FIELDS) - 1))
)
_TRIM_REVISIONS = (
    "DELETE FROM task_revisions WHERE task_id = %(task)s AND id <= "
    "(SELECT id FROM task_revisions WHERE task_id = %(task)s ORDER BY id DESC LIMIT 1 OFFSET %(keep)s)"
)
_INSERT_AUDIT = "INSERT INTO audit_log ({}) VALUES ({}) RETURNING id".format(
    ", ".join(f'"{name}"' for name in AUDIT_FIELDS[1:]), ", ".join(["%s"] * (len(AUDIT_FIELDS) - 1))
)
# A new row: due at once, never tried.
_INSERT_ALERT = (
    'INSERT INTO alert_outbox ("key", "channel", "event", "task_id", "job_id", "created_at", "body", '
    '"state", "attempts", "next_attempt_at") VALUES (%s, %s, %s, %s, %s, %s, %s, \'pending\', 0, %s) '
    'ON CONFLICT ("key", "channel") DO NOTHING RETURNING 1'
)


def redact(url: str) -> str:
    """The database URL without its password: the only form of it that is logged or shown."""
    if "://" not in url:
        # A key=value conninfo string.
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            return "(an unreadable database address)"
        return " ".join(f"{key}={value}" for key, value in params.items() if key != "password")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unreadable database address)"
    user = f"{parts.username}@" if parts.username else ""
    if ":" in host:
        host = f"[{host}]"
    # The query may carry a password too (?password=...): dropped whole.
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


def _scrub(message: str, url: str) -> str:
    """*message* without the URL's password, should the driver ever echo it."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        message = message.replace(str(password), "***")
    return message.replace(url, redact(url))


# A connection to a database that stops answering (a cut network, a dead
# host) fails within seconds instead of after TCP's own timeouts (hours):
# the lease's step must come back to be tried again.
_LIVENESS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,
}


def connect(url: str, *, application_name: str) -> psycopg.Connection[Any]:
    """An autocommit connection to *url*; JobStoreError (redacted) if there is none to be had."""
    try:
        return psycopg.connect(url, autocommit=True, application_name=application_name, **_LIVENESS)
    except psycopg.Error as error:
        raise JobStoreError(f"{redact(url)}: cannot connect: {_scrub(str(error).strip(), url)}") from None


@contextmanager
def _pipelined_transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction whose statements, BEGIN and COMMIT included, go in one pipeline:
    one round trip (the sync at its end) unless a statement's result is read within.

    ``conn.transaction()`` in a pipeline syncs twice more (after the last
    statement, and after the commit).  On an error, the server has skipped
    the rest of the pipeline, the commit too: the transaction is rolled back.
    """
    try:
        with conn.pipeline():
            conn.execute(b"BEGIN")
            yield
            conn.execute(b"COMMIT")
    except BaseException:
        if not (conn.closed or conn.broken) and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute(b"ROLLBACK")
        raise


# An output chunk's insert, its job's tally, and the chunk as counted.
_Pending = tuple["psycopg.Cursor[Any]", Tally, FittedChunk]


class PostgresDatabase:
    """The blocking PostgreSQL work of the job history (a ``Database``).

    One connection, used by the history's thread and, for the start-up
    reads and ``fired``, by the reactor thread: the lock keeps the two apart.
    """

    def __init__(
        self,
        url: str,
        *,
        output_cap: int,
        keep_per_task: int,
        keep_seconds: float,
        keep_revisions: int = REVISIONS_PER_TASK,
        outbox_limit: int = 10_000,
        keep_audit_seconds: float = 90 * 86400,
        connect: Callable[[str], psycopg.Connection[Any]] | None = None,
    ) -> None:
        self.url = url
        self.name = redact(url)
        self.output_cap = output_cap
        self.keep_per_task = keep_per_task
        self.keep_seconds = keep_seconds
        self.keep_revisions = keep_revisions
        self.outbox_limit = outbox_limit
        self.keep_audit_seconds = keep_audit_seconds
        # Named with the node once the service has set it, so an operator
        # (or the chaos test) can tell each node's sessions in pg_stat_activity.
        self._connect = connect or (
            lambda url: globals()["connect"](url, application_name=f"scheduler-history {self.node or ''}".strip()[:63])
        )
        # With the leader lease (the service sets it): this node's name and
        # the epoch it holds now (None: it does not lead).  Every fired job's
        # first record is then fenced: written only if the lease row still
        # has that epoch, in the transaction that checks it.
        self.fence: Callable[[], tuple[str, int | None]] | None = None
        # Fired jobs' records refused by the fence (read by the metrics).
        self.fenced = 0
        # Records refused by the ownership fence: jobs another node took over.
        self.disowned = 0
        # This node's name (the service sets it with --db): every record it
        # writes names it as the node that manages the job (column "node").
        self.node: str | None = None
        # The schema the tables are in, which names the notification channels.
        self._schema: str | None = None
        self.connection: psycopg.Connection[Any] | None = None
        self._opened = False
        self.lock = threading.Lock()
        self._tallies: dict[int, Tally] = {}
        # An id the sequence is known to be at or past (reserved from it, or
        # set): a batch whose ids are all at most this needs no setval.  The
        # sequence never goes back, so a stale value only costs a statement.
        self._sequence_past = 0

    # -- the connection ----------------------------------------------------------

    def open(self) -> None:
        conn = self._connect(self.url)
        try:
            create_or_check(conn, self.name)
        except BaseException:
            conn.close()
            raise
        self.connection = conn
        self._opened = True

    def _conn(self) -> psycopg.Connection[Any]:
        """The open connection, connected again if the last one was lost."""
        if not self._opened:
            raise JobStoreClosed(f"{self.name}: job store is not open")
        conn = self.connection
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
                log.warn("{name}: connecting to the job database again", name=self.name)
            self.connection = None
            # What the tallies counted may not have been committed (nor,
            # after a restore, what was known of the sequence).
            self._tallies.clear()
            self._sequence_past = 0
            conn = self.connection = self._connect(self.url)
        return conn

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection under the lock; a lost connection becomes a JobStoreError saying so."""
        with self.lock:
            conn = self._conn()
            try:
                yield conn
            except psycopg.OperationalError as error:
                if conn.broken or conn.closed:
                    self._tallies.clear()
                    raise JobStoreError(
                        f"{self.name}: lost the connection to the job database ({_scrub(str(error).strip(), self.url)}); "
                        "this work was not done, the next is tried on a new connection"
                    ) from error
                raise

    def _rows(self, query: str, params: Sequence[object] | dict[str, object] = ()) -> list[Any]:
        with self._session() as conn:
            return conn.execute(query.encode(), params).fetchall()  # type: ignore[arg-type]

    # -- start-up reads -------------------------------------------------------

    def load_active(self) -> list[tuple[Job, int]]:
        rows = self._rows(
            f"SELECT {COLUMNS}, (SELECT COALESCE(MAX(seq), 0) FROM output WHERE job_id = jobs.id) "
            f"FROM jobs WHERE status IN ({ACTIVE_SQL}) ORDER BY id"
        )
        return [(row_job(row[:-1]), int(row[-1])) for row in rows]

    def recent_keys(self, since: float) -> set[str]:
        rows = self._rows('SELECT "key" FROM jobs WHERE scheduled_at >= %s AND "key" IS NOT NULL', (since,))
        return {row[0] for row in rows}

    def fired(self, task_id: int, scheduled: float) -> bool:
        return bool(self._rows('SELECT 1 FROM jobs WHERE "key" = %s', (fire_key(task_id, scheduled),)))

    def last_scheduled(self, until: float | None = None) -> dict[int, float]:
        rows = self._rows(
            "SELECT task_id, MAX(scheduled_at) FROM jobs "
            "WHERE task_id IS NOT NULL AND scheduled_at IS NOT NULL AND scheduled_at <= %s GROUP BY task_id",
            (until if until is not None else float("inf"),),
        )
        return {int(task_id): float(when) for task_id, when in rows}

    def unretried(self) -> list[Job]:
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

        for task_id, created in self._rows(
            "SELECT task_id, created_at FROM jobs WHERE id IN "
            "(SELECT MAX(id) FROM jobs WHERE task_id IS NOT NULL GROUP BY task_id)"
        ):
            of(int(task_id)).last_job = float(created)
        newest_ok = (
            "SELECT task_id, MAX(id) AS id FROM jobs WHERE task_id IS NOT NULL AND status = 'succeeded' GROUP BY task_id"
        )
        for task_id, finished in self._rows(
            "SELECT j.task_id, COALESCE(j.finished_at, j.created_at) FROM jobs AS j "
            f"WHERE j.id IN (SELECT id FROM ({newest_ok}) AS ok)"
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
        rows = self._rows(
            "SELECT MAX(GREATEST(created_at, COALESCE(started_at, 0), COALESCE(finished_at, 0))) "
            "FROM (SELECT created_at, started_at, finished_at FROM jobs ORDER BY id DESC LIMIT 1000) AS newest"
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def max_task_id(self) -> int:
        rows = self._rows(
            "SELECT GREATEST(COALESCE((SELECT MAX(task_id) FROM jobs), 0), "
            "COALESCE((SELECT MAX(task_id) FROM task_revisions), 0))"
        )
        return int(rows[0][0])

    def reserve_ids(self, count: int) -> list[int]:
        """*count* new job ids from the sequence, which no other node can be given."""
        rows = self._rows("SELECT nextval('jobs_id_seq') FROM generate_series(1, %s)", (count,))
        ids = sorted(int(row[0]) for row in rows)
        if ids:
            self._sequence_past = max(self._sequence_past, ids[-1])
        return ids

    def max_job_id(self) -> int:
        rows = self._rows(
            "SELECT GREATEST(COALESCE((SELECT MAX(id) FROM jobs), 0), "
            "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM jobs_id_seq))"
        )
        return int(rows[0][0])

    # -- the cluster's jobs (scheduler/job_claims.py) --------------------------

    def managed_active(self) -> set[int]:
        """The active jobs this node manages (at start-up: the ones it takes up again)."""
        return {int(row[0]) for row in self._rows(f"SELECT id FROM jobs WHERE status IN ({ACTIVE_SQL}) AND node = %s", (self.node,))}

    def claim(self, targets: Sequence[str], limit: int) -> list[Job]:
        """Take for this node up to *limit* offered jobs of *targets*, oldest first."""
        rows = self._rows(_CLAIM, (list(targets), max(0, limit), self.node))
        return sorted((row_job(row) for row in rows), key=lambda job: job.id)

    def cancel_elsewhere(self, job_id: int, at: float, reason: str) -> tuple[str, str | None]:
        """Cancel a job this node does not manage: what was done, and the node asked.

        ``("cancelled", None)``: it was offered (queued, claimed by nobody),
        and is cancelled here.  ``("asked", node)``: *node* manages it; its
        ``cancel_requested_at`` is set and *node* notified ("cancels").
        ``("finished", None)``: it is no longer active (or does not exist).
        """
        with self._session() as conn, conn.transaction():
            ended = conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = %s, reason = %s, version = version + 1 "
                "WHERE id = %s AND status = 'queued' AND node IS NULL RETURNING 1",
                (at, reason, job_id),
            ).fetchone()
            if ended is not None:
                # Its offering node counts it as its task's run going on.
                self._notify(conn, "jobs", ended=[job_id])
                if self.node is not None:
                    self._notify_feed(conn, {job_id}, set())
                return "cancelled", None
            asked = conn.execute(
                "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, %s) "
                f"WHERE id = %s AND status IN ({ACTIVE_SQL}) AND node IS NOT NULL RETURNING node",
                (at, job_id),
            ).fetchone()
            if asked is None:
                return "finished", None
            self._notify(conn, "cancels", job=job_id, manager=asked[0])
            return "asked", str(asked[0])

    def cancels_owed(self) -> list[int]:
        """The active jobs this node manages whose cancel was asked for (a resync's look)."""
        rows = self._rows(
            f"SELECT id FROM jobs WHERE node = %s AND status IN ({ACTIVE_SQL}) AND cancel_requested_at IS NOT NULL "
            "ORDER BY id",
            (self.node,),
        )
        return [int(row[0]) for row in rows]

    def offered_count(self) -> int:
        """How many offered jobs wait for a node to claim them."""
        return int(self._rows("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND node IS NULL")[0][0])

    def still_active(self, job_ids: Sequence[int]) -> list[int]:
        rows = self._rows(f"SELECT id FROM jobs WHERE id = ANY(%s::bigint[]) AND status IN ({ACTIVE_SQL})", (list(job_ids),))
        return [int(row[0]) for row in rows]

    def notify_ended(self, job_ids: Sequence[int]) -> None:
        """Tell the other nodes these jobs ended ("jobs", ``ended``), in payloads of a bounded size."""
        with self._session() as conn, conn.transaction():
            for start in range(0, len(job_ids), _NOTIFIED_ENDS):
                self._notify(conn, "jobs", ended=list(job_ids[start : start + _NOTIFIED_ENDS]))

    def _notify(self, conn: psycopg.Connection[Any], topic: str, **fields: Any) -> None:
        # Imported here: cluster_events imports this module.
        from scheduler.cluster_events import notify_sql, schema_of

        if self._schema is None:
            self._schema = schema_of(conn)
        conn.execute(*notify_sql(self._schema, topic, self.node or "", **fields))

    def _notify_feed(self, conn: psycopg.Connection[Any], changed: set[int], given_output: set[int]) -> None:
        """Tell the other nodes' live feeds (scheduler/feed_relay.py) which jobs this
        transaction changed and gave output: ids only, each list capped (``more``)."""
        fields: dict[str, Any] = {}
        if changed:
            fields["jobs"] = sorted(changed)[:_FEED_IDS]
        if given_output:
            fields["output"] = sorted(given_output)[:_FEED_IDS]
        if len(changed) > _FEED_IDS or len(given_output) > _FEED_IDS:
            fields["more"] = True
        self._notify(conn, "feed", **fields)

    # -- the live feed's relay (scheduler/feed_relay.py) -----------------------

    def relayed(
        self, job_ids: Sequence[int], after: dict[int, int], others_active: bool
    ) -> tuple[list[Job], list[tuple[int, int, str, str]], bool]:
        """The jobs of *job_ids* (and, *others_active*, the newest active ones)
        that this node does not manage; the chunks of each job of *after*
        stored after its seq (not of jobs this node manages: its own feed has
        those), in seq order, at most _RELAYED_CHUNKS; whether that cut them."""
        jobs: list[Job] = []
        chunks: list[tuple[int, int, str, str]] = []
        with self._session() as conn:
            if job_ids:
                rows = conn.execute(
                    f'{SELECT_JOB} WHERE id = ANY(%s::bigint[]) AND "node" IS DISTINCT FROM %s ORDER BY id'.encode(),
                    (list(job_ids), self.node),
                ).fetchall()
                jobs.extend(row_job(row) for row in rows)
            if others_active:
                rows = conn.execute(
                    f'{SELECT_JOB} WHERE status IN ({ACTIVE_SQL}) AND "node" IS DISTINCT FROM %s '
                    "ORDER BY id DESC LIMIT %s".encode(),
                    (self.node, _RELAYED_ACTIVE),
                ).fetchall()
                known = {job.id for job in jobs}
                jobs.extend(job for job in (row_job(row) for row in reversed(rows)) if job.id not in known)
            if after:
                asked = sorted(after)
                rows = conn.execute(
                    "SELECT o.job_id, o.seq, o.stream, o.data FROM output AS o "
                    "JOIN unnest(%s::bigint[], %s::bigint[]) AS w(job_id, after) ON o.job_id = w.job_id AND o.seq > w.after "
                    'WHERE NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.id = o.job_id AND j."node" = %s) '
                    "ORDER BY o.job_id, o.seq LIMIT %s",
                    (asked, [after[job_id] for job_id in asked], self.node, _RELAYED_CHUNKS),
                ).fetchall()
                chunks = [
                    (int(job_id), int(seq), str(stream), bytes(data).decode("utf-8")) for job_id, seq, stream, data in rows
                ]
        return jobs, chunks, len(chunks) >= _RELAYED_CHUNKS

    def output_with_seq(self, job_id: int) -> tuple[str, int] | None:
        """``output`` and the last seq stored in it (0: none), read together."""
        with self._session() as conn:
            row = conn.execute("SELECT output_dropped FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if row is None:
                return None
            chunks = conn.execute("SELECT seq, data FROM output WHERE job_id = %s ORDER BY seq", (job_id,)).fetchall()
        text = with_marker("".join(bytes(data).decode("utf-8") for _, data in chunks), row[0])
        return text, int(chunks[-1][0]) if chunks else 0

    # -- across nodes: takeover and the leader's sweep -------------------------

    def take_over(self, worker: str, job_ids: Sequence[int]) -> list[tuple[Job, int, str | None]]:
        """Make this node the manager of those of *job_ids* still running on *worker*.

        For a worker's hello: it reports jobs that another node managed
        (that node is dead, or cut off from the worker).  Returns each job
        taken, with the last output seq stored and the node that managed it
        until then (None if this one did; "" if none did).  From the commit
        on, that node's writes of them are refused (``Disowned``).
        """
        if not job_ids:
            return []
        rows = self._rows(
            'UPDATE jobs SET "node" = %s FROM (SELECT id, "node" AS was FROM jobs WHERE id = ANY(%s::bigint[]) '
            'AND "worker" = %s AND "status" = %s FOR UPDATE) AS before WHERE jobs.id = before.id '
            f"RETURNING {_QUALIFIED}, (SELECT COALESCE(MAX(seq), 0) FROM output WHERE job_id = jobs.id), "
            "NULLIF(COALESCE(before.was, ''), %s)",
            (self.node, list(job_ids), worker, JobStatus.RUNNING.value, self.node),
        )
        return [(row_job(row[:-2]), int(row[-2]), row[-1]) for row in rows]

    def silent_nodes(self, lost_after: float) -> list[str]:
        """Nodes (but this one) named by an active job whose heartbeat is older than
        *lost_after* seconds by the database's clock, or missing."""
        rows = self._rows(
            f'SELECT DISTINCT j."node" FROM jobs AS j WHERE j."status" IN ({ACTIVE_SQL}) AND j."node" IS NOT NULL '
            'AND j."node" IS DISTINCT FROM %s AND NOT EXISTS (SELECT 1 FROM scheduler_nodes AS n '
            "WHERE n.name = j.\"node\" AND n.last_seen >= now() - make_interval(secs => %s)) ORDER BY 1",
            (self.node, lost_after),
        )
        return [str(row[0]) for row in rows]

    def release(self, node: str, now: float, reason: str) -> tuple[list[Job], int]:
        """The silent *node*'s jobs: running ones end lost (at *now*, for *reason*),
        queued ones go back to nobody's (node NULL) and the nodes are told.

        Both only where the row still names *node* (a job taken over in the
        meantime is not touched).  The lost ones are this node's from then
        on, so a node that was only cut off cannot write them again.
        Returns the jobs ended lost and how many queued ones were offered.
        """
        from scheduler.cluster_events import notify_sql, schema_of

        with self._session() as conn:
            with conn.transaction():
                lost = conn.execute(
                    f'UPDATE jobs SET "status" = %s, "finished_at" = %s, "reason" = %s, "node" = %s, '
                    f'"version" = "version" + 1 WHERE "node" = %s AND "status" = %s RETURNING {COLUMNS}'.encode(),
                    (JobStatus.LOST.value, now, reason, self.node, node, JobStatus.RUNNING.value),
                ).fetchall()
                offered = conn.execute(
                    'UPDATE jobs SET "node" = NULL WHERE "node" = %s AND "status" = %s RETURNING id',
                    (node, JobStatus.QUEUED.value),
                ).fetchall()
                if lost and self.node is not None:
                    # The other nodes' live feeds show them lost too.
                    self._notify_feed(conn, {int(row[0]) for row in lost}, set())
                if offered:
                    if self._schema is None:
                        self._schema = schema_of(conn)
                    statement, params = notify_sql(self._schema, "jobs", self.node or "", offered=len(offered))
                    conn.execute(statement.encode(), params)
        return [row_job(row) for row in lost], len(offered)

    def unretried_since(self, since: float) -> list[Job]:
        """``unretried``, for the jobs that ended at or after *since* only."""
        rows = self._rows(
            f"{SELECT_JOB} WHERE finished_at >= %s AND status IN ({_RETRIED_SQL}) AND task_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM jobs AS later WHERE later.task_id = jobs.task_id AND later.id > jobs.id) "
            "ORDER BY id",
            (since,),
        )
        return [row_job(row) for row in rows]

    # -- writes, on the history's thread --------------------------------------

    def row(self, job: Job) -> tuple[object, ...]:
        # A keyed job (a fire, a caught-up run, a retry) is the leader's to
        # make: its row carries the lease it was made under.
        if self.fence is not None and job.key is not None:
            return (*job_row(job), self.fence())
        return job_row(job)

    def revision_row(self, revision: Revision) -> tuple[object, ...]:
        return revision_row(revision)

    def alert_row(self, alert: Alert) -> tuple[object, ...]:
        return alert_row(alert)

    def audit_row(self, entry: AuditEntry) -> tuple[object, ...]:
        return audit_row(entry)

    def write_batch(self, writes: Sequence[Write]) -> list[Outcome]:
        with self._session() as conn:
            try:
                try:
                    # Pipelined, without a savepoint per record: statements
                    # whose results are not needed go in one round trip.
                    outcomes = self._write(conn, writes, careful=False)
                except _BAD_RECORD:
                    # A record refused for its own content undid the batch:
                    # again, each record that may be refused alone in a savepoint.
                    self._tallies.clear()
                    outcomes = self._write(conn, writes, careful=True)
            except BaseException:
                # The rollback undoes appends that the tallies have counted.
                self._tallies.clear()
                raise
        self.fenced += sum(1 for outcome in outcomes if isinstance(outcome, Fenced))
        self.disowned += sum(1 for outcome in outcomes if isinstance(outcome, Disowned))
        return outcomes

    def _write(self, conn: psycopg.Connection[Any], writes: Sequence[Write], *, careful: bool) -> list[Outcome]:
        outcomes: list[Outcome] = []
        highest = 0
        # The lease row, read once per batch that needs it (FOR SHARE).
        lease: list[tuple[str | None, int]] = []
        # Chunks counted before their insert's result came back.
        pending: list[_Pending] = []
        # The targets of the jobs this batch offers to the cluster (OFFERED).
        offered: set[str] = set()
        # Records sent one by one (careful), their outcomes known at the commit.
        upserts: list[tuple[int, Put, psycopg.Cursor[Any] | Exception]] = []
        # For the other nodes' live feeds: jobs written, jobs given output.
        changed: set[int] = set()
        given_output: set[int] = set()
        # Records not yet sent, to go in one upsert: by job, the row of its
        # last put (an earlier one's is replaced whole, as the group commit
        # does: nothing between them wrote the job's row) and every put's
        # index.  And the upserts sent, whose ids written are read at the commit.
        run: dict[int, tuple[tuple[object, ...], list[tuple[int, Put]]]] = {}
        runs: list[tuple[list[tuple[int, Put]], psycopg.Cursor[Any]]] = []

        def send_run() -> None:
            if run:
                rows = [row for row, _ in run.values()]
                puts = [each for _, puts in run.values() for each in puts]
                if len(rows) in _UPSERT_FEW:
                    cursor = conn.execute(_UPSERT_FEW[len(rows)], [*(value for row in rows for value in row), self.node])
                else:
                    cursor = conn.execute(_UPSERT_MANY, [*_upsert_columns(rows), self.node])
                runs.append((puts, cursor))
                run.clear()

        with conn.transaction() if careful else _pipelined_transaction(conn):
            self._load_tallies(conn, {write.job_id for write in writes if isinstance(write, Chunk)})
            for write in writes:
                if isinstance(write, Chunk):
                    # A chunk that changes its job's row (output dropped)
                    # goes after the records before it.
                    if self._append(conn, write, pending, send_run):
                        given_output.add(write.job_id)
                elif isinstance(write, Put):
                    node = self.node
                    if write.row and write.row[-1] is OFFERED:
                        # Managed by no node: any node's claim may take it.
                        write, node = Put(write.job_id, write.final, write.row[:-1]), None
                    if len(write.row) > len(FIELDS):
                        send_run()
                        outcome = self._fenced_put(conn, write, lease, careful, node)
                    else:
                        # Stored, or refused by the ownership fence: the ids
                        # written say which, known once the commit is (a
                        # fetch here would wait a round trip per record).
                        # Its id counts for the sequence either way: a
                        # refused record's row is stored already.
                        if careful:
                            done = self._upsert(conn, write, careful, node)
                            upserts.append((len(outcomes), write, done))
                        else:
                            # One upsert for consecutive records.
                            if len(run) >= _UPSERT_ROWS:
                                send_run()
                            puts = run.pop(write.job_id, ((), []))[1]
                            puts.append((len(outcomes), write))
                            run[write.job_id] = ((*write.row, self._dropped(write.job_id), node), puts)
                            done = None
                        if not isinstance(done, Exception):
                            changed.add(write.job_id)
                            highest = max(highest, write.job_id)
                            if node is None and self.node is not None:
                                offered.add(str(write.row[FIELDS.index("target")]))
                        outcomes.append(None)
                        continue
                    self._stored(write, outcome)
                    if outcome is None:
                        changed.add(write.job_id)
                        highest = max(highest, write.job_id)
                        if node is None and self.node is not None:
                            offered.add(str(write.row[FIELDS.index("target")]))
                    outcomes.append(outcome)
                elif isinstance(write, NewRevision):
                    outcomes.append(self._add_revision(conn, write, careful))
                elif isinstance(write, NewAuditEntry):
                    outcome = self._refusable(conn, _INSERT_AUDIT, write.row, returning=True, careful=careful)
                    if isinstance(outcome, Exception):
                        log.warn("job store refused an audit entry: {error}", error=outcome)
                    outcomes.append(outcome)
                elif isinstance(write, NewAlerts):
                    outcomes.append(self._add_alerts(conn, write))
                elif isinstance(write, AlertAttempt):
                    self._record_attempt(conn, write)
                    outcomes.append(None)
                else:
                    outcomes.append(self._change_channel(conn, write))
            send_run()
            if offered:
                # In the offers' transaction: heard if, and only if, they commit.
                self._notify(conn, "jobs", targets=sorted(offered)[:_NOTIFIED_TARGETS])
            if (changed or given_output) and self.node is not None:
                self._notify_feed(conn, changed, given_output)
            if highest > self._sequence_past:
                # Ids not from the sequence (the embedded book's, a test's).
                # In the transaction (setval itself is not undone by a
                # rollback: a batch that fails after it leaves a gap in
                # the ids, never a reused one).
                conn.execute(
                    "SELECT setval('jobs_id_seq', %s) WHERE %s > "
                    "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM jobs_id_seq)",
                    (highest, highest),
                )
                self._sequence_past = highest
        # Committed: every result is in (pipelined, since the commit's sync).
        self._settle(pending)
        for index, put, done in upserts:
            outcome = done if isinstance(done, Exception) else None if done.rowcount else self._disowned(put.job_id)
            self._stored(put, outcome)
            outcomes[index] = outcome
        for puts, cursor in runs:
            written = {int(row[0]) for row in cursor.fetchall()}
            for index, put in puts:
                outcome = None if put.job_id in written else self._disowned(put.job_id)
                self._stored(put, outcome)
                outcomes[index] = outcome
        return outcomes

    def _upsert(
        self, conn: psycopg.Connection[Any], put: Put, careful: bool, node_column: str | None
    ) -> psycopg.Cursor[Any] | Exception:
        """Send one record's upsert, naming *node_column* as its manager (None: an
        offer); *careful*, in a savepoint (its error, if its content is refused).
        Written only where the row names this node or none (the ownership fence)."""
        params = (*put.row, self._dropped(put.job_id), node_column, self.node)
        if not careful:
            return conn.execute(_UPSERT.encode(), params)  # type: ignore[arg-type]
        try:
            with conn.transaction():
                return conn.execute(_UPSERT.encode(), params)  # type: ignore[arg-type]
        except _BAD_RECORD as error:
            return error

    def _stored(self, put: Put, outcome: Outcome) -> None:
        if outcome is None:
            if put.final:
                self._tallies.pop(put.job_id, None)
        elif isinstance(outcome, Disowned):
            # Expected after a takeover: the dispatcher lets the job go.
            log.info("{error}", error=str(outcome))
        else:
            log.warn("job store refused job {job_id}: {error}", job_id=put.job_id, error=outcome)

    @staticmethod
    def _disowned(job_id: int) -> Disowned:
        return Disowned(f"job {job_id} is managed by another node now: this node's record of it was not written")

    def _fenced_put(
        self,
        conn: psycopg.Connection[Any],
        put: Put,
        lease: list[tuple[str | None, int]],
        careful: bool,
        node_column: str | None,
    ) -> Outcome:
        """A keyed job's record: an update if it is stored, else an insert fenced by the lease.

        The insert is made only if the lease row still names this node in the
        epoch the job was made under.  The row is read ``FOR SHARE`` and kept
        locked until the commit, so a takeover (an UPDATE of that row) waits
        for this batch: nothing made under an old epoch commits after a new
        one has begun.  A fire already recorded by another job (its key taken)
        is refused as taken, never stored twice.
        """
        values = put.row[:-1]
        node, epoch = cast(tuple[str, "int | None"], put.row[-1])
        updated = self._refusable(
            conn,
            _UPDATE_JOB,
            [*(values[FIELDS.index(name)] for name in _UPDATED[:-1]), node_column, put.job_id, self.node],
            counted=True,
            careful=careful,
        )
        if updated != 0:
            return None if isinstance(updated, int) else updated
        if not lease:
            row = conn.execute("SELECT node, epoch FROM scheduler_lease WHERE id = 1 FOR SHARE").fetchone()
            lease.append((row[0], int(row[1])) if row is not None else (None, 0))
        holder, current = lease[0]
        if epoch is None or holder != node or current != epoch:
            return Fenced(
                f"{self.name}: job {put.job_id} ({values[FIELDS.index('key')]}) not recorded: made under "
                f"{'no lease' if epoch is None else f'epoch {epoch}'}, and the lease is {holder or 'nobody'}'s "
                f"in epoch {current}"
            )
        inserted = self._refusable(
            conn, _INSERT_FIRE, (*values, self._dropped(put.job_id), node_column), counted=True, careful=careful
        )
        if inserted == 0:
            if conn.execute("SELECT 1 FROM jobs WHERE id = %s", (put.job_id,)).fetchone() is not None:
                # Stored, but not this node's (the update above was fenced).
                return self._disowned(put.job_id)
            return FireTaken(f"{self.name}: job {put.job_id}: its fire {values[FIELDS.index('key')]} is already recorded")
        return None if isinstance(inserted, int) else inserted

    def _dropped(self, job_id: int) -> int:
        tally = self._tallies.get(job_id)
        return tally.dropped if tally is not None else 0

    def _refusable(
        self,
        conn: psycopg.Connection[Any],
        query: str,
        params: Sequence[object],
        *,
        returning: bool = False,
        counted: bool = False,
        careful: bool = True,
    ) -> Outcome:
        """Run one record's statement; *careful*, in a savepoint, so that its own bad
        content refuses only it (else the error undoes the batch).

        Returns the error, or the id it returns (*returning*), or the rows it
        touched (*counted*), else None.
        """
        if not careful:
            return self._execute(conn, query, params, returning, counted)
        try:
            with conn.transaction():
                return self._execute(conn, query, params, returning, counted)
        except _BAD_RECORD as error:
            return error

    @staticmethod
    def _execute(
        conn: psycopg.Connection[Any], query: str, params: Sequence[object], returning: bool, counted: bool
    ) -> Outcome:
        cursor = conn.execute(query.encode(), params)  # type: ignore[arg-type]
        if returning:
            row = cursor.fetchone()
            assert row is not None
            return int(row[0])
        if counted:
            # Rows, not rowcount: in a pipeline, only a fetch waits for the result.
            return len(cursor.fetchall())
        return None

    def _add_revision(self, conn: psycopg.Connection[Any], revision: NewRevision, careful: bool) -> Outcome:
        new_id = self._refusable(conn, _INSERT_REVISION, revision.row, returning=True, careful=careful)
        if isinstance(new_id, Exception):
            log.warn("job store refused a revision of task {task_id}: {error}", task_id=revision.task_id, error=new_id)
            return new_id
        conn.execute(_TRIM_REVISIONS.encode(), {"task": revision.task_id, "keep": self.keep_revisions})
        return new_id

    def _add_alerts(self, conn: psycopg.Connection[Any], alerts: NewAlerts) -> AlertsQueued:
        row = conn.execute("SELECT COUNT(*) FROM alert_outbox WHERE state = 'pending'").fetchone()
        pending = int(row[0]) if row is not None else 0
        added = refused = 0
        for values in alerts.rows:
            if pending >= self.outbox_limit:
                kept = conn.execute(
                    'SELECT 1 FROM alert_outbox WHERE "key" = %s AND "channel" = %s', (values[0], values[1])
                ).fetchone()
                refused += kept is None
                continue
            # next_attempt_at: due at once, at its creation time.
            if conn.execute(_INSERT_ALERT.encode(), (*values, values[5])).fetchone() is not None:  # type: ignore[arg-type]
                added += 1
                pending += 1
        return AlertsQueued(added, refused, pending)

    def _record_attempt(self, conn: psycopg.Connection[Any], attempt: AlertAttempt) -> None:
        conn.execute(
            "UPDATE alert_outbox SET state = %s, attempts = %s, next_attempt_at = %s, last_attempt_at = %s, "
            "reply = %s, sent_at = %s WHERE id = %s",
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

    def _change_channel(self, conn: psycopg.Connection[Any], change: ChannelChange) -> Exception | None:
        if change.config is None:
            conn.execute("DELETE FROM alert_channels WHERE name = %s", (change.name,))
            return None
        added = conn.execute(
            "INSERT INTO alert_channels (name, config) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING RETURNING 1",
            (change.name, change.config),
        ).fetchone()
        return None if added is not None else NameTaken(f"a channel named {change.name!r} exists")

    def _load_tallies(self, conn: psycopg.Connection[Any], job_ids: set[int]) -> None:
        """The tallies of the jobs a batch appends to, in one query rather than one per job."""
        missing = [job_id for job_id in job_ids if job_id not in self._tallies]
        if not missing:
            return
        rows = conn.execute(
            "SELECT asked, COALESCE((SELECT SUM(octet_length(data)) FROM output WHERE job_id = asked), 0), "
            "(SELECT MIN(seq) FROM output WHERE job_id = asked), "
            "COALESCE((SELECT output_dropped FROM jobs WHERE id = asked), 0) "
            "FROM unnest(%s::bigint[]) AS asked",
            (missing,),
        ).fetchall()
        for job_id, kept, lowest, dropped in rows:
            self._tallies[int(job_id)] = Tally.from_stored(int(kept), int(dropped), int(lowest) if lowest is not None else None)

    def _tally(self, conn: psycopg.Connection[Any], job_id: int) -> Tally:
        tally = self._tallies.get(job_id)
        if tally is None:
            found = conn.execute(
                "SELECT COALESCE(SUM(octet_length(data)), 0), MIN(seq), "
                "(SELECT output_dropped FROM jobs WHERE id = %s) FROM output WHERE job_id = %s",
                (job_id, job_id),
            ).fetchone()
            assert found is not None
            kept, lowest, dropped = found
            tally = self._tallies[job_id] = Tally.from_stored(
                int(kept), int(dropped or 0), int(lowest) if lowest is not None else None
            )
        return tally

    def _append(
        self, conn: psycopg.Connection[Any], chunk: Chunk, pending: list[_Pending], before_row: Callable[[], None]
    ) -> bool:
        """Insert *chunk*, counted in its job's tally (unless the tally refuses it:
        False); *before_row* is called before the job's row is written (its
        output dropped), to send what comes before."""
        tally = self._tally(conn, chunk.job_id)
        if tally.refuses(chunk.seq):
            return False
        fitted = fit_chunk(chunk.data, self.output_cap)
        cursor = conn.execute(
            "INSERT INTO output (job_id, seq, stream, data) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (chunk.job_id, chunk.seq, chunk.stream, fitted.data.encode("utf-8")),
        )
        if not fitted.cut and tally.kept + fitted.size <= self.output_cap:
            # The usual chunk: nothing to cut or trim, so its result (stored,
            # or a duplicate ignored) can wait for the pipeline's next sync.
            tally.count(fitted)
            pending.append((cursor, tally, fitted))
            return True
        self._settle(pending)
        if cursor.fetchone() is None:
            return False
        before = tally.dropped
        tally.count(fitted)
        if tally.kept > self.output_cap:
            self._trim(conn, chunk.job_id, tally)
        if tally.dropped != before:
            before_row()
            conn.execute("UPDATE jobs SET output_dropped = %s WHERE id = %s", (tally.dropped, chunk.job_id))
        return True

    @staticmethod
    def _settle(pending: list[_Pending]) -> None:
        """Uncount the chunks counted ahead of their result that turned out to be duplicates."""
        for cursor, tally, fitted in pending:
            if cursor.fetchone() is None:
                tally.kept -= fitted.size
        pending.clear()

    def _trim(self, conn: psycopg.Connection[Any], job_id: int, tally: Tally) -> None:
        sizes = conn.execute(
            "SELECT seq, octet_length(data) FROM output WHERE job_id = %s ORDER BY seq", (job_id,)
        ).fetchall()
        last = tally.trim(((int(seq), int(size)) for seq, size in sizes), self.output_cap)
        if last is not None:
            conn.execute("DELETE FROM output WHERE job_id = %s AND seq <= %s", (job_id, last))

    # -- reads, on the history's thread ---------------------------------------

    def get(self, job_id: int) -> Job | None:
        rows = self._rows(f"{SELECT_JOB} WHERE id = %s", (job_id,))
        return row_job(rows[0]) if rows else None

    def query(
        self,
        status: str | None,
        task_id: int | None,
        worker: str | None,
        limit: int,
        before_id: int | None,
    ) -> list[Job]:
        where, params = _filters(status, task_id, worker, before_id)
        params.append(max(0, limit))
        return [row_job(row) for row in self._rows(f"{SELECT_JOB}{where} ORDER BY id DESC LIMIT %s", params)]

    def count(self, status: str | None, task_id: int | None, worker: str | None) -> int:
        where, params = _filters(status, task_id, worker, None)
        return int(self._rows(f"SELECT COUNT(*) FROM jobs{where}", params)[0][0])

    def newest(self, task_ids: Sequence[int]) -> list[Job]:
        rows = self._rows(
            f"{SELECT_JOB} WHERE id IN (SELECT (SELECT MAX(id) FROM jobs WHERE task_id = asked) "
            "FROM unnest(%s::bigint[]) AS asked)",
            ([int(task_id) for task_id in task_ids],),
        )
        return [row_job(row) for row in rows]

    def output(self, job_id: int) -> str | None:
        with self._session() as conn:
            row = conn.execute("SELECT output_dropped FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if row is None:
                return None
            chunks = conn.execute("SELECT data FROM output WHERE job_id = %s ORDER BY seq", (job_id,)).fetchall()
        return with_marker("".join(bytes(data).decode("utf-8") for (data,) in chunks), row[0])

    def output_parts(self, job_id: int) -> tuple[int, list[tuple[str, str]]] | None:
        with self._session() as conn:
            row = conn.execute("SELECT output_dropped FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if row is None:
                return None
            chunks = conn.execute(
                "SELECT stream, data FROM output WHERE job_id = %s ORDER BY seq", (job_id,)
            ).fetchall()
        return int(row[0] or 0), merge_streams((stream, bytes(data).decode("utf-8")) for stream, data in chunks)

    def output_tail(self, job_id: int, max_bytes: int) -> str | None:
        with self._session() as conn:
            row = conn.execute("SELECT output_dropped FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if row is None:
                return None
            # Newest chunks first, only until enough: the running sum of the
            # newer chunks' sizes stops the read on the server.
            found = conn.execute(
                "SELECT data FROM (SELECT seq, data, SUM(octet_length(data)) OVER (ORDER BY seq DESC) "
                "- octet_length(data) AS newer FROM output WHERE job_id = %s) AS tail "
                "WHERE newer < %s ORDER BY seq",
                (job_id, max_bytes),
            ).fetchall()
        return "".join(bytes(data).decode("utf-8") for (data,) in found)

    def revisions(self, task_id: int, limit: int, before_id: int | None) -> list[Revision]:
        where = "task_id = %s" if before_id is None else "task_id = %s AND id < %s"
        params: list[object] = [task_id] if before_id is None else [task_id, before_id]
        params.append(max(0, limit))
        rows = self._rows(
            f"SELECT {REVISION_COLUMNS} FROM task_revisions WHERE {where} ORDER BY id DESC LIMIT %s", params
        )
        return [row_revision(row) for row in rows]

    def audit(self, query: AuditQuery) -> tuple[list[AuditEntry], int]:
        clauses: list[str] = []
        params: list[object] = []
        for clause, value in (
            ('"who" = %s', query.who),
            ('"action" = %s', query.action),
            ('"task_id" = %s', query.task_id),
            ('"at" >= %s', query.since),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        paged = where + (" AND " if clauses else " WHERE ") + '"id" < %s' if query.before_id is not None else where
        with self._session() as conn:
            rows = conn.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log{paged} ORDER BY id DESC LIMIT %s".encode(),
                [*params, *([query.before_id] if query.before_id is not None else []), max(0, query.limit)],
            ).fetchall()
            total = conn.execute(f"SELECT COUNT(*) FROM audit_log{where}".encode(), params).fetchone()
        assert total is not None
        return [row_audit(row) for row in rows], int(total[0])

    # -- the alert outbox ------------------------------------------------------

    def channels(self) -> dict[str, str]:
        return {name: config for name, config in self._rows("SELECT name, config FROM alert_channels")}

    def due_alerts(
        self, now: float, limit: int, skip_ids: Sequence[int], skip_channels: Sequence[str]
    ) -> tuple[list[Delivery], float | None, int]:
        where = "state = 'pending' AND id <> ALL(%s::bigint[]) AND channel <> ALL(%s::text[])"
        skips: list[object] = [list(skip_ids), list(skip_channels)]
        with self._session() as conn:
            rows = conn.execute(
                f"SELECT {ALERT_COLUMNS} FROM alert_outbox WHERE {where} AND next_attempt_at <= %s "
                "ORDER BY next_attempt_at, id LIMIT %s".encode(),
                (*skips, now, max(0, limit)),
            ).fetchall()
            next_due = conn.execute(f"SELECT MIN(next_attempt_at) FROM alert_outbox WHERE {where}".encode(), skips).fetchone()
            pending = conn.execute("SELECT COUNT(*) FROM alert_outbox WHERE state = 'pending'").fetchone()
        assert next_due is not None and pending is not None
        return [row_delivery(row) for row in rows], next_due[0], int(pending[0])

    def deliveries(
        self, task_id: int | None, state: str | None, channel: str | None, limit: int, before_id: int | None
    ) -> list[Delivery]:
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (("task_id", task_id), ("state", state), ("channel", channel)):
            if value is not None:
                clauses.append(f'"{column}" = %s')
                params.append(value)
        if before_id is not None:
            clauses.append('"id" < %s')
            params.append(before_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(max(0, limit))
        rows = self._rows(f"SELECT {ALERT_COLUMNS} FROM alert_outbox{where} ORDER BY id DESC LIMIT %s", params)
        return [row_delivery(row) for row in rows]

    # -- retention ------------------------------------------------------------

    def prune(self, now: float) -> int:
        with self._session() as conn:
            with conn.transaction():
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
                        ) AS ranked WHERE ended < %s OR newest > %s""".encode(),
                        (now - self.keep_seconds, self.keep_per_task),
                    ).fetchall()
                ]
                if doomed:
                    conn.execute("DELETE FROM output WHERE job_id = ANY(%s::bigint[])", (doomed,))
                    conn.execute("DELETE FROM jobs WHERE id = ANY(%s::bigint[])", (doomed,))
                    conn.execute(
                        "DELETE FROM alert_outbox WHERE state <> 'pending' AND job_id = ANY(%s::bigint[])", (doomed,)
                    )
                conn.execute(
                    "DELETE FROM alert_outbox WHERE state <> 'pending' AND created_at < %s "
                    "AND (job_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = alert_outbox.job_id))",
                    (now - self.keep_seconds,),
                )
                conn.execute("DELETE FROM audit_log WHERE at < %s", (now - self.keep_audit_seconds,))
            for job_id in doomed:
                self._tallies.pop(job_id, None)
        return len(doomed)

    def close(self) -> None:
        with self.lock:
            conn, self.connection = self.connection, None
            self._opened = False
            self._tallies.clear()
            if conn is not None:
                conn.close()


def _filters(
    status: str | None, task_id: int | None, worker: str | None, before_id: int | None
) -> tuple[str, list[object]]:
    """The WHERE clause (or "") and its parameters for the filters given."""
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (("status", status), ("task_id", task_id), ("worker", worker), ("id", before_id)):
        if value is not None:
            clauses.append(f'"{column}" {"<" if column == "id" else "="} %s')
            params.append(str(value) if column == "status" else value)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def create_or_check(conn: psycopg.Connection[Any], name: str) -> None:
    """Create the tables a new database lacks; refuse one newer than this code."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in _SCHEMA:
            conn.execute(statement.encode())
        row = conn.execute("SELECT value FROM job_history_meta WHERE name = 'schema_version'").fetchone()
        version = int(row[0]) if row is not None else 0
        if version > SCHEMA_VERSION:
            raise JobStoreError(
                f"{name}: job database schema version {version} is newer than this scheduler's ({SCHEMA_VERSION})"
            )
        # Version 0 is a new database, which _SCHEMA has just created whole.
        conn.execute(
            "INSERT INTO job_history_meta (name, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (SCHEMA_VERSION,),
        )


class IdBlocks:
    """New job ids, taken from the database in blocks (``JobBook.id_source``).

    Every node on one database takes its ids from the one sequence, so no
    two nodes make jobs with the same id.  A block costs one query, on the
    calling (reactor) thread, once per *size* jobs.
    """

    def __init__(self, reserve: Callable[[int], list[int]], size: int = 100) -> None:
        self._reserve = reserve
        self._size = size
        self._ids: list[int] = []

    def __call__(self) -> int:
        if not self._ids:
            self._ids = self._reserve(self._size)[::-1]
        return self._ids.pop()


# -- the leader lease --------------------------------------------------------------

_LEASE_SCHEMA = (
    # One row: who leads, in which epoch, until when (the database's clock),
    # and its session, whose end frees the lease at once.
    """CREATE TABLE IF NOT EXISTS scheduler_lease (
        "id" INTEGER PRIMARY KEY CHECK ("id" = 1),
        "node" TEXT,
        "epoch" BIGINT NOT NULL DEFAULT 0,
        "backend_pid" INTEGER,
        "expires_at" TIMESTAMPTZ,
        "since" TIMESTAMPTZ
    )""",
    "INSERT INTO scheduler_lease (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
    """CREATE TABLE IF NOT EXISTS scheduler_nodes (
        "name" TEXT PRIMARY KEY,
        "address" TEXT NOT NULL,
        "workers" INTEGER NOT NULL,
        "last_seen" TIMESTAMPTZ NOT NULL
    )""",
    # The names of a node's connected workers: target "all" on any node
    # means every worker of the cluster.  Added to tables made before it.
    """ALTER TABLE scheduler_nodes ADD COLUMN IF NOT EXISTS "worker_names" TEXT[] NOT NULL DEFAULT '{}'""",
)

# One statement per step, heartbeat included: renew if this node holds the
# epoch it believes it holds; take (epoch + 1) if nobody holds it, its lease
# has run out, or its holder's session is gone; else leave it.  Returns the
# row as it then is and the seconds the lease has left.
_LEASE_STEP = """
WITH beat AS (
    INSERT INTO scheduler_nodes (name, address, workers, worker_names, last_seen)
    VALUES (%(node)s, %(address)s, %(workers)s, %(names)s, now())
    ON CONFLICT (name) DO UPDATE SET
        address = excluded.address, workers = excluded.workers, worker_names = excluded.worker_names, last_seen = now()
),
cur AS (SELECT * FROM scheduler_lease WHERE id = 1 FOR UPDATE),
taken AS (
    UPDATE scheduler_lease AS l SET
        node = %(node)s,
        epoch = CASE WHEN cur.node = %(node)s AND cur.epoch = %(epoch)s THEN cur.epoch ELSE cur.epoch + 1 END,
        since = CASE WHEN cur.node = %(node)s AND cur.epoch = %(epoch)s THEN cur.since ELSE now() END,
        backend_pid = pg_backend_pid(),
        expires_at = now() + make_interval(secs => %(lease)s)
    FROM cur
    WHERE l.id = 1 AND (
        (cur.node = %(node)s AND cur.epoch = %(epoch)s)
        OR cur.node IS NULL
        OR cur.expires_at < now()
        OR NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = cur.backend_pid)
    )
    RETURNING l.node, l.epoch, l.expires_at, l.since
)
SELECT node, epoch, EXTRACT(EPOCH FROM expires_at - now())::float8, EXTRACT(EPOCH FROM since)::float8 FROM taken
UNION ALL
SELECT node, epoch, EXTRACT(EPOCH FROM expires_at - now())::float8, EXTRACT(EPOCH FROM since)::float8 FROM cur
WHERE NOT EXISTS (SELECT 1 FROM taken)
"""


class PostgresLeaseStore:
    """The lease row in PostgreSQL (a ``LeaseStore``): its own connection on its own thread.

    The connection's session is the one the lease row names: if this
    process dies, its session ends and another node takes the lease at once.
    """

    def __init__(
        self,
        url: str,
        reactor: Any,
        *,
        node: str,
        address: str,
        workers: Callable[[], int],
        worker_names: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self.url = url
        self.name = redact(url)
        self._reactor = reactor
        self._node = node
        self._address = address
        self._workers = workers
        self._worker_names = worker_names
        self._conn: psycopg.Connection[Any] | None = None
        self._pool: ThreadPool | None = None

    def open(self) -> None:
        """Connect and create the lease's tables (blocking, at start-up)."""
        conn = connect(self.url, application_name=f"scheduler-lease {self._node}"[:63])
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _LEASE_SCHEMA:
                    conn.execute(statement.encode())
        except psycopg.Error as error:
            conn.close()
            raise JobStoreError(f"{self.name}: cannot create the lease table: {error}") from None
        self._conn = conn

    def start(self) -> None:
        """Start the lease's thread (once the reactor is about to run: a start-up
        that fails after ``open`` must not leave a thread keeping the process alive)."""
        if self._pool is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="lease")
            self._pool.start()

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._conn = connect(self.url, application_name=f"scheduler-lease {self._node}"[:63])
        return conn

    def _run(self, work: Callable[[psycopg.Connection[Any]], Any]) -> Deferred[Any]:
        if self._pool is None:
            raise JobStoreClosed(f"{self.name}: the lease store is not started")

        def on_thread() -> Any:
            conn = self._connection()
            try:
                return work(conn)
            except psycopg.Error as error:
                raise JobStoreError(f"{self.name}: {_scrub(str(error).strip(), self.url)}") from None

        return deferToThreadPool(self._reactor, self._pool, on_thread)

    def attempt(self, node: str, epoch: int | None, lease: float) -> Deferred[LeaseState]:
        workers = self._workers()
        names = list(self._worker_names())

        def step(conn: psycopg.Connection[Any]) -> LeaseState:
            row = conn.execute(
                _LEASE_STEP.encode(),
                {"node": node, "address": self._address, "workers": workers, "names": names, "epoch": epoch, "lease": lease},
            ).fetchone()
            assert row is not None
            holder, held_epoch, left, since = row
            return LeaseState(holder, int(held_epoch), float(left) if left is not None else 0.0, since)

        return self._run(step)

    def peer_workers(self, gone_after: float) -> Deferred[list[str]]:
        """The workers connected to the other nodes heard from in the last *gone_after*
        seconds (the database's clock), by name: who target "all" means elsewhere."""

        def read(conn: psycopg.Connection[Any]) -> list[str]:
            rows = conn.execute(
                "SELECT DISTINCT unnest(worker_names) FROM scheduler_nodes "
                "WHERE name <> %s AND last_seen >= now() - make_interval(secs => %s) ORDER BY 1",
                (self._node, gone_after),
            ).fetchall()
            return [str(name) for (name,) in rows]

        return self._run(read)

    def nodes(self) -> Deferred[list[tuple[str, str, int, float]]]:
        """Every node's name, address, workers and last heartbeat (Unix time)."""

        def read(conn: psycopg.Connection[Any]) -> list[tuple[str, str, int, float]]:
            rows = conn.execute(
                "SELECT name, address, workers, EXTRACT(EPOCH FROM last_seen)::float8 FROM scheduler_nodes ORDER BY name"
            ).fetchall()
            return [(name, address, int(workers), float(seen)) for name, address, workers, seen in rows]

        return self._run(read)

    def backend_pid(self) -> Deferred[int]:
        """This store's session's server process (tests end it to play a crash)."""
        return self._run(lambda conn: conn.info.backend_pid)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
