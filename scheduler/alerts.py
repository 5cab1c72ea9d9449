"""Alerts: what a rule asks to be told, on its way to a channel.

Two sides meet here.  The rules (``alert_rules``) watch jobs, tasks and
workers and decide that an event happened; each event becomes one
:class:`Alert` per channel its rules name.  The outbox (``alert_outbox``)
keeps every alert in the job store, written in the same commit as the job
record whose change caused it (see :class:`AlertQueue`), and a sender delivers it to its channel
(``alert_channels``) with retries until it is sent or given up.

An alert's ``key`` is its event's idempotency key: the task, the scheduled
time of the run (or the moment for events with no run) and the event kind.
The outbox holds one row per (key, channel), so an event seen twice (after
a restart, say) is queued once, and receivers get the key in an
``Idempotency-Key`` header to drop a retry whose first reply was lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from twisted.internet.defer import Deferred

AlertEvent = Literal[
    "failure", "recovery", "timeout", "lost", "late", "overrun", "missed", "stale", "worker_offline"
]
ALERT_EVENTS: tuple[AlertEvent, ...] = get_args(AlertEvent)

ChannelKind = Literal["webhook", "slack", "discord", "ntfy", "email"]
CHANNEL_KINDS: tuple[ChannelKind, ...] = get_args(ChannelKind)

TaskHealth = Literal["up", "late", "failing", "down", "paused"]
TASK_HEALTHS: tuple[TaskHealth, ...] = get_args(TaskHealth)


def alert_key(subject: str, moment: float, event: AlertEvent) -> str:
    """The idempotency key of one event: ``"12@1764590400:failure"``.

    *subject* is a task id (as text) or ``"worker:<name>"``; *moment* is the
    scheduled time of the run the event is about, or when it happened for
    events without a run (a worker going offline, a task going stale).
    """
    stamp = f"{moment:.0f}" if moment == int(moment) else f"{moment}"
    return f"{subject}@{stamp}:{event}"


@dataclass(frozen=True, slots=True)
class Alert:
    """One event for one channel, as queued in the outbox.

    ``body`` is the part of the webhook body the rules know: ``event``,
    ``task`` (``id``, ``jobName``, ``schedule``, or null), ``job`` (the
    job as the API shows it, or null), ``detail`` (a sentence for people)
    and ``at`` (ISO 8601).  The sender adds ``url`` and ``output`` (the
    job's last lines, read from the job store) when it delivers.
    """

    key: str
    event: AlertEvent
    channel: str
    created_at: float
    task_id: int | None = None
    job_id: int | None = None
    body: Mapping[str, Any] = field(default_factory=dict)


class KnownChannels(Protocol):
    """What the rules need of the channels: whether a name is one."""

    def __contains__(self, name: object) -> bool: ...


class AlertQueue(Protocol):
    """Where the rules put alerts: the job store's outbox.

    The job store's group committer writes everything queued in one reactor
    turn in one transaction, so alerts queued in the same turn as the
    ``put`` of the job record whose change caused them are committed with
    it: both or neither survive a crash.
    """

    def record_alerts(self, alerts: list[Alert]) -> Deferred[None]:
        """Queue the alerts; an alert whose (key, channel) is already kept is ignored."""
