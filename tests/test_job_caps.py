"""Load shaping: maxConcurrent per task, named pools, label caps, and why a job waits.

Domain tests: a real Dispatcher on task.Clock with fake worker links.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from scheduler import cron
from scheduler.dispatch import Dispatcher, NoRecorder
from scheduler.job_book import JobBook
from scheduler.job_caps import RunCaps, parse_sizes
from scheduler.jobs import JobStatus
from scheduler.tasks import Task, TaskError, TaskOptions
from scheduler.worker_messages import Finished
from scheduler.worker_registry import Worker, WorkerRegistry
from tests.fakes import FakeLink
from tests.helpers import UTC


class World:
    def __init__(self, pools: dict[str, int] | None = None, labels: dict[str, int] | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.tasks: dict[int, Task] = {}
        self.jobs = JobBook(self.clock)
        self.workers = WorkerRegistry()
        self.dispatcher = Dispatcher(
            self.clock, self.jobs, self.workers, NoRecorder(), self.tasks.get, caps=RunCaps(pools, labels)
        )

    def task(self, task_id: int, **options: Any) -> Task:
        task = Task(task_id, f"task_{task_id}", cron.parse("* * * * *", UTC), "true", TaskOptions(**options))
        self.tasks[task_id] = task
        return task

    def worker(self, name: str = "w", slots: int = 10, labels: tuple[str, ...] = ()) -> tuple[Worker, FakeLink]:
        link = FakeLink()
        worker = Worker(name, frozenset(labels), slots, link, self.clock.seconds())
        self.dispatcher.hello(worker, {})
        self.clock.advance(0)
        return worker, link

    def finish(self, worker: Worker, job_id: int) -> None:
        now = self.clock.seconds()
        self.dispatcher.finished(worker, Finished(job_id, 0, None, False, False, 0, now, now, ()))
        self.clock.advance(0)


def test_max_concurrent_caps_a_tasks_runs_and_the_rest_wait_in_order() -> None:
    world = World()
    task = world.task(1, maxConcurrent=2)
    worker, link = world.worker()
    jobs = [world.dispatcher.run_now("true", task_id=task.id)[0] for _ in range(4)]
    assert link.runs() == [jobs[0].id, jobs[1].id]
    assert world.dispatcher.waiting(jobs[2].id) == "task_1's maxConcurrent is full (2 of 2 running)"
    world.finish(worker, jobs[0].id)
    assert link.runs() == [jobs[0].id, jobs[1].id, jobs[2].id]
    assert world.dispatcher.queued == 1


def test_a_pool_is_shared_by_every_task_in_it() -> None:
    world = World(pools={"db": 2})
    first, second = world.task(1, pool="db"), world.task(2, pool="db")
    other = world.task(3)
    worker, link = world.worker()
    a = world.dispatcher.run_now("true", task_id=first.id)[0]
    b = world.dispatcher.run_now("true", task_id=second.id)[0]
    c = world.dispatcher.run_now("true", task_id=second.id)[0]
    d = world.dispatcher.run_now("true", task_id=other.id)[0]
    assert link.runs() == [a.id, b.id, d.id]  # the pool is full; task 3 is not in it
    assert world.dispatcher.waiting(c.id) == "pool db is full (2 of 2 running)"
    world.finish(worker, a.id)
    assert link.runs()[-1] == c.id


def test_a_pool_without_a_size_caps_nothing() -> None:
    world = World()
    task = world.task(1, pool="nowhere")
    _, link = world.worker()
    for _ in range(3):
        world.dispatcher.run_now("true", task_id=task.id)
    assert len(link.runs()) == 3


def test_a_label_cap_holds_across_the_fleet() -> None:
    world = World(labels={"gpu": 1})
    a, link_a = world.worker("a", labels=("gpu",))
    _, link_b = world.worker("b", labels=("gpu",))
    first = world.dispatcher.run_now("x", target="label:gpu")[0]
    second = world.dispatcher.run_now("x", target="label:gpu")[0]
    assert link_a.runs() + link_b.runs() == [first.id]
    assert world.dispatcher.waiting(second.id) == "the cap on label gpu is full (1 of 1 running)"
    worker = a if link_a.runs() else world.workers.get("b")
    assert worker is not None
    world.finish(worker, first.id)
    assert second.id in link_a.runs() + link_b.runs()


def test_a_lost_or_rejected_job_frees_its_place_in_the_cap() -> None:
    world = World(pools={"db": 1})
    task = world.task(1, pool="db")
    worker, link = world.worker()
    first = world.dispatcher.run_now("true", task_id=task.id)[0]
    second = world.dispatcher.run_now("true", task_id=task.id)[0]
    world.dispatcher.rejected(worker, first.id, "no free slot")
    assert world.dispatcher.caps.running("pool:db") == 0
    world.clock.advance(world.dispatcher.REJECTED_REST)
    # The rejected job keeps its place ahead of the newer one, and the pool.
    assert link.runs() == [first.id, first.id]
    assert world.dispatcher.waiting(second.id) == "pool db is full (1 of 1 running)"
    world.dispatcher.disconnected(worker)
    world.clock.advance(world.dispatcher.lost_after)
    assert world.dispatcher.caps.running("pool:db") == 0


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("worker:gone", "worker gone is not connected"),
        ("label:arm", "no worker with label arm is connected"),
    ],
)
def test_a_queued_job_says_why_it_waits(target: str, why: str) -> None:
    world = World()
    world.worker("w", slots=1)
    job = world.dispatcher.run_now("x", target=target)[0]
    assert world.dispatcher.waiting(job.id) == why


def test_busy_slots_and_no_workers_are_named() -> None:
    world = World()
    job = world.dispatcher.run_now("x")[0]
    assert world.dispatcher.waiting(job.id) == "no worker is connected"
    world.worker("w", slots=1)
    second = world.dispatcher.run_now("x")[0]
    assert world.jobs.get(job.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert world.dispatcher.waiting(second.id) == "every slot of the workers it may run on is busy"
    assert world.dispatcher.waiting(job.id) is None


def test_pool_sizes_are_parsed_with_clear_errors() -> None:
    assert parse_sizes("backups=2, db=4", "--pools") == {"backups": 2, "db": 4}
    assert parse_sizes(None, "--pools") == {}
    for bad in ("backups", "backups=0", "a b=1", "x=-1"):
        with pytest.raises(TaskError, match="--pools must be name=size pairs"):
            parse_sizes(bad, "--pools")
