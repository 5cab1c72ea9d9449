"""Job records and their output, in an embedded SQLite database.

The reactor thread never waits on SQLite once the reactor runs: every query
and write runs on one dedicated thread, so the connection is only ever used
by one thread at a time and statements run in the order they were asked
for.  Only the start-up reads, made before the reactor runs, use the
connection from the calling thread.

Writes are group-committed.  Everything handed to :meth:`JobStore.put` and
:meth:`JobStore.append_output` during one reactor turn goes to the database
in one transaction, and while that transaction runs new writes pile up for
the next one: a busy scheduler pays for one commit per batch, not per line of
output.  Reads queue behind the writes asked for before them, so a caller
always reads what it wrote.

The database holds every job's env and output, so a new one is created
private (0600) before SQLite opens it; SQLite gives its -wal and -shm files
the database file's permissions.  An existing database keeps its mode.
Error messages name the file, not its folder (they can reach clients); the
log has the full path.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from scheduler.jobs import MUTABLE_FIELDS, Job, JobStatus, fire_key

log = Logger()

_T = TypeVar("_T")

SCHEMA_VERSION = 1

# The Job fields, in column order.  A new Job field needs a schema version.
_FIELDS = (
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
_COLUMNS = ", ".join(f'"{name}"' for name in _FIELDS)
_SELECT_JOB = f"SELECT {_COLUMNS} FROM jobs"

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
_UPSERT = (
    f'INSERT INTO jobs ({_COLUMNS}, "output_dropped") VALUES ({", ".join("?" * (len(_FIELDS) + 1))}) '
    f'ON CONFLICT ("id") DO UPDATE SET '
    + ", ".join(f'"{name}" = excluded."{name}"' for name in _FIELDS if name in MUTABLE_FIELDS)
)

_ACTIVE = tuple(status.value for status in JobStatus if not status.final)
_ACTIVE_SQL = ", ".join(f"'{status}'" for status in _ACTIVE)

# Errors caused by one record's content, not by the database: SQLite undoes
# only the failing statement, so the rest of the batch can still commit.
_BAD_RECORD = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, ValueError, OverflowError)

# Well under SQLite's limit on bound parameters, even in old builds.
_DELETE_CHUNK = 500


class JobStoreError(Exception):
    """The job database cannot be used."""


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


class JobStoreClosed(JobStoreError):
    """The store was closed (or never opened); nothing was written."""


@dataclass(frozen=True, slots=True)
class _Put:
    job_id: int
    final: bool
    row: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class _Chunk:
    job_id: int
    seq: int
    stream: str
    data: str


def _superseded(ops: Sequence[_Put | _Chunk]) -> dict[int, int]:
    """Puts a later put of the same job in the batch replaces: index -> that put's index.

    A job is usually put two to four times within one batch when jobs are
    short (queued, sent, started, ended), and every put writes the whole
    row, so only the last needs writing.  A put is still written if an
    output chunk of its job comes between it and the later put: the chunk's
    accounting reads the stored row.
    """
    last: dict[int, int] = {}  # job id -> index of the put that is written
    replaced: dict[int, int] = {}
    for index in range(len(ops) - 1, -1, -1):
        op = ops[index]
        if isinstance(op, _Chunk):
            last.pop(op.job_id, None)
        elif op.job_id in last:
            replaced[index] = last[op.job_id]
        else:
            last[op.job_id] = index
    return replaced


@dataclass(slots=True)
class _Tally:
    """One job's output accounting, kept so an append needs no SUM query."""

    kept: int
    dropped: int
    # The highest seq the cap has deleted: a chunk re-sent at or below it
    # must stay dropped, or INSERT OR IGNORE would bring it back.
    floor: int


def _row(job: Job) -> tuple[object, ...]:
    # Serialised here, on the reactor thread, so later changes to a mutable
    # env mapping cannot leak into a write that is still queued.
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


def _job(row: Sequence[Any]) -> Job:
    values = dict(zip(_FIELDS, row, strict=True))
    values["env"] = json.loads(values["env"])
    values["status"] = JobStatus(values["status"])
    return Job(**values)


def _marker(dropped: int) -> str:
    return f"[... {dropped} bytes of earlier output dropped ...]\n"


class JobStore:
    """Job history and output in SQLite, written in batches off the reactor."""

    def __init__(
        self,
        path: str,
        reactor: Any,
        *,
        output_cap: int = 1024 * 1024,
        keep_per_task: int = 100,
        keep_seconds: float = 7 * 86400,
        connect: Callable[..., sqlite3.Connection] = sqlite3.connect,
    ) -> None:
        self.path = path
        # What error messages call the database (see the module's docstring).
        self.name = os.path.basename(path) or path
        self.output_cap = output_cap
        self.keep_per_task = keep_per_task
        self.keep_seconds = keep_seconds
        # Committed write batches; tests use it to see how writes were grouped.
        self.transactions = 0
        self._reactor = reactor
        # Injectable so tests can make the database fail or stall.
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._pool: ThreadPool | None = None
        # Start-up reads run on the caller's thread; the lock keeps them off
        # the connection while the store's thread uses it.
        self._lock = threading.Lock()
        # Touched only on the store's thread (or under the lock).
        self._tallies: dict[int, _Tally] = {}
        # Reactor side: writes not yet handed to the thread, the put
        # Deferreds among them, and reads that must run after them.
        self._ops: list[_Put | _Chunk] = []
        self._waiters: list[Deferred[None]] = []
        self._after_ops: list[Callable[[], None]] = []
        self._busy = False
        self._flush_call: IDelayedCall | None = None
        self._idle: list[Deferred[None]] = []
        self._closing = False
        self._closed: list[Deferred[None]] = []
        self._shutdown_trigger: Any = None

    # -- start-up, blocking ---------------------------------------------------

    def open(self) -> None:
        """Connect, create or check the schema, and start the store's thread."""
        if self._conn is not None or self._closing:
            raise JobStoreError(f"{self.name}: job store was already opened")
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
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JobStoreError(
                    f"{self.name}: job database schema version {version} is newer than this "
                    f"scheduler's ({SCHEMA_VERSION})"
                )
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="jobstore")
        self._pool.start()
        # A non-daemon thread left running would keep the process alive, and
        # queued writes would be lost: close at shutdown if nobody did.
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "before", "shutdown", self._close_at_shutdown
        )

    def load_active(self) -> list[tuple[Job, int]]:
        """Queued and running jobs, each with the last output seq stored (0 if none)."""
        rows = self._rows_now(
            f"SELECT {_COLUMNS}, (SELECT COALESCE(MAX(seq), 0) FROM output WHERE job_id = jobs.id) "
            f"FROM jobs WHERE status IN ({_ACTIVE_SQL}) ORDER BY id"
        )
        return [(_job(row[:-1]), int(row[-1])) for row in rows]

    def recent_keys(self, since: float) -> set[str]:
        rows = self._rows_now(
            'SELECT "key" FROM jobs WHERE scheduled_at >= ? AND "key" IS NOT NULL', (since,)
        )
        return {row[0] for row in rows}

    def fired(self, task_id: int, scheduled: float) -> bool:
        """Does the history hold a run of this fire?  A point lookup, run on the
        caller's thread: the job book asks it only for times older than what
        it keeps in memory (missed runs at start-up, a clock stepped back)."""
        return bool(self._rows_now('SELECT 1 FROM jobs WHERE "key" = ?', (fire_key(task_id, scheduled),)))

    def last_scheduled(self) -> dict[int, float]:
        rows = self._rows_now(
            "SELECT task_id, MAX(scheduled_at) FROM jobs "
            "WHERE task_id IS NOT NULL AND scheduled_at IS NOT NULL GROUP BY task_id"
        )
        return {int(task_id): float(when) for task_id, when in rows}

    def max_job_id(self) -> int:
        rows = self._rows_now(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM jobs), 0), "
            "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0))"
        )
        return int(rows[0][0])

    def _rows_now(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        conn = self._open_conn()
        with self._lock:
            return conn.execute(sql, params).fetchall()

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JobStoreClosed(f"{self.name}: job store is not open")
        return self._conn

    # -- writes ---------------------------------------------------------------

    def put(self, job: Job) -> Deferred[None]:
        """Store the whole record, replacing any with its id.

        Fires once its transaction has committed; fails with the SQLite
        error if it did not.
        """
        if self._conn is None or self._closing:
            return fail(JobStoreClosed(f"{self.name}: job store is closed; job {job.id} not saved"))
        try:
            row = _row(job)
        except (TypeError, ValueError) as error:
            return fail(error)
        done: Deferred[None] = Deferred()
        self._ops.append(_Put(job.id, JobStatus(job.status).final, row))
        self._waiters.append(done)
        self._schedule_flush()
        return done

    def append_output(self, job_id: int, seq: int, stream: str, data: str) -> None:
        """Queue one chunk of a job's output; a (job_id, seq) already stored is ignored."""
        if self._conn is None or self._closing:
            log.warn(
                "job store is closed; dropped output chunk {seq} of job {job_id}", seq=seq, job_id=job_id
            )
            return
        self._ops.append(_Chunk(job_id, seq, stream, data))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # While a batch is on the thread, its completion starts the next one.
        if self._busy or self._flush_call is not None:
            return
        self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._busy or not self._ops:
            return
        assert self._pool is not None
        ops, self._ops = self._ops, []
        waiters, self._waiters = self._waiters, []
        after, self._after_ops = self._after_ops, []
        self._busy = True
        written = deferToThreadPool(
            self._reactor, self._pool, self._locked, functools.partial(self._write, ops)
        )
        written.addBoth(self._written, ops, waiters)
        # Queued behind the batch on the single thread, so they see it.
        for submit in after:
            submit()

    def _written(
        self,
        result: list[Exception | None] | Failure,
        ops: list[_Put | _Chunk],
        waiters: list[Deferred[None]],
    ) -> None:
        self._busy = False
        if isinstance(result, Failure):
            chunks = sum(1 for op in ops if isinstance(op, _Chunk))
            log.failure(
                "job store transaction failed; {puts} job writes and {chunks} output chunks lost",
                failure=result,
                puts=len(waiters),
                chunks=chunks,
            )
            outcomes: list[Exception | None] = [
                result.value if isinstance(result.value, Exception) else JobStoreError(str(result.value))
            ] * len(waiters)
        else:
            self.transactions += 1
            outcomes = result
        if self._ops:
            self._flush()
        for done, error in zip(waiters, outcomes, strict=True):
            if error is None:
                done.callback(None)
            else:
                done.errback(error)
        if not self._busy and not self._ops:
            idle, self._idle = self._idle, []
            for waiting in idle:
                waiting.callback(None)

    # -- reads ----------------------------------------------------------------

    def get(self, job_id: int) -> Deferred[Job | None]:
        return self._read(functools.partial(self._get_now, job_id))

    def query(
        self,
        *,
        status: str | None = None,
        task_id: int | None = None,
        worker: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> Deferred[list[Job]]:
        """Jobs matching every filter given, newest (highest id) first."""
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
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        # A negative LIMIT means no limit to SQLite.
        params.append(max(0, limit))
        sql = f"{_SELECT_JOB}{where} ORDER BY id DESC LIMIT ?"
        return self._read(functools.partial(self._jobs_now, sql, params))

    def output(self, job_id: int) -> Deferred[str | None]:
        """The kept output in seq order, after a marker if the cap dropped some; None if no such job."""
        return self._read(functools.partial(self._output_now, job_id))

    def prune(self, now: float) -> Deferred[int]:
        """Delete finished jobs past retention, with their output; returns how many."""
        return self._read(functools.partial(self._prune_now, now))

    def _read(self, work: Callable[[], _T]) -> Deferred[_T]:
        if self._conn is None or self._closing:
            return fail(JobStoreClosed(f"{self.name}: job store is closed"))
        assert self._pool is not None
        pool = self._pool
        if not self._ops:
            # Anything running or queued on the thread was asked for earlier.
            return deferToThreadPool(self._reactor, pool, self._locked, work)
        result: Deferred[_T] = Deferred()

        def submit() -> None:
            deferToThreadPool(self._reactor, pool, self._locked, work).chainDeferred(result)

        self._after_ops.append(submit)
        self._schedule_flush()
        return result

    # -- closing --------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Write what is queued, then stop the thread and close the database."""
        if self._conn is None:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._closed.append(closed)
        if self._closing:
            return closed
        self._closing = True
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        self._flush()
        self._when_idle().addCallback(self._close_connection).addBoth(self._finish_close)
        return closed

    def _close_at_shutdown(self) -> Deferred[None]:
        self._shutdown_trigger = None
        return self.close()

    def _when_idle(self) -> Deferred[None]:
        if not self._busy and not self._ops:
            return succeed(None)
        idle: Deferred[None] = Deferred()
        self._idle.append(idle)
        return idle

    def _close_connection(self, _: None) -> Deferred[None]:
        assert self._pool is not None
        # Queued after every read already handed to the thread.
        return deferToThreadPool(self._reactor, self._pool, self._locked, self._close_now)

    def _finish_close(self, result: Failure | None) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        self._conn = None
        closed, self._closed = self._closed, []
        for waiting in closed:
            if isinstance(result, Failure):
                waiting.errback(result)
            else:
                waiting.callback(None)

    # -- the store's thread ---------------------------------------------------

    def _locked(self, work: Callable[[], _T]) -> _T:
        with self._lock:
            return work()

    def _close_now(self) -> None:
        self._open_conn().close()
        self._tallies.clear()

    def _write(self, ops: list[_Put | _Chunk]) -> list[Exception | None]:
        """One transaction for a batch; per put, None or the error that refused it."""
        conn = self._open_conn()
        try:
            if conn.in_transaction:
                # A failed ROLLBACK last time must not wedge every later batch.
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            replaced_by = _superseded(ops)
            written: dict[int, Exception | None] = {}
            for index, op in enumerate(ops):
                if isinstance(op, _Chunk):
                    self._append(conn, op)
                elif index not in replaced_by:
                    written[index] = self._upsert(conn, op)
            conn.execute("COMMIT")
            outcomes = [
                written[replaced_by.get(index, index)] for index, op in enumerate(ops) if isinstance(op, _Put)
            ]
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

    def _upsert(self, conn: sqlite3.Connection, op: _Put) -> Exception | None:
        tally = self._tallies.get(op.job_id)
        try:
            conn.execute(_UPSERT, (*op.row, tally.dropped if tally is not None else 0))
        except _BAD_RECORD as error:
            log.warn("job store refused job {job_id}: {error}", job_id=op.job_id, error=error)
            return error
        if op.final:
            # Late output re-reads the tally from the database; finished jobs
            # must not pile up in memory.
            self._tallies.pop(op.job_id, None)
        return None

    def _tally(self, conn: sqlite3.Connection, job_id: int) -> _Tally:
        tally = self._tallies.get(job_id)
        if tally is None:
            kept, lowest = conn.execute(
                "SELECT COALESCE(SUM(length(CAST(data AS BLOB))), 0), MIN(seq) FROM output WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            row = conn.execute("SELECT output_dropped FROM jobs WHERE id = ?", (job_id,)).fetchone()
            dropped = int(row[0]) if row is not None else 0
            # The cap deletes from the lowest seq up, so everything below the
            # lowest kept chunk of a capped job was dropped.
            floor = int(lowest) - 1 if dropped and lowest is not None else 0
            tally = self._tallies[job_id] = _Tally(int(kept), dropped, floor)
        return tally

    def _append(self, conn: sqlite3.Connection, chunk: _Chunk) -> None:
        tally = self._tally(conn, chunk.job_id)
        if chunk.seq <= tally.floor:
            return
        data = chunk.data
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (undecodable process output) cannot be stored
            # as SQLite text and would fail the whole batch.
            raw = data.encode("utf-8", "backslashreplace")
            data = raw.decode("utf-8")
        cut = 0
        if len(raw) > self.output_cap:
            # Keep the chunk's tail; a cut through a multi-byte character
            # leaves stray continuation bytes, which "ignore" discards.
            data = raw[len(raw) - self.output_cap :].decode("utf-8", "ignore")
            size = len(data.encode("utf-8"))
            cut = len(raw) - size
        else:
            size = len(raw)
        before = tally.dropped
        inserted = conn.execute(
            "INSERT OR IGNORE INTO output (job_id, seq, stream, data) VALUES (?, ?, ?, ?)",
            (chunk.job_id, chunk.seq, chunk.stream, data),
        ).rowcount
        if not inserted:
            return
        tally.kept += size
        tally.dropped += cut
        if tally.kept > self.output_cap:
            self._trim(conn, chunk.job_id, tally)
        if tally.dropped != before:
            conn.execute("UPDATE jobs SET output_dropped = ? WHERE id = ?", (tally.dropped, chunk.job_id))

    def _trim(self, conn: sqlite3.Connection, job_id: int, tally: _Tally) -> None:
        """Delete the job's oldest chunks until its output fits the cap."""
        cursor = conn.execute(
            "SELECT seq, length(CAST(data AS BLOB)) FROM output WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        last = None
        try:
            while tally.kept > self.output_cap:
                row = cursor.fetchone()
                if row is None:
                    break
                last = int(row[0])
                tally.kept -= int(row[1])
                tally.dropped += int(row[1])
        finally:
            cursor.close()
        if last is not None:
            conn.execute("DELETE FROM output WHERE job_id = ? AND seq <= ?", (job_id, last))
            tally.floor = max(tally.floor, last)

    def _get_now(self, job_id: int) -> Job | None:
        row = self._open_conn().execute(f"{_SELECT_JOB} WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    def _jobs_now(self, sql: str, params: Sequence[object]) -> list[Job]:
        return [_job(row) for row in self._open_conn().execute(sql, params)]

    def _output_now(self, job_id: int) -> str | None:
        conn = self._open_conn()
        row = conn.execute("SELECT output_dropped FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        text = "".join(
            data
            for (data,) in conn.execute("SELECT data FROM output WHERE job_id = ? ORDER BY seq", (job_id,))
        )
        return _marker(row[0]) + text if row[0] else text

    def _prune_now(self, now: float) -> int:
        conn = self._open_conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Jobs that ended without a finish time (cancelled while queued,
            # say) age from their creation instead of living forever.
            doomed = [
                int(job_id)
                for (job_id,) in conn.execute(
                    f"""SELECT id FROM (
                        SELECT id, COALESCE(finished_at, created_at) AS ended,
                               ROW_NUMBER() OVER (
                                   PARTITION BY task_id ORDER BY COALESCE(finished_at, created_at) DESC, id DESC
                               ) AS newest
                        FROM jobs WHERE status NOT IN ({_ACTIVE_SQL})
                    ) WHERE ended < ? OR newest > ?""",
                    (now - self.keep_seconds, self.keep_per_task),
                ).fetchall()
            ]
            for start in range(0, len(doomed), _DELETE_CHUNK):
                ids = doomed[start : start + _DELETE_CHUNK]
                marks = ", ".join("?" * len(ids))
                conn.execute(f"DELETE FROM output WHERE job_id IN ({marks})", ids)
                conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
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
