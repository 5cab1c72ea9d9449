"""Shared by the job history's tests: a connection that fails or stalls on cue, jobs to store, and the fixtures.

Everything runs on the real reactor and the history's real thread.  Failures
and stalls are injected through the ``connect`` hook of
:class:`JobStore`, with a connection whose ``execute`` can be made
to fail or to wait on an event.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.task import deferLater

from scheduler.job_history.threaded import ThreadedJobHistory
from scheduler.job_store import JobStore, PostgresJobStore
from scheduler.jobs import Job, JobStatus
from scheduler.triggers import TriggeredBy

SAFETY_TIMEOUT = 10.0


class FlakyConnection(sqlite3.Connection):
    """A connection whose statements can be made to fail or to wait."""

    fail_when: Callable[[str], bool] | None = None
    gate: threading.Event | None = None
    statements: list[str]

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.statements.append(sql)
        if self.gate is not None and sql.startswith("BEGIN"):
            assert self.gate.wait(SAFETY_TIMEOUT), "gate never opened"
        if self.fail_when is not None and self.fail_when(sql):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, parameters)


Opener = Callable[..., Any]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.sqlite")


BACKENDS = ["sqlite", "postgres"]


@pytest_twisted.async_yield_fixture(params=BACKENDS)
async def stores(request: pytest.FixtureRequest, path: str) -> AsyncIterator[Opener]:
    """Opens stores on one database, in SQLite and in PostgreSQL (the same tests
    prove both backends); whatever a test leaves open is closed after it."""
    opened: list[ThreadedJobHistory] = []
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None

    def open_store(**kw: Any) -> ThreadedJobHistory:
        store: ThreadedJobHistory = JobStore(path, reactor, **kw) if url is None else PostgresJobStore(url, reactor, **kw)
        store.open()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


@pytest_twisted.async_yield_fixture
async def sqlite_stores(path: str) -> AsyncIterator[Callable[..., JobStore]]:
    """Opens SQLite stores on *path*: for the tests of what only SQLite has (its file, its pragmas)."""
    opened: list[JobStore] = []

    def open_store(**kw: Any) -> JobStore:
        store = JobStore(path, reactor, **kw)
        store.open()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


# What a record refused for its own content raises, in either backend.
def integrity_errors() -> tuple[type[Exception], ...]:
    import psycopg

    return (sqlite3.IntegrityError, psycopg.IntegrityError)


def flaky(connections: list[FlakyConnection]) -> Callable[..., sqlite3.Connection]:
    def connect(*args: Any, **kw: Any) -> sqlite3.Connection:
        conn = sqlite3.connect(*args, factory=FlakyConnection, **kw)
        assert isinstance(conn, FlakyConnection)
        conn.statements = []
        connections.append(conn)
        return conn

    return connect


async def next_turn() -> None:
    await deferLater(reactor, 0, lambda: None)


def job(job_id: int, **kw: Any) -> Job:
    kw.setdefault("command", f"echo {job_id}")
    kw.setdefault("created_at", 1000.0 + job_id)
    return Job(id=job_id, **kw)


def finished(job_id: int, at: float, **kw: Any) -> Job:
    kw.setdefault("status", JobStatus.SUCCEEDED)
    return job(job_id, started_at=at - 1, finished_at=at, exit_code=0, **kw)


def full_job() -> Job:
    return Job(
        id=7,
        command="printf '%s' \"$GREETING\" | tr a-z A-Z",
        created_at=1700000000.125,
        task_id=3,
        key="3@1700000000",
        scheduled_at=1700000000.0,
        target="worker-b",
        timeout=12.5,
        env={"GREETING": "héllo wörld", "EMPTY": ""},
        cwd="/srv/app",
        attempt=2,
        triggered_by=TriggeredBy.retry_of(6),
        status=JobStatus.TIMED_OUT,
        worker="worker-b",
        exit_code=None,
        signal=9,
        started_at=1700000001.5,
        finished_at=1700000013.75,
        reason="timed out after 12.5s",
        version=5,
    )


def peek(store: Any, path: str, query: str) -> list[tuple[Any, ...]]:
    """*query*'s rows read on a connection of its own to *store*'s database: what is committed."""
    if isinstance(store, JobStore):
        with sqlite3.connect(path) as conn:
            rows = conn.execute(query).fetchall()
        conn.close()
        return rows
    import psycopg

    with psycopg.connect(store.database.url) as pg:
        return [tuple(row) for row in pg.execute(query.encode()).fetchall()]


def columns(store: Any, path: str, table: str) -> set[str]:
    """The column names of *table* in *store*'s database."""
    if isinstance(store, JobStore):
        return {str(row[1]) for row in peek(store, path, f"PRAGMA table_info({table})")}
    return {
        str(row[0])
        for row in peek(
            store, path, f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' "
            "AND table_schema = current_schema()"
        )
    }
