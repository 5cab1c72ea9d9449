"""Webhooks to a real HTTP server on loopback, from the real job store through the real sender.

The receiver is a twisted.web site the test starts; it checks nothing
itself and records every request, so each test checks the signature, the
timestamp and the Idempotency-Key as a receiver would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from scheduler.alert_channels import Channel
from scheduler.alert_delivery import Deliverer, Reply
from scheduler.alert_outbox import AlertSender
from scheduler.alerts import Alert, alert_key
from scheduler.job_history.database import AlertAttempt
from scheduler.job_store import JobStore
from scheduler.jobs import JobStatus
from tests import job_history_support
from tests.job_history_support import Opener, finished

path = job_history_support.path
stores = job_history_support.stores

SECRET = "whsec-0123456789abcdef"
WAIT = 15.0


class Receiver(Resource):
    """Records each request; ``answer`` decides what happens to it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.answer: Callable[[Request, int], int | None] = lambda request, number: 200
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        headers = {name.decode().lower(): values[0].decode() for name, values in request.requestHeaders.getAllRawHeaders()}
        self.requests.append({"headers": headers, "raw": request.content.read(), "path": request.path.decode()})
        code = self.answer(request, len(self.requests))
        for count, waiter in list(self._waiters):
            if len(self.requests) >= count:
                self._waiters.remove((count, waiter))
                waiter.callback(None)
        if code is None:
            # Processed, but the answer is lost: the connection drops.
            assert request.transport is not None
            request.transport.abortConnection()  # type: ignore[attr-defined]
            return b""
        request.setResponseCode(code)
        return b'{"ok": true}'

    def received(self, count: int) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if len(self.requests) >= count:
            waiter.callback(None)
        else:
            self._waiters.append((count, waiter))
        return waiter.addTimeout(WAIT, reactor)


def check_signed(request: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    """What a receiver does: the signature over "<timestamp>.<raw body>", a fresh timestamp; the body."""
    headers = request["headers"]
    stamp = headers["x-scheduler-timestamp"]
    expected = hmac.new(secret.encode(), f"{stamp}.".encode() + request["raw"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-scheduler-signature"], f"sha256={expected}")
    assert abs(int(stamp) - time.time()) < 60
    assert headers["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(request["raw"])
    return body


@pytest_twisted.async_yield_fixture
async def receiver() -> AsyncIterator[tuple[Receiver, IListeningPort]]:
    resource = Receiver()
    site = Site(resource)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield resource, port
    await port.stopListening()


def hook(port: int, secret: str = SECRET) -> Channel:
    return Channel("hook", "webhook", url=f"http://127.0.0.1:{port}/alerts", secret=secret)


class Wiring:
    """A sender on a real store, telling the test about every attempt."""

    def __init__(self, store: JobStore, channel: Channel, **kw: Any) -> None:
        self.store = store
        self.deliverer = Deliverer(reactor, timeout=5.0)
        self.replies: list[Reply] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self.sender = AlertSender(
            reactor,
            store,
            {channel.name: channel}.get,
            self._deliver,
            public_url="http://127.0.0.1:3000",
            tz=UTC,
            limit=10_000,
            first_delay=kw.pop("first_delay", 0.05),
            max_delay=0.2,
            **kw,
        )
        store.alert_listeners.append(self.sender.queued)
        self.sender.startService()

    def _deliver(self, channel: Channel, key: str, data: Any) -> Deferred[Reply]:
        def seen(reply: Reply) -> Reply:
            self.replies.append(reply)
            for count, waiter in list(self._waiters):
                if len(self.replies) >= count:
                    self._waiters.remove((count, waiter))
                    reactor.callLater(0, waiter.callback, None)  # once the reply is recorded
            return reply

        return self.deliverer.deliver(channel, key, data).addCallback(seen)

    def attempts(self, count: int) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._waiters.append((count, waiter))
        return waiter.addTimeout(WAIT, reactor)

    async def stop(self) -> None:
        self.sender.stopService()
        await self.deliverer.close()


def failure_alert(task_id: int, moment: float, job_id: int | None) -> Alert:
    return Alert(
        key=alert_key(str(task_id), moment, "failure"),
        event="failure",
        channel="hook",
        created_at=moment + 1,
        task_id=task_id,
        job_id=job_id,
        body={
            "event": "failure",
            "task": {"id": task_id, "jobName": "backup", "schedule": "@daily"},
            "job": {"id": job_id, "status": "failed", "exitCode": 3},
            "detail": "job 5 of backup failed with exit code 3",
            "at": "2026-12-01T12:00:00+00:00",
        },
    )


@pytest_twisted.ensureDeferred
async def test_a_failed_job_reaches_the_webhook_signed_with_its_link_and_output(
    stores: Opener, receiver: tuple[Receiver, IListeningPort]
) -> None:
    site, port = receiver
    store = stores()
    wiring = Wiring(store, hook(port.getHost().port))
    try:
        await store.put(finished(5, 2000.0, task_id=3, status=JobStatus.FAILED))
        store.append_output(5, 1, "stdout", "".join(f"step {n}\n" for n in range(1, 31)))
        await store.record_alerts([failure_alert(3, 1000, 5)])
        await wiring.attempts(1)
        (request,) = site.requests
        body = check_signed(request)
        assert request["headers"]["idempotency-key"] == "3@1000:failure"
        assert request["path"] == "/alerts"
        assert body["event"] == "failure" and body["task"]["jobName"] == "backup" and body["job"]["exitCode"] == 3
        assert body["url"] == "http://127.0.0.1:3000/#/jobs/5"
        assert body["output"].split("\n") == [f"step {n}" for n in range(11, 31)]
        (row,) = await store.deliveries(task_id=3)
        assert (row.state, row.attempts) == ("sent", 1) and row.reply is not None and row.reply.startswith("200 OK")
    finally:
        await wiring.stop()


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_does_not_verify(stores: Opener, receiver: tuple[Receiver, IListeningPort]) -> None:
    site, port = receiver
    store = stores()
    wiring = Wiring(store, hook(port.getHost().port, secret="another-secret-0123"))
    try:
        await store.record_alerts([failure_alert(3, 1000, None)])
        await wiring.attempts(1)
        with pytest.raises(AssertionError):
            check_signed(site.requests[0])
    finally:
        await wiring.stop()


@pytest_twisted.ensureDeferred
async def test_receiver_down_then_back_gets_each_alert_once(stores: Opener) -> None:
    site = Receiver()
    listening = reactor.listenTCP(0, Site(site), interface="127.0.0.1")
    number = listening.getHost().port
    await listening.stopListening()  # down: connections are refused
    store = stores()
    wiring = Wiring(store, hook(number))
    try:
        await store.record_alerts([failure_alert(3, 1000 + n, None) for n in range(3)])
        await wiring.attempts(3)
        assert all(reply.outcome == "retry" for reply in wiring.replies)
        assert {row.state for row in await store.deliveries()} == {"pending"}
        listening = reactor.listenTCP(number, Site(site), interface="127.0.0.1")
        await site.received(3)
        await wiring.attempts(6)
        rows = await store.deliveries()
        assert [row.state for row in rows] == ["sent"] * 3
        keys = [request["headers"]["idempotency-key"] for request in site.requests]
        assert sorted(keys) == sorted(row.key for row in rows) and len(set(keys)) == 3
    finally:
        await wiring.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_lost_reply_is_retried_with_the_same_key(
    stores: Opener, receiver: tuple[Receiver, IListeningPort]
) -> None:
    site, port = receiver
    site.answer = lambda request, number: None if number == 1 else 200
    store = stores()
    wiring = Wiring(store, hook(port.getHost().port))
    try:
        await store.record_alerts([failure_alert(3, 1000, None)])
        await wiring.attempts(2)
        first, second = site.requests
        assert first["headers"]["idempotency-key"] == second["headers"]["idempotency-key"] == "3@1000:failure"
        assert check_signed(first) == check_signed(second)
        (row,) = await store.deliveries()
        assert (row.state, row.attempts) == ("sent", 2)
    finally:
        await wiring.stop()


@pytest_twisted.ensureDeferred
async def test_a_refusal_is_not_retried(stores: Opener, receiver: tuple[Receiver, IListeningPort]) -> None:
    site, port = receiver
    site.answer = lambda request, number: 401
    store = stores()
    wiring = Wiring(store, hook(port.getHost().port))
    try:
        await store.record_alerts([failure_alert(3, 1000, None)])
        await wiring.attempts(1)
        (row,) = await store.deliveries()
        assert row.state == "failed" and row.reply is not None and row.reply.startswith("401")
        assert wiring.sender.pending == 0
    finally:
        await wiring.stop()


@pytest_twisted.ensureDeferred
async def test_a_store_reopened_after_an_abandoned_one_delivers_its_pending_alerts_once(
    path: str, receiver: tuple[Receiver, IListeningPort]
) -> None:
    site, port = receiver
    abandoned = JobStore(path, reactor)
    abandoned.open()
    await abandoned.record_alerts([failure_alert(3, 1000 + n, None) for n in range(5)])
    # One was delivered and recorded before the "crash"; the others were not.
    (done, *_) = await abandoned.deliveries()
    await abandoned.record_attempt(AlertAttempt(done.id, "sent", 1, done.next_attempt_at, 1.0, "200 OK", 1.0))
    reopened = JobStore(path, reactor)
    reopened.open()
    wiring = Wiring(reopened, hook(port.getHost().port))
    try:
        wiring.sender.wake()
        await wiring.attempts(4)
        keys = sorted(request["headers"]["idempotency-key"] for request in site.requests)
        assert keys == sorted({alert_key("3", 1000 + n, "failure") for n in range(5)} - {done.key})
        assert {row.state for row in await reopened.deliveries()} == {"sent"}
    finally:
        await wiring.stop()
        await reopened.close()
        await abandoned.close()


@pytest_twisted.ensureDeferred
async def test_a_thousand_alerts_at_once_are_each_delivered_once_in_bounded_batches(
    stores: Opener, receiver: tuple[Receiver, IListeningPort]
) -> None:
    site, port = receiver
    store = stores()
    largest: list[int] = [0]
    reads = store.due_alerts

    def counted(*args: Any, **kw: Any) -> Any:
        return reads(*args, **kw).addCallback(lambda result: largest.__setitem__(0, max(largest[0], len(result[0]))) or result)

    store.due_alerts = counted  # type: ignore[method-assign]
    wiring = Wiring(store, hook(port.getHost().port), batch=100, per_channel=8, in_flight=8)
    try:
        await store.record_alerts([failure_alert(n, 1000, None) for n in range(1, 1001)])
        await site.received(1000)
        await wiring.attempts(1000)
        keys = [request["headers"]["idempotency-key"] for request in site.requests]
        assert len(keys) == len(set(keys)) == 1000
        assert {row.state for row in await store.deliveries(limit=2000)} == {"sent"}
        assert largest[0] <= 8  # never more rows in memory than requests allowed in flight
    finally:
        await wiring.stop()
