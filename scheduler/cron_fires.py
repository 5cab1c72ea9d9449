"""What becomes of the times the cron engine hands out: jobs, and the runs missed while the scheduler was down."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from scheduler.cron import iso
from scheduler.cron_engine import Fire, missed_times
from scheduler.dispatch import Dispatcher
from scheduler.task_book import TaskBook
from scheduler.tasks import Task
from scheduler.triggers import MISSED

log = Logger()


class FireHandler:
    """Turns fires into jobs through the dispatcher, and says so in the log.

    *book* gives the task book in force (``LOAD`` replaces it).  While
    *holding* says so (the maintenance switch), fires are dropped; a task
    whose ``skipNext`` is set has its fire dropped and *skipped* called,
    which clears the flag.
    """

    # A tick with more fires than this logs one summary line, not one line
    # per job: at thousands of tasks on one minute, formatting and writing
    # a line per job would delay the dispatch of every job behind it.
    LOG_EACH_FIRE_UP_TO = 10

    def __init__(
        self,
        book: Callable[[], TaskBook],
        dispatcher: Dispatcher,
        *,
        holding: Callable[[], bool] = lambda: False,
        skipped: Callable[[Task], object] = lambda task: None,
    ) -> None:
        self._book = book
        self._dispatcher = dispatcher
        self._holding = holding
        self._skipped = skipped
        # The task (the very object) whose skipNext each task id has used,
        # until the flag's clearing is committed: its other fires in the same
        # batch (a late tick hands on several seconds at once), or before
        # the write lands, are not skipped too.
        self._skip_used: dict[int, Task] = {}

    def on_fires(self, fires: list[Fire]) -> None:
        if self._holding():
            if fires:
                log.info("maintenance: {count} run(s) due now skipped", count=len(fires))
            return
        book = self._book()
        queued: list[tuple[Task, float, int]] = []
        for fire in fires:
            task = book.get(fire.task_id)
            if task is None:
                continue
            if not task.options.skipNext:
                if self._skip_used:
                    self._skip_used.pop(task.id, None)
            elif not task.options.paused and self._skip_used.get(task.id) is not task:
                self._skip_used[task.id] = task
                log.info(
                    "{job_name}: skipping the run due at {when}, as asked (skip next)",
                    job_name=task.job_name,
                    when=iso(fire.scheduled, book.tz),
                )
                self._skipped(task)
                continue
            queued.extend((task, fire.scheduled, job.id) for job in self._dispatcher.fire(task, fire.scheduled))
        if len(queued) <= self.LOG_EACH_FIRE_UP_TO:
            for task, scheduled, job_id in queued:
                log.info(
                    "{job_name} due at {when}: job {job_id} queued",
                    job_name=task.job_name,
                    when=iso(scheduled, book.tz),
                    job_id=job_id,
                )
            return
        first, last = queued[0], queued[-1]
        log.info(
            "{count} jobs queued for {tasks} tasks due from {first} to {last} "
            "(jobs {first_job}-{last_job}; the job history has each one)",
            count=len(queued),
            tasks=len({task.id for task, _, _ in queued}),
            first=iso(first[1], book.tz),
            last=iso(last[1], book.tz),
            first_job=first[2],
            last_job=last[2],
        )

    def run_missed(self, last_scheduled: dict[int, float], now: float) -> None:
        """Apply each task's missed-run policy to the downtime that ends at *now*.

        *last_scheduled* is each task's last scheduled time in the job history.
        """
        self._catch_up(last_scheduled.get, now, "while the scheduler was down")

    def run_skipped(self, since: float, now: float) -> None:
        """The clock stepped forward from *since* to *now*: downtime, as after a restart.

        Every task's missed-run policy decides what of (since, now] runs.
        """
        self._catch_up(lambda task_id: since, now, "skipped by the clock step")

    def _catch_up(self, last_of: Callable[[int], float | None], now: float, why: str) -> None:
        if self._holding():
            log.info("maintenance is on: runs missed {why} are not caught up", why=why)
            return
        book = self._book()
        for task in book:
            last = last_of(task.id)
            if last is None or task.options.missed == "skip" or task.options.paused:
                continue
            times = missed_times(task.schedule, last, now, task.options.missed, task.options.missedCap)
            for scheduled in times:
                log.info(
                    "{job_name}: running the missed time {when} (missed={policy})",
                    job_name=task.job_name,
                    when=iso(scheduled, book.tz),
                    policy=task.options.missed,
                )
                self._dispatcher.fire(task, scheduled, triggered_by=MISSED)
