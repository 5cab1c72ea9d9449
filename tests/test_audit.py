"""The audit log after a scripted session through port 5050 and the REST API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from scheduler.access_tokens import TokenBook, token_hash
from scheduler.audit import TASK_LINE_QUIET, AuditEntry, AuditLog, WrongTokens
from scheduler.job_store import AuditQuery
from scheduler.triggers import Revision, TriggeredBy
from tests import job_history_support
from tests.job_history_support import Opener
from tests.test_http_api import Api, close_api, make_api
from tests.test_tcp_auth import Peer

# The job store's fixtures (both backends), under the names the tests ask for.
path = job_history_support.path
stores = job_history_support.stores

OPS = "ops-token-0123456789abcdef"  # write, over TCP
CI = "ci-token-0123456789abcdef"  # read and run, over REST
BOSS = "boss-token-0123456789abcdef"  # admin


def bearer(token: str) -> dict[bytes, list[bytes]]:
    return {b"Authorization": [f"Bearer {token}".encode()]}


@pytest.fixture
def audit_events() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "audit_action" in event:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    path = tmp_path / "tokens"
    path.write_text(
        f"ops write {token_hash(OPS)}\nci read,run {token_hash(CI)} tasks=2\nboss admin {token_hash(BOSS)}\n"
    )
    book = TokenBook(str(path))
    book.load()
    made = await make_api(tmp_path, reactor, tokens=book)
    yield made
    await close_api(made)


def reply(peer: Peer, line: bytes) -> Deferred[str]:
    """The next line *peer* is sent after *line* (a change's reply waits for tasks.db)."""
    answered: Deferred[str] = Deferred()
    write = peer.transport.write

    def written(data: bytes) -> None:
        write(data)
        if not answered.called:
            peer.transport.write = write  # type: ignore[method-assign]
            answered.callback(data.decode().strip())

    peer.transport.write = written  # type: ignore[method-assign]
    peer.send(line)
    return answered


@pytest_twisted.ensureDeferred
async def test_a_scripted_session_is_in_the_audit_log(api: Api, audit_events: list[LogEvent]) -> None:
    tcp = Peer(api.service.tcp_limits, "10.0.0.7")
    tcp.send(f"AUTH {OPS}\nSESSION\n".encode())
    assert (await reply(tcp, b"ADD */5 * * * * echo hi\n")).startswith("OK id=1")
    assert await reply(tcp, b"CLEAR\n") == "OK cleared 1 task"
    assert (await reply(tcp, b"ADD */5 * * * * echo again\n")).startswith("OK id=2")

    code, job = await api.call("POST", "/api/tasks/2/run", headers=bearer(CI))
    assert code == 202, job
    assert job["triggeredBy"] == {"kind": "api", "name": "ci", "job": None}
    code, _ = await api.call("POST", f"/api/jobs/{job['id']}/cancel", headers=bearer(CI))
    assert code == 202
    code, refusal = await api.call("POST", "/api/jobs", {"command": "id"}, headers=bearer(CI))
    assert code == 403 and "may run only tasks 2" in refusal["error"]
    code, _ = await api.call(
        "POST", "/api/maintenance", {"on": True}, headers={**bearer(BOSS), b"X-Triggered-By": [b"dashboard"]}
    )
    assert code == 200
    code, paused = await api.call(
        "POST", "/api/tasks/2/pause", headers={**bearer(BOSS), b"X-Triggered-By": [b"dashboard"]}
    )
    assert code == 200, paused
    for _ in range(3):
        code, _ = await api.call("GET", "/api/tasks", headers=bearer("guess-0123456789abcdef"))
        assert code == 401
    # A worker's token on /ws/worker is no API token, right or wrong: not counted.
    code, _ = await api.call("GET", "/ws/worker", headers=bearer("a-worker-token-0123456789"))
    assert code == 426
    tcp_guess = Peer(api.service.tcp_limits, "10.0.0.8")
    tcp_guess.send(b"AUTH guess-0123456789abcdef\n")
    api.service.wrong_tokens.flush()  # the end of the burst's minute

    code, entries = await api.call("GET", "/api/audit", headers=bearer(CI))
    assert code == 200
    shown = [(e["action"], e["who"], e["taskId"]) for e in reversed(entries)]
    assert shown[:7] == [
        ("task.add", "ops", 1),
        ("task.clear", "ops", 1),
        ("task.add", "ops", 2),
        ("job.run", "ci", 2),
        ("job.cancel", "ci", 2),
        ("maintenance.on", "boss", None),
        ("task.pause", "boss", 2),
    ]
    add = next(e for e in reversed(entries) if e["action"] == "task.add")
    assert add["address"] == "10.0.0.7"
    assert add["detail"]["before"] is None and add["detail"]["after"]["command"] == "echo hi"
    failures = {e["detail"]["port"]: e for e in entries if e["action"] == "auth.failed"}
    assert failures["http"]["detail"]["count"] == 3
    assert failures["tcp"]["detail"]["count"] == 1 and failures["tcp"]["address"] == "10.0.0.8"
    assert "guess" not in json.dumps(entries)  # never a token
    run = next(e for e in entries if e["action"] == "job.run")
    assert run["jobId"] == job["id"]

    # Filters and paging, as GET /api/jobs pages.
    code, mine = await api.call("GET", "/api/audit?who=ops", headers=bearer(CI))
    assert [e["action"] for e in mine] == ["task.add", "task.clear", "task.add"]
    code, revisions = await api.call("GET", "/api/tasks/2/revisions", headers=bearer(CI))
    assert revisions[0]["by"] == {"kind": "dashboard", "name": "boss", "job": None}  # the dashboard, as boss
    code, runs = await api.call("GET", "/api/audit?action=job.run", headers=bearer(CI))
    assert [e["jobId"] for e in runs] == [job["id"]]
    code, of_task = await api.call("GET", "/api/audit?task=1", headers=bearer(CI))
    assert {e["action"] for e in of_task} == {"task.add", "task.clear"}
    code, later = await api.call("GET", "/api/audit?since=2999-01-01T00:00:00Z", headers=bearer(CI))
    assert later == []
    response, body = await api.raw("GET", "/api/audit?limit=2", headers=bearer(CI))
    first = json.loads(body)
    assert len(first) == 2 and response.headers.getRawHeaders(b"x-total-count") == [str(len(entries)).encode()]
    code, rest = await api.call("GET", f"/api/audit?before={first[-1]['id']}", headers=bearer(CI))
    assert [e["id"] for e in first + rest] == [e["id"] for e in entries]
    code, _ = await api.call("GET", "/api/audit?action=fly", headers=bearer(CI))
    assert code == 400

    # The main log has each as a structured event (task changes once their
    # burst is over: at the latest when the scheduler stops).
    api.service.audit.flush()
    logged = [event["audit_action"] for event in audit_events]
    for action in ("task.add", "job.run", "job.cancel", "maintenance.on", "auth.failed"):
        assert action in logged


class Store:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record_audit(self, entry: AuditEntry) -> Any:
        self.entries.append(entry)
        return succeed(len(self.entries))


def test_wrong_tokens_are_one_entry_per_address_and_minute() -> None:
    clock = Clock()
    store = Store()
    wrong = WrongTokens(AuditLog(store, clock), clock)
    for _ in range(50):
        wrong.failed("http", "10.0.0.1")
    wrong.failed("tcp", "10.0.0.2")
    assert store.entries == []
    clock.advance(60)
    assert sorted((e.address, e.detail["count"]) for e in store.entries if e.detail) == [("10.0.0.1", 50), ("10.0.0.2", 1)]
    clock.advance(600)
    assert len(store.entries) == 2  # nothing more without new failures


@pytest_twisted.ensureDeferred
async def test_the_audit_log_is_kept_for_its_retention_only(stores: Opener) -> None:
    store = stores(keep_audit_seconds=100)
    old = await store.record_audit(AuditEntry(1000.0, "job.run", "ci", "10.0.0.1", 1, 5, {"target": "any"}))
    new = await store.record_audit(AuditEntry(1500.0, "task.edit", "ops", None, 1, None, {"before": None, "after": None}))
    assert new > old
    await store.prune(1550.0)
    entries, total = await store.audit(AuditQuery())
    assert total == 1 and [entry.action for entry in entries] == ["task.edit"] and entries[0].id == new


@pytest_twisted.ensureDeferred
async def test_audit_queries_filter_and_page_newest_first(stores: Opener) -> None:
    store = stores()
    ids = [
        await store.record_audit(AuditEntry(1000.0 + n, "job.run" if n % 2 else "task.edit", f"who{n % 3}", None, n % 2 + 1, None, None))
        for n in range(9)
    ]
    entries, total = await store.audit(AuditQuery(limit=3))
    assert total == 9 and [entry.id for entry in entries] == ids[:-4:-1]
    entries, total = await store.audit(AuditQuery(who="who1", limit=10))
    assert total == 3 and [entry.at for entry in entries] == [1007.0, 1004.0, 1001.0]
    entries, total = await store.audit(AuditQuery(action="job.run", since=1003.0, before_id=ids[7], limit=10))
    assert total == 3 and [entry.at for entry in entries] == [1005.0, 1003.0]
    entries, total = await store.audit(AuditQuery(task_id=1, limit=2))
    assert total == 5 and [entry.at for entry in entries] == [1008.0, 1006.0]


def test_task_changes_of_one_turn_are_an_entry_each_and_one_line_in_the_main_log(
    audit_events: list[LogEvent],
) -> None:
    clock = Clock()
    store = Store()
    audit = AuditLog(store, clock)
    ops = TriggeredBy("tcp", name="ops", address="10.0.0.7")
    for task_id in (*range(1, 1001), 1005):
        audit.revision(Revision(task_id, 0.0, "load", ops, None, {"schedule": "@daily", "command": "true"}))
    audit.revision(Revision(7, 0.0, "pause", ops, {"paused": False}, {"paused": True}))
    assert len(store.entries) == 1002  # every change is in the store at once
    assert audit_events == []  # the line waits for the changes to stop coming
    clock.advance(TASK_LINE_QUIET / 2)
    audit.revision(Revision(1006, 0.0, "load", ops, None, {"schedule": "@daily", "command": "true"}))
    clock.advance(TASK_LINE_QUIET)
    assert audit_events == []  # one came within the quiet time: the burst goes on
    clock.advance(TASK_LINE_QUIET)
    lines = [formatEvent(event) for event in audit_events]
    assert lines == [
        "audit: task.load by ops from 10.0.0.7 tasks 1-1000, 1005-1006",
        "audit: task.pause by ops from 10.0.0.7 task 7",
    ]
    assert audit_events[1]["audit_task"] == 7
    clock.advance(TASK_LINE_QUIET)
    assert len(audit_events) == 2
    # Stopping writes what waits.
    audit.revision(Revision(8, 0.0, "remove", ops, {"paused": False}, None))
    audit.flush()
    assert formatEvent(audit_events[-1]) == "audit: task.remove by ops from 10.0.0.7 task 8"
