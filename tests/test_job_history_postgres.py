"""What only the PostgreSQL backend has: a lost connection, a redacted URL, its
schema version, and the leader lease's row on a real server.

The job history's behaviour itself is proven by the same tests as SQLite's
(``stores`` runs them on both); see ``tests/postgres_support.py`` for the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from scheduler.job_book import JobBook
from scheduler.job_history.database import JobStoreError
from scheduler.job_history.postgres import Fenced, FireTaken, IdBlocks, PostgresLeaseStore, redact
from scheduler.job_store import PostgresJobStore
from scheduler.leader_lease import LeaderLease
from tests.job_history_support import finished, job
from tests.postgres_support import PASSWORD, PostgresServer


def _terminate(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))


def test_the_url_is_shown_without_its_password() -> None:
    assert redact("postgresql://sched:hunter2@db.example:5433/jobs?sslmode=require") == (
        "postgresql://sched@db.example:5433/jobs"
    )
    assert redact("postgresql://db/jobs?password=hunter2") == "postgresql://db/jobs"
    assert set(redact("host=db user=sched password=hunter2 dbname=jobs").split()) == {"host=db", "user=sched", "dbname=jobs"}


def test_a_database_that_cannot_be_reached_is_refused_by_name_without_the_password(
    postgres_server: PostgresServer,
) -> None:
    wrong = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nothing"
    store = PostgresJobStore(wrong, reactor)
    with pytest.raises(JobStoreError) as caught:
        store.open()
    assert "postgresql://postgres@127.0.0.1:1/nothing: cannot connect" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    bad_password = postgres_server.url().replace(PASSWORD, "not-" + PASSWORD)
    with pytest.raises(JobStoreError, match="password authentication failed") as caught:
        PostgresJobStore(bad_password, reactor).open()
    assert PASSWORD not in str(caught.value)


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    PostgresJobStore(pg_url, reactor).database.open()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE job_history_meta SET value = 99 WHERE name = 'schema_version'")
    with pytest.raises(JobStoreError, match="schema version 99 is newer"):
        PostgresJobStore(pg_url, reactor).open()


@pytest_twisted.ensureDeferred
async def test_a_lost_connection_fails_its_batch_clearly_and_the_next_one_reconnects(pg_url: str) -> None:
    store = PostgresJobStore(pg_url, reactor)
    store.open()
    try:
        await store.put(job(1))
        conn = store.database.connection
        assert conn is not None
        _terminate(pg_url, conn.info.backend_pid)
        with pytest.raises(JobStoreError, match="lost the connection to the job database") as caught:
            await store.put(job(2))
        assert PASSWORD not in str(caught.value)
        # Nothing of the failed batch is stored, and the next batch works.
        await store.put(job(3))
        assert [each.id for each in await store.query()] == [3, 1]
        assert store.max_job_id() == 3
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_output_with_nul_characters_is_kept(pg_url: str) -> None:
    store = PostgresJobStore(pg_url, reactor)
    store.open()
    try:
        store.put(job(1))
        store.append_output(1, 1, "stdout", "a\x00b")
        assert await store.output(1) == "a\x00b"
    finally:
        await store.close()


# -- the lease row --------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def lease_stores(pg_url: str) -> AsyncIterator[Any]:
    opened: list[PostgresLeaseStore] = []

    def open_store(node: str) -> PostgresLeaseStore:
        store = PostgresLeaseStore(
            pg_url,
            reactor,
            node=node,
            address=f"http://{node}:3000",
            workers=lambda: 2,
            worker_names=lambda: [f"{node}-w1", f"{node}-w2"],
        )
        store.open()
        store.start()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest_twisted.ensureDeferred
async def test_one_of_two_nodes_takes_the_lease_and_renews_it_the_other_waits(lease_stores: Any) -> None:
    a, b = lease_stores("a"), lease_stores("b")
    first = await a.attempt("a", None, 5.0)
    assert (first.holder, first.epoch) == ("a", 1) and 4.5 < first.left <= 5.0
    assert (await b.attempt("b", None, 5.0)).holder == "a"
    renewed = await a.attempt("a", 1, 5.0)
    assert (renewed.holder, renewed.epoch) == ("a", 1) and renewed.since == first.since
    # Both nodes heartbeat in the same statement.
    assert [(name, address, workers) for name, address, workers, _ in await a.nodes()] == [
        ("a", "http://a:3000", 2),
        ("b", "http://b:3000", 2),
    ]
    # And their workers by name: what target "all" means on the other nodes.
    assert await a.peer_workers(10.0) == ["b-w1", "b-w2"]
    assert await b.peer_workers(10.0) == ["a-w1", "a-w2"]


@pytest_twisted.ensureDeferred
async def test_an_expired_lease_is_taken_with_the_next_epoch(lease_stores: Any) -> None:
    a, b = lease_stores("a"), lease_stores("b")
    await a.attempt("a", None, 0.2)
    await deferLater(reactor, 0.3, lambda: None)
    taken = await b.attempt("b", None, 5.0)
    assert (taken.holder, taken.epoch) == ("b", 2)
    # a's renewal of epoch 1 is refused.
    assert (await a.attempt("a", 1, 5.0)).holder == "b"


async def _until(condition: Any, seconds: float = 10.0) -> None:
    """Wait for *condition* (looked at every 20 ms); fails after *seconds*: well
    under the 30 s lease, so a takeover that waited for expiry fails the test."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"still not {condition} after {seconds:g}s")


@pytest_twisted.ensureDeferred
async def test_when_the_holders_session_is_killed_another_node_takes_over_at_once(
    lease_stores: Any, pg_url: str
) -> None:
    a_store, b_store = lease_stores("a"), lease_stores("b")
    a = LeaderLease(reactor, a_store, "a", lease=30.0, renew_every=0.1)
    b = LeaderLease(reactor, b_store, "b", lease=30.0, renew_every=0.1)
    try:
        a.start()
        await _until(a.leading)
        b.start()
        # b has asked at least once, and found a holding the lease.
        await _until(lambda: b.leader == "a")
        assert a.leading() and not b.leading() and a.epoch == 1
        # The holder's session ends (a crash ends it so): within a 30 s lease, b takes over at once.
        _terminate(pg_url, await a_store.backend_pid())
        await _until(b.leading)
        assert b.epoch == 2
        # a reconnects, finds b in epoch 2 and stops leading.
        await _until(lambda: not a.leading())
        assert a.leader == "b"
    finally:
        a.stop()
        b.stop()


# -- fencing ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_fire_is_recorded_only_under_the_leases_epoch_and_only_once(lease_stores: Any, pg_url: str) -> None:
    a_lease, b_lease = lease_stores("a"), lease_stores("b")
    await a_lease.attempt("a", None, 30.0)  # a leads, epoch 1
    store = PostgresJobStore(pg_url, reactor)
    store.open()
    held: dict[str, tuple[str, int | None]] = {"now": ("a", 1)}
    store.database.fence = lambda: held["now"]
    try:
        await store.put(job(1, task_id=1, key="1@60", scheduled_at=60.0))
        await store.put(job(2, command="adhoc"))  # not a fire: never fenced
        # b takes over (a's session is gone, say); a does not know yet.
        _terminate(pg_url, await a_lease.backend_pid())
        taken = await b_lease.attempt("b", None, 30.0)
        assert (taken.holder, taken.epoch) == ("b", 2)
        with pytest.raises(Fenced, match=r"job 3 \(1@120\) not recorded: made under epoch 1, and the lease is b's in epoch 2"):
            await store.put(job(3, task_id=1, key="1@120", scheduled_at=120.0))
        # What a made under its lease and that is stored may still be updated (its end).
        await store.put(finished(1, 100.0, task_id=1, key="1@60", scheduled_at=60.0))
        # A node that leads no lease makes no fire.
        held["now"] = ("a", None)
        with pytest.raises(Fenced, match="made under no lease"):
            await store.put(job(4, task_id=1, key="1@180", scheduled_at=180.0))
        assert store.database.fenced == 2
        # The new leader: a fire already recorded is taken, not recorded twice.
        held["now"] = ("b", 2)
        with pytest.raises(FireTaken, match="1@60 is already recorded"):
            await store.put(job(5, task_id=1, key="1@60", scheduled_at=60.0))
        await store.put(job(6, task_id=1, key="1@120", scheduled_at=120.0))
        stored = await store.query()
        assert [(each.id, each.status.value) for each in stored] == [(6, "queued"), (2, "queued"), (1, "succeeded")]
    finally:
        await store.close()


# -- job ids from the database ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_nodes_on_one_database_take_job_ids_no_other_node_gets(pg_url: str) -> None:
    first, second = PostgresJobStore(pg_url, reactor), PostgresJobStore(pg_url, reactor)
    first.open()
    second.open()
    try:
        a, b = IdBlocks(first.reserve_ids, size=3), IdBlocks(second.reserve_ids, size=3)
        taken = [a(), b(), a(), a(), a(), b()]
        assert len(set(taken)) == 6 and taken[:2] == [1, 4] and taken[4] == 7
        # Ids handed out count for max_job_id even before any job has them.
        assert first.max_job_id() == 9
        book = JobBook(Clock())
        book.id_source = a
        assert [book.create("true").id for _ in range(3)] == [8, 9, 10]
        await first.put(job(10))
        assert second.max_job_id() == 12  # a's next block: 10, 11, 12
    finally:
        await first.close()
        await second.close()


def test_one_batch_of_many_records_keeps_each_jobs_last_record_and_its_dropped_output(pg_url: str) -> None:
    """Consecutive records go in one upsert: a job put twice in it still ends
    with its last record, and output over the cap right after a job's first
    record still counts the bytes dropped on its row (the chunk's row change
    comes after that record is written, not before)."""
    from scheduler.job_history.database import Chunk, Put
    from scheduler.job_history.postgres import PostgresDatabase
    from scheduler.jobs import JobStatus

    database = PostgresDatabase(pg_url, output_cap=10, keep_per_task=100, keep_seconds=1e9)
    database.node = "a"
    database.open()
    try:
        outcomes = database.write_batch(
            [
                Put(2, False, database.row(job(2))),
                Put(1, False, database.row(job(1, status=JobStatus.RUNNING, worker="w1"))),
                Chunk(1, 1, "stdout", "0123456789abcdef"),
                # An int where the others have floats: the column's array is of one type.
                Put(3, False, database.row(job(3, created_at=2000))),
                Put(2, True, database.row(finished(2, 1100.0))),
            ]
        )
        assert outcomes == [None] * 4  # one a put (a chunk has none)
        assert [(each.id, each.status) for each in database.query(None, None, None, 10, None)] == [
            (3, JobStatus.QUEUED),
            (2, JobStatus.SUCCEEDED),
            (1, JobStatus.RUNNING),
        ]
        assert database.output(1) == "[... 6 bytes of earlier output dropped ...]\n6789abcdef"
        stored = database.get(3)
        assert stored is not None and stored.created_at == 2000.0
        assert database.max_job_id() == 3
        # Ids from the sequence need no setval; an id past them still moves it.
        assert database.reserve_ids(2) == [4, 5]
        assert database.write_batch([Put(5, False, database.row(job(5)))]) == [None]
        assert database.write_batch([Put(50, False, database.row(job(50)))]) == [None]
        assert database.reserve_ids(1) == [51]
    finally:
        database.close()
