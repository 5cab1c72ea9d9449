"""What becomes of the times the cron engine hands out: jobs, and the runs missed while the scheduler was down."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from scheduler.cron import iso
from scheduler.cron_engine import Fire, missed_times
from scheduler.dispatch import Dispatcher
from scheduler.jobs import Job
from scheduler.task_book import TaskBook
from scheduler.tasks import Task
from scheduler.triggers import MISSED

log = Logger()


class FireHandler:
    """Turns fires into jobs through the dispatcher, and says so in the log.

    *book* gives the task book in force (``LOAD`` replaces it).  While
    *holding* says so (the maintenance switch), fires are dropped; a task
    whose ``skipNext`` is set has its fire dropped and *skipped* called,
    which clears the flag.  A ping check's fire runs nothing: *expected*
    is told its ping is due.  Runs missed in downtime that the missed
    policy does not run are recorded as ``missed`` jobs and told to *missed*.
    While *leading* says this node does not lead (the leader lease, with
    ``--db``), fires and catch-ups are left to the leader.
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
        leading: Callable[[], bool] = lambda: True,
        skipped: Callable[[Task], object] = lambda task: None,
        expected: Callable[[Task, float], object] = lambda task, scheduled: None,
        missed: Callable[[Task, list[Job], int, bool], object] = lambda task, jobs, count, more: None,
    ) -> None:
        self._book = book
        self._dispatcher = dispatcher
        self._holding = holding
        self._leading = leading
        self._skipped = skipped
        self._expected = expected
        self._missed = missed
        # The task (the very object) whose skipNext each task id has used,
        # until the flag's clearing is committed: its other fires in the same
        # batch (a late tick hands on several seconds at once), or before
        # the write lands, are not skipped too.
        self._skip_used: dict[int, Task] = {}
        # Missed times run by the catch-up (after downtime, a clock step, or
        # a takeover of the lead), for /metrics.
        self.caught_up = 0

    def on_fires(self, fires: list[Fire]) -> None:
        if not self._leading():
            return
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
            if task.options.ping is not None:
                if not task.options.paused:
                    self._expected(task, fire.scheduled)
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

    def run_missed(
        self,
        last_scheduled: dict[int, float],
        now: float,
        up_until: float | None = None,
        why: str = "while the scheduler was down",
    ) -> None:
        """Apply each task's missed-run policy to the downtime that ends at *now*.

        *last_scheduled* is each task's last scheduled time in the job history;
        *up_until*, the last moment the history shows the scheduler at work.
        Only times after it are recorded as missed: a fire before it that
        left no job (``overlap: skip``) was not missed for downtime.
        """
        self._catch_up(last_scheduled.get, now, why, up_until)

    def run_skipped(self, since: float, now: float) -> None:
        """The clock stepped forward from *since* to *now*: downtime, as after a restart.

        Every task's missed-run policy decides what of (since, now] runs.
        """
        self._catch_up(lambda task_id: since, now, "skipped by the clock step")

    def _catch_up(
        self, last_of: Callable[[int], float | None], now: float, why: str, up_until: float | None = None
    ) -> None:
        if not self._leading():
            log.info("not the leader: runs missed {why} are left to the leader", why=why)
            return
        if self._holding():
            log.info("maintenance is on: runs missed {why} are not caught up", why=why)
            return
        book = self._book()
        # Tasks on one schedule that last ran at the same time walk it once.
        walks: dict[tuple[object, float, int], list[float]] = {}
        for task in book:
            last = last_of(task.id)
            if last is None or task.options.paused or task.options.ping is not None:
                continue
            cap = task.options.missedCap
            # One more than can be recorded, to know whether there were more.
            walk = walks.get((task.schedule, last, cap))
            if walk is None:
                walk = walks[(task.schedule, last, cap)] = missed_times(task.schedule, last, now, "all", 2 * cap + 1)
            times = missed_times(task.schedule, last, now, task.options.missed, cap) if task.options.missed != "skip" else []
            # The walk holds one more time than the cap it could record: then there were more.
            down_since = up_until if up_until is not None else last
            more = len(walk) == 2 * cap + 1 and walk[0] > down_since
            self._record_missed(task, [when for when in walk if when not in times and when > down_since], why, more)
            for scheduled in times:
                log.info(
                    "{job_name}: running the missed time {when} (missed={policy})",
                    job_name=task.job_name,
                    when=iso(scheduled, book.tz),
                    policy=task.options.missed,
                )
                if self._dispatcher.fire(task, scheduled, triggered_by=MISSED):
                    self.caught_up += 1

    def _record_missed(self, task: Task, times: list[float], why: str, more: bool) -> None:
        """Record the latest missedCap of *times* as missed jobs; say so once for the task."""
        if not times:
            return
        cap = task.options.missedCap
        recorded = [
            job
            for job in (self._dispatcher.miss(task, when, f"missed {why} (missed={task.options.missed})") for when in times[-cap:])
            if job is not None
        ]
        if recorded:
            log.info(
                "{job_name}: {count} run(s) missed {why} recorded as missed (missed={policy})",
                job_name=task.job_name,
                count=len(recorded),
                why=why,
                policy=task.options.missed,
            )
            self._missed(task, recorded, len(times), more)
