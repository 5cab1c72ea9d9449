"""scheduler.job_store: the job history in SQLite, end to end.

Records, queries, output and its cap, retention, failures and the file's
permissions, on the real reactor and the history's real thread (see
``tests/job_history_support.py``).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import fields

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from scheduler.job_store import SCHEMA_VERSION, JobStore, JobStoreClosed, JobStoreError
from scheduler.jobs import Job, JobStatus
from scheduler.triggers import SCHEDULE, TriggeredBy
from tests import job_history_support
from tests.job_history_support import (
    FlakyConnection,
    Opener,
    columns,
    finished,
    flaky,
    full_job,
    integrity_errors,
    job,
    next_turn,
    peek,
)

# The shared fixtures, under the names the tests ask for.
path = job_history_support.path
stores = job_history_support.stores
sqlite_stores = job_history_support.sqlite_stores


# -- records --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_put_then_get_round_trips_every_field(stores: Opener, path: str) -> None:
    store = stores()
    full = full_job()
    bare = Job(id=8, command="true", created_at=5.0)
    await gatherResults([store.put(full), store.put(bare)])

    assert await store.get(7) == full
    got = await store.get(8)
    assert got == bare
    assert got is not None and got.status is JobStatus.QUEUED and got.env == {}
    assert await store.get(9) is None

    # Every Job field has its own column, so nothing is silently left out
    # (PostgreSQL's also names the node managing an active job).
    kept = {"output_dropped"} if isinstance(store, JobStore) else {"output_dropped", "node"}
    assert {f.name for f in fields(Job)} | kept == columns(store, path, "jobs")
    if isinstance(store, JobStore):
        assert peek(store, path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert peek(store, path, "PRAGMA journal_mode") == [("wal",)]


@pytest_twisted.ensureDeferred
async def test_put_replaces_the_record_and_reads_see_queued_writes(stores: Opener) -> None:
    store = stores()
    queued = job(1, task_id=1)
    store.put(queued)
    running = queued.evolve(status=JobStatus.RUNNING, worker="w1", started_at=2000.0)
    store.put(running)
    store.append_output(1, 1, "stdout", "hi\n")
    # Asked for in the same turn as the writes, before any was committed.
    assert await store.get(1) == running
    assert await store.output(1) == "hi\n"
    assert [j.id for j in await store.query(status="running")] == [1]


@pytest_twisted.ensureDeferred
async def test_history_survives_close_and_reopen(stores: Opener) -> None:
    first = stores()
    jobs = [
        finished(1, 1100.0, task_id=1, key="1@1000", scheduled_at=1000.0),
        job(2, task_id=1, key="1@1060", scheduled_at=1060.0, status=JobStatus.RUNNING, worker="w1"),
        job(3, task_id=2, key="2@1030", scheduled_at=1030.0),
        job(4, command="adhoc"),
    ]
    for each in jobs:
        first.put(each)
    for seq in (1, 2, 3):
        first.append_output(2, seq, "stdout", f"line {seq}\n")
    await first.close()

    second = stores()
    assert second.load_active() == [(jobs[1], 3), (jobs[2], 0), (jobs[3], 0)]
    assert second.recent_keys(1030.0) == {"1@1060", "2@1030"}
    assert second.recent_keys(0.0) == {"1@1000", "1@1060", "2@1030"}
    assert second.last_scheduled() == {1: 1060.0, 2: 1030.0}
    assert second.max_job_id() == 4
    assert second.max_task_id() == 2  # the tasks its jobs name
    assert await second.output(2) == "line 1\nline 2\nline 3\n"
    assert await second.get(1) == jobs[0]


@pytest_twisted.ensureDeferred
async def test_unretried_lists_each_tasks_newest_job_where_it_ended_badly(stores: Opener) -> None:
    first = stores()
    failed = JobStatus.FAILED
    jobs = [
        finished(1, 1100.0, task_id=1, key="1@1000", status=failed),
        # Task 1's retry ran: its first attempt is owed nothing.
        finished(2, 1110.0, task_id=1, key="1@1000#2", attempt=2, status=failed),
        finished(3, 1100.0, task_id=2, key="2@1000", status=JobStatus.TIMED_OUT),
        finished(4, 1100.0, task_id=3, key="3@1000", status=failed),
        finished(5, 1200.0, task_id=3, key="3@1060"),  # a later run succeeded
        finished(6, 1100.0, task_id=4, key="4@1000", status=JobStatus.CANCELLED),
        job(7, task_id=5, key="5@1000", status=JobStatus.LOST, finished_at=1100.0),
        finished(8, 1100.0, command="adhoc", status=failed),  # no task: not retried
        finished(9, 1100.0, task_id=6, key="6@1000", status=failed),
        job(10, task_id=6, key="6@1060", status=JobStatus.RUNNING, worker="w1"),
    ]
    for each in jobs:
        first.put(each)
    await first.close()
    assert [each.id for each in stores().unretried()] == [2, 3, 7]


@pytest_twisted.ensureDeferred
async def test_empty_store_and_pruned_ids_are_not_reused(stores: Opener) -> None:
    store = stores(keep_seconds=10.0)
    assert store.load_active() == []
    assert store.recent_keys(0.0) == set()
    assert store.last_scheduled() == {}
    assert store.unretried() == []
    assert store.max_job_id() == 0
    assert store.max_task_id() == 0
    await store.put(finished(41, 100.0))
    assert await store.prune(1000.0) == 1
    await store.close()
    # The newest job is gone, but its id must not be handed out again.
    assert stores().max_job_id() == 41


def test_newer_schema_is_refused(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    store = JobStore(path, reactor)
    with pytest.raises(JobStoreError, match="schema version 99"):
        store.open()


# -- queries --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_query_filters_order_limit_and_before_id(stores: Opener) -> None:
    store = stores()
    for i in range(1, 11):
        status = JobStatus.RUNNING if i % 2 else JobStatus.SUCCEEDED
        store.put(job(i, task_id=1 if i <= 5 else 2, worker=f"w{i % 3}", status=status))

    def ids(found: list[Job]) -> list[int]:
        return [j.id for j in found]

    assert ids(await store.query()) == list(range(10, 0, -1))
    assert ids(await store.query(status="running")) == [9, 7, 5, 3, 1]
    assert ids(await store.query(status=JobStatus.SUCCEEDED)) == [10, 8, 6, 4, 2]
    assert ids(await store.query(task_id=1)) == [5, 4, 3, 2, 1]
    assert ids(await store.query(worker="w1")) == [10, 7, 4, 1]
    assert ids(await store.query(task_id=2, status="running", worker="w0")) == [9]
    assert ids(await store.query(status="lost")) == []
    assert ids(await store.query(limit=3)) == [10, 9, 8]
    assert ids(await store.query(limit=3, before_id=8)) == [7, 6, 5]
    assert ids(await store.query(task_id=2, limit=2, before_id=9)) == [8, 7]
    assert ids(await store.query(limit=0)) == []


@pytest_twisted.ensureDeferred
async def test_count_matches_the_query_without_its_page(stores: Opener) -> None:
    store = stores()
    for i in range(1, 11):
        status = JobStatus.RUNNING if i % 2 else JobStatus.SUCCEEDED
        store.put(job(i, task_id=1 if i <= 5 else 2, worker=f"w{i % 3}", status=status))

    for filters in ({}, {"status": "running"}, {"task_id": 1}, {"worker": "w1"}, {"task_id": 2, "status": "running"}):
        assert await store.count(**filters) == len(await store.query(limit=1000, **filters)), filters
    assert await store.count() == 10
    assert await store.count(task_id=2, status="running", worker="w0") == 1
    assert await store.count(status="lost") == 0


@pytest_twisted.ensureDeferred
async def test_newest_is_each_asked_tasks_highest_job(stores: Opener) -> None:
    store = stores()
    for job_id, task_id in [(1, 1), (2, 2), (3, 1), (4, None), (5, 3), (6, 2), (7, 1)]:
        store.put(job(job_id, task_id=task_id))

    newest = await store.newest([1, 2, 9])
    assert sorted((each.task_id, each.id) for each in newest) == [(1, 7), (2, 6)]
    assert await store.newest([]) == []
    assert [each.id for each in await store.newest([3])] == [5]


# -- output ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_output_in_seq_order_duplicates_ignored(stores: Opener) -> None:
    store = stores()
    store.put(job(1))
    store.put(job(2))
    store.append_output(1, 3, "stdout", "c")
    store.append_output(1, 1, "stdout", "a")
    await next_turn()
    store.append_output(1, 2, "stderr", "b")
    store.append_output(1, 2, "stdout", "B!")
    await store.get(1)
    store.append_output(1, 1, "stdout", "A!")

    assert await store.output(1) == "abc"
    assert await store.output(2) == ""
    assert await store.output(3) is None
    # The same, with the streams kept apart in runs.
    assert await store.output_parts(1) == (0, [("stdout", "a"), ("stderr", "b"), ("stdout", "c")])
    assert await store.output_parts(2) == (0, [])
    assert await store.output_parts(3) is None


@pytest_twisted.ensureDeferred
async def test_output_cap_drops_oldest_with_a_marker(stores: Opener) -> None:
    store = stores(output_cap=10)
    store.put(job(1))
    for seq, chunk in enumerate(["aaaa", "bbbb", "cccc", "dddd", "eeee"], start=1):
        store.append_output(1, seq, "stdout", chunk)
        if seq == 3:
            await next_turn()
    assert await store.output(1) == "[... 12 bytes of earlier output dropped ...]\nddddeeee"

    # A re-sent chunk the cap already dropped stays dropped.
    store.append_output(1, 2, "stdout", "bbbb")
    # UTF-8 bytes count, not characters: "é" is two bytes.
    store.append_output(1, 6, "stdout", "éé")
    assert await store.output(1) == "[... 16 bytes of earlier output dropped ...]\neeeeéé"

    # One chunk bigger than the cap keeps its tail, never half a character.
    store.put(job(2))
    store.append_output(2, 1, "stdout", "aé123456789")
    assert await store.output(2) == "[... 3 bytes of earlier output dropped ...]\n123456789"


@pytest_twisted.ensureDeferred
async def test_output_before_the_job_and_cap_state_after_reopen(stores: Opener) -> None:
    store = stores(output_cap=6)
    # Output may land before the job's first put; the drop count is kept.
    store.append_output(1, 1, "stdout", "1111")
    store.append_output(1, 2, "stdout", "2222")
    await next_turn()
    await store.put(job(1, status=JobStatus.RUNNING))
    store.append_output(1, 3, "stdout", "33")
    assert await store.output(1) == "[... 4 bytes of earlier output dropped ...]\n222233"
    await store.close()

    # A new store learns the kept size and drop count from the database.
    again = stores(output_cap=6)
    assert again.load_active()[0][1] == 3
    again.append_output(1, 1, "stdout", "1111")
    again.append_output(1, 4, "stdout", "44")
    assert await again.output(1) == "[... 8 bytes of earlier output dropped ...]\n3344"


@pytest_twisted.ensureDeferred
async def test_undecodable_output_does_not_poison_the_batch(stores: Opener) -> None:
    store = stores()
    put = store.put(job(1))
    store.append_output(1, 1, "stdout", b"bad \xff byte".decode("utf-8", "surrogateescape"))
    await put
    assert await store.output(1) == "bad \\udcff byte"


# -- retention ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_prune_by_age_and_per_task_count_never_touches_active_jobs(stores: Opener) -> None:
    now = 100_000.0
    store = stores(keep_seconds=1000.0, keep_per_task=2)
    old = now - 5000
    jobs = [
        # Task 1: four recent finished jobs; only the newest two stay.
        finished(1, now - 40, task_id=1),
        finished(2, now - 30, task_id=1),
        finished(3, now - 20, task_id=1, status=JobStatus.FAILED),
        finished(4, now - 10, task_id=1),
        # Task 2: old finished jobs go; old active ones stay.
        finished(5, old, task_id=2),
        job(6, task_id=2, status=JobStatus.RUNNING, started_at=old, created_at=old),
        job(7, task_id=2, created_at=old),
        # No finish time: ages from its creation.
        job(8, task_id=3, status=JobStatus.CANCELLED, created_at=old),
        finished(9, now - 1, task_id=3),
    ]
    for each in jobs:
        store.put(each)
        store.append_output(each.id, 1, "stdout", f"out {each.id}")

    assert await store.prune(now) == 4
    assert sorted(j.id for j in await store.query()) == [3, 4, 6, 7, 9]
    assert await store.output(1) is None
    assert await store.output(5) is None
    assert await store.output(6) == "out 6"
    assert await store.prune(now) == 0
    # Only the first prune touched anything: active jobs stay however old.
    assert await store.prune(now + 10**9) == 3
    assert sorted(j.id for j in await store.query()) == [6, 7]


# -- failures -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_failed_transaction_errbacks_its_puts_and_the_store_recovers(path: str) -> None:
    connections: list[FlakyConnection] = []
    store = JobStore(path, reactor, output_cap=8, connect=flaky(connections))
    store.open()
    conn = connections[0]
    try:
        await store.put(job(1))
        store.append_output(1, 1, "stdout", "aaaa")
        await store.get(1)

        committed = store.transactions
        conn.fail_when = lambda sql: sql == "COMMIT"
        doomed = [store.put(job(2)), store.put(job(1, command="changed"))]
        store.append_output(1, 2, "stdout", "bbbb")
        results = await gatherResults([d.addErrback(lambda f: f.value) for d in doomed])
        assert all(isinstance(r, sqlite3.OperationalError) for r in results)
        assert store.transactions == committed
        conn.fail_when = None

        # Nothing of the failed batch is stored, and the next batch works.
        assert await store.get(2) is None
        assert (await store.get(1)) == job(1)
        await gatherResults([store.put(job(2)), store.put(job(3))])
        assert store.transactions == committed + 1
        assert [j.id for j in await store.query()] == [3, 2, 1]
        # The lost chunk's bytes were not counted against the cap.
        store.append_output(1, 3, "stdout", "cccc")
        assert await store.output(1) == "aaaacccc"
    finally:
        conn.fail_when = None
        await store.close()


@pytest_twisted.ensureDeferred
async def test_disk_full_fails_the_batch_and_the_store_recovers(sqlite_stores: Opener) -> None:
    store = sqlite_stores()
    await store.put(job(1))
    conn = store.database.connection
    assert conn is not None
    # SQLite's own SQLITE_FULL: the database may not grow by another page.
    with store.database.lock:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
    big = store.put(job(2, command="x" * 100_000))
    with pytest.raises(sqlite3.OperationalError, match="full"):
        await big
    with store.database.lock:
        conn.execute("PRAGMA max_page_count = 1073741823")
    await store.put(job(3))
    assert [j.id for j in await store.query()] == [3, 1]


@pytest_twisted.ensureDeferred
async def test_bad_record_fails_only_its_own_put(stores: Opener) -> None:
    store = stores()
    good = store.put(job(1, key="1@60"))
    clash = store.put(job(2, key="1@60"))
    also_good = store.put(job(3))
    await gatherResults([good, also_good])
    with pytest.raises(integrity_errors()):
        await clash
    assert store.transactions == 1
    assert [j.id for j in await store.query()] == [3, 1]


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.usefixtures("usual_umask")
@pytest_twisted.ensureDeferred
async def test_the_database_and_its_wal_and_shm_are_created_private(sqlite_stores: Opener, path: str) -> None:
    # They hold every job's env and output; SQLite gives -wal and -shm the
    # main file's permissions.
    store = sqlite_stores()
    await store.put(full_job())
    assert {suffix: _mode(path + suffix) for suffix in ("", "-wal", "-shm")} == {
        "": 0o600,
        "-wal": 0o600,
        "-shm": 0o600,
    }


@pytest.mark.usefixtures("usual_umask")
@pytest_twisted.ensureDeferred
async def test_an_existing_database_keeps_its_mode(sqlite_stores: Opener, path: str) -> None:
    store = sqlite_stores()
    await store.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    os.chmod(path, 0o640)
    store = sqlite_stores()
    await store.put(full_job())
    assert {suffix: _mode(path + suffix) for suffix in ("", "-wal", "-shm")} == {
        "": 0o640,
        "-wal": 0o640,
        "-shm": 0o640,
    }


@pytest_twisted.ensureDeferred
async def test_errors_name_the_database_not_its_folder(sqlite_stores: Opener, path: str) -> None:
    store = sqlite_stores()
    await store.close()
    with pytest.raises(JobStoreClosed) as caught:
        await store.put(full_job())
    assert str(caught.value).startswith("jobs.sqlite: job store is closed")
    assert os.path.dirname(path) not in str(caught.value)


# -- schema versions --------------------------------------------------------------

# jobs.sqlite as schema version 1 made it (the scheduler before triggeredBy
# and task revisions), statement for statement.
_VERSION_1 = (
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
    """CREATE TABLE IF NOT EXISTS output (
        "job_id" INTEGER NOT NULL,
        "seq" INTEGER NOT NULL,
        "stream" TEXT NOT NULL,
        "data" TEXT NOT NULL,
        PRIMARY KEY ("job_id", "seq")
    ) WITHOUT ROWID""",
    "PRAGMA user_version = 1",
)
_V1_COLUMNS = (
    '"id", "command", "created_at", "task_id", "key", "scheduled_at", "target", "timeout", "env", "cwd", '
    '"attempt", "status", "worker", "exit_code", "signal", "started_at", "finished_at", "reason"'
)


def _version_1_database(path: str) -> None:
    """A finished job with output and a running one, written as version 1 wrote them."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in _VERSION_1:
            conn.execute(statement)
        insert = f"INSERT INTO jobs ({_V1_COLUMNS}) VALUES ({', '.join('?' * 18)})"
        conn.execute(
            insert,
            (1, "echo old", 1000.0, 4, "4@960", 960.0, "any", None, "{}", None, 1, "succeeded", "w1", 0, None,
             1001.0, 1002.0, None),
        )
        conn.execute(
            insert,
            (2, "sleep 60", 1010.0, 4, "4@1020", 1020.0, "any", None, '{"A": "b"}', "/tmp", 1, "running", "w1",
             None, None, 1011.0, None, None),
        )
        conn.execute("INSERT INTO output (job_id, seq, stream, data) VALUES (1, 1, 'stdout', 'old\n')")
    conn.close()


@pytest_twisted.ensureDeferred
async def test_a_version_1_database_opens_migrated_and_keeps_its_jobs(sqlite_stores: Opener, path: str) -> None:
    _version_1_database(path)
    store = sqlite_stores()

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert {f.name for f in fields(Job)} | {"output_dropped"} == columns
    assert "task_revisions" in tables

    # Old records read back with no trigger (null in the API), the rest intact.
    running = Job(
        id=2, command="sleep 60", created_at=1010.0, task_id=4, key="4@1020", scheduled_at=1020.0,
        env={"A": "b"}, cwd="/tmp", status=JobStatus.RUNNING, worker="w1", started_at=1011.0,
    )
    assert store.load_active() == [(running, 0)]
    old = await store.get(1)
    assert old is not None and old.triggered_by is None and old.exit_code == 0
    assert await store.output(1) == "old\n"
    assert store.recent_keys(0.0) == {"4@960", "4@1020"}
    assert store.max_job_id() == 2

    # The running job's next state and new jobs carry on in the migrated file.
    await store.put(running.evolve(status=JobStatus.SUCCEEDED, finished_at=1070.0, exit_code=0))
    await store.put(job(3, task_id=4, triggered_by=SCHEDULE))
    await store.close()

    # Opening it again (now version 3) migrates nothing twice.
    again = sqlite_stores()
    got = await again.get(3)
    assert got is not None and got.triggered_by == SCHEDULE
    done = await again.get(2)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.triggered_by is None


@pytest_twisted.ensureDeferred
async def test_active_jobs_keep_what_triggered_them_across_a_restart(stores: Opener) -> None:
    first = stores()
    triggers = [SCHEDULE, TriggeredBy("dashboard"), TriggeredBy.retry_of(1), TriggeredBy("tcp", name="10.0.0.5")]
    for job_id, trigger in enumerate(triggers, start=2):
        first.put(job(job_id, task_id=1, triggered_by=trigger, status=JobStatus.RUNNING, worker="w1"))
    await first.close()

    restored = stores().load_active()
    assert [(each.id, each.triggered_by) for each, _ in restored] == list(enumerate(triggers, start=2))


# jobs.sqlite as schema version 2 made it (before cancel_requested_at): the
# jobs table of version 1 with triggered_by, and task revisions.
_VERSION_2 = (
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
        "output_dropped" INTEGER NOT NULL DEFAULT 0
    )""",
    'CREATE INDEX IF NOT EXISTS jobs_status ON jobs ("status")',
    'CREATE INDEX IF NOT EXISTS jobs_task ON jobs ("task_id", "id")',
    'CREATE INDEX IF NOT EXISTS jobs_worker ON jobs ("worker", "id")',
    'CREATE INDEX IF NOT EXISTS jobs_scheduled ON jobs ("scheduled_at")',
    """CREATE TABLE IF NOT EXISTS output (
        "job_id" INTEGER NOT NULL,
        "seq" INTEGER NOT NULL,
        "stream" TEXT NOT NULL,
        "data" TEXT NOT NULL,
        PRIMARY KEY ("job_id", "seq")
    ) WITHOUT ROWID""",
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
    "PRAGMA user_version = 2",
)
_V2_COLUMNS = (
    '"id", "command", "created_at", "task_id", "key", "scheduled_at", "target", "timeout", "env", "cwd", '
    '"attempt", "triggered_by", "status", "worker", "exit_code", "signal", "started_at", "finished_at", "reason"'
)


def _version_2_database(path: str) -> None:
    """A finished job with output and a running one, written as version 2 wrote them."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in _VERSION_2:
            conn.execute(statement)
        insert = f"INSERT INTO jobs ({_V2_COLUMNS}) VALUES ({', '.join('?' * 19)})"
        conn.execute(
            insert,
            (1, "echo old", 1000.0, 4, "4@960", 960.0, "any", None, "{}", None, 1, '{"kind":"schedule"}', "succeeded",
             "w1", 0, None, 1001.0, 1002.0, None),
        )
        conn.execute(
            insert,
            (2, "sleep 60", 1010.0, 4, "4@1020", 1020.0, "any", None, '{"A": "b"}', "/tmp", 1, None, "running", "w1",
             None, None, 1011.0, None, None),
        )
        conn.execute("INSERT INTO output (job_id, seq, stream, data) VALUES (1, 1, 'stdout', 'old\n')")
        conn.execute(
            "INSERT INTO task_revisions (task_id, at, action, by, before, after) "
            """VALUES (4, 900.0, 'add', '{"kind":"api"}', NULL, '{"id":4}')"""
        )
    conn.close()


@pytest_twisted.ensureDeferred
async def test_a_version_2_database_opens_migrated_and_keeps_its_jobs(sqlite_stores: Opener, path: str) -> None:
    _version_2_database(path)
    store = sqlite_stores()

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    conn.close()
    assert {f.name for f in fields(Job)} | {"output_dropped"} == columns

    # Old records read back with no cancel asked for, the rest intact.
    running = Job(
        id=2, command="sleep 60", created_at=1010.0, task_id=4, key="4@1020", scheduled_at=1020.0,
        env={"A": "b"}, cwd="/tmp", status=JobStatus.RUNNING, worker="w1", started_at=1011.0,
    )
    assert store.load_active() == [(running, 0)]
    old = await store.get(1)
    assert old is not None and old.triggered_by == SCHEDULE and old.cancel_requested_at is None
    assert await store.output(1) == "old\n"
    assert [each.action for each in await store.revisions(4)] == ["add"]

    # The running job's cancel is kept in the migrated file.
    await store.put(running.evolve(cancel_requested_at=1030.5))
    await store.close()

    # Opening it again (now version 3) migrates nothing twice.
    again = sqlite_stores()
    assert again.load_active() == [(running.evolve(cancel_requested_at=1030.5), 0)]


@pytest_twisted.ensureDeferred
async def test_a_running_jobs_cancel_request_is_kept_across_a_restart(stores: Opener) -> None:
    first = stores()
    asked = job(2, task_id=1, status=JobStatus.RUNNING, worker="w1", started_at=5.0, cancel_requested_at=7.25)
    first.put(asked)
    first.put(job(3, task_id=1, status=JobStatus.RUNNING, worker="w1"))
    await first.close()

    second = stores()
    restored = second.load_active()
    assert [(each.id, each.cancel_requested_at) for each, _ in restored] == [(2, 7.25), (3, None)]
    assert await second.get(2) == asked
    # Only the mutable columns change on update: the cancel time is one of them.
    await second.put(asked.evolve(status=JobStatus.CANCELLED, finished_at=9.0))
    done = await second.get(2)
    assert done is not None and done.status is JobStatus.CANCELLED and done.cancel_requested_at == 7.25


def _version_3_database(path: str) -> None:
    """The version 2 database above, as version 3 left it (a cancel time, no versions)."""
    _version_2_database(path)
    with sqlite3.connect(path) as conn:
        conn.execute('ALTER TABLE jobs ADD COLUMN "cancel_requested_at" REAL')
        conn.execute("PRAGMA user_version = 3")
    conn.close()


@pytest_twisted.ensureDeferred
async def test_a_version_3_database_opens_with_every_job_at_version_1(sqlite_stores: Opener, path: str) -> None:
    _version_3_database(path)
    store = sqlite_stores()

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 4
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    conn.close()
    assert {f.name for f in fields(Job)} | {"output_dropped"} == columns
    [(running, _seq)] = store.load_active()
    old = await store.get(1)
    assert running.version == 1 and old is not None and old.version == 1

    # A later record's version is kept, and read back after a restart.
    await store.put(running.evolve(status=JobStatus.SUCCEEDED, finished_at=1070.0, version=4))
    await store.close()
    again = sqlite_stores()
    done = await again.get(2)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.version == 4
