"""The alert sender: delivers what the outbox in the job store holds, with retries.

Alerts reach the outbox through ``JobHistory.record_alerts``, in the
transaction of the job records written in the same reactor turn.  The
sender reads the due rows (oldest first, a bounded batch at a time, so a
thousand alerts never sit in memory at once), delivers each through its
channel, and records the reply:

- ``sent``: done;
- ``failed``: done, not tried again (the receiver refused it, or the
  channel is gone);
- ``retry``: due again after ``first_delay * 2^(attempt - 1)`` seconds (at
  most ``max_delay``), jittered down by up to half so a receiver that comes
  back is not hit by every alert at once; after ``max_attempts`` it fails.

It wakes at once when alerts are committed, keeps at most ``per_channel``
requests in flight to one channel and ``in_flight`` in all, and nothing
else waits for it: a channel that is down slows no dispatch and no cron
tick.  A row is marked only after its attempt, so a crash between sending
and recording sends it again after the restart, with the same
``Idempotency-Key`` for the receiver to drop the repeat.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from scheduler.alert_channels import Channel
from scheduler.alert_deliveries import Delivery
from scheduler.alert_delivery import Reply
from scheduler.alert_messages import TEST_EVENT, payload
from scheduler.job_history.database import AlertAttempt, AlertsQueued

log = Logger()

# The output tail a payload carries: its last lines, at most this much.
OUTPUT_LINES = 20
OUTPUT_BYTES = 4096


class OutboxStore(Protocol):
    """What the sender needs of the job store."""

    def due_alerts(
        self, now: float, limit: int, skip_ids: Sequence[int] = (), skip_channels: Sequence[str] = ()
    ) -> Deferred[tuple[list[Delivery], float | None, int]]: ...

    def record_attempt(self, attempt: AlertAttempt) -> Deferred[None]: ...

    def output_tail(self, job_id: int, max_bytes: int) -> Deferred[str | None]: ...


Deliver = Callable[[Channel, str, Mapping[str, Any]], Deferred[Reply]]


class AlertMetrics:
    """The outbox's part of ``/metrics``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["kind", "event"]
        self.sent = Counter("scheduler_alerts_sent", "Alerts delivered, by channel kind and event.", labels, registry=registry)
        self.failed = Counter(
            "scheduler_alerts_failed", "Alerts given up on, by channel kind and event.", labels, registry=registry
        )
        self.retried = Counter(
            "scheduler_alerts_retried", "Delivery attempts to be tried again, by channel kind and event.", labels, registry=registry
        )
        self.refused = Counter(
            "scheduler_alerts_refused", "Alerts not queued because the outbox was full.", registry=registry
        )
        self.pending = Gauge("scheduler_alerts_pending", "Alerts in the outbox waiting to be delivered.", registry=registry)
        self.full = Gauge(
            "scheduler_alerts_outbox_full", "1 while the outbox holds its limit of pending alerts (new ones are refused).", registry=registry
        )


def retry_delay(attempt: int, first: float, cap: float, rng: random.Random) -> float:
    """Seconds before trying again after failed attempt number *attempt* (1, 2, ...)."""
    return float(min(cap, first * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0))


def output_tail(text: str, lines: int = OUTPUT_LINES, max_bytes: int = OUTPUT_BYTES) -> str:
    """The last *lines* lines of *text*, and no more than *max_bytes* of UTF-8."""
    kept = "\n".join(text.rstrip("\n").split("\n")[-lines:])
    data = kept.encode("utf-8")
    if len(data) > max_bytes:
        kept = data[-max_bytes:].decode("utf-8", "ignore")
    return kept


class AlertSender(Service):
    """Takes due rows from the outbox and delivers them; a child of the scheduler's service."""

    def __init__(
        self,
        clock: IReactorTime,
        store: OutboxStore,
        channels: Callable[[str], Channel | None],
        deliver: Deliver,
        *,
        public_url: str,
        tz: tzinfo,
        limit: int,
        metrics: AlertMetrics | None = None,
        batch: int = 100,
        per_channel: int = 4,
        in_flight: int = 32,
        max_attempts: int = 12,
        first_delay: float = 10.0,
        max_delay: float = 3600.0,
        rng: random.Random | None = None,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        # With --db the outbox is shared: only the leader delivers from it.
        self._leading = leading
        self._clock = clock
        self._store = store
        self._channels = channels
        self._deliver = deliver
        self.public_url = public_url.rstrip("/")
        self._tz = tz
        self.limit = limit
        self._metrics = metrics
        self._batch = batch
        self._per_channel = per_channel
        self._max_in_flight = in_flight
        self.max_attempts = max_attempts
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._rng = rng or random.Random()
        # Rows being delivered, by id, and how many per channel.
        self._flying: dict[int, Deferred[None]] = {}
        self._per_channel_now: dict[str, int] = {}
        self._pumping = False
        self._again = False
        self._timer: IDelayedCall | None = None
        self.pending = 0
        # Bumped whenever the pending count is set from something newer than
        # a pass's read (a commit of new alerts, an attempt's end): a read
        # answered after either no longer counts.
        self._pending_changes = 0

    # -- the service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.wake()

    def stopService(self) -> None:
        """Stop taking rows; attempts in flight are dropped unrecorded (their rows stay due)."""
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for attempt in list(self._flying.values()):
            attempt.cancel()

    # -- waking ---------------------------------------------------------------

    def queued(self, outcome: AlertsQueued) -> None:
        """A ``record_alerts`` committed (a job store alert listener)."""
        self._set_pending(outcome.pending)
        if outcome.refused:
            log.warn(
                "alert outbox is full ({limit} pending): {refused} new alerts were not queued",
                limit=self.limit,
                refused=outcome.refused,
            )
            if self._metrics is not None:
                self._metrics.refused.inc(outcome.refused)
        if outcome.added:
            self.wake()

    def wake(self) -> None:
        """Look for due rows now (or as soon as the pass under way ends)."""
        if not self.running:
            return
        if self._pumping:
            self._again = True
            return
        self._arm(0.0)

    def _arm(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self._clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(max(0.0, delay), self._pump)

    def _pump(self) -> None:
        self._timer = None
        if not self.running or self._pumping:
            return
        self._pumping = True
        self._again = False
        Deferred.fromCoroutine(self._take()).addCallbacks(self._taken, self._take_failed)

    async def _take(self) -> float | None:
        """Start the due rows there is room for; the delay until the next pass, or None."""
        if not self._leading():
            return None  # taking the lease wakes us
        room = self._max_in_flight - len(self._flying)
        if room <= 0:
            return None  # a finishing attempt wakes us
        full = [name for name, count in self._per_channel_now.items() if count >= self._per_channel]
        now = self._clock.seconds()
        limit = min(self._batch, room)
        changes = self._pending_changes
        rows, next_due, pending = await self._store.due_alerts(now, limit, tuple(self._flying), full)
        if changes == self._pending_changes:
            self._set_pending(pending)
        for row in rows:
            if not self.running:
                return None
            if self._per_channel_now.get(row.channel, 0) >= self._per_channel:
                self._again = True  # its turn comes when one of the channel's attempts ends
                continue
            self._start(row)
        if len(rows) == limit:
            return 0.0
        if next_due is None:
            return None
        return max(0.0, next_due - self._clock.seconds())

    def _taken(self, delay: float | None) -> None:
        self._pumping = False
        if not self.running:
            return
        if self._again and len(self._flying) < self._max_in_flight:
            self._arm(0.0)
        elif delay is not None:
            self._arm(delay)

    def _take_failed(self, failure: Failure) -> None:
        self._pumping = False
        log.failure("could not read the alert outbox; trying again in {delay} s", failure, delay=self._first_delay)
        if self.running:
            self._arm(self._first_delay)

    # -- one attempt ------------------------------------------------------------

    def _start(self, row: Delivery) -> None:
        channel = self._channels(row.channel)
        now = self._clock.seconds()
        if channel is None:
            self._record(row, None, Reply("failed", f"no channel named '{row.channel}' (deleted?)"), now)
            return
        self._per_channel_now[row.channel] = self._per_channel_now.get(row.channel, 0) + 1
        attempt = Deferred.fromCoroutine(self._attempt(row, channel))
        self._flying[row.id] = attempt
        attempt.addErrback(self._attempt_failed, row)
        attempt.addBoth(lambda _: self._finished(row))

    async def _attempt(self, row: Delivery, channel: Channel) -> None:
        output = None
        if row.job_id is not None:
            text = await self._store.output_tail(row.job_id, OUTPUT_BYTES * 2)
            output = output_tail(text) if text else None
        data = payload(row.body, self.link(row.job_id, row.task_id), output)
        reply = await self._deliver(channel, row.key, data)
        if self.running:
            self._record(row, channel, reply, self._clock.seconds())

    def _attempt_failed(self, failure: Failure, row: Delivery) -> None:
        if not failure.check(CancelledError):  # stopped while reading its output: it stays due
            log.failure("alert {key} to {channel}: the attempt failed", failure, key=row.key, channel=row.channel)

    def _finished(self, row: Delivery) -> None:
        self._flying.pop(row.id, None)
        count = self._per_channel_now.get(row.channel, 1) - 1
        if count > 0:
            self._per_channel_now[row.channel] = count
        else:
            self._per_channel_now.pop(row.channel, None)
        self.wake()

    def _record(self, row: Delivery, channel: Channel | None, reply: Reply, now: float) -> None:
        attempts = row.attempts + 1
        kind = channel.kind if channel is not None else "unknown"
        state = "failed"
        text = reply.text
        sent_at = None
        next_at = row.next_attempt_at
        if reply.outcome == "sent":
            state, sent_at = "sent", now
        elif reply.outcome == "retry" and attempts < self.max_attempts:
            state = "pending"
            next_at = now + retry_delay(attempts, self._first_delay, self._max_delay, self._rng)
        elif reply.outcome == "retry":
            text = f"{text} (gave up after {attempts} attempts)"
        if self._metrics is not None:
            counter = {"sent": self._metrics.sent, "failed": self._metrics.failed, "pending": self._metrics.retried}[state]
            counter.labels(kind=kind, event=row.event).inc()
        if state == "failed":
            log.warn(
                "alert {key} to channel {channel} failed: {reply}", key=row.key, channel=row.channel, reply=text
            )
        if state != "pending":
            self._set_pending(self.pending - 1)
        attempt = AlertAttempt(row.id, state, attempts, next_at, now, text[:1024], sent_at)
        self._store.record_attempt(attempt).addErrback(
            lambda failure: log.failure("could not record alert {key}'s delivery", failure, key=row.key)
        )

    def _set_pending(self, pending: int) -> None:
        self._pending_changes += 1
        self.pending = max(0, pending)
        if self._metrics is not None:
            self._metrics.pending.set(self.pending)
            self._metrics.full.set(1 if self.pending >= self.limit else 0)

    # -- links and tests --------------------------------------------------------

    def link(self, job_id: int | None, task_id: int | None) -> str:
        """The job, or else the task, in the dashboard."""
        if job_id is not None:
            return f"{self.public_url}/#/jobs/{job_id}"
        if task_id is not None:
            return f"{self.public_url}/#/tasks/{task_id}/history"
        return f"{self.public_url}/"

    def send_test(self, channel: Channel) -> Deferred[Reply]:
        """Send a test alert to *channel* now, outside the outbox; fires with the receiver's reply."""
        now = self._clock.seconds()
        body = {
            "event": TEST_EVENT,
            "task": None,
            "job": None,
            "detail": f"A test alert from the scheduler to channel '{channel.name}': it arrives.",
            "at": datetime.fromtimestamp(now, self._tz).isoformat(timespec="seconds"),
        }
        return self._deliver(channel, f"test:{uuid.uuid4().hex}", payload(body, self.link(None, None), None))
