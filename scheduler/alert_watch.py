"""The alert watch: decides when each event happened, and each task's health.

It is told what happens (a job's new state, a job's end once its record is
queued for the job store, a fire of a ping check, runs missed in downtime,
workers coming and going, task changes) and keeps, per task, what health
and the rules need: the last success, the streak of runs that ended badly
since, the runs late to start.  Timers on the injected clock raise the
events nothing reports: ``late`` (still queued past ``startDeadline``),
``overrun`` (still running past ``finishDeadline``), ``stale`` (no success
within ``freshness``) and ``worker_offline``.

Each event becomes one :class:`Alert` per rule that speaks of it (the
task's own rules, or the global defaults' if it has none), keyed by
``alert_key(task, scheduled time, event)``: an event raised again (a timer
re-armed after a restart, say) is queued again under the same key, and the
outbox keeps it once.  An event about a job's end is queued in the same
reactor turn as the job's record, so both are committed together.

At start-up, ``restore`` rebuilds all of it from the job history
(``scheduler.job_outcomes``) and the active jobs, as the retries are.
No I/O here: the outbox is an :class:`AlertQueue`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from scheduler import cron
from scheduler.alert_defaults import AlertDefaults
from scheduler.alert_rules import (
    ENDED_BADLY,
    GLOBAL_ONLY,
    AlertRule,
    Streak,
    attempt_speaks,
    failure_speaks,
    plain_speaks,
    recovery_speaks,
    replay,
    stale_speaks,
)
from scheduler.alerts import Alert, AlertEvent, AlertQueue, KnownChannels, TaskHealth, alert_key
from scheduler.job_outcomes import TaskOutcomes
from scheduler.job_retry import owes_retry
from scheduler.jobs import Job, JobStatus
from scheduler.tasks import Task
from scheduler.timers import KeyedTimers

log = Logger()


def _moment(job: Job) -> float:
    """The time a job's events are keyed by: its scheduled time, or when it was asked for."""
    return job.scheduled_at if job.scheduled_at is not None else job.created_at


def plain_job(job: Job) -> dict[str, Any]:
    """A job's JSON when the watch is given no richer shape (tests)."""
    return {"id": job.id, "taskId": job.task_id, "status": job.status.value, "attempt": job.attempt}


@dataclass(slots=True)
class _Track:
    """What the watch knows of one task; made when something happens to it (a few words each)."""

    # Since when the watch has looked: a task that never succeeded is
    # measured against its freshness from here.
    since: float
    last_success: float | None = None
    last_job: float | None = None
    # Runs that ended badly since the last success; None while there are none.
    streak: Streak | None = None
    # Queued jobs past their start deadline.
    late_jobs: set[int] | None = None
    # A ping check's scheduled time whose ping is overdue.
    ping_overdue: float | None = None

    @property
    def failures(self) -> int:
        return 0 if self.streak is None else len(self.streak)


class AlertWatch:
    def __init__(
        self,
        clock: IReactorTime,
        *,
        tasks: Callable[[int], Task | None],
        all_tasks: Callable[[], Iterable[Task]],
        active: Callable[[int], Job | None],
        queue: AlertQueue,
        channels: KnownChannels,
        defaults: Callable[[], AlertDefaults] = AlertDefaults,
        online: Callable[[str], bool] = lambda name: False,
        describe_job: Callable[[Job], Mapping[str, Any]] = plain_job,
        tz: tzinfo | None = None,
    ) -> None:
        self._clock = clock
        self._task = tasks
        self._all_tasks = all_tasks
        self._active = active
        self._queue = queue
        self._channels = channels
        self._defaults = defaults
        self._online = online
        self._describe = describe_job
        self._tz = tz
        self._tracks: dict[int, _Track] = {}
        # When the watch began, and when tasks added since were: what a task
        # that never succeeded is measured from, until it has a track.
        self._started = clock.seconds()
        self._added: dict[int, float] = {}
        self._removed: set[int] = set()
        self._late = KeyedTimers(clock)
        self._overrun = KeyedTimers(clock)
        self._stale = KeyedTimers(clock)
        self._pings = KeyedTimers(clock)
        self._offline: dict[str, IDelayedCall] = {}

    @property
    def channels(self) -> KnownChannels:
        return self._channels

    # -- what applies to a task -------------------------------------------

    def rules_for(self, task: Task) -> tuple[AlertRule, ...]:
        """The task's own rules, or the defaults' if it has none."""
        if task.options.alerts:
            return task.options.alerts
        return tuple(rule for rule in self._defaults().rules if rule.on not in GLOBAL_ONLY)

    def deadline(self, task: Task, name: str) -> float | None:
        """startDeadline, finishDeadline or freshness: the task's, else the defaults'."""
        own: float | None = getattr(task.options, name)
        return own if own is not None else getattr(self._defaults(), name)

    def _track(self, task_id: int) -> _Track:
        track = self._tracks.get(task_id)
        if track is None:
            track = self._tracks[task_id] = _Track(since=self._added.pop(task_id, self._started))
        return track

    def _since(self, task_id: int) -> float:
        """The last success, or else since when the task has been watched."""
        track = self._tracks.get(task_id)
        if track is None:
            return self._added.get(task_id, self._started)
        return track.last_success if track.last_success is not None else track.since

    # -- start-up ----------------------------------------------------------------

    def restore(self, outcomes: Mapping[int, TaskOutcomes], active: Iterable[Job]) -> None:
        """Take up what the job history says, and arm every timer the previous run had."""
        now = self._started = self._clock.seconds()
        for task in self._all_tasks():
            known = outcomes.get(task.id)
            if known is not None:
                track = self._track(task.id)
                track.last_success = known.last_success
                track.last_job = known.last_job
                finals = [(status, at) for status, attempt, at in known.bad_ends if self._final(task, attempt)]
                track.streak = replay(self.rules_for(task), finals) if finals else None
            self._arm_stale(task)
            if task.options.ping is not None:
                expected = self._last_fire(task, now)
                last_job = None if known is None else known.last_job
                if expected is not None and (last_job is None or last_job < expected):
                    self.expect_ping(task, expected)
        # Workers that had runs when the scheduler stopped are away until
        # they say hello again: keyed by their last run's start, the same
        # after every restart.
        away: dict[str, float] = {}
        for job in active:
            self.job_changed(job)
            if job.status is JobStatus.RUNNING and job.worker is not None:
                started = job.started_at if job.started_at is not None else job.created_at
                away[job.worker] = max(away.get(job.worker, 0.0), started)
        for name, since in away.items():
            if not self._online(name):
                self._away(name, since)

    @staticmethod
    def _final(task: Task, attempt: int) -> bool:
        return task.options.ping is not None or attempt > task.options.retries

    @staticmethod
    def _last_fire(task: Task, now: float) -> float | None:
        try:
            return float(task.schedule.backwards(now + 1).get_prev(float))
        except Exception:  # an expression with no past time
            return None

    # -- jobs --------------------------------------------------------------------

    def job_changed(self, job: Job) -> None:
        """A job's new state (a JobBook listener): arm or drop its late and overrun timers."""
        if job.task_id is None:
            return
        if job.status is JobStatus.QUEUED:
            track = self._tracks.get(job.task_id)
            if track is not None and track.late_jobs and job.id in track.late_jobs:
                return
            task = self._task(job.task_id)
            limit = None if task is None else self.deadline(task, "startDeadline")
            if limit is not None:
                delay = max(0.0, _moment(job) + limit - self._clock.seconds())
                self._late.start(job.id, delay, self._late_due, job.id, limit)
            return
        self._late.cancel(job.id)
        track = self._tracks.get(job.task_id)
        if track is not None and track.late_jobs:
            track.late_jobs.discard(job.id)
        if job.status is JobStatus.RUNNING:
            task = self._task(job.task_id)
            limit = None if task is None else self.deadline(task, "finishDeadline")
            if limit is not None:
                delay = max(0.0, _moment(job) + limit - self._clock.seconds())
                self._overrun.start(job.id, delay, self._overrun_due, job.id, limit)
        else:
            self._overrun.cancel(job.id)

    def _late_due(self, job_id: int, limit: float) -> None:
        job = self._active(job_id)
        if job is None or job.status is not JobStatus.QUEUED or job.task_id is None:
            return
        task = self._task(job.task_id)
        if task is None:
            return
        track = self._track(task.id)
        track.late_jobs = track.late_jobs or set()
        track.late_jobs.add(job.id)
        self._emit(
            task,
            [rule for rule in self.rules_for(task) if plain_speaks(rule, "late", self._clock.seconds())],
            "late",
            _moment(job),
            job,
            f"the run due at {self._iso(_moment(job))} has not started {limit:g}s after its time",
        )

    def _overrun_due(self, job_id: int, limit: float) -> None:
        job = self._active(job_id)
        if job is None or job.status is not JobStatus.RUNNING or job.task_id is None:
            return
        task = self._task(job.task_id)
        if task is None:
            return
        self._emit(
            task,
            [rule for rule in self.rules_for(task) if plain_speaks(rule, "overrun", self._clock.seconds())],
            "overrun",
            _moment(job),
            job,
            f"the run due at {self._iso(_moment(job))} is still running {limit:g}s after its time",
        )

    def job_ended(self, job: Job) -> None:
        """*job* reached its final state, and its record was just queued for the job store."""
        if job.task_id is None:
            return
        task = self._task(job.task_id)
        if task is None:
            return
        now = self._clock.seconds()
        at = job.finished_at if job.finished_at is not None else now
        track = self._track(task.id)
        track.last_job = max(track.last_job or 0.0, job.created_at)
        rules = self.rules_for(task)
        if job.status is JobStatus.SUCCEEDED:
            ended = track.streak
            track.streak = None
            track.last_success = at
            self._arm_stale(task)
            speaking = [rule for rule in rules if recovery_speaks(rule, ended, rules, now)]
            self._emit(
                task, speaking, "recovery", _moment(job), job,
                f"succeeded after {len(ended or ())} run{'s' if len(ended or ()) != 1 else ''} that did not",
            )
            return
        if job.status not in ENDED_BADLY:
            return
        final = task.options.ping is not None or not owes_retry(job, task)
        each = [rule for rule in rules if attempt_speaks(rule, job.status, now)]
        last: list[AlertRule] = []
        if final:
            streak = track.streak = track.streak or Streak()
            streak.add(job.status, at)
            last = [rule for rule in rules if failure_speaks(rule, streak, job.status, at, len(streak))]
        what = _ENDINGS.get(job.status, job.status.value)
        retry = "" if final else f"; attempt {job.attempt} of {task.options.retries + 1}, it will be retried"
        detail = f"{self._run_name(job)} {what}{retry}"
        if final and track.failures > 1:
            detail += f" ({track.failures} runs in a row have not succeeded)"
        for event in ("failure", "timeout", "lost"):
            self._emit(task, [rule for rule in last if rule.on == event], event, _moment(job), job, detail)
            self._emit(
                task, [rule for rule in each if rule.on == event], event, _moment(job), job, detail,
                suffix=f"#{job.attempt}",
            )

    def missed(self, task: Task, jobs: list[Job], count: int, more: bool = False) -> None:
        """*count* runs of *task* (or *more*) missed while the scheduler was down; *jobs* record them (oldest first)."""
        if not jobs:
            return
        first, last = _moment(jobs[0]), _moment(jobs[-1])
        span = self._iso(first) if first == last else f"from {self._iso(first)} to {self._iso(last)}"
        self._emit(
            task,
            [rule for rule in self.rules_for(task) if plain_speaks(rule, "missed", self._clock.seconds())],
            "missed",
            first,
            jobs[-1],
            f"{'at least ' if more else ''}{count} run{'s' if count != 1 or more else ''} missed while the scheduler "
            f"was down ({span}{'; the latest recorded as missed' if len(jobs) < count or more else ''})",
        )

    # -- ping checks -------------------------------------------------------------

    def expect_ping(self, task: Task, scheduled: float) -> None:
        """A ping check's scheduled time came: its ping is late if none arrives within startDeadline."""
        limit = self.deadline(task, "startDeadline")
        if limit is None:
            return
        delay = max(0.0, scheduled + limit - self._clock.seconds())
        self._pings.start(task.id, delay, self._ping_due, task.id, scheduled, limit)

    def pinged(self, task_id: int) -> None:
        track = self._track(task_id)
        track.last_job = self._clock.seconds()
        track.ping_overdue = None

    def _ping_due(self, task_id: int, scheduled: float, limit: float) -> None:
        task = self._task(task_id)
        if task is None or task.options.ping is None or task.options.paused:
            return
        track = self._track(task_id)
        if track.last_job is not None and track.last_job >= scheduled:
            return
        track.ping_overdue = scheduled
        self._emit(
            task,
            [rule for rule in self.rules_for(task) if plain_speaks(rule, "late", self._clock.seconds())],
            "late",
            scheduled,
            None,
            f"no ping for the run due at {self._iso(scheduled)} within {limit:g}s",
        )

    # -- freshness ---------------------------------------------------------------

    def _arm_stale(self, task: Task) -> None:
        self._stale.cancel(task.id)
        freshness = self.deadline(task, "freshness")
        # Health needs no timer (it is computed when asked); only a stale rule does.
        if freshness is None or not any(rule.on == "stale" for rule in self.rules_for(task)):
            return
        due = self._since(task.id) + freshness
        self._stale.start(task.id, max(0.0, due - self._clock.seconds()), self._stale_due, task.id, due)

    def _stale_due(self, task_id: int, due: float) -> None:
        task = self._task(task_id)
        if task is None or task.options.paused:
            return
        now = self._clock.seconds()
        freshness = self.deadline(task, "freshness")
        since = self._since(task_id)
        if freshness is None or since + freshness != due:
            self._arm_stale(task)
            return
        following: list[float] = []
        for rule in self.rules_for(task):
            if not stale_speaks(rule, now):
                continue
            every = rule.every or 0.0
            steps = math.floor((now - due) / every) if every > 0 else 0
            if every > 0:
                following.append(due + (steps + 1) * every)
            what = "no successful run yet" if self.last_success(task_id) is None else f"no successful run since {self._iso(since)}"
            self._emit(task, [rule], "stale", due + steps * every, None, f"{what} (freshness {freshness:g}s)")
        if following:
            self._stale.start(task_id, max(0.0, min(following) - now), self._stale_due, task_id, due)

    # -- tasks and workers -----------------------------------------------------------

    def task_changed(self, change: str, task: Task) -> None:
        """A TaskState listener: a task added or replaced re-arms its freshness timer."""
        if change == "added":
            if task.id not in self._tracks and task.id not in self._added and self.deadline(task, "freshness") is not None:
                self._added[task.id] = self._clock.seconds()
            self._arm_stale(task)
        else:
            self._stale.cancel(task.id)
            self._pings.cancel(task.id)
            # Dropped once really gone (a replaced task is added back at once),
            # all in one later call: a CLEAR or LOAD removes thousands.
            if not self._removed:
                self._clock.callLater(0, self._forget)
            self._removed.add(task.id)

    def defaults_changed(self) -> None:
        """The global defaults were replaced: freshness timers follow the new rules and windows."""
        for task in self._all_tasks():
            self._arm_stale(task)

    def _forget(self) -> None:
        removed, self._removed = self._removed, set()
        for task_id in removed:
            if self._task(task_id) is None:
                self._tracks.pop(task_id, None)
                self._added.pop(task_id, None)

    def worker_changed(self, change: str, name: str) -> None:
        if change == "connected":
            pending = self._offline.pop(name, None)
            if pending is not None and pending.active():
                pending.cancel()
        elif change == "disconnected":
            self._away(name, self._clock.seconds())

    def _away(self, name: str, gone: float) -> None:
        if name in self._offline or not any(rule.on == "worker_offline" for rule in self._defaults().rules):
            return
        after = self._defaults().workerOfflineAfter
        self._offline[name] = self._clock.callLater(after, self._offline_due, name, gone, after)

    def _offline_due(self, name: str, gone: float, after: float) -> None:
        self._offline.pop(name, None)
        if self._online(name):
            return
        now = self._clock.seconds()
        rules = [rule for rule in self._defaults().rules if plain_speaks(rule, "worker_offline", now)]
        self._emit(None, rules, "worker_offline", gone, None, f"worker {name} has been away for {after:g}s", subject=f"worker:{name}", worker=name)

    # -- health ------------------------------------------------------------------------

    def health(self, task: Task) -> TaskHealth:
        """paused, down (no success within freshness), failing (its last run ended badly), late, or up."""
        if task.options.paused:
            return "paused"
        freshness = self.deadline(task, "freshness")
        if freshness is not None and self._clock.seconds() - self._since(task.id) > freshness:
            return "down"
        track = self._tracks.get(task.id)
        if track is None:
            return "up"
        if track.streak:
            return "failing"
        if track.late_jobs or track.ping_overdue is not None:
            return "late"
        return "up"

    def last_success(self, task_id: int) -> float | None:
        track = self._tracks.get(task_id)
        return None if track is None else track.last_success

    def consecutive_failures(self, task_id: int) -> int:
        track = self._tracks.get(task_id)
        return 0 if track is None else track.failures

    def stop(self) -> None:
        for timers in (self._late, self._overrun, self._stale, self._pings):
            timers.stop()
        for pending in self._offline.values():
            if pending.active():
                pending.cancel()
        self._offline.clear()

    # -- alerts ------------------------------------------------------------------------

    def _run_name(self, job: Job) -> str:
        """How a detail names the run: by its time for a scheduled one, else by its job."""
        if job.scheduled_at is not None:
            return f"the run due at {self._iso(job.scheduled_at)}"
        return f"job {job.id} (asked for at {self._iso(job.created_at)})"

    def _iso(self, when: float) -> str:
        return cron.iso(when, self._tz or UTC) or str(when)

    def _emit(
        self,
        task: Task | None,
        rules: list[AlertRule],
        event: AlertEvent,
        moment: float,
        job: Job | None,
        detail: str,
        *,
        suffix: str = "",
        subject: str | None = None,
        worker: str | None = None,
    ) -> None:
        if not rules:
            return
        now = self._clock.seconds()
        key = alert_key(subject if subject is not None else str(task.id if task else ""), moment, event) + suffix
        body = {
            "event": event,
            "task": None
            if task is None
            else {"id": task.id, "jobName": task.job_name, "schedule": task.schedule.expression},
            "job": None if job is None else dict(self._describe(job)),
            "detail": detail,
            "at": self._iso(now),
        }
        if worker is not None:
            body["worker"] = worker
        alerts = []
        for channel in dict.fromkeys(rule.channel for rule in rules):
            if channel not in self._channels:
                log.warn("alert {key}: no channel named {channel}; not sent there", key=key, channel=channel)
                continue
            alerts.append(
                Alert(
                    key=key,
                    event=event,
                    channel=channel,
                    created_at=now,
                    task_id=None if task is None else task.id,
                    job_id=None if job is None else job.id,
                    body=body,
                )
            )
        if not alerts:
            return
        log.info("alert {key}: {detail}", key=key, detail=detail)
        self._queue.record_alerts(alerts).addErrback(
            lambda failure: log.error("could not queue alert {key}: {error}", key=key, error=failure.getErrorMessage())
        )


_ENDINGS = {
    JobStatus.FAILED: "failed",
    JobStatus.TIMED_OUT: "timed out",
    JobStatus.LOST: "was lost (its worker went away)",
}
