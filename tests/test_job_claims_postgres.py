"""The cluster's jobs on a real PostgreSQL (scheduler.job_claims' store): an
offer is stored with no node and notified in its transaction, claimers racing
for the same offered jobs take each exactly once, and a cancel of a job
another node manages is done or relayed in the database."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import psycopg
import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor

from scheduler.cluster_events import channel, schema_of
from scheduler.job_history.postgres import PostgresDatabase
from scheduler.job_store import PostgresJobStore
from scheduler.jobs import JobStatus
from tests.job_history_support import job
from tests.postgres_support import pg_url, postgres_server  # noqa: F401


def _database(url: str, node: str) -> PostgresDatabase:
    database = PostgresDatabase(url, output_cap=1 << 20, keep_per_task=100, keep_seconds=86400)
    database.node = node
    database.open()
    return database


@pytest.fixture
def listener(pg_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:  # noqa: F811
    conn = psycopg.connect(pg_url, autocommit=True)
    schema = schema_of(conn)
    for topic in ("jobs", "cancels"):
        conn.execute(f'LISTEN "{channel(schema, topic)}"')
    yield conn
    conn.close()


def _heard(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[str, dict[str, object]]]:
    return [
        (note.channel.rsplit(".", 1)[1], json.loads(note.payload))
        for note in conn.notifies(timeout=0.5, stop_after=10)
    ]


def _node_of(url: str, job_id: int) -> tuple[str, str | None]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT status, node FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest_twisted.ensureDeferred
async def test_an_offer_is_stored_with_no_node_and_notified_with_its_commit(
    pg_url: str,  # noqa: F811
    listener: psycopg.Connection[tuple[object, ...]],
) -> None:
    store = PostgresJobStore(pg_url, reactor)
    store.database.node = "a"
    store.open()
    try:
        # Its first record and its offer in one batch: the offer is the row written.
        first = store.put(job(1, target="label:gpu"))
        await store.offer(job(1, target="label:gpu"))
        await first
        assert _node_of(pg_url, 1) == ("queued", None)
        await store.put(job(2))
        assert _node_of(pg_url, 2) == ("queued", "a")
        assert _heard(listener) == [("jobs", {"node": "a", "targets": ["label:gpu"]})]
        assert store.database.managed_active() == {2}
    finally:
        await store.close()


def test_two_claimers_racing_for_the_same_offered_jobs_claim_each_exactly_once(pg_url: str) -> None:  # noqa: F811
    offering = _database(pg_url, "a")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for job_id in range(1, 301):
            conn.execute(
                "INSERT INTO jobs (id, command, created_at, target, env, attempt, status, node) "
                "VALUES (%s, 'true', 0, %s, '{}', 1, 'queued', NULL)",
                (job_id, "any" if job_id % 3 else "label:x"),
            )
    claimers = {"b": _database(pg_url, "b"), "c": _database(pg_url, "c")}
    claimed: dict[str, list[int]] = {"b": [], "c": []}
    sizes: list[int] = []
    start = threading.Barrier(2)

    def claim(node: str) -> None:
        start.wait()
        while True:
            jobs = claimers[node].claim(["any", "label:x"], 7)
            if not jobs:
                return
            sizes.append(len(jobs))
            claimed[node].extend(job.id for job in jobs)

    threads = [threading.Thread(target=claim, args=(node,)) for node in claimers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert set(claimed["b"]).isdisjoint(claimed["c"])
        assert max(sizes) <= 7
        assert sorted(claimed["b"] + claimed["c"]) == list(range(1, 301))
        # Both took part (each claim is 7 of 300).
        assert claimed["b"] and claimed["c"]
        with psycopg.connect(pg_url) as conn:
            rows = dict(conn.execute("SELECT id, node FROM jobs").fetchall())
        assert all(rows[job_id] == node for node, ids in claimed.items() for job_id in ids)
    finally:
        for database in (offering, *claimers.values()):
            database.close()


def test_a_claim_takes_only_offered_queued_jobs_of_the_targets_asked_oldest_first(pg_url: str) -> None:  # noqa: F811
    database = _database(pg_url, "b")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for job_id, target, status, node in (
            (1, "any", "queued", "a"),  # managed by a
            (2, "label:gpu", "queued", None),  # a target b cannot serve
            (3, "any", "running", None),
            (4, "worker:w1", "queued", None),
            (5, "any", "queued", None),
            (6, "any", "queued", None),
        ):
            conn.execute(
                "INSERT INTO jobs (id, command, created_at, target, env, attempt, status, node) "
                "VALUES (%s, 'true', 0, %s, '{}', 1, %s, %s)",
                (job_id, target, status, node),
            )
    try:
        assert database.offered_count() == 4  # 2, 4, 5 and 6: queued, no node
        taken = database.claim(["any", "worker:w1"], 2)
        assert [(each.id, each.status) for each in taken] == [(4, JobStatus.QUEUED), (5, JobStatus.QUEUED)]
        assert [each.id for each in database.claim(["any", "worker:w1"], 5)] == [6]
        assert database.claim(["any", "worker:w1"], 5) == []
        assert database.offered_count() == 1
    finally:
        database.close()


def test_a_cancel_of_a_job_managed_elsewhere_is_done_or_relayed_in_the_database(
    pg_url: str,  # noqa: F811
    listener: psycopg.Connection[tuple[object, ...]],
) -> None:
    database = _database(pg_url, "a")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for job_id, status, node in ((1, "queued", None), (2, "running", "b"), (3, "succeeded", "b")):
            conn.execute(
                "INSERT INTO jobs (id, command, created_at, target, env, attempt, status, node) "
                "VALUES (%s, 'true', 0, 'any', '{}', 1, %s, %s)",
                (job_id, status, node),
            )
    b = _database(pg_url, "b")
    try:
        assert database.cancel_elsewhere(1, 50.0, "cancelled before it started") == ("cancelled", None)
        cancelled = database.get(1)
        assert (
            cancelled is not None
            and cancelled.status is JobStatus.CANCELLED
            and cancelled.finished_at == 50.0
        )
        assert database.cancel_elsewhere(2, 60.0, "unused") == ("asked", "b")
        # Asked twice: the first time asked is kept.
        assert database.cancel_elsewhere(2, 70.0, "unused") == ("asked", "b")
        asked = database.get(2)
        assert asked is not None and asked.status is JobStatus.RUNNING and asked.cancel_requested_at == 60.0
        assert database.cancel_elsewhere(3, 80.0, "unused") == ("finished", None)
        assert database.cancel_elsewhere(99, 80.0, "unused") == ("finished", None)
        assert _heard(listener) == [
            # The offering node counts the offered job as its task's run going on, until told.
            ("jobs", {"node": "a", "ended": [1]}),
            *[("cancels", {"node": "a", "job": 2, "manager": "b"})] * 2,
        ]
        assert b.cancels_owed() == [2] and database.cancels_owed() == []
    finally:
        database.close()
        b.close()


@pytest_twisted.ensureDeferred
async def test_ends_are_told_after_they_commit_and_a_look_finds_what_is_still_active(
    pg_url: str,  # noqa: F811
    listener: psycopg.Connection[tuple[object, ...]],
) -> None:
    store = PostgresJobStore(pg_url, reactor)
    store.database.node = "b"
    store.open()
    try:
        store.put(job(1))
        store.put(job(2, status=JobStatus.SUCCEEDED, finished_at=1002.0))
        # Queued behind the puts: told once they are committed.
        told = store.notify_ended(list(range(2, 702)))
        assert await store.still_active([1, 2, 3]) == [1]
        await told
        heard = _heard(listener)
        assert [topic for topic, _ in heard] == ["jobs"] * 3
        assert [each for _, fields in heard for each in fields["ended"]] == list(range(2, 702))  # type: ignore[attr-defined]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_fire_offered_with_its_first_record_is_fenced_and_taken_like_any_fire(pg_url: str) -> None:  # noqa: F811
    from scheduler.job_history.postgres import Fenced, FireTaken, PostgresLeaseStore

    lease = PostgresLeaseStore(pg_url, reactor, node="a", address="http://a", workers=lambda: 0)
    lease.open()
    lease.start()
    store = PostgresJobStore(pg_url, reactor)
    store.database.node = "a"
    held: dict[str, tuple[str, int | None]] = {"now": ("a", 1)}
    store.database.fence = lambda: held["now"]
    store.open()
    try:
        await lease.attempt("a", None, 30.0)  # a leads, epoch 1
        fire = job(1, task_id=1, key="1@60", scheduled_at=60.0)
        first = store.put(fire)
        await store.offer(fire)
        await first
        assert _node_of(pg_url, 1) == ("queued", None)
        # The same fire again (another job): taken, whether offered or not.
        with pytest.raises(FireTaken):
            await store.offer(job(2, task_id=1, key="1@60", scheduled_at=60.0))
        # Made under no lease: refused, offered or not.
        held["now"] = ("a", None)
        with pytest.raises(Fenced):
            await store.offer(job(3, task_id=1, key="1@120", scheduled_at=120.0))
        assert [each.id for each in await store.query()] == [1]
    finally:
        await store.close()
        lease.close()
