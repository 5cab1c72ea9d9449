"""Failover against a real PostgreSQL: a node takes a worker's running jobs over,
the node that had them can no longer write them (the ownership fence), and the
leader's sweep settles the jobs of a node gone silent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor

from scheduler.cluster_events import channel, schema_of
from scheduler.job_store import Disowned, PostgresJobStore
from scheduler.jobs import JobStatus
from tests.job_history_support import finished, job
from tests.postgres_support import pg_url, postgres_server  # noqa: F401

Nodes = Callable[[str], PostgresJobStore]


@pytest_twisted.async_yield_fixture
async def nodes(pg_url: str) -> AsyncIterator[Nodes]:  # noqa: F811
    opened: list[PostgresJobStore] = []

    def open_node(name: str) -> PostgresJobStore:
        store = PostgresJobStore(pg_url, reactor)
        store.database.node = name
        store.open()
        opened.append(store)
        return store

    yield open_node
    for store in opened:
        await store.close()


def _row(url: str, job_id: int) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute('SELECT status, "node", reason FROM jobs WHERE id = %s', (job_id,)).fetchone()
    assert row is not None
    return tuple(row)


@pytest_twisted.ensureDeferred
async def test_a_node_takes_over_a_workers_running_jobs_and_the_old_one_can_write_them_no_more(
    nodes: Nodes,
    pg_url: str,  # noqa: F811
) -> None:
    a, b = nodes("a"), nodes("b")
    running = job(1, status=JobStatus.RUNNING, worker="w1", started_at=1001.0)
    await a.put(running)
    await a.put(job(2, status=JobStatus.RUNNING, worker="w2"))
    await a.put(finished(3, 1010.0, worker="w1"))
    for seq in (1, 2, 3):
        a.append_output(1, seq, "stdout", f"line {seq}\n")
    await a.put(running)  # after the output, in the same order
    # w1 reconnects to b and reports 1, 2 (not w1's) and 3 (ended).
    taken = await b.take_over("w1", [1, 2, 3])
    assert [(each.id, each.status, each.started_at, last, was) for each, last, was in taken] == [
        (1, JobStatus.RUNNING, 1001.0, 3, "a")
    ]
    assert _row(pg_url, 1)[:2] == ("running", "b")
    # a, which does not know, writes the job lost: refused, and told apart.
    with pytest.raises(Disowned, match="job 1 is managed by another node now"):
        await a.put(finished(1, 1100.0, status=JobStatus.LOST, worker="w1"))
    assert a.database.disowned == 1
    # Its other jobs it still writes; b writes the one it took.
    await a.put(finished(2, 1100.0, worker="w2"))
    await b.put(finished(1, 1200.0, worker="w1"))
    assert _row(pg_url, 1)[:2] == ("succeeded", "b")
    assert _row(pg_url, 2)[:2] == ("succeeded", "a")
    assert await b.output(1) == "line 1\nline 2\nline 3\n"
    # A job that ended is not taken; one this node has already is, from itself (None).
    assert await b.take_over("w1", [1]) == []
    await b.put(job(6, status=JobStatus.RUNNING, worker="w1"))
    assert [(each.id, was) for each, _, was in await b.take_over("w1", [6])] == [(6, None)]


@pytest_twisted.ensureDeferred
async def test_a_refused_record_in_a_batch_leaves_the_others_of_the_batch_written(
    nodes: Nodes,
    pg_url: str,  # noqa: F811
) -> None:
    a, b = nodes("a"), nodes("b")
    await a.put(job(1, status=JobStatus.RUNNING, worker="w1"))
    await a.put(job(2, status=JobStatus.RUNNING, worker="w1"))
    await b.take_over("w1", [1])
    # One batch (one reactor turn): the refused record and two that are a's.
    refused = a.put(finished(1, 1100.0, status=JobStatus.LOST, worker="w1"))
    kept = a.put(finished(2, 1100.0, worker="w1"))
    new = a.put(job(3))
    with pytest.raises(Disowned):
        await refused
    await kept
    await new
    assert [_row(pg_url, job_id)[:2] for job_id in (1, 2, 3)] == [("running", "b"), ("succeeded", "a"), ("queued", "a")]
    # Again in a batch with a record refused for its content (NUL in text),
    # which sends the batch down the careful path, record by record.
    refused = a.put(finished(1, 1200.0, status=JobStatus.LOST, worker="w1"))
    bad = a.put(job(4, command="nul\x00here"))
    kept = a.put(finished(3, 1200.0))
    with pytest.raises(Disowned):
        await refused
    with pytest.raises(Exception, match="NUL"):
        await bad
    await kept
    assert [_row(pg_url, job_id)[:2] for job_id in (1, 3)] == [("running", "b"), ("succeeded", "a")]
    assert a.database.disowned == 2


@pytest_twisted.ensureDeferred
async def test_a_fired_job_taken_over_is_refused_as_disowned_not_as_a_fire_taken(
    nodes: Nodes,
    pg_url: str,  # noqa: F811
) -> None:
    a, b = nodes("a"), nodes("b")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS scheduler_lease (id INTEGER PRIMARY KEY, node TEXT, epoch BIGINT NOT NULL)"
        )
        conn.execute("INSERT INTO scheduler_lease VALUES (1, 'a', 1)")
    a.database.fence = lambda: ("a", 1)
    fired = job(1, task_id=4, key="4@60", scheduled_at=60.0, status=JobStatus.RUNNING, worker="w1")
    await a.put(fired)
    await b.take_over("w1", [1])
    with pytest.raises(Disowned):
        await a.put(finished(1, 1100.0, task_id=4, key="4@60", scheduled_at=60.0, status=JobStatus.LOST, worker="w1"))
    assert a.database.fenced == 0 and a.database.disowned == 1


@pytest_twisted.ensureDeferred
async def test_the_sweep_ends_a_silent_nodes_running_jobs_and_offers_its_queued_ones(
    nodes: Nodes,
    pg_url: str,  # noqa: F811
) -> None:
    a, b, leader = nodes("a"), nodes("b"), nodes("leader")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS scheduler_nodes (name TEXT PRIMARY KEY, address TEXT NOT NULL, "
            "workers INTEGER NOT NULL, last_seen TIMESTAMPTZ NOT NULL)"
        )
        conn.execute(
            "INSERT INTO scheduler_nodes VALUES ('a', 'http://a', 1, now() - interval '60 seconds'), "
            "('b', 'http://b', 1, now()), ('leader', 'http://l', 0, now())"
        )
        schema = schema_of(conn)
    await a.put(job(1, status=JobStatus.RUNNING, worker="w1", task_id=1))
    await a.put(job(2, status=JobStatus.QUEUED))
    await a.put(job(3, status=JobStatus.RUNNING, worker="w2"))
    await b.put(job(4, status=JobStatus.RUNNING, worker="w3"))
    # w2 made it to b before the sweep: that job is b's.
    await b.take_over("w2", [3])
    # A job of a node that never beat at all (its row is gone) counts as silent too.
    ghost = nodes("ghost")
    await ghost.put(job(5, status=JobStatus.RUNNING, worker="w4"))
    assert await leader.silent_nodes(90.0) == ["ghost"]
    assert await leader.silent_nodes(30.0) == ["a", "ghost"]
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel(schema, "jobs")}"')
        lost, offered = await leader.release("a", 2000.0, "its node a went silent")
        heard = list(listener.notifies(timeout=5, stop_after=1))
    assert [(each.id, each.status, each.finished_at, each.reason) for each in lost] == [
        (1, JobStatus.LOST, 2000.0, "its node a went silent")
    ]
    assert offered == 1 and [json.loads(each.payload) for each in heard] == [{"node": "leader", "offered": 1}]
    assert [_row(pg_url, job_id)[:2] for job_id in (1, 2, 3, 4)] == [
        ("lost", "leader"),
        ("queued", None),
        ("running", "b"),
        ("running", "b"),
    ]
    # Node a comes back to life: it can no longer write what was settled.
    with pytest.raises(Disowned):
        await a.put(finished(1, 2100.0, worker="w1", task_id=1))
    # Offered jobs are anybody's to write.
    await b.put(job(2, status=JobStatus.RUNNING, worker="w3"))
    assert _row(pg_url, 2)[:2] == ("running", "b")
    # The lost job is owed a retry: the leader's next sweep finds it.
    assert [each.id for each in await leader.unretried_since(1999.0)] == [1]
    assert await leader.unretried_since(2001.0) == []
