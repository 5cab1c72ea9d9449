"""The alert outbox in the real SQLite job store: one transaction with the job records, one row per (key, channel)."""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from scheduler.alerts import Alert, alert_key
from scheduler.job_history.database import AlertAttempt, AlertsQueued
from scheduler.job_store import JobStore, NameTaken
from scheduler.jobs import JobStatus
from tests import job_history_support
from tests.job_history_support import FlakyConnection, Opener, finished, flaky, job

path = job_history_support.path
stores = job_history_support.stores


def alert(task_id: int, moment: float, channel: str = "ops", event: str = "failure", job_id: int | None = None) -> Alert:
    return Alert(
        key=alert_key(str(task_id), moment, event),  # type: ignore[arg-type]
        event=event,  # type: ignore[arg-type]
        channel=channel,
        created_at=moment + 5,
        task_id=task_id,
        job_id=job_id,
        body={"event": event, "task": {"id": task_id}, "detail": "it failed"},
    )


@pytest_twisted.ensureDeferred
async def test_a_put_and_the_alerts_it_caused_commit_in_one_transaction(stores: Opener) -> None:
    store = stores()
    before = store.transactions
    failed = finished(1, 2000.0, status=JobStatus.FAILED, task_id=4)
    await gatherResults([store.put(failed), store.record_alerts([alert(4, 1000, job_id=1)])])
    assert store.transactions == before + 1
    (row,) = await store.deliveries(task_id=4)
    assert (row.job_id, row.state, row.attempts, row.channel) == (1, "pending", 0, "ops")
    assert row.body == {"event": "failure", "task": {"id": 4}, "detail": "it failed"}


@pytest_twisted.ensureDeferred
async def test_a_failed_transaction_loses_the_put_and_its_alerts_together(path: str) -> None:
    connections: list[FlakyConnection] = []
    store = JobStore(path, reactor, connect=flaky(connections))
    store.open()
    conn = connections[0]
    try:
        conn.fail_when = lambda sql: sql == "COMMIT"
        put = store.put(job(1, task_id=4))
        queued = store.record_alerts([alert(4, 1000, job_id=1)])
        results = await gatherResults([d.addErrback(lambda f: f.value) for d in (put, queued)])
        assert all(isinstance(result, sqlite3.OperationalError) for result in results)
        conn.fail_when = None
        assert await store.get(1) is None
        assert await store.deliveries() == []
        # And both land together once the database works again.
        await gatherResults([store.put(job(1, task_id=4)), store.record_alerts([alert(4, 1000, job_id=1)])])
        assert await store.get(1) is not None
        assert len(await store.deliveries()) == 1
    finally:
        conn.fail_when = None
        await store.close()


@pytest_twisted.ensureDeferred
async def test_an_alert_queued_twice_is_one_row_and_no_error(stores: Opener) -> None:
    store = stores()
    heard: list[AlertsQueued] = []
    store.alert_listeners.append(heard.append)
    await store.record_alerts([alert(4, 1000), alert(4, 1000, channel="mail")])
    await store.record_alerts([alert(4, 1000), alert(4, 1000)])
    rows = await store.deliveries()
    assert sorted(row.channel for row in rows) == ["mail", "ops"]
    assert heard == [AlertsQueued(2, 0, 2), AlertsQueued(0, 0, 2)]


@pytest_twisted.ensureDeferred
async def test_the_outbox_is_bounded_and_says_what_it_refused(stores: Opener) -> None:
    store = stores(outbox_limit=3)
    heard: list[AlertsQueued] = []
    store.alert_listeners.append(heard.append)
    await store.record_alerts([alert(1, moment) for moment in range(1000, 1005)])
    assert heard[-1] == AlertsQueued(3, 2, 3)
    # A duplicate of a kept row is not refused; a new one is.
    await store.record_alerts([alert(1, 1000), alert(1, 2000)])
    assert heard[-1] == AlertsQueued(0, 1, 3)
    (first, *_rest), _next, pending = await store.due_alerts(10**6, 10)
    assert pending == 3
    await store.record_attempt(AlertAttempt(first.id, "sent", 1, first.next_attempt_at, 3000.0, "200 ok", 3000.0))
    await store.record_alerts([alert(1, 2000)])
    assert heard[-1] == AlertsQueued(1, 0, 3)


@pytest_twisted.ensureDeferred
async def test_due_rows_oldest_first_bounded_and_leaving_out_what_is_in_flight(stores: Opener) -> None:
    store = stores()
    await store.record_alerts([alert(1, 1000 + n, channel="a" if n % 2 else "b") for n in range(6)])
    rows, next_due, pending = await store.due_alerts(2000.0, 4)
    assert [row.created_at for row in rows] == [1005, 1006, 1007, 1008]
    assert pending == 6 and next_due == 1005
    rows, _, _ = await store.due_alerts(2000.0, 10, skip_ids=[rows[0].id], skip_channels=["a"])
    assert [row.created_at for row in rows] == [1007, 1009]
    # Not yet due: none handed out, and the next due time says when.
    for row in await store.deliveries():
        await store.record_attempt(AlertAttempt(row.id, "pending", 1, 5000.0 + row.id, 2000.0, "503", None))
    rows, next_due, _ = await store.due_alerts(2000.0, 10)
    assert rows == [] and next_due == 5001.0


@pytest_twisted.ensureDeferred
async def test_deliveries_newest_first_with_paging_and_filters(stores: Opener) -> None:
    store = stores()
    await store.record_alerts([alert(task, 1000 + n) for n in range(5) for task in (1, 2)])
    ones = await store.deliveries(task_id=1)
    assert [row.task_id for row in ones] == [1] * 5
    assert [row.id for row in ones] == sorted((row.id for row in ones), reverse=True)
    page = await store.deliveries(task_id=1, limit=2, before_id=ones[1].id)
    assert [row.id for row in page] == [row.id for row in ones[2:4]]
    assert await store.deliveries(state="sent") == []
    assert len(await store.deliveries(channel="ops", limit=100)) == 10


@pytest_twisted.ensureDeferred
async def test_prune_takes_delivered_rows_with_their_jobs_and_never_a_pending_one(stores: Opener) -> None:
    store = stores(keep_seconds=100.0, keep_per_task=10)
    await store.put(finished(1, 1000.0, task_id=1, status=JobStatus.FAILED))
    await store.put(finished(2, 1000.0, task_id=1, status=JobStatus.FAILED))
    await store.record_alerts([alert(1, 900, job_id=1), alert(1, 901, job_id=2), alert(7, 500, event="stale")])
    rows = {row.job_id: row for row in await store.deliveries()}
    await store.record_attempt(AlertAttempt(rows[1].id, "sent", 1, 0.0, 1001.0, "200", 1001.0))
    await store.record_attempt(AlertAttempt(rows[None].id, "failed", 3, 0.0, 1001.0, "410", None))
    assert await store.prune(10**6) == 2
    left = await store.deliveries()
    assert [(row.job_id, row.state) for row in left] == [(2, "pending")]


@pytest_twisted.ensureDeferred
async def test_the_output_tail_reads_only_the_end(stores: Opener) -> None:
    store = stores()
    await store.put(job(1))
    for seq in range(1, 101):
        store.append_output(1, seq, "stdout", f"line {seq}\n")
    tail = await store.output_tail(1, 30)
    assert tail is not None and tail.endswith("line 100\n") and "line 90\n" not in tail
    assert await store.output_tail(99, 30) is None


@pytest_twisted.ensureDeferred
async def test_channels_are_kept_across_a_reopen_and_a_name_is_taken_once(stores: Opener) -> None:
    store = stores()
    await store.add_channel("ops", '{"kind": "slack"}')
    with pytest.raises(NameTaken):
        await store.add_channel("ops", '{"kind": "discord"}')
    await store.add_channel("mail", '{"kind": "email"}')
    await store.remove_channel("mail")
    await store.close()
    again = stores()
    assert again.channels() == {"ops": '{"kind": "slack"}'}
