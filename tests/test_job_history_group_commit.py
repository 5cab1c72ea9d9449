"""scheduler.job_history.group_commit: writes batched one transaction per reactor turn, reads behind them.

The batching itself is tested synchronously (``superseded``) and through the
SQLite history on the real reactor and its real thread.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from scheduler.job_history.database import Chunk, Put
from scheduler.job_history.group_commit import SETTLE_PER_TURN, superseded
from scheduler.job_store import JobStore, JobStoreClosed
from scheduler.jobs import JobStatus
from tests import job_history_support
from tests.job_history_support import FlakyConnection, Opener, finished, flaky, job, next_turn, peek

# The shared fixtures, under the names the tests ask for.
path = job_history_support.path
stores = job_history_support.stores


def test_only_the_last_put_of_a_job_in_a_batch_is_written() -> None:
    def put(job_id: int) -> Put:
        return Put(job_id, False, ())

    # Job 1 three times, job 2 once: the first two puts of job 1 go.
    assert superseded([put(1), put(2), put(1), put(1)]) == {0: 3, 2: 3}
    # Output between two puts of a job keeps the first: its accounting reads the row.
    assert superseded([put(1), Chunk(1, 1, "stdout", "x"), put(1)]) == {}
    # Another job's output does not.
    assert superseded([put(1), Chunk(2, 1, "stdout", "x"), put(1)]) == {0: 2}
    assert superseded([]) == {}


# -- batching -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_one_reactor_turn_is_one_transaction(stores: Opener) -> None:
    store = stores()
    puts = [store.put(job(i, task_id=i % 3)) for i in range(1, 51)]
    for i in range(1, 51):
        store.append_output(i, 1, "stdout", "x")
    await gatherResults(puts)
    assert store.transactions == 1
    assert len(await store.query(limit=1000)) == 50

    await store.put(job(51))
    assert store.transactions == 2


@pytest_twisted.ensureDeferred
async def test_a_job_put_twice_in_a_batch_is_written_once(path: str) -> None:
    connections: list[FlakyConnection] = []
    store = JobStore(path, reactor, connect=flaky(connections))
    store.open()
    try:
        upserts = connections[0].statements
        upserts.clear()
        puts = [
            store.put(job(1)),
            store.put(job(2)),
            store.put(job(1, status=JobStatus.RUNNING, worker="w1")),
            store.put(finished(1, 2000.0, worker="w1")),
        ]
        await gatherResults(puts)
        assert sum(sql.startswith("INSERT INTO jobs") for sql in upserts) == 2
        stored = await store.get(1)
        assert stored is not None
        assert (stored.status, stored.worker, stored.exit_code) == (JobStatus.SUCCEEDED, "w1", 0)

        # Output between two puts needs the first one's row: both are written.
        upserts.clear()
        first = store.put(job(3))
        store.append_output(3, 1, "stdout", "x")
        second = store.put(finished(3, 2000.0))
        await gatherResults([first, second])
        assert sum(sql.startswith("INSERT INTO jobs") for sql in upserts) == 2
        assert await store.output(3) == "x"
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_writes_during_a_transaction_wait_for_the_next_one(path: str) -> None:
    connections: list[FlakyConnection] = []
    store = JobStore(path, reactor, connect=flaky(connections))
    store.open()
    gate = threading.Event()
    connections[0].gate = gate
    try:
        first = store.put(job(1))
        await next_turn()
        # The first batch is now on the thread, held at BEGIN.
        second = store.put(job(2))
        await next_turn()
        third = store.put(job(3))
        store.append_output(3, 1, "stdout", "late")
        await next_turn()
        assert not (first.called or second.called or third.called)
        gate.set()
        await gatherResults([first, second, third])
        assert store.transactions == 2
        # One BEGIN for the schema at open(), then one per batch.
        assert connections[0].statements.count("BEGIN IMMEDIATE") == 3
        assert await store.output(3) == "late"
    finally:
        gate.set()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_put_fires_only_after_commit(stores: Opener, path: str) -> None:
    store = stores()
    seen: list[object] = []

    def look(_: None) -> None:
        # Another connection sees only committed data.
        seen.extend(peek(store, path, "SELECT command FROM jobs WHERE id = 1"))

    put = store.put(job(1, command="committed"))
    put.addCallback(look)
    assert not put.called
    await put
    assert seen == [("committed",)]


@pytest_twisted.ensureDeferred
async def test_a_large_batch_tells_its_waiters_a_slice_per_reactor_turn(stores: Opener) -> None:
    # A committed batch's waiters may each do real work (a `run` sent per
    # placed job): past SETTLE_PER_TURN, the rest wait for later turns, in order.
    store = stores()
    count = 2 * SETTLE_PER_TURN + 10
    told: list[int] = []
    turns: list[int] = []
    turn = [0]

    def tick() -> None:
        turn[0] += 1
        if len(told) < count:
            reactor.callLater(0, tick)

    def note(_: None, job_id: int) -> None:
        told.append(job_id)
        turns.append(turn[0])

    puts = [store.put(job(i)).addCallback(note, i) for i in range(1, count + 1)]
    reactor.callLater(0, tick)
    closed = store.close()  # waits for every waiter, not only the first slice
    await gatherResults(puts)
    await closed
    assert store.transactions == 1
    assert told == list(range(1, count + 1))
    # One slice per turn: three distinct turns, the first SETTLE_PER_TURN together.
    assert len(set(turns)) == 3
    assert turns.count(turns[0]) == SETTLE_PER_TURN


@pytest_twisted.ensureDeferred
async def test_close_writes_what_is_queued_and_then_refuses(stores: Opener) -> None:
    store = stores()
    put = store.put(job(1))
    store.append_output(1, 1, "stdout", "bye")
    await store.close()
    assert put.called
    assert await store.close() is None
    with pytest.raises(JobStoreClosed):
        await store.put(job(2))
    with pytest.raises(JobStoreClosed):
        await store.get(1)

    again = stores()
    assert again.max_job_id() == 1
    assert await again.output(1) == "bye"


class TriggerLog:
    """The reactor, noting the system event triggers added through it."""

    def __init__(self) -> None:
        self.triggers: list[tuple[str, str]] = []

    def addSystemEventTrigger(self, phase: str, event: str, call: Any, *args: Any) -> Any:
        self.triggers.append((phase, event))
        return reactor.addSystemEventTrigger(phase, event, call, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


@pytest_twisted.ensureDeferred
async def test_a_store_left_open_closes_after_the_services_have_stopped(path: str) -> None:
    # twistd stops the services in the "before shutdown" phase; a service
    # may still record things while it stops (its workers' last reports), so
    # the store's own safety close comes in the phase after.
    noted = TriggerLog()
    store = JobStore(path, noted)
    store.open()
    try:
        assert noted.triggers == [("during", "shutdown")]
    finally:
        await store.close()
