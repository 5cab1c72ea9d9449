"""The live feed across nodes on a real PostgreSQL: a node's committed history
batch notifies "feed" with the ids it changed (capped, saying so), another
node's relay reads those jobs and their output after a seq, leaving out what
it manages itself, and the whole chain (notification, listener, relay) puts
another node's job and output on this node's feed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from scheduler.cluster_events import MAX_PAYLOAD, PostgresEvents, channel, schema_of
from scheduler.feed_relay import FeedRelay, RelayedChunk
from scheduler.job_history.database import Put
from scheduler.job_history.postgres import PostgresDatabase
from scheduler.job_store import PostgresJobStore
from scheduler.jobs import Job, JobStatus
from tests.job_history_support import job
from tests.postgres_support import pg_url, postgres_server  # noqa: F401


@pytest.fixture
def listener(pg_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:  # noqa: F811
    conn = psycopg.connect(pg_url, autocommit=True)
    conn.execute(f'LISTEN "{channel(schema_of(conn), "feed")}"')
    yield conn
    conn.close()


def _heard(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[dict[str, Any], int]]:
    return [(json.loads(note.payload), len(note.payload.encode())) for note in conn.notifies(timeout=0.5, stop_after=10)]


def _database(url: str, node: str | None) -> PostgresDatabase:
    database = PostgresDatabase(url, output_cap=1 << 20, keep_per_task=100, keep_seconds=86400)
    database.node = node
    database.open()
    return database


def test_a_batch_notifies_the_jobs_it_wrote_and_gave_output_and_a_node_reads_the_others(
    pg_url: str,  # noqa: F811
    listener: psycopg.Connection[tuple[object, ...]],
) -> None:
    a, b = _database(pg_url, "a"), _database(pg_url, "b")
    try:
        from scheduler.job_history.database import Chunk

        running = job(1, status=JobStatus.RUNNING, worker="w1", started_at=1001.0)
        b.write_batch([Put(1, False, b.row(running)), Chunk(1, 1, "stdout", "one\n"), Chunk(1, 2, "stderr", "two\n")])
        a.write_batch([Put(2, False, a.row(job(2, status=JobStatus.RUNNING)))])
        heard = [fields for fields, _ in _heard(listener)]
        assert heard == [{"node": "b", "jobs": [1], "output": [1]}, {"node": "a", "jobs": [2]}]

        jobs, chunks, more = a.relayed([1, 2], {1: 0, 2: 0}, False)
        assert [(each.id, each.status, each.worker) for each in jobs] == [(1, JobStatus.RUNNING, "w1")]
        assert chunks == [(1, 1, "stdout", "one\n"), (1, 2, "stderr", "two\n")] and not more
        # After a seq; and a reload's every active job of the others (not a's own 2).
        jobs, chunks, _ = a.relayed([], {1: 1}, True)
        assert [each.id for each in jobs] == [1] and chunks == [(1, 2, "stderr", "two\n")]
        # b's relay leaves out its own job's output, and shows a's job.
        jobs, chunks, _ = b.relayed([2], {1: 0}, False)
        assert [each.id for each in jobs] == [2] and chunks == []
        assert a.output_with_seq(1) == ("one\ntwo\n", 2)
        assert a.output_with_seq(3) is None
    finally:
        a.close()
        b.close()


def test_a_batch_of_many_jobs_names_a_bounded_few_and_says_more(
    pg_url: str,  # noqa: F811
    listener: psycopg.Connection[tuple[object, ...]],
) -> None:
    b = _database(pg_url, "b")
    try:
        # Ids of 19 digits: the longest a payload can hold.
        base = 10**18
        b.write_batch([Put(base + n, False, b.row(job(base + n))) for n in range(400)])
        [(fields, size)] = _heard(listener)
        assert fields["more"] is True and len(fields["jobs"]) < 400
        assert size <= MAX_PAYLOAD
    finally:
        b.close()


def test_a_node_without_a_name_sends_no_feed_notification(
    pg_url: str,  # noqa: F811
    listener: psycopg.Connection[tuple[object, ...]],
) -> None:
    alone = _database(pg_url, None)
    try:
        alone.write_batch([Put(1, False, alone.row(job(1)))])
        assert _heard(listener) == []
    finally:
        alone.close()


class _Feed:
    def __init__(self, watched: set[int]) -> None:
        self.watched = watched

    def __len__(self) -> int:
        return 1

    def watched_jobs(self) -> set[int]:
        return self.watched


@pytest_twisted.ensureDeferred
async def test_another_nodes_job_and_output_reach_this_nodes_feed_through_the_notification(
    pg_url: str,  # noqa: F811
) -> None:
    a, b = PostgresJobStore(pg_url, reactor), PostgresJobStore(pg_url, reactor)
    a.database.node, b.database.node = "a", "b"
    a.open()
    b.open()
    events = PostgresEvents(pg_url, reactor, "a")
    published: list[tuple[str, Any]] = []
    ended: Deferred[None] = Deferred()
    listening: Deferred[None] = Deferred()

    def publish_job(each: Job) -> None:
        published.append(("job", each.status))
        if each.status is JobStatus.SUCCEEDED and not ended.called:
            ended.callback(None)

    def publish_output(chunk: RelayedChunk) -> None:
        published.append(("output", (chunk.seq, chunk.data)))

    relay = FeedRelay(reactor, a, _Feed({5}), publish_job=publish_job, publish_output=publish_output)
    events.subscribe("feed", relay.heard)
    events.resync.append(lambda: listening.called or listening.callback(None))
    events.start()
    try:
        await listening
        await b.put(job(5, status=JobStatus.RUNNING, worker="w1"))
        for seq in (1, 2, 3):
            b.append_output(5, seq, "stdout", f"line {seq}\n")
        await b.put(job(5, status=JobStatus.SUCCEEDED, worker="w1", exit_code=0, finished_at=1010.0))
        await ended
        outputs = [data for kind, data in published if kind == "output"]
        assert outputs == [(1, "line 1\n"), (2, "line 2\n"), (3, "line 3\n")]
        # (Whether "running" was published first depends on when a's read ran:
        # a read publishes the record as stored then, not every state it passed.)
        assert published[-1] == ("job", JobStatus.SUCCEEDED)
    finally:
        events.stop()
        relay.stop()
        await a.close()
        await b.close()
