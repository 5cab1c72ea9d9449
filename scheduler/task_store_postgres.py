"""Tasks in PostgreSQL (``--db``): one task set shared by every node of a cluster.

Table ``tasks`` holds each task's record as tasks.db would (``Task.line``,
parsed by ``tasks.parse_record``, so there is one parser for both), and
the *generation* that last wrote it.  A removed task keeps its row with no
record (a tombstone): a node that was behind learns of the removal, and
its id is never given to another task (jobs and revisions name tasks by
id).  Table ``task_set`` holds one row, the generation of the whole set.

``save`` writes only the tasks that differ from what this node last read or
wrote (an ADD to 100,000 tasks writes one row), in one transaction that
first moves the generation from the one this node knows to the next
(optimistic concurrency: if another node wrote in between, nothing is
written and the save fails with :class:`TaskConflict`) and notifies the
other nodes (``cluster_events``, topic ``tasks``) on commit.  ``refresh``
reads the rows written since this node's generation: the other nodes apply
them on that notification.

One connection and one thread of its own, so a slow task write never waits
behind the job history or the lease, nor they behind it.  The start-up
reads (``open``, ``load_now``, ``import_now``) run on the calling thread
before the reactor does.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import tzinfo
from typing import Any, TypeVar

import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from scheduler.cluster_events import notify_sql, schema_of
from scheduler.job_history.database import JobStoreError
from scheduler.job_history.postgres import _scrub, connect, redact
from scheduler.task_store import Known, LoadError, StoreError, TaskConflict, TaskDelta, paused_gc
from scheduler.tasks import Task, TaskError, TaskRecord, parse_record

log = Logger()

T = TypeVar("T")

# Creating the tables takes this advisory lock, so nodes starting together
# do not race on CREATE TABLE IF NOT EXISTS.
_SCHEMA_LOCK = 0x7A5C5E7

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tasks (
        "id" BIGINT PRIMARY KEY,
        "line" TEXT,
        "generation" BIGINT NOT NULL
    )""",
    'CREATE INDEX IF NOT EXISTS tasks_generation ON tasks ("generation")',
    """CREATE TABLE IF NOT EXISTS task_set (
        "id" INTEGER PRIMARY KEY CHECK ("id" = 1),
        "generation" BIGINT NOT NULL
    )""",
    "INSERT INTO task_set (id, generation) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    # The last writes, each with a token its writer chose: a writer that lost
    # the answer to its COMMIT looks for its token to learn whether it committed.
    """CREATE TABLE IF NOT EXISTS task_writes (
        "generation" BIGINT PRIMARY KEY,
        "token" TEXT NOT NULL,
        "node" TEXT NOT NULL
    )""",
)

# One statement, so one snapshot: the set's generation (the row without an
# id) and every row written after *since*, none of them newer than it; by
# id, so every node lists the tasks in one order.
_SINCE = """
SELECT NULL::bigint, NULL::text, generation FROM task_set WHERE id = 1
UNION ALL
SELECT id, line, generation FROM tasks WHERE generation > %s
ORDER BY 1 NULLS FIRST
"""
# Moves the generation only from the one this node knows: a node that wrote
# in between has moved it, and this statement then changes nothing.
_BUMP = "UPDATE task_set SET generation = generation + 1 WHERE id = 1 AND generation = %s RETURNING generation"
_UPSERT = (
    "INSERT INTO tasks (id, line, generation) VALUES (%s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET line = excluded.line, generation = excluded.generation"
)
# More rows than this go through COPY (a LOAD, an import): one statement
# for the lot rather than one INSERT each, even pipelined (docs/performance.md).
_COPY_ABOVE = 1000
_STAGE = "CREATE TEMPORARY TABLE task_staging (id BIGINT, line TEXT) ON COMMIT DROP"
_COPY = "COPY task_staging (id, line) FROM STDIN"
_UPSERT_STAGED = (
    "INSERT INTO tasks (id, line, generation) SELECT id, line, %s FROM task_staging "
    "ON CONFLICT (id) DO UPDATE SET line = excluded.line, generation = excluded.generation"
)
_LOG_WRITE = "INSERT INTO task_writes (generation, token, node) VALUES (%s, %s, %s)"
# Far more than a writer needs: it looks for its token right after reconnecting.
_KEEP_WRITES = 100
_TRIM_WRITES = "DELETE FROM task_writes WHERE generation <= %s"
_WRITTEN = "SELECT generation FROM task_writes WHERE token = %s"
_REMOVE = "UPDATE tasks SET line = NULL, generation = %s WHERE id = ANY(%s)"

CONFLICT = "another node changed the tasks at the same time; nothing was saved, try again"


class _CommitUnknown(Exception):
    """The connection was lost after COMMIT was sent: whether it committed is unknown."""


class PostgresTaskStore:
    """The shared tasks (a ``SharedTaskStore``)."""

    def __init__(self, url: str, reactor: Any, *, node: str, tz: tzinfo) -> None:
        self.url = url
        self.name = redact(url)
        self.node = node
        self._tz = tz
        self._reactor = reactor
        self._conn: psycopg.Connection[Any] | None = None
        self._schema = "public"
        self._pool: ThreadPool | None = None
        self._closed = False
        # A write whose COMMIT was sent (see _blocking).
        self._committing = False
        # The start-up calls and the thread never overlap, but a lock says so.
        self._lock = threading.Lock()
        # What this node last read or wrote, by id: the Task it saved (the
        # same object next time means unchanged) or the record it read
        # (compared field by field: formatting every task's line to compare
        # lines costs ten times as much).
        self._known: dict[int, Task | TaskRecord] = {}
        self._generation = 0
        self._high_water = 0

    @property
    def generation(self) -> int:
        """The generation of the task set this node last read or wrote (0: never written)."""
        return self._generation

    # -- the connection ----------------------------------------------------------

    def open(self) -> None:
        """Connect and create the tables a new database lacks (blocking, at start-up)."""
        try:
            conn = connect(self.url, application_name=f"scheduler-tasks {self.node}"[:63])
        except JobStoreError as error:
            raise StoreError(str(error)) from None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA:
                    conn.execute(statement.encode())
            self._schema = schema_of(conn)
        except psycopg.Error as error:
            conn.close()
            raise StoreError(f"{self.name}: cannot create the tasks tables: {self._text(error)}") from None
        self._conn = conn

    def start(self) -> None:
        """Start the store's thread (the service does when it starts; the first
        write does if it comes before).  It stops with the reactor at the latest."""
        if self._closed:
            raise StoreError(f"{self.name}: the task store is closed")
        if self._pool is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="tasks")
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.close)

    def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
                log.warn("{name}: connecting to the tasks database again", name=self.name)
            self._conn = None
            conn = self._conn = connect(self.url, application_name=f"scheduler-tasks {self.node}"[:63])
        return conn

    def _text(self, error: Exception) -> str:
        return _scrub(str(error).strip(), self.url)

    def _blocking(self, work: Callable[[psycopg.Connection[Any]], T], failed: Callable[[str], Exception]) -> T:
        """*work* on the connection.  A connection found dead (the database
        restarted, the session was ended) is replaced and *work* tried once
        more, unless it may have committed (_CommitUnknown: the caller asks)."""
        with self._lock:
            for attempt in (1, 2):
                self._committing = False
                try:
                    conn = self._connection()
                except JobStoreError as error:  # could not connect again; names the database
                    raise failed(str(error)) from None
                try:
                    return work(conn)
                except psycopg.OperationalError as error:
                    if self._committing:
                        raise _CommitUnknown() from None
                    if attempt == 1 and conn.broken:
                        log.warn("{name}: lost the tasks' connection ({error}); trying again", name=self.name, error=type(error).__name__)
                        continue
                    raise failed(f"{self.name}: {self._text(error)}") from None
                except psycopg.Error as error:
                    raise failed(f"{self.name}: {self._text(error)}") from None
            raise AssertionError("unreachable")

    def _on_thread(self, work: Callable[[], T]) -> Deferred[T]:
        self.start()
        assert self._pool is not None
        return deferToThreadPool(self._reactor, self._pool, work)

    # -- reading -------------------------------------------------------------

    def load_now(self) -> list[TaskRecord]:
        """Every stored task (blocking); LoadError names a row that cannot be used."""
        return self._blocking(self._load, self._load_error)

    def load(self, known: Known | None = None) -> Deferred[list[TaskRecord]]:
        # *known* (the book's lookup, for reusing unchanged tasks) is not used:
        # a node reads the whole set only at start, and refreshes by delta.
        return self._on_thread(self.load_now)

    def refresh(self, seen: int | None = None) -> Deferred[TaskDelta | None]:
        return self._on_thread(lambda: self.refresh_now(seen))

    def refresh_now(self, seen: int | None = None) -> TaskDelta | None:
        if seen is not None and seen <= self._generation:
            return None
        return self._blocking(self._refresh, self._load_error)

    def _load_error(self, reason: str) -> LoadError:
        return LoadError(self.name, None, reason, shown="the tasks in PostgreSQL")

    def _since(self, conn: psycopg.Connection[Any], since: int) -> tuple[int, list[tuple[int, str | None]]]:
        generation = since
        rows: list[tuple[int, str | None]] = []
        for task_id, line, written in conn.execute(_SINCE, (since,)):
            if task_id is None:
                generation = int(written)
            else:
                rows.append((int(task_id), line))
        return generation, rows

    def _load(self, conn: psycopg.Connection[Any]) -> list[TaskRecord]:
        with paused_gc():
            generation, rows = self._since(conn, 0)
            records = [self._parse(task_id, line) for task_id, line in rows if line is not None]
            highest = max((task_id for task_id, _ in rows), default=0)
            self._known = {record.id: record for record in records if record.id is not None}
        self._generation = generation
        self._high_water = highest
        return records

    def _refresh(self, conn: psycopg.Connection[Any]) -> TaskDelta:
        generation, rows = self._since(conn, self._generation)
        changed: list[TaskRecord] = []
        removed: list[int] = []
        # Parsed whole before anything is kept: a bad row changes nothing.
        for task_id, line in rows:
            if line is not None:
                changed.append(self._parse(task_id, line))
            elif task_id in self._known:
                removed.append(task_id)
        for task_id in removed:
            del self._known[task_id]
        for record in changed:
            assert record.id is not None
            self._known[record.id] = record
        self._high_water = max([self._high_water, *(task_id for task_id, _ in rows)])
        self._generation = generation
        return TaskDelta(generation, changed, removed, self._high_water)

    def _parse(self, task_id: int, line: str) -> TaskRecord:
        where = f"task {task_id}: "
        try:
            record = parse_record(json.loads(line), self._tz)
        except json.JSONDecodeError as error:
            raise self._load_error(f"{where}not valid JSON ({error.msg} at column {error.colno})") from None
        except RecursionError:
            raise self._load_error(f"{where}not valid JSON (nested too deeply)") from None
        except TaskError as error:
            raise self._load_error(f"{where}{error}") from None
        if record.id is not None and record.id != task_id:
            raise self._load_error(f"{where}its record names id {record.id}")
        return TaskRecord(record.job_name, record.schedule, record.command, record.options, record.extra, task_id)

    @property
    def high_water(self) -> int:
        """Above every id the table has held, removed tasks' included."""
        return self._high_water

    # -- writing -------------------------------------------------------------

    def save(self, tasks: Sequence[Task]) -> Deferred[None]:
        # The snapshot is taken here; the diff (and formatting a task's line
        # the first time) happens on the thread.
        snapshot = list(tasks)
        return self._on_thread(lambda: self.save_now(snapshot))

    def import_now(self, tasks: Sequence[Task]) -> None:
        """Save *tasks* (blocking, at start-up: tasks.db's tasks into a new cluster)."""
        self.save_now(list(tasks))

    def save_now(self, tasks: Sequence[Task]) -> None:
        known = self._known
        changed: list[Task] = []
        added = 0
        for task in (task for task in tasks if known.get(task.id) is not task):
            was = known.get(task.id)
            if was is None:
                added += 1
            elif isinstance(was, TaskRecord) and _same(task, was):
                known[task.id] = task  # unchanged: next time by identity
                continue
            changed.append(task)
        removed: list[int] = []
        if len(tasks) - added < len(known):
            present = {task.id for task in tasks}
            removed = [task_id for task_id in known if task_id not in present]
        if not changed and not removed:
            return
        token = uuid.uuid4().hex
        try:
            generation = self._blocking(lambda conn: self._write(conn, changed, removed, token), self._store_error)
        except _CommitUnknown:
            # On a new connection: the token is there if, and only if, it committed.
            written = self._blocking(lambda conn: conn.execute(_WRITTEN, (token,)).fetchone(), self._store_error)
            if written is None:
                raise self._store_error("lost the connection while saving; nothing was saved") from None
            log.info("{name}: lost the answer to a commit of the tasks, which did commit", name=self.name)
            generation = int(written[0])
        for task in changed:
            known[task.id] = task
            self._high_water = max(self._high_water, task.id)
        for task_id in removed:
            del known[task_id]
        self._generation = generation

    def _store_error(self, reason: str) -> StoreError:
        log.error("could not write the tasks: {reason}", reason=reason)
        return StoreError(f"could not write the tasks to PostgreSQL: {reason}")

    def _write(self, conn: psycopg.Connection[Any], changed: list[Task], removed: list[int], token: str) -> int:
        with conn.transaction():
            row = conn.execute(_BUMP, (self._generation,)).fetchone()
            if row is None:
                raise TaskConflict(CONFLICT)
            generation = int(row[0])
            if len(changed) > _COPY_ABOVE:
                conn.execute(_STAGE)
                with conn.cursor().copy(_COPY) as copy:
                    for task in changed:
                        copy.write_row((task.id, task.line))
                conn.execute(_UPSERT_STAGED, (generation,))
            elif changed:
                with conn.cursor() as cursor:
                    cursor.executemany(_UPSERT, [(task.id, task.line, generation) for task in changed])
            if removed:
                conn.execute(_REMOVE, (generation, removed))
            conn.execute(_LOG_WRITE, (generation, token, self.node))
            conn.execute(_TRIM_WRITES, (generation - _KEEP_WRITES,))
            statement, params = notify_sql(self._schema, "tasks", self.node, generation=generation)
            conn.execute(statement, params)
            # Leaving the block commits: from here on, a lost connection
            # leaves unknown whether it did, so the token tells.
            self._committing = True
        return generation


def _same(task: Task, record: TaskRecord) -> bool:
    """*task* is what *record* holds (what TaskBook.from_records reuses a task for)."""
    # A task built from the record shares its parts: identity first.
    return (
        task.command == record.command
        and task.job_name == record.job_name
        and (task.schedule is record.schedule or task.schedule == record.schedule)
        and (task.options is record.options or task.options == record.options)
        and (task.extra is record.extra or task.extra == record.extra)
    )
