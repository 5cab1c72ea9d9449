"""Alert rules: what a task (or the global defaults) asks to be told, and when a rule speaks.

A rule is ``{"on": <event>, "channel": <name>}`` with options:

- ``after`` (failure, timeout, lost, recovery): how many runs in a row must
  have ended badly.  A failure rule speaks when a streak of bad ends reaches
  it; a recovery rule speaks when a success ends a streak at least that long
  in which a failure, timeout or lost rule of the task spoke (any streak, if
  the task has none).
- ``every`` (failure, timeout, lost, stale): seconds between reminders while
  the trouble lasts.  Without it a rule speaks once per streak (or once per
  stale spell); ``0`` speaks on every bad end.
- ``mutedUntil``: the rule is silent until then.
- ``attempts`` (failure, timeout, lost): ``last`` (the default) speaks only
  of a run's final attempt, once its retries are spent; ``each`` of every
  attempt that ends badly (without ``after`` or ``every``).

``failure`` means a run did not succeed, whatever the reason (failed, timed
out or lost); ``timeout`` and ``lost`` are those two reasons alone.  All three
count in a task's streak of bad ends, which a success ends.

Everything here is pure: the decisions take the time as an argument, and
the watching (jobs, timers, workers) is ``scheduler.alert_watch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from scheduler.alerts import AlertEvent
from scheduler.jobs import JobStatus

AttemptsMode = Literal["last", "each"]
ATTEMPTS_MODES: tuple[AttemptsMode, ...] = get_args(AttemptsMode)

# What a run's end is, for each event about how runs end.
BAD_ENDS: dict[AlertEvent, frozenset[JobStatus]] = {
    "failure": frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.LOST}),
    "timeout": frozenset({JobStatus.TIMED_OUT}),
    "lost": frozenset({JobStatus.LOST}),
}
ENDED_BADLY = BAD_ENDS["failure"]
# Which options go with which events.
TAKES_AFTER: frozenset[AlertEvent] = frozenset({"failure", "timeout", "lost", "recovery"})
TAKES_EVERY: frozenset[AlertEvent] = frozenset({"failure", "timeout", "lost", "stale"})
TAKES_ATTEMPTS: frozenset[AlertEvent] = frozenset(BAD_ENDS)
# Only the global defaults hold rules about workers.
GLOBAL_ONLY: frozenset[AlertEvent] = frozenset({"worker_offline"})

MAX_RULES = 20
AFTER_RANGE = (1, 1000)
EVERY_RANGE = (0, 30 * 86400)
# Seconds, for startDeadline, finishDeadline, freshness and the worker_offline delay.
DEADLINE_RANGE = (1, 366 * 86400)


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One rule; field names are the JSON ones."""

    on: AlertEvent
    channel: str
    after: int = 1
    every: float | None = None
    mutedUntil: float | None = None
    attempts: AttemptsMode = "last"

    def muted(self, now: float) -> bool:
        return self.mutedUntil is not None and now < self.mutedUntil

    def as_json(self, time: Any = None) -> dict[str, Any]:
        """The rule as tasks.db and the API write it; *time* formats ``mutedUntil``."""
        data: dict[str, Any] = {"on": self.on, "channel": self.channel}
        if self.after != 1:
            data["after"] = self.after
        if self.every is not None:
            data["every"] = self.every
        if self.mutedUntil is not None:
            data["mutedUntil"] = time(self.mutedUntil) if time is not None else self.mutedUntil
        if self.attempts != "last":
            data["attempts"] = self.attempts
        return data


@dataclass
class Streak:
    """A task's runs that ended badly since its last success (final attempts only).

    ``ends`` holds (status, finished at) of each, oldest first; ``spoke``
    when each failure rule last spoke in this streak.  Rebuilt at start-up
    by replaying the job history through :func:`failure_speaks`, so a
    restart neither repeats nor forgets a rule's last word.
    """

    ends: list[tuple[JobStatus, float]] = field(default_factory=list)
    spoke: dict[AlertRule, float] = field(default_factory=dict)

    # Bounded: the job history keeps about as many runs per task.
    KEEP = 1000

    def __len__(self) -> int:
        return len(self.ends)

    def add(self, status: JobStatus, at: float) -> None:
        self.ends.append((status, at))
        if len(self.ends) > self.KEEP:
            del self.ends[0]

    @property
    def since(self) -> float | None:
        return self.ends[0][1] if self.ends else None


def failure_speaks(rule: AlertRule, streak: Streak, status: JobStatus, at: float, count: int) -> bool:
    """Does *rule* speak of a final bad end (*status* at *at*, the streak now *count* long)?

    Records that it spoke in *streak*.  A muted rule does not speak, and
    does not count as having spoken: the first bad end after the mute ends
    is told.
    """
    if rule.on not in BAD_ENDS or rule.attempts == "each" or status not in BAD_ENDS[rule.on]:
        return False
    if count < rule.after or rule.muted(at):
        return False
    last = streak.spoke.get(rule)
    if last is not None and (rule.every is None or at - last < rule.every):
        return False
    streak.spoke[rule] = at
    return True


def replay(rules: Sequence[AlertRule], ends: Sequence[tuple[JobStatus, float]]) -> Streak:
    """The streak the job history holds, with when each rule last spoke in it."""
    streak = Streak()
    for status, at in ends:
        streak.add(status, at)
        for rule in rules:
            failure_speaks(rule, streak, status, at, len(streak))
    return streak


def attempt_speaks(rule: AlertRule, status: JobStatus, at: float) -> bool:
    """Does *rule* speak of an attempt that ended badly and will be retried?"""
    return rule.attempts == "each" and rule.on in BAD_ENDS and status in BAD_ENDS[rule.on] and not rule.muted(at)


def recovery_speaks(rule: AlertRule, ended: Streak | None, rules: Sequence[AlertRule], at: float) -> bool:
    """Does *rule* speak of a success that ended the streak *ended*?

    Only after trouble someone was told of: when the task has failure,
    timeout or lost rules, one of them must have spoken in that streak (a
    muted one did not); either way the streak must be ``after`` long.
    """
    if rule.on != "recovery" or ended is None or len(ended) < rule.after or rule.muted(at):
        return False
    if any(other.on in BAD_ENDS for other in rules):
        return bool(ended.spoke)
    return True


def stale_speaks(rule: AlertRule, at: float) -> bool:
    return rule.on == "stale" and not rule.muted(at)


def plain_speaks(rule: AlertRule, event: AlertEvent, at: float) -> bool:
    """late, overrun, missed, worker_offline: one word per occurrence, unless muted."""
    return rule.on == event and not rule.muted(at)
