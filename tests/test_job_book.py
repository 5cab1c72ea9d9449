"""scheduler.job_book: fires remembered for a horizon only, and active jobs indexed by task."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from scheduler import cron
from scheduler.dispatch import Dispatcher, NoRecorder
from scheduler.job_book import JobBook
from scheduler.job_store import JobStore
from scheduler.jobs import Job, JobStatus, fire_key, parse_fire_key
from scheduler.tasks import Task, TaskOptions
from scheduler.worker_registry import WorkerRegistry

START = 1_700_000_000.0


def clock_at(when: float = START) -> Clock:
    clock = Clock()
    clock.advance(when)
    return clock


def test_memory_of_fires_is_bounded_by_the_horizon_not_by_how_many_fired() -> None:
    # Before, every fire's key stayed in a set for the life of the process.
    clock = clock_at()
    book = JobBook(clock, horizon=60.0)
    for _ in range(5_000):
        for task_id in range(1, 11):
            book.mark_fired(task_id, clock.seconds())
        clock.advance(1)
    assert len(book.fired) <= 10 * 61
    # What is within the horizon is still refused a second run.
    assert book.seen(3, clock.seconds() - 1)
    assert book.fire(3, clock.seconds() - 1, "true") is None


def test_an_older_time_asks_the_job_history() -> None:
    clock = clock_at()
    asked: list[tuple[int, float]] = []
    recorded = {(1, START)}

    def lookup(task_id: int, scheduled: float) -> bool:
        asked.append((task_id, scheduled))
        return (task_id, scheduled) in recorded

    book = JobBook(clock, recorded=lookup, horizon=60.0)
    assert book.fire(1, START, "true") is not None
    clock.advance(600)
    book.mark_fired(2, clock.seconds())  # ages the old second out
    assert len(book.fired) == 1
    # The clock stepped back ten minutes: the history still knows the run.
    assert book.fire(1, START, "true") is None
    assert book.fire(2, START, "true") is not None
    assert asked == [(1, START), (2, START)]
    # Within the horizon the history is never asked.
    assert book.seen(2, clock.seconds())
    assert len(asked) == 2


def test_restore_keeps_recent_keys_and_leaves_older_ones_to_the_history() -> None:
    clock = clock_at()
    book = JobBook(clock, recorded=lambda task_id, scheduled: task_id == 9, horizon=300.0)
    since = START - 300
    book.restore([], [fire_key(1, START - 10), "2@1699999990/w1", f"3@{START - 5:.0f}#2", "junk"], 41, keys_since=since)
    assert book.seen(1, START - 10) and book.seen(2, 1699999990.0) and book.seen(3, START - 5)
    assert not book.seen(4, START - 10)
    assert book.seen(9, since - 1) and not book.seen(8, since - 1)
    assert book.create("true").id == 42


@pytest.mark.parametrize(
    ("key", "fire"),
    [
        ("12@1700000000", (12, 1700000000.0)),
        ("12@1700000000.5", (12, 1700000000.5)),
        ("12@1700000000/w-1", (12, 1700000000.0)),
        ("12@1700000000#3", (12, 1700000000.0)),
        ("12@1700000000/w#1#2", (12, 1700000000.0)),
        ("41", None),
        ("x@1", None),
        ("1@", None),
        ("\u0661@1", None),  # an Arabic-Indic digit: ids are ASCII
    ],
)
def test_parse_fire_key(key: str, fire: tuple[int, float] | None) -> None:
    assert parse_fire_key(key) == fire


def test_fire_key_round_trips() -> None:
    for scheduled in (START, START + 0.25):
        assert parse_fire_key(fire_key(7, scheduled)) == (7, scheduled)


def test_active_and_running_jobs_are_indexed_by_task() -> None:
    book = JobBook(clock_at())
    first = book.create("true", task_id=1)
    other = book.create("true", task_id=2)
    adhoc = book.create("true")
    assert book.active_for(1) and book.active_for(2) and not book.active_for(3)
    assert not book.running_for(1)
    assert book.count(JobStatus.QUEUED) == 3
    running = book.update(first, status=JobStatus.RUNNING, worker="w")
    assert book.running_for(1) and book.count(JobStatus.RUNNING) == 1
    assert book.count(JobStatus.QUEUED) == 2
    book.update(running, status=JobStatus.SUCCEEDED)
    assert not book.active_for(1) and not book.running_for(1)
    assert book.count(JobStatus.RUNNING) == 0
    book.update(other, status=JobStatus.CANCELLED)
    book.update(adhoc, status=JobStatus.FAILED)
    assert len(book) == 0 and book.count(JobStatus.QUEUED) == 0
    assert not book.active_for(2)


def test_restore_indexes_the_active_jobs() -> None:
    book = JobBook(clock_at())
    queued = Job(id=5, command="true", created_at=START, task_id=3)
    running = Job(id=6, command="true", created_at=START, task_id=4, status=JobStatus.RUNNING, worker="w")
    book.restore([queued, running], [], 6, keys_since=START)
    assert book.active_for(3) and not book.running_for(3)
    assert book.running_for(4) and book.count(JobStatus.RUNNING) == 1
    book.update(running, status=JobStatus.LOST)
    assert not book.active_for(4) and book.count(JobStatus.RUNNING) == 0


def test_every_change_of_a_job_raises_its_version_even_back_to_an_earlier_status() -> None:
    book = JobBook(clock_at())
    seen: list[tuple[str, int]] = []
    book.listeners.append(lambda job: seen.append((job.status.value, job.version)))
    job = book.create("true", task_id=1)
    job = book.update(job, status=JobStatus.RUNNING, worker="w1")
    job = book.update(job, status=JobStatus.QUEUED, worker=None)  # the worker rejected it
    job = book.update(job, status=JobStatus.RUNNING, worker="w2")
    job = book.update(job, started_at=START + 1)
    job = book.update(job, cancel_requested_at=START + 2)
    book.update(job, status=JobStatus.CANCELLED, finished_at=START + 3)
    assert [status for status, _ in seen] == ["queued", "running", "queued", "running", "running", "running", "cancelled"]
    assert [version for _, version in seen] == list(range(1, 8))


def test_a_restored_job_jumps_past_versions_a_lost_batch_may_have_shown() -> None:
    book = JobBook(clock_at())
    stored = Job(id=6, command="true", created_at=START, status=JobStatus.RUNNING, worker="w", version=3)
    book.restore([stored], [], 6, keys_since=START)
    restored = book.get(6)
    assert restored is not None and restored.version == 3 + JobBook.RESTORED_VERSION_STEP
    assert book.update(restored, status=JobStatus.LOST).version == restored.version + 1


def task(task_id: int, **options: object) -> Task:
    return Task(task_id, f"t{task_id}", cron.parse("* * * * * *", UTC), "true", TaskOptions(**options))  # type: ignore[arg-type]


def test_overlap_skip_does_not_look_at_other_tasks_jobs() -> None:
    # overlap=skip used to scan every active job per fire; with thousands
    # waiting, each tick ran ~100 ms late.  The book answers from its index.
    clock = clock_at()
    book = JobBook(clock)
    tasks = {n: task(n, overlap="skip", target="label:nobody") for n in range(1, 4)}
    dispatcher = Dispatcher(clock, book, WorkerRegistry(), NoRecorder(), tasks.get)
    assert len(dispatcher.fire(tasks[1], START)) == 1
    assert dispatcher.fire(tasks[1], START + 1) == []  # still waiting: skipped
    assert len(dispatcher.fire(tasks[2], START + 1)) == 1  # not held up by task 1
    assert book.seen(1, START + 1)


@pytest_twisted.ensureDeferred
async def test_the_job_store_answers_for_fires_it_recorded(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "jobs.sqlite"), reactor)
    store.open()
    try:
        await store.put(Job(id=1, command="true", created_at=START, task_id=7, key=fire_key(7, START), scheduled_at=START))
        assert store.fired(7, START)
        assert not store.fired(7, START + 1) and not store.fired(8, START)
    finally:
        await store.close()


def test_a_second_of_many_skips_logs_ten_lines_and_a_summary() -> None:
    # 2,000 every-second tasks skipping wrote 2,000 lines a second.
    clock = clock_at()
    book = JobBook(clock)
    tasks = {n: task(n, overlap="skip", target="label:nobody") for n in range(1, 26)}
    dispatcher = Dispatcher(clock, book, WorkerRegistry(), NoRecorder(), tasks.get)
    for each in tasks.values():
        dispatcher.fire(each, START)
    with capturedLogs() as events:
        for each in tasks.values():
            dispatcher.fire(each, START + 1)
        clock.advance(0)
    lines = [formatEvent(event) for event in events if event.get("log_namespace") == "scheduler.dispatch"]
    assert len(lines) == 11
    assert lines[-1] == "15 more runs due at 2023-11-14T22:13:21+00:00 skipped: their previous run is still going"
    assert "t1: previous run still going" in lines[0]


def test_jobs_are_indexed_by_worker() -> None:
    book = JobBook(clock_at())
    first = book.update(book.create("true"), status=JobStatus.RUNNING, worker="w1")
    second = book.update(book.create("true", task_id=3), status=JobStatus.RUNNING, worker="w1")
    book.update(book.create("true"), status=JobStatus.RUNNING, worker="w2")
    assert sorted(job.id for job in book.on_worker("w1")) == [first.id, second.id]
    book.update(first, status=JobStatus.SUCCEEDED)
    requeued = book.update(second, status=JobStatus.QUEUED, worker=None)
    assert book.on_worker("w1") == [] and book.on_worker("nobody") == []
    assert book.active_for(3) and not book.running_for(3) and requeued.worker is None
