"""The alert sender on a task.Clock, with an outbox in memory and receivers the test answers for."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from scheduler.alert_channels import Channel
from scheduler.alert_deliveries import Delivery
from scheduler.alert_delivery import Reply, judge_status
from scheduler.alert_messages import EVENT_TITLES, TEST_EVENT
from scheduler.alert_outbox import AlertMetrics, AlertSender, output_tail, retry_delay
from scheduler.alerts import ALERT_EVENTS
from scheduler.job_history.database import AlertAttempt, AlertsQueued


class MemoryOutbox:
    """The sender's view of the job store, in memory and synchronous."""

    def __init__(self) -> None:
        self.rows: dict[int, Delivery] = {}
        self.outputs: dict[int, str] = {}
        self.attempts: list[AlertAttempt] = []
        self.largest_read = 0

    def add(self, count: int, channel: str = "hook", at: float = 0.0, job_id: int | None = None) -> None:
        for _ in range(count):
            row_id = len(self.rows) + 1
            self.rows[row_id] = Delivery(
                row_id, f"1@{row_id}:failure", channel, "failure", at, task_id=1, job_id=job_id,
                body={"event": "failure", "detail": "exit 1"}, next_attempt_at=at,
            )

    def due_alerts(
        self, now: float, limit: int, skip_ids: Any = (), skip_channels: Any = ()
    ) -> Deferred[tuple[list[Delivery], float | None, int]]:
        pending = [row for row in self.rows.values() if row.state == "pending"]
        eligible = [row for row in pending if row.id not in skip_ids and row.channel not in skip_channels]
        due = sorted((row for row in eligible if row.next_attempt_at <= now), key=lambda r: (r.next_attempt_at, r.id))
        self.largest_read = max(self.largest_read, min(limit, len(due)))
        next_due = min((row.next_attempt_at for row in eligible), default=None)
        return succeed((due[:limit], next_due, len(pending)))

    def record_attempt(self, attempt: AlertAttempt) -> Deferred[None]:
        self.attempts.append(attempt)
        row = self.rows[attempt.row_id]
        self.rows[attempt.row_id] = replace(
            row,
            state=attempt.state,  # type: ignore[arg-type]
            attempts=attempt.attempts,
            next_attempt_at=attempt.next_attempt_at,
            last_attempt_at=attempt.last_attempt_at,
            reply=attempt.reply,
            sent_at=attempt.sent_at,
        )
        return succeed(None)

    def output_tail(self, job_id: int, max_bytes: int) -> Deferred[str | None]:
        return succeed(self.outputs.get(job_id))

    def states(self) -> list[str]:
        return [row.state for row in self.rows.values()]


class Receivers:
    """Every delivery waits for the test to answer it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Channel, str, Mapping[str, Any], Deferred[Reply]]] = []

    def __call__(self, channel: Channel, key: str, data: Mapping[str, Any]) -> Deferred[Reply]:
        answer: Deferred[Reply] = Deferred()
        self.calls.append((channel, key, data, answer))
        return answer

    def open(self) -> list[Deferred[Reply]]:
        return [answer for *_, answer in self.calls if not answer.called]

    def answer_all(self, reply: Reply) -> int:
        waiting = self.open()
        for answer in waiting:
            answer.callback(reply)
        return len(waiting)


CHANNELS = {
    "hook": Channel("hook", "webhook", url="http://127.0.0.1:9/hook", secret="s" * 16),
    "chat": Channel("chat", "slack", url="http://127.0.0.1:9/slack"),
}
SENT = Reply("sent", "200 OK", 200)
DOWN = Reply("retry", "ConnectionRefusedError: Connection was refused")


def sender(
    clock: Clock, outbox: MemoryOutbox, receivers: Receivers, registry: CollectorRegistry | None = None, **kw: Any
) -> AlertSender:
    made = AlertSender(
        clock,
        outbox,
        CHANNELS.get,
        receivers,
        public_url="http://sched.example:3000/",
        tz=UTC,
        limit=kw.pop("limit", 100),
        metrics=AlertMetrics(registry) if registry is not None else None,
        rng=random.Random(7),
        **kw,
    )
    made.startService()
    return made


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_queued_alert_is_delivered_at_once_with_its_link_and_output() -> None:
    clock, outbox, receivers = Clock(), MemoryOutbox(), Receivers()
    registry = CollectorRegistry()
    alerts = sender(clock, outbox, receivers, registry)
    clock.advance(0)
    assert receivers.calls == []
    outbox.add(1, job_id=42)
    outbox.outputs[42] = "".join(f"line {n}\n" for n in range(1, 101))
    alerts.queued(AlertsQueued(1, 0, 1))
    clock.advance(0)
    ((channel, key, data, _),) = receivers.calls
    assert (channel.name, key) == ("hook", "1@1:failure")
    assert data["url"] == "http://sched.example:3000/#/jobs/42"
    assert data["output"].split("\n") == [f"line {n}" for n in range(81, 101)]
    assert data["detail"] == "exit 1"
    receivers.answer_all(SENT)
    assert outbox.states() == ["sent"]
    assert outbox.rows[1].sent_at == 0.0 and outbox.rows[1].reply == "200 OK"
    assert metric(registry, "scheduler_alerts_sent_total", kind="webhook", event="failure") == 1
    assert metric(registry, "scheduler_alerts_pending") == 0


def test_only_the_leader_delivers_from_a_shared_outbox() -> None:
    clock, outbox, receivers = Clock(), MemoryOutbox(), Receivers()
    lead = {"now": False}
    alerts = sender(clock, outbox, receivers, leading=lambda: lead["now"])
    outbox.add(1, job_id=42)
    alerts.queued(AlertsQueued(1, 0, 1))
    clock.advance(0)
    assert receivers.calls == [] and outbox.states() == ["pending"]
    # Taking the lease wakes the sender (the service's leadership listener).
    lead["now"] = True
    alerts.wake()
    clock.advance(0)
    assert len(receivers.calls) == 1


def test_a_receiver_that_is_down_is_retried_with_growing_jittered_delays_then_given_up() -> None:
    clock, outbox, receivers = Clock(), MemoryOutbox(), Receivers()
    registry = CollectorRegistry()
    outbox.add(1)
    sender(clock, outbox, receivers, registry, max_attempts=5, first_delay=10.0, max_delay=60.0)
    clock.advance(0)
    waits = []
    for attempt in range(1, 5):
        assert receivers.answer_all(DOWN) == 1
        row = outbox.rows[1]
        assert (row.state, row.attempts) == ("pending", attempt)
        wait = row.next_attempt_at - clock.seconds()
        base = min(60.0, 10.0 * 2 ** (attempt - 1))
        assert base / 2 <= wait <= base
        waits.append(wait)
        clock.advance(wait - 0.01)
        assert receivers.open() == []  # not before its time
        clock.advance(0.01)
    assert receivers.answer_all(DOWN) == 1
    assert outbox.rows[1].state == "failed" and "gave up after 5 attempts" in (outbox.rows[1].reply or "")
    assert metric(registry, "scheduler_alerts_retried_total", kind="webhook", event="failure") == 4
    assert metric(registry, "scheduler_alerts_failed_total", kind="webhook", event="failure") == 1
    clock.advance(10_000)
    assert receivers.open() == []


def test_down_then_back_is_delivered_once() -> None:
    clock, outbox, receivers = Clock(), MemoryOutbox(), Receivers()
    outbox.add(3)
    sender(clock, outbox, receivers)
    clock.advance(0)
    assert receivers.answer_all(DOWN) == 3
    clock.advance(10)
    assert receivers.answer_all(SENT) == 3
    clock.advance(100_000)
    assert len(receivers.calls) == 6 and receivers.open() == []
    assert outbox.states() == ["sent"] * 3


def test_a_refusal_fails_at_once_and_a_missing_channel_fails_the_row() -> None:
    clock, outbox, receivers = Clock(), MemoryOutbox(), Receivers()
    outbox.add(1)
    outbox.add(1, channel="gone")
    sender(clock, outbox, receivers)
    clock.advance(0)
    receivers.answer_all(Reply("failed", "410 Gone", 410))
    assert outbox.states() == ["failed", "failed"]
    assert outbox.rows[2].reply == "no channel named 'gone' (deleted?)"
    clock.advance(100_000)
    assert len(receivers.calls) == 1


def test_at_most_a_few_requests_per_channel_and_a_slow_one_does_not_hold_up_another() -> None:
    clock, outbox, receivers = Clock(), MemoryOutbox(), Receivers()
    outbox.add(10, channel="hook")
    outbox.add(2, channel="chat", at=1.0)
    sender(clock, outbox, receivers, per_channel=3)
    clock.advance(1)
    flying = [call[0].name for call in receivers.calls]
    assert flying.count("hook") == 3 and flying.count("chat") == 2
    # Each answer lets one more go to that channel; the rest wait their turn.
    for _ in range(4):
        receivers.calls[[c[3].called for c in receivers.calls].index(False)][3].callback(SENT)
        clock.advance(0)
    assert sum(1 for c in receivers.calls if c[0].name == "hook" and not c[3].called) <= 3
    while receivers.answer_all(SENT):
        clock.advance(0)
    assert outbox.states() == ["sent"] * 12 and len(receivers.calls) == 12


def test_a_thousand_alerts_are_read_in_batches_and_each_delivered_once() -> None:
    clock, outbox, receivers = Clock(), MemoryOutbox(), Receivers()
    outbox.add(1000)
    sender(clock, outbox, receivers, batch=50, in_flight=20, per_channel=20)
    clock.advance(0)
    while receivers.answer_all(SENT):
        clock.advance(0)
    assert outbox.states() == ["sent"] * 1000
    keys = [key for _, key, _, _ in receivers.calls]
    assert len(keys) == len(set(keys)) == 1000
    assert outbox.largest_read <= 20


def test_a_full_outbox_is_counted_and_shown() -> None:
    clock, outbox, receivers = Clock(), MemoryOutbox(), Receivers()
    registry = CollectorRegistry()
    alerts = sender(clock, outbox, receivers, registry, limit=3)
    alerts.queued(AlertsQueued(0, 2, 3))
    assert metric(registry, "scheduler_alerts_refused_total") == 2
    assert metric(registry, "scheduler_alerts_outbox_full") == 1
    alerts.queued(AlertsQueued(0, 0, 2))
    assert metric(registry, "scheduler_alerts_outbox_full") == 0


def test_stopping_drops_attempts_in_flight_unrecorded() -> None:
    clock, outbox, receivers = Clock(), MemoryOutbox(), Receivers()
    outbox.add(2)
    alerts = sender(clock, outbox, receivers)
    clock.advance(0)
    assert len(receivers.open()) == 2
    alerts.stopService()
    assert outbox.attempts == [] and outbox.states() == ["pending", "pending"]
    alerts.wake()
    clock.advance(100)
    assert len(receivers.calls) == 2


def test_a_test_alert_goes_out_now_and_answers_with_the_reply() -> None:
    clock, outbox, receivers = Clock(), MemoryOutbox(), Receivers()
    alerts = sender(clock, outbox, receivers)
    replies: list[Reply] = []
    alerts.send_test(CHANNELS["chat"]).addCallback(replies.append)
    ((channel, key, data, answer),) = receivers.calls
    assert channel.name == "chat"
    assert data["event"] == TEST_EVENT and key.startswith("test:") and data["url"] == "http://sched.example:3000/"
    answer.callback(SENT)
    assert replies == [SENT] and outbox.attempts == []


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(200, "sent"), (204, "sent"), (301, "failed"), (400, "failed"), (404, "failed"), (408, "retry"),
     (429, "retry"), (500, "retry"), (503, "retry")],
)
def test_what_a_status_means(code: int, outcome: str) -> None:
    assert judge_status(code) == outcome


def test_backoff_and_output_tail_bounds() -> None:
    rng = random.Random(1)
    assert all(5 <= retry_delay(1, 10, 3600, rng) <= 10 for _ in range(100))
    assert all(1800 <= retry_delay(20, 10, 3600, rng) <= 3600 for _ in range(100))
    assert output_tail("a\n" * 100) == "\n".join(["a"] * 20)
    assert len(output_tail("é" * 10_000).encode()) <= 4096


def test_every_event_has_a_title() -> None:
    assert set(EVENT_TITLES) == {*ALERT_EVENTS, TEST_EVENT}
