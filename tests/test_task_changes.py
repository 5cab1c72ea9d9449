"""Task changes in the domain: edit in place, If-Match, pause and resume, revisions, restore,
skip next and maintenance, synchronous on ``task.Clock`` with the real TaskState over a
tasks.db written inline and an in-memory revision store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from scheduler.cron_engine import CronEngine
from scheduler.cron_fires import FireHandler
from scheduler.cron_ticker import CronTicker
from scheduler.dispatch import Dispatcher, NoRecorder
from scheduler.job_book import JobBook
from scheduler.jobs import Job, JobStatus
from scheduler.maintenance import Maintenance
from scheduler.task_changes import REVISIONS_PER_TURN, StaleTask, TaskChanges
from scheduler.task_pauses import PauseTimer
from scheduler.task_state import TaskState
from scheduler.tasks import Task, TaskError, TaskOptions, etag
from scheduler.triggers import SCHEDULE, Revision, TriggeredBy
from scheduler.worker_messages import Finished
from scheduler.worker_registry import Worker, WorkerRegistry
from tests.fakes import FakeLink
from tests.helpers import InlinePool, InlineReactor, make_state, result_of

API = TriggeredBy("api")
TCP = TriggeredBy("tcp", name="127.0.0.1")
# 2026-01-01T00:00:30+00:00: half a minute before a minute's fire.
START = 1_767_225_630.0


class MemoryRevisions:
    """The job store's revision side, in memory: ids grow, newest first."""

    def __init__(self) -> None:
        self.stored: list[Revision] = []

    def record_revision(self, revision: Revision) -> Deferred[int]:
        stored = Revision(**{**vars_of(revision), "id": len(self.stored) + 1})
        self.stored.append(stored)
        return succeed(len(self.stored))

    def revisions(self, task_id: int, limit: int = 100, before_id: int | None = None) -> Deferred[list[Revision]]:
        mine = [
            each
            for each in reversed(self.stored)
            if each.task_id == task_id and (before_id is None or (each.id or 0) < before_id)
        ]
        return succeed(mine[:limit])

    def of(self, task_id: int) -> list[Revision]:
        return result_of(self.revisions(task_id))  # type: ignore[no-any-return]


def vars_of(revision: Revision) -> dict[str, Any]:
    return {name: getattr(revision, name) for name in ("task_id", "at", "action", "by", "before", "after", "id")}


class World:
    """The task side of the scheduler, and its fire path, on one Clock."""

    def __init__(self, tmp_path: Path, start: float = START) -> None:
        self.clock = Clock()
        self.clock.advance(start)
        self.path = tmp_path / "tasks.db"
        self.state: TaskState = make_state(self.path, now=start)
        self.engine: CronEngine = self.state._engine
        self.store = MemoryRevisions()
        self.changes = TaskChanges(self.state, self.store, self.clock)
        self.jobs = JobBook(self.clock)
        self.workers = WorkerRegistry()
        self.dispatcher = Dispatcher(
            self.clock, self.jobs, self.workers, NoRecorder(), lambda task_id: self.state.book.get(task_id)
        )
        self.holding = False
        self.fires = FireHandler(
            lambda: self.state.book,
            self.dispatcher,
            holding=lambda: self.holding,
            skipped=lambda task: self.changes.skip_next(task.id, False, by=SCHEDULE),
        )
        self.ticker = CronTicker(self.clock, self.engine, self.fires.on_fires)
        self.created: list[Job] = []
        self.jobs.listeners.append(lambda job: job.status is JobStatus.QUEUED and job.worker is None and self.note(job))

    def note(self, job: Job) -> None:
        if all(seen.id != job.id for seen in self.created):
            self.created.append(job)

    def add(self, schedule: str = "* * * * *", command: str = "echo hi", **options: Any) -> Task:
        return self.ok(self.changes.add(schedule, command, TaskOptions.from_mapping(options), by=API))

    @staticmethod
    def ok(deferred: Deferred[Any]) -> Any:
        result = result_of(deferred)
        if isinstance(result, Failure):
            result.raiseException()
        return result

    @staticmethod
    def fails(deferred: Deferred[Any]) -> BaseException:
        result = result_of(deferred)
        assert isinstance(result, Failure), f"expected a failure, got {result!r}"
        return result.value

    def task(self, task_id: int) -> Task:
        task = self.state.book.get(task_id)
        assert task is not None
        return task

    def file(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def run_until(self, when: float) -> None:
        self.clock.advance(when - self.clock.seconds())

    def fired_for(self, task_id: int) -> list[float]:
        return [job.scheduled_at for job in self.created if job.task_id == task_id and job.scheduled_at is not None]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


# -- edit in place and If-Match ------------------------------------------------


def test_edit_keeps_the_id_and_every_field_not_changed(world: World) -> None:
    first = world.add("*/5 * * * *", "echo a", timeout=30, env={"A": "1"}, cwd="work", retries=2)
    other = world.add("@daily", "echo other")
    edited = world.ok(world.changes.edit(first.id, {"command": "echo b"}, by=API))
    assert edited.id == first.id and edited.job_name == first.job_name
    assert edited.command == "echo b"
    assert edited.schedule.expression == "*/5 * * * *"
    assert edited.options == first.options
    assert world.task(other.id) == other
    # On disk before it counts, in the seed's format plus the option keys.
    assert world.file()[0] == {
        "schedule": "*/5 * * * *",
        "command": "echo b",
        "jobName": "task_1",
        "timeout": 30.0,
        "retries": 2,
        "env": {"A": "1"},
        "cwd": "work",
    }
    # An option changes alone; by jobName as well as by id.
    again = world.ok(world.changes.edit("task_1", {"timeout": 60, "schedule": "@hourly"}, by=TCP))
    assert again.id == 1 and again.options.timeout == 60 and again.options.env == {"A": "1"}
    assert again.command == "echo b" and world.engine.next_run(1) == 1_767_229_200.0  # 01:00
    edit, _ = [each for each in world.store.of(1) if each.action == "edit"][::-1]
    assert edit.before is not None and edit.after is not None
    assert edit.before["command"] == "echo a" and edit.after["command"] == "echo b"
    assert edit.before["id"] == edit.after["id"] == 1
    assert edit.by == API and edit.at == START


def test_edit_refuses_unknown_fields_and_bad_values_and_changes_nothing(world: World) -> None:
    task = world.add()
    with pytest.raises(TaskError, match="unknown field"):
        world.changes.edit(task.id, {"colour": "red"}, by=API)
    assert isinstance(world.fails(world.changes.edit(task.id, {"schedule": "61 * * * *"}, by=API)), TaskError)
    assert isinstance(world.fails(world.changes.edit(task.id, {"timeout": -1}, by=API)), TaskError)
    # A task_<n> jobName that names another id is refused (it would change the id on reload).
    assert isinstance(world.fails(world.changes.edit(task.id, {"jobName": "task_9"}, by=API)), TaskError)
    assert world.task(task.id) == task
    assert [each.action for each in world.store.of(task.id)] == ["add"]


def test_a_stale_if_match_is_refused_and_changes_nothing(world: World) -> None:
    task = world.add()
    read = etag(task)
    world.ok(world.changes.edit(task.id, {"command": "echo first tab"}, by=API, if_match=read))
    on_disk = world.path.read_bytes()
    current = world.task(task.id)
    assert etag(current) != read
    for change in (
        world.changes.edit(task.id, {"command": "echo second tab"}, by=API, if_match=read),
        world.changes.pause(task.id, by=API, if_match=read),
        world.changes.remove(task.id, by=API, if_match=read),
    ):
        assert isinstance(world.fails(change), StaleTask)
    assert world.task(task.id) is current
    assert world.path.read_bytes() == on_disk
    assert [each.action for each in world.store.of(task.id)] == ["edit", "add"]
    # The current tag and "*" both match.
    world.ok(world.changes.edit(task.id, {"command": "echo third"}, by=API, if_match=etag(current)))
    world.ok(world.changes.edit(task.id, {"command": "echo fourth"}, by=API, if_match="*"))
    assert world.task(task.id).command == "echo fourth"


def test_an_unchanged_edit_records_no_revision(world: World) -> None:
    task = world.add()
    world.ok(world.changes.edit(task.id, {"command": task.command}, by=API))
    world.ok(world.changes.resume(task.id, by=API))  # not paused: nothing to do
    assert [each.action for each in world.store.of(task.id)] == ["add"]


# -- pause and resume ---------------------------------------------------------------


def test_pause_and_resume_round_trip(world: World) -> None:
    task = world.add()
    until = START + 3600
    paused = world.ok(world.changes.pause(task.id, by=TCP, until=until, reason="db migration"))
    assert paused.options.paused and paused.options.pausedUntil == until
    assert paused.options.pauseReason == "db migration"
    assert paused.id == task.id and paused.command == task.command
    assert world.file()[0] == {
        "schedule": "* * * * *",
        "command": "echo hi",
        "jobName": "task_1",
        "paused": True,
        "pausedUntil": "2026-01-01T01:00:30+00:00",
        "pauseReason": "db migration",
    }
    resumed = world.ok(world.changes.resume("task_1", by=API))
    assert resumed.options == TaskOptions()
    # The seed's three keys again.
    assert world.file()[0] == {"schedule": "* * * * *", "command": "echo hi", "jobName": "task_1"}
    resume, pause, _ = world.store.of(task.id)
    assert (pause.action, pause.by, resume.action, resume.by) == ("pause", TCP, "resume", API)
    assert pause.after is not None and pause.after["paused"] is True
    assert resume.after == {"schedule": "* * * * *", "command": "echo hi", "jobName": "task_1", "id": 1}


def test_pause_until_a_time_already_past_is_refused(world: World) -> None:
    task = world.add()
    for until in (START - 1, START):
        with pytest.raises(TaskError, match="already past"):
            world.changes.pause(task.id, by=API, until=until)
    assert not world.task(task.id).options.paused


def test_the_pause_timer_resumes_at_paused_until_and_says_the_schedule_did(world: World) -> None:
    early = world.add()
    late = world.add()
    forever = world.add()
    # One paused before the timer starts (a restart), the others after.
    world.ok(world.changes.pause(late.id, by=API, until=START + 600, reason="later"))
    timer = PauseTimer(world.clock, world.state, world.changes)
    timer.start()
    world.ok(world.changes.pause(early.id, by=API, until=START + 300))
    world.ok(world.changes.pause(forever.id, by=API))
    world.run_until(START + 299.9)
    assert world.task(early.id).options.paused
    world.run_until(START + 300)
    assert not world.task(early.id).options.paused
    assert world.task(late.id).options.paused
    world.run_until(START + 600)
    assert not world.task(late.id).options.paused
    assert world.task(late.id).options.pauseReason is None
    assert world.task(forever.id).options.paused
    for task_id, at in ((early.id, START + 300), (late.id, START + 600)):
        newest = world.store.of(task_id)[0]
        assert (newest.action, newest.by, newest.at) == ("resume", SCHEDULE, at)
    assert world.clock.getDelayedCalls() == []
    timer.stop()


def test_the_pause_timer_follows_a_pause_moved_or_ended_by_hand(world: World) -> None:
    moved = world.add()
    ended = world.add()
    timer = PauseTimer(world.clock, world.state, world.changes)
    timer.start()
    world.ok(world.changes.pause(moved.id, by=API, until=START + 300))
    world.ok(world.changes.pause(ended.id, by=API, until=START + 300))
    # Paused again, until later; and resumed by hand, then paused for good.
    world.ok(world.changes.pause(moved.id, by=API, until=START + 900))
    world.ok(world.changes.resume(ended.id, by=API))
    world.ok(world.changes.pause(ended.id, by=API))
    world.run_until(START + 300)
    assert world.task(moved.id).options.paused and world.task(ended.id).options.paused
    world.run_until(START + 900)
    assert not world.task(moved.id).options.paused
    assert world.task(ended.id).options.paused
    # An earlier time than the one armed brings the timer forward.
    world.ok(world.changes.pause(moved.id, by=API, until=START + 5000))
    world.ok(world.changes.pause(moved.id, by=API, until=START + 1000))
    world.run_until(START + 1000)
    assert not world.task(moved.id).options.paused
    timer.stop()


# -- revisions and restore ----------------------------------------------------------


def test_restore_an_earlier_revision(world: World) -> None:
    task = world.add("@hourly", "echo v1")
    world.ok(world.changes.edit(task.id, {"command": "echo v2", "timeout": 5}, by=API))
    world.ok(world.changes.edit(task.id, {"command": "echo v3", "schedule": "@daily"}, by=API))
    _, second, first = world.store.of(task.id)
    assert first.action == "add"
    restored = world.ok(world.changes.restore(task.id, second, by=TriggeredBy("dashboard")))
    assert restored.id == task.id and restored.command == "echo v2"
    assert restored.schedule.expression == "@hourly" and restored.options.timeout == 5
    assert world.engine.next_run(task.id) == 1_767_229_200.0
    newest = world.store.of(task.id)[0]
    assert newest.action == "restore" and newest.by == TriggeredBy("dashboard")
    assert newest.before is not None and newest.before["command"] == "echo v3"
    assert newest.after == second.after
    # The very first: as added.
    assert world.ok(world.changes.restore(task.id, first, by=API)).command == "echo v1"
    # Another task's revision is not this task's.
    with pytest.raises(TaskError, match="does not hold task"):
        world.changes.restore(task.id + 1, first, by=API)


def test_restore_of_a_removed_task_adds_it_back_with_its_id(world: World) -> None:
    world.add("@hourly", "echo one")
    gone = world.add("@daily", "echo two", env={"X": "y"})
    world.ok(world.changes.remove(gone.id, by=API))
    assert world.state.book.get(gone.id) is None
    removal = world.store.of(gone.id)[0]
    assert removal.action == "remove" and removal.after is None
    back = world.ok(world.changes.restore(gone.id, removal, by=API))
    assert back.id == gone.id and back.job_name == "task_2" and back.options.env == {"X": "y"}
    assert world.engine.next_run(gone.id) is not None
    assert [line["jobName"] for line in world.file()] == ["task_1", "task_2"]
    newest = world.store.of(gone.id)[0]
    assert newest.action == "restore" and newest.before is None and newest.after is not None
    # Ids are not reused: the next task gets a fresh one.
    assert world.add().id == 3


def test_restore_refuses_a_job_name_now_taken_by_another_task(world: World) -> None:
    named = world.ok(world.changes.add("@daily", "echo a", job_name="backup", by=API))
    world.ok(world.changes.remove(named.id, by=API))
    world.ok(world.changes.add("@daily", "echo b", job_name="backup", by=API))
    removal = world.store.of(named.id)[0]
    assert isinstance(world.fails(world.changes.restore(named.id, removal, by=API)), TaskError)
    assert world.state.book.get(named.id) is None


def test_clear_and_load_record_a_revision_for_each_task_they_change(world: World) -> None:
    for command in ("echo a", "echo b", "echo c"):
        world.add("@hourly", command)
    assert world.ok(world.changes.clear(by=TCP)) == 3
    for task_id in (1, 2, 3):
        newest = world.store.of(task_id)[0]
        assert (newest.action, newest.by, newest.after) == ("clear", TCP, None)
        assert newest.before is not None and newest.before["id"] == task_id

    for command in ("echo d", "echo e", "echo f"):
        world.add("@hourly", command)
    # Another tool edits the file: task 4 changed, 5 unchanged, 6 gone, 9 new.
    world.path.write_text(
        '{"schedule": "@daily", "command": "echo D", "jobName": "task_4"}\n'
        '{"schedule": "@hourly", "command": "echo e", "jobName": "task_5"}\n'
        '{"schedule": "@hourly", "command": "echo new", "jobName": "task_9"}\n'
    )
    assert world.ok(world.changes.load(by=TCP)) == 3
    changed, gone, new = world.store.of(4)[0], world.store.of(6)[0], world.store.of(9)[0]
    assert changed.action == gone.action == new.action == "load"
    assert changed.before is not None and changed.before["command"] == "echo d"
    assert changed.after is not None and changed.after["command"] == "echo D"
    assert gone.after is None and new.before is None
    assert [each.action for each in world.store.of(5)] == ["add"]


def test_a_load_of_many_tasks_records_their_revisions_a_slice_per_reactor_turn(world: World) -> None:
    # A million in one turn held the reactor 64 s: REVISIONS_PER_TURN a turn,
    # each slice once the one before is stored, the answer once all are.
    count = 2 * REVISIONS_PER_TURN + 5
    world.path.write_text(
        "".join(f'{{"schedule": "@hourly", "command": "echo {n}", "jobName": "task_{n}"}}\n' for n in range(1, count + 1))
    )
    answers: list[int] = []
    world.changes.load(by=TCP).addCallback(answers.append)
    assert len(world.store.stored) == REVISIONS_PER_TURN  # the first slice, in the LOAD's own turn
    assert answers == []
    world.clock.advance(0)  # the other slices, each a call of its own
    assert answers == [count]
    assert [each.task_id for each in world.store.stored] == list(range(1, count + 1))
    assert {each.action for each in world.store.stored} == {"load"}


# -- firing: paused tasks, skip next, maintenance, env and cwd ---------------------------


def test_a_paused_task_does_not_fire_but_keeps_its_next_run_and_fires_after_resume(world: World) -> None:
    task = world.add()
    world.ticker.startService()
    world.run_until(START + 30)  # 00:01:00
    assert world.fired_for(task.id) == [START + 30]
    world.ok(world.changes.pause(task.id, by=API))
    assert world.engine.next_run(task.id) == START + 90
    world.run_until(START + 150)  # 00:02 and 00:03 pass
    assert world.fired_for(task.id) == [START + 30]
    assert world.engine.next_run(task.id) == START + 210
    world.ok(world.changes.resume(task.id, by=API))
    world.run_until(START + 210)
    assert world.fired_for(task.id) == [START + 30, START + 210]
    world.ticker.stopService()


def test_a_task_paused_until_a_time_fires_from_then_even_before_its_record_says_resumed(world: World) -> None:
    task = world.add()
    world.ok(world.changes.pause(task.id, by=API, until=START + 90))
    world.ticker.startService()
    world.run_until(START + 90)  # 00:01 held; 00:02 is the pausedUntil itself
    assert world.fired_for(task.id) == [START + 90]
    world.ticker.stopService()


def test_missed_runs_of_a_paused_task_are_not_caught_up(world: World) -> None:
    task = world.add(missed="all")
    world.ok(world.changes.pause(task.id, by=API))
    world.fires.run_missed({task.id: START - 600}, START)
    assert world.created == []


def test_skip_next_skips_exactly_one_fire_then_clears_itself(world: World) -> None:
    task = world.add()
    world.ok(world.changes.skip_next(task.id, True, by=API))
    world.ticker.startService()
    world.run_until(START + 30)
    assert world.fired_for(task.id) == []
    assert not world.task(task.id).options.skipNext
    world.run_until(START + 90)
    assert world.fired_for(task.id) == [START + 90]
    world.ticker.stopService()


def test_skip_next_skips_one_fire_even_when_several_come_in_one_tick(world: World) -> None:
    # Every second; a stalled reactor hands on three seconds at once.
    task = world.add("* * * * * *")
    world.ok(world.changes.skip_next(task.id, True, by=API))
    world.ticker.startService()
    world.run_until(START + 3)
    assert world.fired_for(task.id) == [START + 2, START + 3]
    assert not world.task(task.id).options.skipNext
    world.ticker.stopService()


def test_skip_next_waits_while_the_task_is_paused(world: World) -> None:
    task = world.add()
    world.ok(world.changes.skip_next(task.id, True, by=API))
    world.ok(world.changes.pause(task.id, by=API))
    world.ticker.startService()
    world.run_until(START + 90)
    assert world.task(task.id).options.skipNext
    world.ok(world.changes.resume(task.id, by=API))
    world.run_until(START + 150)
    assert world.fired_for(task.id) == []  # 00:03 was the one skipped
    assert not world.task(task.id).options.skipNext
    world.run_until(START + 210)
    assert world.fired_for(task.id) == [START + 210]
    world.ticker.stopService()


def test_maintenance_holds_fires_while_running_and_queued_jobs_carry_on(world: World) -> None:
    task = world.add()
    running = world.dispatcher.run_now("sleep 100")[0]
    queued = world.dispatcher.run_now("sleep 200")[0]
    link = FakeLink()
    worker = Worker("w", frozenset(), 1, link, world.clock.seconds())
    world.dispatcher.hello(worker, {})
    world.clock.advance(0)
    assert link.runs() == [running.id]
    world.holding = True
    world.ticker.startService()
    world.run_until(START + 90)
    assert world.fired_for(task.id) == []
    # The running job ends as usual, and the queued one takes its slot.
    world.dispatcher.finished(
        worker,
        Finished(running.id, exit_code=0, signal=None, timed_out=False, cancelled=False, seq=0,
                 started_at=START, finished_at=START + 90, output=()),
    )
    world.clock.advance(0)
    assert link.runs() == [running.id, queued.id]
    assert world.jobs.get(queued.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    # Off again: the next fire is a job; the held ones are not caught up.
    world.holding = False
    world.run_until(START + 150)
    assert world.fired_for(task.id) == [START + 150]
    world.ticker.stopService()


def test_the_maintenance_switch_is_kept_on_disk(tmp_path: Path) -> None:
    path = str(tmp_path / "maintenance.json")
    switch = Maintenance(path, InlinePool(), InlineReactor())  # type: ignore[arg-type]
    switch.load_now()
    assert not switch.on
    state = result_of(switch.switch(True, START, "API"))
    assert state.on and switch.on and switch.as_json() == {"on": True, "since": START, "by": "API"}
    again = Maintenance(path, InlinePool(), InlineReactor())  # type: ignore[arg-type]
    again.load_now()
    assert again.on and again.state.by == "API"
    result_of(again.switch(False, START + 60, "dashboard"))
    third = Maintenance(path, InlinePool(), InlineReactor())  # type: ignore[arg-type]
    third.load_now()
    assert not third.on and third.state.since == START + 60
    # A damaged file reads as off rather than stopping every task.
    (tmp_path / "maintenance.json").write_text("{not json")
    damaged = Maintenance(path, InlinePool(), InlineReactor())  # type: ignore[arg-type]
    damaged.load_now()
    assert not damaged.on


def test_the_tasks_env_and_cwd_reach_the_job_and_the_worker(world: World) -> None:
    task = world.add(env={"DB": "main", "LEVEL": "2"}, cwd="reports", timeout=30)
    link = FakeLink()
    world.dispatcher.hello(Worker("w", frozenset(), 1, link, world.clock.seconds()), {})
    (job,) = world.dispatcher.fire(world.task(task.id), START + 30)
    assert dict(job.env) == {"DB": "main", "LEVEL": "2"} and job.cwd == "reports" and job.timeout == 30
    world.clock.advance(0)
    (run,) = [message for message in link.sent if message["type"] == "run"]
    assert run["env"] == {"DB": "main", "LEVEL": "2"} and run["cwd"] == "reports"
    # An edit reaches the next fire.
    world.ok(world.changes.edit(task.id, {"env": {"DB": "replica"}, "cwd": None}, by=API))
    (second,) = world.dispatcher.fire(world.task(task.id), START + 90)
    assert dict(second.env) == {"DB": "replica"} and second.cwd is None


def test_an_edit_cannot_pause_until_a_time_already_past(world: World) -> None:
    task = world.add()
    error = world.fails(world.changes.edit(task.id, {"paused": True, "pausedUntil": START - 1}, by=API))
    assert isinstance(error, TaskError) and "already past" in str(error)
    assert not world.task(task.id).options.paused
