"""scheduler.job_queue, and the dispatcher's use of it: a pass looks at one job per target."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from twisted.internet.task import Clock

from scheduler import cron
from scheduler.dispatch import Dispatcher, NoRecorder
from scheduler.job_book import JobBook
from scheduler.job_queue import JobQueue
from scheduler.jobs import JobStatus
from scheduler.tasks import Task, TaskOptions
from scheduler.worker_messages import Finished
from scheduler.worker_registry import Worker, WorkerRegistry
from tests.fakes import FakeLink


def test_oldest_first_per_target_and_removal_anywhere() -> None:
    queue = JobQueue()
    for job_id, target in ((5, "any"), (3, "label:x"), (9, "any"), (4, "any")):
        queue.push(job_id, target)
    assert len(queue) == 4 and 9 in queue
    assert sorted(queue.heads()) == [(3, "label:x"), (4, "any")]
    queue.remove(4)
    queue.remove(4)  # twice is harmless
    assert queue.head("any") == 5
    queue.remove(3)
    assert queue.head("label:x") is None and queue.heads() == [(5, "any")]
    assert len(queue) == 2


def test_removed_ids_behind_a_stuck_head_do_not_pile_up() -> None:
    queue = JobQueue()
    queue.push(1, "label:nobody")
    for job_id in range(2, 10_002):
        queue.push(job_id, "label:nobody")
        queue.remove(job_id)
    assert len(queue) == 1
    assert len(queue._heaps["label:nobody"]) < 40


class CountingBook(JobBook):
    """A job book that counts lookups: what a dispatch pass looks at."""

    looked = 0

    def get(self, job_id: int) -> Any:
        self.looked += 1
        return super().get(job_id)


def world() -> tuple[Clock, CountingBook, Dispatcher, dict[int, Task]]:
    clock = Clock()
    clock.advance(1_000_000)
    book = CountingBook(clock)
    tasks: dict[int, Task] = {}
    dispatcher = Dispatcher(clock, book, WorkerRegistry(), NoRecorder(), tasks.get, queue_limit=100_000)
    return clock, book, dispatcher, tasks


def test_a_submission_does_not_walk_the_jobs_waiting_for_another_target() -> None:
    # Before, every submission walked every queued job: with 2,000 jobs
    # waiting for a label no worker has, the scheduler fell seconds behind.
    clock, book, dispatcher, _ = world()
    link = FakeLink()
    dispatcher.hello(Worker("w", frozenset(), 10_000, link, clock.seconds()), {})
    for _ in range(2_000):
        dispatcher.run_now("true", target="label:nobody")
    book.looked = 0
    (job,) = dispatcher.run_now("true")
    assert link.runs() == [job.id]
    assert book.looked < 10
    # A full pass (a worker freed a slot) looks once per target too.
    book.looked = 0
    dispatcher.pump()
    assert book.looked < 10
    assert dispatcher.queued == 2_000


def test_targets_are_served_oldest_first() -> None:
    clock, _, dispatcher, _ = world()
    first = dispatcher.run_now("a", target="label:x")[0]
    second = dispatcher.run_now("b", target="any")[0]
    third = dispatcher.run_now("c", target="label:x")[0]
    link = FakeLink()
    dispatcher.hello(Worker("w", frozenset({"x"}), 3, link, clock.seconds()), {})
    clock.advance(0)
    assert link.runs() == [first.id, second.id, third.id]


def test_an_overlap_queue_job_waits_aside_and_does_not_block_its_target() -> None:
    clock, book, dispatcher, tasks = world()
    tasks[1] = Task(1, "t1", cron.parse("* * * * *", UTC), "true", TaskOptions(overlap="queue"))
    link = FakeLink()
    worker = Worker("w", frozenset(), 5, link, clock.seconds())
    dispatcher.hello(worker, {})
    clock.advance(0)
    running = dispatcher.fire(tasks[1], 999_960.0)[0]
    waiting = dispatcher.fire(tasks[1], 1_000_020.0)[0]
    other = dispatcher.run_now("true")[0]
    assert link.runs() == [running.id, other.id]
    assert dispatcher.queued == 1
    now = clock.seconds()
    dispatcher.finished(worker, Finished(running.id, 0, None, False, False, 0, now, now, ()))
    clock.advance(0)
    assert link.runs()[-1] == waiting.id
    assert dispatcher.queued == 0
    assert book.get(waiting.id).status is JobStatus.RUNNING  # type: ignore[union-attr]


def test_a_held_job_cancelled_leaves_the_count() -> None:
    clock, _, dispatcher, tasks = world()
    tasks[1] = Task(1, "t1", cron.parse("* * * * *", UTC), "true", TaskOptions(overlap="queue"))
    dispatcher.hello(Worker("w", frozenset(), 5, FakeLink(), clock.seconds()), {})
    clock.advance(0)
    dispatcher.fire(tasks[1], 999_960.0)
    waiting = dispatcher.fire(tasks[1], 1_000_020.0)[0]
    assert dispatcher.queued == 1
    dispatcher.cancel(waiting.id)
    assert dispatcher.queued == 0
