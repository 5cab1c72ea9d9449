"""Jitter: a task's cron runs start at a random moment up to ``jitter`` seconds late.

Spreads the load of many tasks on one schedule.  The job keeps its nominal
``scheduledAt`` (and its fire key, so idempotency is untouched); only its
start moves.  A start within reach of a run's ``delay``
(``MAX_START_DELAY``, the worker protocol's cap) is the worker's to wait;
a later one is held here, queued but not yet in the queue, until it is
within reach, then sent with the delay that is left.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from scheduler.jobs import Job
from scheduler.tasks import Task
from scheduler.timers import KeyedTimers
from scheduler.triggers import SCHEDULE
from scheduler.worker_messages import MAX_START_DELAY


def offset(task_id: int, scheduled: float, jitter: float) -> float:
    """How late the run of *task_id* due at *scheduled* starts: uniform in [0, jitter].

    Seeded by the fire, so the same fire always gets the same offset: a
    scheduler restarted while the job waits sends it at the same moment.
    """
    if jitter <= 0:
        return 0.0
    return random.Random(f"{task_id}@{scheduled!r}").uniform(0.0, jitter)


def start_of(job: Job, task: Task | None) -> float | None:
    """When *job* should start, if it is a cron fire of a task with jitter; else None."""
    if (
        task is None
        or task.options.jitter <= 0
        or job.scheduled_at is None
        or job.triggered_by != SCHEDULE
    ):
        return None
    return job.scheduled_at + offset(task.id, job.scheduled_at, task.options.jitter)


class JitterHold:
    """Jobs whose start is further off than a run's delay can reach."""

    def __init__(self, clock: IReactorTime, release: Callable[[int], None]) -> None:
        self._clock = clock
        self._release = release
        self._timers = KeyedTimers(clock)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._timers

    def hold(self, job_id: int, start: float | None) -> bool:
        """Hold *job_id* if *start* is beyond reach; True if it is held."""
        if start is None:
            return False
        wait = start - MAX_START_DELAY - self._clock.seconds()
        if wait <= 0:
            return False
        self._count += 1
        self._timers.start(job_id, wait, self._due, job_id)
        return True

    def _due(self, job_id: int) -> None:
        self._count -= 1
        self._release(job_id)

    def cancel(self, job_id: int) -> None:
        if job_id in self._timers:
            self._count -= 1
            self._timers.cancel(job_id)

    def stop(self) -> None:
        self._timers.stop()
        self._count = 0
