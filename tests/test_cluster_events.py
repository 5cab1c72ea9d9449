"""scheduler.cluster_events against a real PostgreSQL: notifications sent in a
transaction reach the other nodes on commit only, never their sender, and a
lost listening connection comes back and says so (resync)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from scheduler.cluster_events import TOPICS, PostgresEvents, channel, notify_sql, payload, schema_of
from tests.postgres_support import pg_url, postgres_server  # noqa: F401


def test_channels_are_per_schema_and_topic() -> None:
    assert channel("s1", "jobs") != channel("s2", "jobs")
    assert channel("s1", "jobs") != channel("s1", "tasks")
    assert len(channel("x" * 100, "cancels")) == 63
    with pytest.raises(ValueError, match="unknown cluster topic 'job'"):
        channel("s", "job")
    with pytest.raises(ValueError, match="PostgreSQL takes 7999"):
        payload("a", big="x" * 8000)


def _send(url: str, topic: str, node: str, commit: bool = True, **fields: Any) -> None:
    with psycopg.connect(url) as conn:
        statement, params = notify_sql(schema_of(conn), topic, node, **fields)
        conn.execute(statement, params)
        if commit:
            conn.commit()
        else:
            conn.rollback()


def _next(events: PostgresEvents, topic: str) -> Deferred[dict[str, Any]]:
    heard: Deferred[dict[str, Any]] = Deferred()

    def once(fields: dict[str, Any]) -> None:
        if not heard.called:
            heard.callback(fields)

    events.subscribe(topic, once)
    return heard


def _resynced(events: PostgresEvents) -> Deferred[None]:
    done: Deferred[None] = Deferred()
    events.resync.append(lambda: None if done.called else done.callback(None))
    return done


@pytest_twisted.ensureDeferred
async def test_committed_notifications_reach_other_nodes_only(reactor: Any, pg_url: str) -> None:  # noqa: F811
    a, b = PostgresEvents(pg_url, reactor, "a"), PostgresEvents(pg_url, reactor, "b")
    ready = [_resynced(a), _resynced(b)]
    a.start()
    b.start()
    try:
        for each in ready:
            await each
        heard_by_a: list[dict[str, Any]] = []
        a.subscribe("jobs", heard_by_a.append)
        at_b = _next(b, "jobs")
        _send(pg_url, "jobs", "a", commit=False, targets=["rolled back"])
        _send(pg_url, "jobs", "a", targets=["any"])
        assert await at_b == {"node": "a", "targets": ["any"]}
        # a sent it: a does not hear it (nor the rolled-back one, nor b's topic of tasks).
        at_b_tasks = _next(b, "tasks")
        _send(pg_url, "tasks", "b", generation=1)
        _send(pg_url, "tasks", "c", generation=2)
        assert (await at_b_tasks)["node"] == "c"
        assert heard_by_a == []
        assert set(TOPICS) == {"tasks", "jobs", "cancels", "feed"}
    finally:
        a.stop()
        b.stop()


@pytest_twisted.ensureDeferred
async def test_a_lost_connection_reconnects_and_resyncs(reactor: Any, pg_url: str) -> None:  # noqa: F811
    events = PostgresEvents(pg_url, reactor, "b")
    first = _resynced(events)
    events.start()
    try:
        await first
        again = _resynced(events)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'scheduler-listen b'"
            )
        await again
        assert events.connections == 2
        heard = _next(events, "cancels")
        _send(pg_url, "cancels", "a", job=7)
        assert (await heard)["job"] == 7
    finally:
        events.stop()
