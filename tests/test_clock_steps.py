"""Clock steps on task.Clock, through the real CronEngine, CronTicker, FireHandler and Dispatcher.

A step is the wall clock moving against the monotonic one: the tests move
``clock.rightNow`` alone, and the monotonic clock keeps its pace.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from twisted.internet.task import Clock

from scheduler import cron
from scheduler.cron_engine import CronEngine
from scheduler.cron_fires import FireHandler
from scheduler.cron_ticker import CronTicker
from scheduler.dispatch import Dispatcher, NoRecorder
from scheduler.job_book import JobBook
from scheduler.jobs import Job, JobStatus
from scheduler.metrics import SchedulerMetrics
from scheduler.task_book import TaskBook
from scheduler.tasks import Task, TaskOptions
from scheduler.triggers import MISSED, SCHEDULE
from scheduler.worker_registry import WorkerRegistry

UTC = ZoneInfo("UTC")


class Scheduler:
    """An every-second task with *missed* as its policy, ticking from 1000.5."""

    def __init__(self, missed: str = "skip", missed_cap: int = 30) -> None:
        self.clock = Clock()
        self.clock.advance(1000.5)
        # Monotonic = wall + shift; a step moves the wall clock and not it.
        self.shift = 0.0
        task = Task(1, "task_1", cron.parse("* * * * * *", UTC), "true", TaskOptions(missed=missed, missedCap=missed_cap))
        self.book = TaskBook(UTC, [task])
        jobs = JobBook(self.clock)
        self.jobs: list[Job] = []
        jobs.listeners.append(self.jobs.append)
        dispatcher = Dispatcher(self.clock, jobs, WorkerRegistry(), NoRecorder(), self.book.get)
        fires = FireHandler(lambda: self.book, dispatcher)
        engine = CronEngine(self.clock.seconds())
        engine.add(task.id, task.schedule)
        self.ticker = CronTicker(
            self.clock,
            engine,
            fires.on_fires,
            lead=0.05,
            monotonic=lambda: self.clock.seconds() + self.shift,
            on_downtime=fires.run_skipped,
        )
        self.metrics = SchedulerMetrics(
            queued=lambda: 0, running=lambda: 0, workers=lambda: 0, tasks=lambda: 1, tick_lag=lambda: 0
        )
        self.ticker.step_listeners.append(self.metrics.clock_stepped)
        self.ticker.startService()

    def step(self, seconds: float) -> None:
        self.clock.rightNow += seconds
        self.shift -= seconds

    def run_to(self, when: float) -> None:
        """Let the reactor run until the wall clock reads *when*, tick by tick."""
        while self.clock.seconds() < when:
            self.clock.advance(min(0.25, when - self.clock.seconds()))

    def fired(self) -> list[tuple[float | None, str | None]]:
        """The jobs that run (as first queued); not the records of missed runs."""
        missed = {job.id for job in self.jobs if job.status is JobStatus.MISSED}
        return [
            (job.scheduled_at, job.triggered_by.kind if job.triggered_by else None)
            for job in self.jobs
            if job.id not in missed and job.status is JobStatus.QUEUED
        ]

    def missed(self) -> list[float | None]:
        """The scheduled times recorded as missed (issue 14: in the history, not skipped silently)."""
        return [job.scheduled_at for job in self.jobs if job.status is JobStatus.MISSED]

    def steps(self, direction: str) -> float:
        value = self.metrics.registry.get_sample_value("scheduler_clock_steps_total", {"direction": direction})
        assert value is not None
        return value


def scheduled(at: float) -> tuple[float, str]:
    return (at, SCHEDULE.kind)


@pytest.mark.parametrize(
    ("missed", "after_step", "recorded"),
    [
        ("skip", [], [float(second) for second in range(1002, 1022)]),
        ("once", [(1021.0, MISSED.kind)], [float(second) for second in range(1002, 1021)]),
        ("all", [(float(second), MISSED.kind) for second in range(1002, 1022)], []),
    ],
)
def test_a_step_forward_is_downtime_under_each_missed_policy(
    missed: str, after_step: list[tuple[float, str]], recorded: list[float]
) -> None:
    world = Scheduler(missed)
    world.run_to(1001.5)
    assert world.fired() == [scheduled(1001.0)]
    world.step(20.0)  # 1001.5 -> 1021.5
    world.run_to(1023.5)
    assert world.fired() == [scheduled(1001.0), *after_step, scheduled(1022.0), scheduled(1023.0)]
    # What the policy does not run is in the history as missed, once each.
    assert world.missed() == recorded
    assert world.ticker.last_step is not None and world.ticker.last_step[:2] == ("forward", pytest.approx(20.0))
    assert world.steps("forward") == 1 and world.steps("back") == 0


def test_all_is_bounded_by_missed_cap() -> None:
    world = Scheduler("all", missed_cap=5)
    world.run_to(1001.5)
    world.step(20.0)
    world.run_to(1021.6)
    assert [at for at, kind in world.fired() if kind == MISSED.kind] == [1017.0, 1018.0, 1019.0, 1020.0, 1021.0]
    # Those beyond the cap are recorded as missed, up to the cap again: the latest of them.
    assert world.missed() == [1012.0, 1013.0, 1014.0, 1015.0, 1016.0]


def test_a_step_back_runs_no_second_twice_and_resumes_past_the_last_fired() -> None:
    world = Scheduler()
    world.run_to(1003.5)
    assert world.fired() == [scheduled(1001.0), scheduled(1002.0), scheduled(1003.0)]
    world.step(-30.0)  # 1003.5 -> 973.5
    world.run_to(1003.5)  # 30 s of real time: nothing is due again
    assert len(world.fired()) == 3 and world.steps("back") == 0
    world.run_to(1005.5)
    assert world.fired()[3:] == [scheduled(1004.0), scheduled(1005.0)]
    # Seen at the first tick after it, once.
    assert world.steps("back") == 1 and world.steps("forward") == 0
    assert world.ticker.last_step is not None and world.ticker.last_step[:2] == ("back", pytest.approx(30.0))


def test_a_late_tick_still_fires_its_second_and_a_small_step_is_not_one() -> None:
    world = Scheduler()
    world.run_to(1001.5)
    # The reactor was busy: the 1001.95 tick runs 0.5 s late.
    world.clock.advance(0.95)
    assert world.ticker.lag == pytest.approx(0.5)
    assert world.fired() == [scheduled(1001.0), scheduled(1002.0)]
    # A routine correction of 1.5 s still fires the seconds it passes.
    world.step(1.5)
    world.run_to(1005.5)
    assert [at for at, _ in world.fired()] == [1001.0, 1002.0, 1003.0, 1004.0, 1005.0]
    assert world.steps("forward") == 0 and world.ticker.last_step is None


def test_a_stall_is_not_a_step() -> None:
    world = Scheduler()
    world.run_to(1001.5)
    world.clock.advance(5.0)  # blocked for 5 s: the monotonic clock moved too
    assert [at for at, _ in world.fired()] == [1001.0, 1002.0, 1003.0, 1004.0, 1005.0, 1006.0]
    assert world.steps("forward") == 0
