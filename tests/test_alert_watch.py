"""The alert watch on task.Clock, through the real Dispatcher, JobBook, FireHandler and workers in memory.

Every event of issue 14 that the rules decide, and each task's health: the
outbox is a list with the real one's rule (one alert per key and channel),
the channels a set of names.
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from scheduler import cron
from scheduler.alert_defaults import AlertDefaults
from scheduler.alert_watch import AlertWatch
from scheduler.alerts import Alert
from scheduler.cron_fires import FireHandler
from scheduler.dispatch import Dispatcher, NoRecorder
from scheduler.job_book import JobBook
from scheduler.job_outcomes import TaskOutcomes
from scheduler.jobs import Job, JobStatus, fire_key
from scheduler.task_book import TaskBook
from scheduler.tasks import Task, TaskOptions, check_alerts
from scheduler.worker_messages import Finished
from scheduler.worker_registry import Worker, WorkerRegistry
from tests.fakes import FakeLink

START = 1_000_020.0


class Outbox:
    """A list-backed AlertQueue that keeps one alert per (key, channel), as the job store's does."""

    def __init__(self) -> None:
        self.calls: list[list[Alert]] = []
        self.kept: dict[tuple[str, str], Alert] = {}

    def record_alerts(self, alerts: list[Alert]) -> Deferred[None]:
        self.calls.append(list(alerts))
        for alert in alerts:
            self.kept.setdefault((alert.key, alert.channel), alert)
        return succeed(None)

    def events(self) -> list[str]:
        return [alert.event for alert in self.kept.values()]

    def keys(self) -> list[str]:
        return [alert.key for alert in self.kept.values()]


class KeyRecorder(NoRecorder):
    """Keeps the fire keys it is given, to answer for fires older than the job book's memory."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def put(self, job: Job) -> Deferred[None]:
        if job.key is not None:
            self.keys.add(job.key)
        return succeed(None)

    def fired(self, task_id: int, scheduled: float) -> bool:
        return fire_key(task_id, scheduled) in self.keys


class World:
    def __init__(self, defaults: AlertDefaults | None = None, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(START)
        self.tasks: dict[int, Task] = {}
        self.recorder = KeyRecorder()
        self.jobs = JobBook(self.clock, recorded=self.recorder.fired)
        self.workers = WorkerRegistry()
        self.dispatcher = Dispatcher(self.clock, self.jobs, self.workers, self.recorder, self.tasks.get)
        self.outbox = Outbox()
        self.defaults = defaults or AlertDefaults()
        self.watch = AlertWatch(
            self.clock,
            tasks=self.tasks.get,
            all_tasks=lambda: list(self.tasks.values()),
            active=self.jobs.get,
            queue=self.outbox,
            channels={"ops", "pager"},
            defaults=lambda: self.defaults,
            online=lambda name: self.workers.get(name) is not None,
            tz=UTC,
        )
        self.jobs.listeners.append(self.watch.job_changed)
        self.dispatcher.ended_listeners.append(self.watch.job_ended)
        self.workers.listeners.append(lambda change, worker: self.watch.worker_changed(change, worker.name))
        self.fires = FireHandler(
            lambda: TaskBook(UTC, self.tasks.values()),
            self.dispatcher,
            expected=self.watch.expect_ping,
            missed=self.watch.missed,
        )

    def task(self, task_id: int = 1, schedule: str = "* * * * *", rules: list[dict[str, Any]] | None = None, **options: Any) -> Task:
        task = Task(
            task_id, f"task_{task_id}", cron.parse(schedule, UTC), "false",
            TaskOptions(alerts=check_alerts(rules or []), **options),
        )
        self.tasks[task_id] = task
        self.watch.task_changed("added", task)
        return task

    def connect(self, name: str = "w1", labels: tuple[str, ...] = ()) -> tuple[Worker, FakeLink]:
        link = FakeLink()
        worker = Worker(name, frozenset(labels), 4, link, self.clock.seconds())
        self.dispatcher.hello(worker, {})
        self.clock.advance(0)
        return worker, link

    def run(self, task: Task, worker: Worker, exit_code: int = 0, *, at: float | None = None, timed_out: bool = False) -> Job:
        """Fire *task* at *at* (default: now) and let *worker* end its run (and every retry) with *exit_code*."""
        scheduled = at if at is not None else self.clock.seconds()
        job = self.dispatcher.fire(task, scheduled)[0]
        while True:
            self.finish(worker, job.id, exit_code, timed_out=timed_out)
            retry = self.next_retry(job) if exit_code != 0 or timed_out else None
            if retry is None:
                return job
            job = retry

    def next_retry(self, job: Job) -> Job | None:
        task = self.tasks[job.task_id or 0]
        if job.attempt > task.options.retries:
            return None
        self.clock.advance(task.options.retryDelay * 2 ** (job.attempt - 1))
        return next(each for each in self.jobs if each.attempt == job.attempt + 1)

    def finish(self, worker: Worker, job_id: int, exit_code: int = 0, *, timed_out: bool = False) -> None:
        now = self.clock.seconds()
        self.dispatcher.finished(
            worker,
            Finished(job_id, exit_code=exit_code, signal=None, timed_out=timed_out, cancelled=False, seq=0,
                     started_at=now, finished_at=now, output=()),
        )


def rule(on: str, channel: str = "ops", **options: Any) -> dict[str, Any]:
    return {"on": on, "channel": channel, **options}


# -- failure, recovery, after, every, mutedUntil, attempts -------------------------


def test_a_false_task_with_retries_alerts_once_after_its_last_attempt_and_recovers_once() -> None:
    world = World()
    worker, _ = world.connect()
    task = world.task(retries=2, retryDelay=10, rules=[rule("failure"), rule("recovery")])
    scheduled = world.clock.seconds()
    job = world.dispatcher.fire(task, scheduled)[0]
    world.finish(worker, job.id, 1)
    assert world.outbox.calls == []  # attempt 1 of 3: a retry is owed
    second = world.next_retry(job)
    assert second is not None
    world.finish(worker, second.id, 1)
    assert world.outbox.calls == []
    third = world.next_retry(second)
    assert third is not None
    world.finish(worker, third.id, 1)
    assert [alert.key for call in world.outbox.calls for alert in call] == [f"1@{scheduled:.0f}:failure"]
    alert = world.outbox.calls[0][0]
    assert alert.channel == "ops" and alert.task_id == 1 and alert.job_id == third.id
    assert alert.body["event"] == "failure" and alert.body["task"] == {"id": 1, "jobName": "task_1", "schedule": "* * * * *"}
    assert alert.body["job"]["attempt"] == 3 and "failed" in alert.body["detail"] and alert.body["at"]
    assert world.watch.health(task) == "failing" and world.watch.consecutive_failures(1) == 1

    world.clock.advance(60)
    world.run(task, worker, 0)
    world.clock.advance(60)
    world.run(task, worker, 0)
    assert world.outbox.events() == ["failure", "recovery"]
    assert world.watch.health(task) == "up" and world.watch.consecutive_failures(1) == 0
    assert world.watch.last_success(1) == world.clock.seconds()


def test_after_three_speaks_at_the_third_failure_in_a_row_and_not_again_without_every() -> None:
    world = World()
    worker, _ = world.connect()
    task = world.task(rules=[rule("failure", after=3), rule("recovery", "pager", after=3)])
    for _ in range(2):
        world.run(task, worker, 1)
        world.clock.advance(60)
    assert world.outbox.calls == []
    third = world.run(task, worker, 1)
    assert world.outbox.keys() == [f"1@{third.scheduled_at:.0f}:failure"]
    world.clock.advance(60)
    world.run(task, worker, 1)
    assert len(world.outbox.calls) == 1
    world.clock.advance(60)
    world.run(task, worker, 0)
    assert world.outbox.events() == ["failure", "recovery"]
    # A success after fewer than three does not count as a recovery.
    world.clock.advance(60)
    world.run(task, worker, 1)
    world.clock.advance(60)
    world.run(task, worker, 0)
    assert world.outbox.events() == ["failure", "recovery"]


def test_every_reminds_while_failing_and_zero_speaks_of_every_failure() -> None:
    world = World()
    worker, _ = world.connect()
    task = world.task(rules=[rule("failure", every=150), rule("failure", "pager", every=0)])
    sent: list[tuple[float, str]] = []
    for _ in range(5):  # at +0, +60, +120, +180, +240
        world.run(task, worker, 1)
        sent.extend((world.clock.seconds() - START, alert.channel) for alert in world.outbox.calls[-1]) if world.outbox.calls else None
        world.outbox.calls.clear()
        world.clock.advance(60)
    assert [at for at, channel in sent if channel == "ops"] == [0, 180]
    assert [at for at, channel in sent if channel == "pager"] == [0, 60, 120, 180, 240]


def test_a_muted_rule_says_nothing_until_its_time_then_speaks_of_the_next_failure() -> None:
    world = World()
    worker, _ = world.connect()
    task = world.task(rules=[rule("failure", mutedUntil=START + 90)])
    world.run(task, worker, 1)
    world.clock.advance(60)
    world.run(task, worker, 1)
    assert world.outbox.calls == []
    world.clock.advance(60)
    third = world.run(task, worker, 1)
    assert world.outbox.keys() == [f"1@{third.scheduled_at:.0f}:failure"]


def test_attempts_each_speaks_of_every_attempt_under_its_own_key() -> None:
    world = World()
    worker, _ = world.connect()
    task = world.task(retries=1, retryDelay=5, rules=[rule("failure", attempts="each"), rule("failure", "pager")])
    job = world.run(task, worker, 1)
    key = f"1@{job.scheduled_at:.0f}:failure"
    assert sorted((alert.key, alert.channel) for alert in world.outbox.kept.values()) == [
        (key, "pager"), (key + "#1", "ops"), (key + "#2", "ops"),
    ]


def test_a_timeout_is_a_failure_and_a_timeout_and_lost_is_its_own_event() -> None:
    world = World()
    worker, _ = world.connect()
    task = world.task(rules=[rule("failure"), rule("timeout", "pager"), rule("lost", "pager")])
    job = world.run(task, worker, -1, timed_out=True)
    moment = f"{job.scheduled_at:.0f}"
    assert sorted(world.outbox.keys()) == [f"1@{moment}:failure", f"1@{moment}:timeout"]
    # A lost run: its worker goes away and does not come back in time.
    world.clock.advance(60)
    lost = world.dispatcher.fire(task, world.clock.seconds())[0]
    world.dispatcher.disconnected(worker)
    world.clock.advance(world.dispatcher.lost_after)
    assert world.jobs.get(lost.id) is None
    assert f"1@{lost.scheduled_at:.0f}:lost" in world.outbox.keys()
    # Still one failure alert: the streak is two long and failure has no every.
    assert world.outbox.events().count("failure") == 1


def test_a_task_without_rules_follows_the_defaults_and_unknown_channels_are_skipped() -> None:
    world = World(AlertDefaults(rules=check_alerts([rule("failure", "pager"), rule("failure", "gone")])))
    worker, _ = world.connect()
    task = world.task()
    world.run(task, worker, 1)
    assert [(alert.event, alert.channel) for alert in world.outbox.kept.values()] == [("failure", "pager")]
    own = world.task(2, rules=[rule("recovery")])
    world.run(own, worker, 1)
    assert len(world.outbox.kept) == 1  # its own rules replace the defaults


# -- late, overrun, stale, worker_offline, missed -----------------------------------


def test_late_is_raised_while_the_run_is_still_queued_with_no_worker_for_its_label() -> None:
    world = World()
    task = world.task(target="label:gpu", startDeadline=30, rules=[rule("late")])
    job = world.dispatcher.fire(task, world.clock.seconds())[0]
    world.clock.advance(29)
    assert world.outbox.calls == [] and world.watch.health(task) == "up"
    world.clock.advance(1)
    assert world.outbox.keys() == [f"1@{job.scheduled_at:.0f}:late"]
    assert world.outbox.calls[0][0].body["job"]["status"] == "queued"
    assert world.watch.health(task) == "late"
    worker, link = world.connect("gpu1", labels=("gpu",))
    assert link.runs() == [job.id]
    assert world.watch.health(task) == "up"
    world.finish(worker, job.id, 0)
    assert len(world.outbox.calls) == 1


def test_a_run_that_starts_in_time_is_not_late() -> None:
    world = World()
    world.connect()
    task = world.task(startDeadline=30, rules=[rule("late")])
    world.dispatcher.fire(task, world.clock.seconds())
    world.clock.advance(120)
    assert world.outbox.calls == []


def test_overrun_is_raised_while_the_run_still_runs() -> None:
    world = World()
    worker, _ = world.connect()
    task = world.task(finishDeadline=600, rules=[rule("overrun")])
    job = world.dispatcher.fire(task, world.clock.seconds())[0]
    world.clock.advance(599)
    assert world.outbox.calls == []
    world.clock.advance(1)
    assert world.outbox.keys() == [f"1@{job.scheduled_at:.0f}:overrun"]
    assert world.outbox.calls[0][0].body["job"]["status"] == "running"
    world.finish(worker, job.id, 0)
    # One that ends in time says nothing.
    second = world.dispatcher.fire(task, world.clock.seconds())[0]
    world.clock.advance(10)
    world.finish(worker, second.id, 0)
    world.clock.advance(1000)
    assert len(world.outbox.calls) == 1


def test_stale_when_no_success_within_freshness_then_reminders_every() -> None:
    world = World()
    worker, _ = world.connect()
    task = world.task(freshness=3600, rules=[rule("stale"), rule("stale", "pager", every=1800)])
    world.run(task, worker, 0)
    succeeded = world.clock.seconds()
    world.clock.advance(3599)
    assert world.outbox.calls == [] and world.watch.health(task) == "up"
    world.clock.advance(1)
    assert sorted((alert.key, alert.channel) for alert in world.outbox.kept.values()) == [
        (f"1@{succeeded + 3600:.0f}:stale", "ops"), (f"1@{succeeded + 3600:.0f}:stale", "pager"),
    ]
    world.clock.advance(1)
    assert world.watch.health(task) == "down"
    world.clock.advance(1800)
    assert (f"1@{succeeded + 5400:.0f}:stale", "pager") in world.outbox.kept
    assert len(world.outbox.kept) == 3
    # A success ends it: health up, and the clock starts again from it.
    world.run(task, worker, 0)
    world.clock.advance(3000)
    assert world.watch.health(task) == "up" and len(world.outbox.kept) == 3


def test_a_paused_task_is_paused_and_never_stale() -> None:
    world = World()
    task = world.task(freshness=60, paused=True, rules=[rule("stale")])
    world.clock.advance(600)
    assert world.watch.health(task) == "paused" and world.outbox.calls == []


def test_worker_offline_speaks_once_a_worker_has_been_away_long_enough() -> None:
    world = World(AlertDefaults(rules=check_alerts([rule("worker_offline")], global_rules=True), workerOfflineAfter=120))
    worker, _ = world.connect("w1")
    world.dispatcher.disconnected(worker)
    world.clock.advance(100)
    world.connect("w1")  # back in time: nothing
    world.clock.advance(100)
    assert world.outbox.calls == []
    again = world.workers.get("w1")
    assert again is not None
    gone = world.clock.seconds()
    world.dispatcher.disconnected(again)
    world.clock.advance(120)
    assert world.outbox.keys() == [f"worker:w1@{gone:.0f}:worker_offline"]
    alert = world.outbox.calls[0][0]
    assert alert.task_id is None and alert.body["task"] is None and "w1" in alert.body["detail"]


def test_runs_missed_in_downtime_are_recorded_as_missed_jobs_and_alerted_once() -> None:
    world = World()
    recorded: list[Job] = []
    world.jobs.listeners.append(lambda job: job.status is JobStatus.MISSED and recorded.append(job))
    task = world.task(rules=[rule("missed")], missed="once")
    last = START - 5 * 60  # down for five minutes: five fire times passed
    world.fires.run_missed({task.id: last}, START)
    assert [job.scheduled_at for job in recorded] == [last + 60, last + 120, last + 180, last + 240]
    assert all(job.triggered_by is not None and job.triggered_by.kind == "missed" for job in recorded)
    # The latest one runs (missed=once); the others are never run, even if asked again.
    assert [job.scheduled_at for job in world.jobs] == [START]
    assert world.dispatcher.fire(task, last + 60) == []
    assert world.outbox.keys() == [f"1@{last + 60:.0f}:missed"]
    assert "4 runs missed" in world.outbox.calls[0][0].body["detail"]


# -- ping checks -----------------------------------------------------------------------


def test_a_ping_check_is_never_dispatched_and_is_late_without_its_ping() -> None:
    world = World()
    _, link = world.connect()
    task = world.task(ping="6f1c7d5e-8b1a-4c3e-9f00-0123456789ab", startDeadline=120, rules=[rule("late")])
    world.fires.on_fires([_fire(task, START + 60)])
    world.clock.advance(60 + 119)
    assert link.runs() == [] and len(world.jobs) == 0 and world.outbox.calls == []
    world.clock.advance(1)
    assert world.outbox.keys() == [f"1@{START + 60:.0f}:late"] and world.watch.health(task) == "late"
    world.watch.pinged(task.id)
    assert world.watch.health(task) == "up"


def _fire(task: Task, at: float) -> Any:
    from scheduler.cron_engine import Fire

    return Fire(at, task.id)


# -- a restart: rebuilt from the job history ----------------------------------------------


def test_a_restart_replays_the_streak_so_no_rule_speaks_twice_and_re_arms_late_timers() -> None:
    clock = Clock()
    clock.advance(START)
    before = World(clock=clock)
    worker, _ = before.connect()
    task = before.task(rules=[rule("failure", after=2), rule("late", "pager")], startDeadline=30)
    ends = []
    for _ in range(3):
        before.run(task, worker, 1)
        ends.append((JobStatus.FAILED, 1, clock.seconds()))
        clock.advance(60)
    assert len(before.outbox.kept) == 1
    before.dispatcher.disconnected(worker)
    queued = before.dispatcher.fire(task, clock.seconds())[0]  # queued: no worker
    before.watch.stop()

    after = World(clock=clock)
    after.outbox = before.outbox
    after.watch._queue = before.outbox  # the same outbox: the job store survives the restart
    after.tasks[task.id] = task
    after.jobs.restore([queued], [], queued.id, keys_since=0)
    after.dispatcher.restore([(queued, 0)])
    after.watch.restore({task.id: TaskOutcomes(last_success=None, last_job=queued.created_at, bad_ends=ends)}, after.jobs)
    assert after.watch.consecutive_failures(task.id) == 3 and after.watch.health(task) == "failing"
    clock.advance(30)
    late_key = f"1@{queued.scheduled_at:.0f}:late"
    assert (late_key, "pager") in after.outbox.kept
    # Re-raised after a second restart, it is kept once.
    third = World(clock=clock)
    third.watch._queue = before.outbox
    third.tasks[task.id] = task
    third.jobs.restore([queued], [], queued.id, keys_since=0)
    third.watch.restore({}, third.jobs)
    clock.advance(0)
    assert [alert.key for call in before.outbox.calls for alert in call].count(late_key) == 2
    assert list(before.outbox.keys()).count(late_key) == 1
    # The fourth failure in a row: the failure rule already spoke in this streak.
    worker2, _ = after.connect()
    after.dispatcher.pump()
    after.finish(worker2, queued.id, 1)
    assert [alert.event for alert in before.outbox.kept.values()].count("failure") == 1


def test_defaults_with_a_stale_rule_and_freshness_apply_to_tasks_without_rules_once_put_in_force() -> None:
    world = World()
    worker, _ = world.connect()
    task = world.task()
    world.run(task, worker, 0)
    world.clock.advance(100)
    world.defaults = AlertDefaults(rules=check_alerts([rule("stale")]), freshness=600)
    world.watch.defaults_changed()
    world.clock.advance(499)
    assert world.outbox.calls == [] and world.watch.health(task) == "up"
    world.clock.advance(2)
    assert world.outbox.events() == ["stale"] and world.watch.health(task) == "down"


def test_an_alert_about_a_job_s_end_is_queued_right_after_its_record_in_the_same_turn() -> None:
    world = World()
    order: list[str] = []
    put = world.recorder.put

    def recording(job: Job) -> Deferred[None]:
        order.append(f"put {job.id} {job.status.value}")
        return put(job)

    def queued(alerts: list[Alert]) -> Deferred[None]:
        order.append(f"alerts {alerts[0].job_id}")
        return succeed(None)

    world.recorder.put = recording  # type: ignore[method-assign]
    world.outbox.record_alerts = queued  # type: ignore[method-assign]
    worker, _ = world.connect()
    task = world.task(rules=[rule("failure")])
    job = world.dispatcher.fire(task, world.clock.seconds())[0]
    world.finish(worker, job.id, 1)
    # No reactor turn between them: the job store commits both in one transaction.
    assert order[-2:] == [f"put {job.id} failed", f"alerts {job.id}"]


def test_a_worker_that_had_runs_when_the_scheduler_stopped_and_does_not_come_back_is_offline() -> None:
    clock = Clock()
    clock.advance(START)
    defaults = AlertDefaults(rules=check_alerts([rule("worker_offline")], global_rules=True), workerOfflineAfter=60)
    before = World(defaults, clock=clock)
    before.connect("w1")
    before.connect("w2")
    task = before.task()
    first = before.dispatcher.fire(task, clock.seconds())[0]
    second = before.dispatcher.fire(task, clock.seconds() + 1)[0]
    running = [job for job in (before.jobs.get(first.id), before.jobs.get(second.id)) if job is not None]
    assert sorted(job.worker or "" for job in running) == ["w1", "w2"]
    before.watch.stop()

    clock.advance(30)
    after = World(defaults, clock=clock)
    after.tasks[task.id] = task
    after.connect("w2")  # w2 comes back; w1 does not
    after.watch.restore({}, running)
    clock.advance(59)
    assert after.outbox.calls == []
    clock.advance(1)
    w1_job = next(job for job in running if job.worker == "w1")
    assert after.outbox.keys() == [f"worker:w1@{w1_job.created_at:.0f}:worker_offline"]


def test_rule_checks_name_the_rule_and_field() -> None:
    import pytest

    from scheduler.tasks import TaskError

    cases = [
        ([{"on": "failure"}], "alerts[0].channel"),
        ([{"on": "fail", "channel": "ops"}], "alerts[0].on"),
        ([rule("failure"), rule("late", every=60)], "alerts[1].every"),
        ([rule("failure", attempts="")], "alerts[0].attempts"),
        ([rule("failure", attempts="each", after=2)], "attempts: each"),
        ([rule("recovery", after=0)], "alerts[0].after"),
        ([rule("stale", mutedUntil="tomorrow")], "alerts[0].mutedUntil"),
        ([rule("failure", colour="red")], "unknown field(s) colour"),
        ([rule("worker_offline")], "/api/alerts/defaults"),
        ([rule("failure")] * 21, "at most 20"),
    ]
    for rules, said in cases:
        with pytest.raises(TaskError, match=re.escape(said)):
            check_alerts(rules)
    assert check_alerts([rule("failure", after=None, attempts=None, every=None)]) == check_alerts([rule("failure")])


def test_recovery_follows_only_trouble_that_was_told() -> None:
    world = World()
    worker, _ = world.connect()
    task = world.task(rules=[rule("failure", after=3), rule("recovery")])
    world.run(task, worker, 1)
    world.clock.advance(60)
    world.run(task, worker, 0)
    assert world.outbox.calls == []  # one failure, never told: no recovery either
    muted = world.task(2, rules=[rule("failure", mutedUntil=START + 600), rule("recovery")])
    world.run(muted, worker, 1)
    world.clock.advance(60)
    world.run(muted, worker, 0)
    assert world.outbox.calls == []  # the failure rule was muted: nothing to recover from
    alone = world.task(3, rules=[rule("recovery")])
    world.run(alone, worker, 1)
    world.clock.advance(60)
    world.run(alone, worker, 0)
    assert world.outbox.events() == ["recovery"]  # without failure rules, any streak
