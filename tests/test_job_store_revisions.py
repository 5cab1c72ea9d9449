"""scheduler.job_store: task revisions in jobs.sqlite, end to end.

Recorded through the same group-commit thread as the job records, read
newest first, bounded per task; on the real reactor and the history's real
thread (see ``tests/job_history_support.py``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from scheduler.job_store import REVISIONS_PER_TASK, JobStore, JobStoreClosed
from scheduler.triggers import Revision, TriggeredBy
from tests import job_history_support
from tests.job_history_support import FlakyConnection, Opener, flaky, job, peek

path = job_history_support.path
stores = job_history_support.stores

API = TriggeredBy("api")


def record(task_id: int, command: str, **extra: Any) -> dict[str, Any]:
    """A tasks.db line as a JSON object."""
    return {"schedule": "*/5 * * * *", "command": command, "jobName": f"task_{task_id}", **extra}


def revision(task_id: int, at: float, action: Any = "edit", **kw: Any) -> Revision:
    kw.setdefault("by", API)
    return Revision(task_id=task_id, at=at, action=action, **kw)


@pytest_twisted.ensureDeferred
async def test_revisions_round_trip_newest_first_per_task(stores: Opener) -> None:
    store = stores()
    added = revision(1, 100.0, "add", after=record(1, "echo a"), by=TriggeredBy("tcp", name="10.0.0.5"))
    edited = revision(
        1,
        160.5,
        "edit",
        before=record(1, "echo a"),
        after=record(1, "echo é", timezone="Europe/Berlin", env={"A": "1"}, paused=True),
        by=TriggeredBy("dashboard"),
    )
    other = revision(2, 120.0, "add", after=record(2, "true"))
    removed = revision(1, 200.0, "remove", before=edited.after, by=API)
    ids = await gatherResults([store.record_revision(each) for each in (added, other, edited, removed)])
    assert ids == sorted(ids) and len(set(ids)) == 4

    got = await store.revisions(1)
    assert [each.id for each in got] == [ids[3], ids[2], ids[0]]
    # Everything comes back as given, with the id the store handed out.
    assert got[1] == Revision(
        task_id=1, at=160.5, action="edit", by=TriggeredBy("dashboard"), before=edited.before,
        after=edited.after, id=ids[2],
    )
    assert got[0].after is None and got[0].before == edited.after and got[0].by == API
    assert got[2].before is None and got[2].by == TriggeredBy("tcp", name="10.0.0.5")
    assert [each.id for each in await store.revisions(2)] == [ids[1]]
    assert await store.revisions(3) == []


@pytest_twisted.ensureDeferred
async def test_revisions_page_with_limit_and_before_id(stores: Opener) -> None:
    store = stores()
    ids = [await store.record_revision(revision(5, float(n))) for n in range(10)]

    def at(found: list[Revision]) -> list[float]:
        return [each.at for each in found]

    assert at(await store.revisions(5, limit=3)) == [9.0, 8.0, 7.0]
    assert at(await store.revisions(5, limit=3, before_id=ids[7])) == [6.0, 5.0, 4.0]
    assert at(await store.revisions(5, 2, ids[1])) == [0.0]
    assert await store.revisions(5, limit=0) == []


@pytest_twisted.ensureDeferred
async def test_revisions_share_the_job_writes_commit_in_order_and_survive_a_restart(stores: Opener) -> None:
    store = stores()
    committed = store.transactions
    put = store.put(job(1, task_id=7))
    recorded = store.record_revision(revision(7, 10.0, "add", after=record(7, "echo 1")))
    # A read asked for in the same turn sees the revision queued before it.
    assert [each.action for each in await store.revisions(7)] == ["add"]
    await put
    first_id = await recorded
    assert store.transactions == committed + 1
    await store.close()

    again = stores()
    assert await again.record_revision(revision(7, 20.0, "pause")) > first_id
    assert [each.action for each in await again.revisions(7)] == ["pause", "add"]


@pytest_twisted.ensureDeferred
async def test_at_most_the_bound_per_task_is_kept_the_oldest_go_in_the_same_commit(stores: Opener, path: str) -> None:
    assert REVISIONS_PER_TASK == 1000
    store = stores(keep_revisions=3)
    for n in range(3):
        await store.record_revision(revision(1, float(n)))
    await store.record_revision(revision(2, 0.5))
    # Five in one batch: the commit that adds them leaves the newest three.
    committed = store.transactions
    await gatherResults([store.record_revision(revision(1, float(n))) for n in range(3, 8)])
    assert store.transactions == committed + 1
    assert [each.at for each in await store.revisions(1)] == [7.0, 6.0, 5.0]
    # Another task's revisions are not counted against it.
    assert [each.at for each in await store.revisions(2)] == [0.5]

    if isinstance(store, JobStore):
        plan = " ".join(
            str(row[-1])
            for row in peek(
                store, path, "EXPLAIN QUERY PLAN SELECT id FROM task_revisions WHERE task_id = 1 ORDER BY id DESC LIMIT 3"
            )
        )
        assert "task_revisions_task" in plan


@pytest_twisted.ensureDeferred
async def test_a_failed_commit_fails_its_revisions_and_the_store_recovers(path: str) -> None:
    connections: list[FlakyConnection] = []
    store = JobStore(path, reactor, connect=flaky(connections))
    store.open()
    conn = connections[0]
    try:
        conn.fail_when = lambda sql: sql == "COMMIT"
        doomed = [store.record_revision(revision(1, 1.0, "add")), store.put(job(1))]
        results = await gatherResults([d.addErrback(lambda f: f.value) for d in doomed])
        assert all(isinstance(r, sqlite3.OperationalError) for r in results)
        conn.fail_when = None
        assert await store.revisions(1) == []
        assert isinstance(await store.record_revision(revision(1, 2.0, "add")), int)
        assert [each.at for each in await store.revisions(1)] == [2.0]
    finally:
        conn.fail_when = None
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_closed_store_refuses_revisions(stores: Opener) -> None:
    store = stores()
    await store.close()
    with pytest.raises(JobStoreClosed, match="revision of task 4 not saved"):
        await store.record_revision(revision(4, 1.0))
    with pytest.raises(JobStoreClosed):
        await store.revisions(4)


def test_a_revision_names_a_known_action_and_an_author() -> None:
    with pytest.raises(ValueError, match="action must be one of add, edit"):
        revision(1, 1.0, "rename")
    with pytest.raises(ValueError, match="author"):
        revision(1, 1.0, by={"kind": "api"})
