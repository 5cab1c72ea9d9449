"""Jitter on task.Clock: a cron run starts up to `jitter` seconds late, held until a run's delay reaches it."""

from __future__ import annotations

import pytest

from scheduler import job_jitter
from scheduler.jobs import JobStatus
from scheduler.worker_messages import MAX_START_DELAY
from tests.test_dispatch import World


def runs(link: object) -> list[dict[str, object]]:
    return [message for message in link.sent if message["type"] == "run"]  # type: ignore[attr-defined]


def test_the_offset_is_within_jitter_and_the_same_for_a_fire() -> None:
    offsets = [job_jitter.offset(1, 1_000_000.0 + 60 * n, 600) for n in range(200)]
    assert all(0 <= offset <= 600 for offset in offsets)
    assert len(set(offsets)) == 200
    assert job_jitter.offset(1, 1_000_060.0, 600) == offsets[1]
    assert job_jitter.offset(1, 1_000_060.0, 0) == 0


def test_a_small_jitter_rides_on_the_runs_delay() -> None:
    world = World()
    _, link = world.connect("w1")
    task = world.task(jitter=3)
    scheduled = world.clock.seconds()
    (job,) = world.dispatcher.fire(task, scheduled)
    (run,) = runs(link)
    assert run["delay"] == pytest.approx(job_jitter.offset(1, scheduled, 3))
    assert job.scheduled_at == scheduled


def test_a_long_jitter_holds_the_job_queued_until_its_start_is_within_reach() -> None:
    world = World()
    _, link = world.connect("w1")
    task = world.task(jitter=3600)
    scheduled = world.clock.seconds()
    start = scheduled + job_jitter.offset(1, scheduled, 3600)
    assert start - scheduled > MAX_START_DELAY  # this fire's offset; the test relies on it
    (job,) = world.dispatcher.fire(task, scheduled)
    assert runs(link) == [] and world.dispatcher.queued == 1
    assert world.jobs.get(job.id).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert world.dispatcher.waiting(job.id) == "its jitter starts it a little after its time"
    world.clock.advance(start - MAX_START_DELAY - world.clock.seconds() - 0.5)
    assert runs(link) == []
    world.clock.advance(0.5)
    (run,) = runs(link)
    assert run["job"] == job.id and run["delay"] == pytest.approx(MAX_START_DELAY)
    assert world.dispatcher.queued == 0
    # scheduledAt stays the nominal time; lateness counts from the jittered start.
    late: list[float] = []
    world.dispatcher.started_listeners.append(lambda job, lateness: late.append(lateness))
    worker = world.workers.get("w1")
    assert worker is not None
    world.clock.advance(start + 0.25 - world.clock.seconds())
    world.dispatcher.started(worker, job.id, start + 0.25)
    assert late == [pytest.approx(0.25)]
    assert world.jobs.get(job.id).scheduled_at == scheduled  # type: ignore[union-attr]


def test_a_held_job_can_be_cancelled_and_is_not_sent() -> None:
    world = World()
    _, link = world.connect("w1")
    (job,) = world.dispatcher.fire(world.task(jitter=3600), world.clock.seconds() + 60)
    world.dispatcher.cancel(job.id)
    assert world.dispatcher.queued == 0
    world.clock.advance(3700)
    assert runs(link) == []


def test_manual_runs_and_tasks_without_jitter_are_not_held() -> None:
    world = World()
    _, link = world.connect("w1", slots=2)
    world.task(jitter=3600)
    world.dispatcher.run_now("echo now", task_id=1)
    world.dispatcher.fire(world.task(2), world.clock.seconds())
    world.clock.advance(0)
    assert len(runs(link)) == 2 and all("delay" not in run for run in runs(link))
