"""Ping checks: tasks this scheduler does not run, whose runs report in by ``POST /api/ping/<uuid>``.

A task with a ``ping`` uuid is a cron job that runs elsewhere (another
machine's crontab, a CI job).  Its schedule says when a ping is due; each
ping is recorded as a job of the task, so lateness, staleness, failures,
recoveries and health follow from its jobs as for any task:

- ``/api/ping/<uuid>``: a run succeeded (the run ``/start`` opened, if any);
- ``/api/ping/<uuid>/fail``: a run failed;
- ``/api/ping/<uuid>/start``: a run started; a success or failure ends it,
  and ``finishDeadline`` applies while it is open.

The uuid is the secret (122 random bits), as Healthchecks does it: the route
takes no API token, so a cron line needs nothing but ``curl``.  What guards
it instead is in SECURITY.md: a rate limit, and answers that say nothing
but whether the ping counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from scheduler.job_book import JobBook
from scheduler.job_store import JobRecorder
from scheduler.jobs import Job, JobStatus
from scheduler.task_book import TaskBook
from scheduler.tasks import Task
from scheduler.triggers import PING

log = Logger()

PingKind = Literal["success", "fail", "start"]
# Job.target of a ping check's runs: nothing places them.
PING_TARGET = "ping"


class RateLimit:
    """A token bucket: *rate* pings a second, *burst* at once, for the whole route."""

    def __init__(self, clock: IReactorTime, rate: float = 20.0, burst: float = 100.0) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = clock.seconds()

    def take(self) -> bool:
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class TaskPings:
    def __init__(
        self,
        clock: IReactorTime,
        book: Callable[[], TaskBook],
        jobs: JobBook,
        recorder: JobRecorder,
        *,
        ended: Callable[[Job], None] = lambda job: None,
        pinged: Callable[[int], None] = lambda task_id: None,
    ) -> None:
        self._clock = clock
        self._book = book
        self._jobs = jobs
        self._recorder = recorder
        self._ended = ended
        self._pinged = pinged
        # Only pings to a real check are counted (a wrong uuid costs a
        # lookup, and writes nothing): each check has a bucket of its own,
        # so a noisy one cannot starve the others, and all share one more.
        self.limit = RateLimit(clock)
        self._per_check: dict[int, RateLimit] = {}
        # uuid -> task id, rebuilt when the task book object changes.
        self._index: dict[str, int] = {}
        self._indexed: object = None

    def find(self, check: str) -> Task | None:
        book = self._book()
        if book is not self._indexed:
            self._index = {task.options.ping: task.id for task in book if task.options.ping is not None}
            self._indexed = book
        task_id = self._index.get(check)
        return None if task_id is None else book.get(task_id)

    # One check: a ping a second, bursts of ten.
    CHECK_RATE = 1.0
    CHECK_BURST = 10.0

    def allowed(self, task: Task) -> bool:
        """May a ping to *task* be recorded now (within its bucket and the route's)?"""
        bucket = self._per_check.get(task.id)
        if bucket is None:
            if len(self._per_check) > len(self._index) + 1000:
                self._per_check.clear()  # checks removed since: start over
            bucket = self._per_check[task.id] = RateLimit(self._clock, self.CHECK_RATE, self.CHECK_BURST)
        return bucket.take() and self.limit.take()

    def ping(self, task: Task, kind: PingKind) -> Job:
        """Record what the ping says as a job of *task* (a ping check)."""
        now = self._clock.seconds()
        self._pinged(task.id)
        open_run = next(
            (job for job in self._jobs if job.task_id == task.id and job.status is JobStatus.RUNNING), None
        ) if self._jobs.running_for(task.id) else None
        if kind == "start":
            if open_run is not None:
                return open_run
            return self._put(self._new(task, now, JobStatus.RUNNING))
        run = open_run if open_run is not None else self._new(task, now, JobStatus.RUNNING)
        status = JobStatus.SUCCEEDED if kind == "success" else JobStatus.FAILED
        done = self._jobs.update(run, status=status, exit_code=0 if kind == "success" else None, finished_at=now)
        self._put(done)
        self._ended(done)
        return done

    def _new(self, task: Task, now: float, status: JobStatus) -> Job:
        job = self._jobs.create(
            task.command,
            task_id=task.id,
            scheduled_at=self._due(task, now),
            target=PING_TARGET,
            triggered_by=PING,
        )
        return self._jobs.update(job, status=status, started_at=now)

    @staticmethod
    def _due(task: Task, now: float) -> float | None:
        """The scheduled time this ping answers: the last one at or before now."""
        try:
            return float(task.schedule.backwards(now + 1).get_prev(float))
        except Exception:
            return None

    def _put(self, job: Job) -> Job:
        self._recorder.put(job).addErrback(
            lambda failure: log.error("could not record ping job {job_id}: {error}", job_id=job.id, error=failure.getErrorMessage())
        )
        return job
