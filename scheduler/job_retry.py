"""Retries: whether a task's ended job runs again, after what delay, and the timers that wait.

A job of a task that failed, timed out or was lost runs again, as a new job
with attempt + 1, after ``retryDelay · 2^(attempt-1)`` seconds, while
``attempt <= retries`` (both bounded in ``scheduler.tasks``).  Jobs run
with ``POST /api/jobs`` (no task) are not retried.

The timers live in memory; the job history is what survives a restart.  A
retry is a later job of its task, so a task whose newest job ended badly
is owed one, and ``resume`` arms it again at start-up, due when it was.

With several nodes (``--db``), retries are the leader's, like cron: a
follower arms none, and the leader arms those owed when it starts leading
and, for jobs other nodes ended, as its sweep finds them
(``scheduler.cluster_sweep``).  The retry's key (``retry_key``) is what
keeps two leaders in a row from both recording it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from scheduler.job_book import JobBook
from scheduler.jobs import Job, JobStatus
from scheduler.tasks import Task, TaskOptions
from scheduler.timers import KeyedTimers
from scheduler.triggers import TriggeredBy

log = Logger()

RETRIED = frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.LOST})


def retry_delay(options: TaskOptions, attempt: int) -> float:
    """Seconds before the run after *attempt* (1 for the first run)."""
    return options.retryDelay * 2.0 ** (attempt - 1)


def owes_retry(job: Job, task: Task | None) -> bool:
    """Does the ended *job* run again?  (Its task, if it has one, decides.)"""
    return job.status in RETRIED and task is not None and job.attempt <= task.options.retries


def retry_key(job: Job) -> str:
    return f"{job.key or job.id}#{job.attempt + 1}"


class Retries:
    """Schedules the next attempt of jobs that ended badly; ``submit`` queues it."""

    # Retries made that are remembered against a second ``resume``.
    REMEMBERED = 10_000

    def __init__(
        self,
        clock: IReactorTime,
        jobs: JobBook,
        tasks: Callable[[int], Task | None],
        submit: Callable[[Job], Job],
        *,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self._clock = clock
        self._jobs = jobs
        self._task = tasks
        self._submit = submit
        self._leading = leading
        self._timers = KeyedTimers(clock)
        # Jobs whose retry this node has made, newest last: ``resume`` may be
        # handed one again (by the sweep) before the retry's record commits.
        # Only the newest are kept; older retries have long been recorded.
        self._retried: dict[int, None] = {}

    def _owed(self, job: Job) -> Task | None:
        """The task whose options ask for a retry of the ended *job*, if any."""
        if job.status not in RETRIED or job.task_id is None:
            return None
        task = self._task(job.task_id)
        return task if owes_retry(job, task) else None

    def after(self, job: Job) -> None:
        """*job* has just ended: schedule its next attempt if its task asks for one."""
        task = self._owed(job)
        if task is None or not self._leading():
            return
        delay = retry_delay(task.options, job.attempt)
        log.info(
            "job {job_id} {status}: retry {attempt} of {retries} for {job_name} in {delay:g}s",
            job_id=job.id,
            status=job.status.value,
            attempt=job.attempt,
            retries=task.options.retries,
            job_name=task.job_name,
            delay=delay,
        )
        self._timers.start(job.id, delay, self._retry, job, task.id)

    def resume(self, ended: Iterable[Job]) -> None:
        """Arm again the retries a previous run of the scheduler still owed.

        *ended* are the jobs with no later job of their task (the job
        history's ``unretried``).  Each retry is due ``retry_delay`` after
        its job finished, as it was before the restart, or at once if that
        time has passed; one timer per job, and its job not yet created, is
        what makes it run once.  The task's options now in force decide,
        as they do for a retry armed while running.
        """
        now = self._clock.seconds()
        for job in ended:
            task = self._owed(job)
            if task is None or job.id in self._timers or job.id in self._retried:
                continue
            ended_at = job.finished_at if job.finished_at is not None else job.created_at
            due = ended_at + retry_delay(task.options, job.attempt)
            log.info(
                "job {job_id} {status} (before this node started leading): retry {attempt} of {retries} for {job_name} in {delay:g}s",
                job_id=job.id,
                status=job.status.value,
                attempt=job.attempt,
                retries=task.options.retries,
                job_name=task.job_name,
                delay=max(0.0, due - now),
            )
            self._timers.start(job.id, max(0.0, due - now), self._retry, job, task.id)

    def _retry(self, job: Job, task_id: int) -> None:
        # The task may have been removed in the meantime, or this node
        # stopped leading (its timers are stopped then; this is the guard).
        if self._task(task_id) is None or not self._leading():
            return
        self._retried[job.id] = None
        if len(self._retried) > self.REMEMBERED:
            del self._retried[next(iter(self._retried))]
        self._submit(
            self._jobs.create(
                job.command,
                task_id=job.task_id,
                key=retry_key(job),
                scheduled_at=job.scheduled_at,
                target=job.target,
                timeout=job.timeout,
                env=dict(job.env),
                cwd=job.cwd,
                attempt=job.attempt + 1,
                triggered_by=TriggeredBy.retry_of(job.id),
            )
        )

    def stop(self) -> None:
        """Cancel every pending retry (at shutdown, or when this node stops leading)."""
        self._timers.stop()
        self._retried.clear()
