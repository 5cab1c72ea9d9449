"""Dispatch in memory: placement, targets, queueing, loss, retries, policies."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from scheduler import cron
from scheduler.cron_fires import FireHandler
from scheduler.dispatch import Dispatcher, JobNotFound, NoRecorder, NotRunningHere, QueueFull
from scheduler.job_book import JobBook
from scheduler.jobs import JobStatus
from scheduler.task_book import TaskBook
from scheduler.tasks import Task, TaskOptions
from scheduler.triggers import MISSED, SCHEDULE, TriggeredBy
from scheduler.worker_messages import Finished
from scheduler.worker_registry import Worker, WorkerRegistry
from tests.fakes import FakeLink

UTC = UTC


class World:
    def __init__(self, **kw: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.tasks: dict[int, Task] = {}
        self.jobs = JobBook(self.clock)
        self.workers = WorkerRegistry()
        self.dispatcher = Dispatcher(
            self.clock, self.jobs, self.workers, NoRecorder(), self.tasks.get, **kw
        )
        self.ended: list[Any] = []
        self.jobs.listeners.append(lambda job: job.status.final and self.ended.append(job))

    def connect(self, name: str, slots: int = 1, labels: tuple[str, ...] = (), jobs: dict[int, tuple[str, int]] | None = None) -> tuple[Worker, FakeLink]:
        link = FakeLink()
        worker = Worker(name, frozenset(labels), slots, link, self.clock.seconds())
        welcome = self.dispatcher.hello(worker, jobs or {})
        link.sent.append({"type": "welcome", **welcome})
        self.clock.advance(0)
        return worker, link

    def task(self, task_id: int = 1, **options: Any) -> Task:
        task = Task(task_id, f"task_{task_id}", cron.parse("* * * * *", UTC), "echo hi", TaskOptions(**options))
        self.tasks[task_id] = task
        return task

    def finish(self, worker: Worker, job_id: int, exit_code: int | None = 0, **kw: Any) -> None:
        now = self.clock.seconds()
        self.dispatcher.finished(
            worker,
            Finished(
                job_id, exit_code=exit_code, signal=None, timed_out=kw.get("timed_out", False),
                cancelled=kw.get("cancelled", False), seq=kw.get("seq", 0), started_at=now, finished_at=now,
                output=kw.get("output", ()),
            ),
        )


def acked(link: FakeLink) -> list[int]:
    return [job for m in link.sent if m["type"] == "ack" for job in m["jobs"]]


def test_least_loaded_worker_with_a_free_slot() -> None:
    world = World()
    _a, link_a = world.connect("a", slots=2)
    b, link_b = world.connect("b", slots=2)
    jobs = [world.dispatcher.run_now("true")[0] for _ in range(4)]
    assert sorted(link_a.runs() + link_b.runs()) == [job.id for job in jobs]
    assert len(link_a.runs()) == len(link_b.runs()) == 2
    fifth = world.dispatcher.run_now("true")[0]
    assert world.dispatcher.queued == 1
    world.finish(b, link_b.runs()[0])
    assert link_b.runs()[-1] == fifth.id
    assert world.dispatcher.queued == 0


def test_targets() -> None:
    world = World()
    _, link_a = world.connect("a", slots=5, labels=("gpu",))
    _, link_b = world.connect("b", slots=5)
    world.dispatcher.run_now("x", target="worker:b")
    world.dispatcher.run_now("x", target="label:gpu")
    everywhere = world.dispatcher.run_now("x", target="all")
    assert len(everywhere) == 2
    assert {job.target for job in everywhere} == {"worker:a", "worker:b"}
    assert len(link_a.runs()) == 2 and len(link_b.runs()) == 2
    waiting = world.dispatcher.run_now("x", target="label:arm")[0]
    assert world.jobs.get(waiting.id).status is JobStatus.QUEUED  # type: ignore[union-attr]
    _, link_c = world.connect("c", labels=("arm",))
    assert link_c.runs() == [waiting.id]


def test_target_all_includes_the_workers_of_the_other_nodes() -> None:
    """With --db, "all" is every worker of the cluster: one job each, those of
    workers elsewhere targeted at them by name (offered, claimed where they are)."""
    world = World()
    _, link_a = world.connect("a", slots=5)
    world.dispatcher.workers_elsewhere = lambda: ("x", "a", "y")
    everywhere = world.dispatcher.run_now("x", target="all")
    assert [job.target for job in everywhere] == ["worker:a", "worker:x", "worker:y"]
    assert len(link_a.runs()) == 1


def test_fifo_queue_waits_for_a_worker() -> None:
    world = World()
    first = world.dispatcher.run_now("1")[0]
    second = world.dispatcher.run_now("2")[0]
    worker, link = world.connect("a", slots=1)
    assert link.runs() == [first.id]
    world.finish(worker, first.id)
    assert link.runs() == [first.id, second.id]
    assert world.ended[0].status is JobStatus.SUCCEEDED


def test_full_queue_refuses_new_jobs_and_keeps_old_ones() -> None:
    world = World(queue_limit=2)
    world.dispatcher.run_now("1")
    world.dispatcher.run_now("2")
    with pytest.raises(QueueFull, match="queue is full"):
        world.dispatcher.run_now("3")
    assert world.dispatcher.queued == 2


def test_cancelled_queued_jobs_leave_the_queue_at_once() -> None:
    """Issue 20, item 10: five queued and cancelled jobs still filled a queue of five."""
    world = World(queue_limit=5)
    task = world.task(target="label:none")
    queued = [world.dispatcher.run_now("x")[0] for _ in range(5)]
    assert world.dispatcher.queued == 5
    for job in queued:
        world.dispatcher.cancel(job.id)
    assert world.dispatcher.queued == 0
    # New jobs and cron fires are accepted again.
    later = world.dispatcher.run_now("y")[0]
    assert later.status is JobStatus.QUEUED
    (fired,) = world.dispatcher.fire(task, 999_960.0)
    assert fired.status is JobStatus.QUEUED
    assert world.dispatcher.queued == 2
    # A worker gets only what is still queued (the fire waits for a label).
    _, link = world.connect("a", slots=5)
    assert link.runs() == [later.id]


def test_statuses_from_finished() -> None:
    world = World()
    worker, link = world.connect("a", slots=4)
    ids = [world.dispatcher.run_now("x")[0].id for _ in range(4)]
    world.finish(worker, ids[0], exit_code=0)
    world.finish(worker, ids[1], exit_code=2)
    world.finish(worker, ids[2], exit_code=None, timed_out=True)
    world.finish(worker, ids[3], exit_code=None, cancelled=True)
    assert [job.status for job in world.ended] == [
        JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED,
    ]
    assert acked(link) == ids


def test_a_worker_may_only_report_its_own_jobs() -> None:
    world = World()
    a, _ = world.connect("a")
    b, _ = world.connect("b")
    job = world.dispatcher.run_now("x", target="worker:a")[0]
    with pytest.raises(NotRunningHere):
        world.dispatcher.output(b, job.id, 1, "stdout", "forged")
    with pytest.raises(NotRunningHere):
        world.finish(b, job.id)
    assert world.jobs.get(job.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    world.finish(a, job.id)
    assert world.ended[-1].worker == "a"


def test_output_is_deduplicated_and_capped() -> None:
    world = World(output_cap=10)
    worker, _ = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    world.dispatcher.output(worker, job.id, 1, "stdout", "12345")
    world.dispatcher.output(worker, job.id, 1, "stdout", "12345")  # a resend
    world.dispatcher.output(worker, job.id, 2, "stderr", "678")
    assert world.dispatcher.live_output(job.id) == "12345678"
    world.dispatcher.output(worker, job.id, 3, "stdout", "abcdef")
    assert world.dispatcher.live_output(job.id) == "[... 5 bytes of earlier output dropped ...]\n678abcdef"


def test_disconnect_then_lost_then_retry_elsewhere() -> None:
    world = World(lost_after=30)
    task = world.task(retries=1, retryDelay=5)
    a, link_a = world.connect("a")
    job = world.dispatcher.fire(task, 999_880.0)[0]
    assert link_a.runs() == [job.id]
    world.dispatcher.disconnected(a)
    world.clock.advance(29)
    assert not world.ended
    _, link_b = world.connect("b")
    world.clock.advance(1)
    assert world.ended[-1].status is JobStatus.LOST
    assert "did not come back within 30s" in world.ended[-1].reason
    world.clock.advance(5)
    retry = world.jobs.get(link_b.runs()[0])
    assert retry is not None and retry.attempt == 2 and retry.task_id == task.id


def test_reconnect_in_time_resumes_and_result_counts_once() -> None:
    world = World(lost_after=30)
    a, _ = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    world.dispatcher.output(a, job.id, 1, "stdout", "one ")
    world.dispatcher.disconnected(a)
    world.clock.advance(10)
    again, link = world.connect("a", jobs={job.id: ("finished", 2)})
    assert link.sent[-1]["resume"] == {str(job.id): 1}
    world.dispatcher.output(again, job.id, 1, "stdout", "one ")
    world.dispatcher.output(again, job.id, 2, "stdout", "two")
    assert world.dispatcher.live_output(job.id) == "one two"
    world.finish(again, job.id, seq=2)
    with pytest.raises(NotRunningHere):
        world.finish(again, job.id, seq=2)  # resent before the ack arrived: the worker gets drop
    assert len(world.ended) == 1
    assert acked(link) == [job.id]
    world.clock.advance(60)
    assert len(world.ended) == 1


def test_lost_job_is_dropped_when_the_worker_returns() -> None:
    world = World(lost_after=30)
    a, _ = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    world.dispatcher.disconnected(a)
    world.clock.advance(31)
    assert world.ended[-1].status is JobStatus.LOST
    resumed, link = world.connect("a", jobs={job.id: ("finished", 0)})
    assert link.sent[-1]["drop"] == [job.id]
    with pytest.raises(NotRunningHere):  # the worker gets drop again
        world.finish(resumed, job.id)  # a late report changes nothing
    assert len(world.ended) == 1


def test_worker_back_without_its_job_loses_it() -> None:
    world = World()
    a, _ = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    world.dispatcher.disconnected(a)
    world.connect("a")  # restarted: reports nothing
    assert world.ended[-1].id == job.id and world.ended[-1].status is JobStatus.LOST


def test_second_connection_replaces_the_stale_one() -> None:
    world = World()
    old, old_link = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    new, _ = world.connect("a", jobs={job.id: ("running", 0)})
    assert old_link.closed is not None
    world.dispatcher.disconnected(old)  # the stale socket closing later
    assert world.workers.get("a") is new
    world.finish(new, job.id)
    assert world.ended[-1].status is JobStatus.SUCCEEDED


def test_each_scheduled_time_once() -> None:
    world = World()
    task = world.task()
    assert len(world.dispatcher.fire(task, 999_880.0)) == 1
    assert world.dispatcher.fire(task, 999_880.0) == []


def test_overlap_skip_and_queue() -> None:
    world = World()
    skip = world.task(1, overlap="skip")
    queue = world.task(2, overlap="queue")
    worker, link = world.connect("a", slots=10)
    first = world.dispatcher.fire(skip, 999_880.0)[0]
    assert world.dispatcher.fire(skip, 999_940.0) == []
    assert [job.id for job in world.jobs if job.task_id == skip.id] == [first.id]
    q1 = world.dispatcher.fire(queue, 999_880.0)[0]
    q2 = world.dispatcher.fire(queue, 999_940.0)[0]
    assert q2.id not in link.runs()
    world.finish(worker, q1.id)
    assert link.runs()[-1] == q2.id
    assert first.id in link.runs()


def test_cancel() -> None:
    world = World()
    queued = world.dispatcher.run_now("x", target="worker:nobody")[0]
    assert world.dispatcher.cancel(queued.id).status is JobStatus.CANCELLED
    _, link = world.connect("a")
    running = world.dispatcher.run_now("x")[0]
    world.dispatcher.cancel(running.id)
    assert link.sent[-1] == {"type": "cancel", "job": running.id}
    with pytest.raises(JobNotFound):
        world.dispatcher.cancel(queued.id)


def test_a_cancel_waits_for_a_disconnected_worker_and_follows_its_welcome() -> None:
    world = World()
    a, _ = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    world.dispatcher.disconnected(a)
    assert world.dispatcher.cancel(job.id).status is JobStatus.RUNNING
    _, link = world.connect("a", jobs={job.id: ("running", 0)})
    assert [m["type"] for m in link.sent] == ["welcome", "cancel"]
    assert link.sent[-1] == {"type": "cancel", "job": job.id}


def test_a_cancelled_job_whose_worker_never_returns_ends_cancelled_not_lost() -> None:
    world = World(lost_after=30)
    a, _ = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    world.dispatcher.disconnected(a)
    world.dispatcher.cancel(job.id)
    world.clock.advance(30)
    assert world.ended[-1].status is JobStatus.CANCELLED
    assert "did not come back within 30s" in world.ended[-1].reason


def test_a_cancelled_job_that_its_worker_rejects_ends_cancelled_not_queued() -> None:
    world = World()
    a, link = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    world.dispatcher.cancel(job.id)
    world.dispatcher.rejected(a, job.id, "no free slot")
    assert world.ended[-1].status is JobStatus.CANCELLED
    world.clock.advance(1)
    assert link.runs() == [job.id]  # not sent again


def test_output_out_of_order_is_kept_in_seq_order_and_gaps_are_named() -> None:
    world = World()
    a, _ = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    for seq in (1, 3, 2, 5):
        world.dispatcher.output(a, job.id, seq, "stdout", f"{seq} ")
    assert world.dispatcher.live_output(job.id) == "1 2 3 5 "
    assert world.dispatcher.last_seq(job.id) == 3  # every chunk up to 3 is here
    world.finish(a, job.id, seq=8)
    assert world.ended[-1].status is JobStatus.SUCCEEDED
    assert world.ended[-1].reason == "output incomplete: chunks 4, 6-8 of 8 never arrived"


def test_chunks_beyond_the_last_one_finished_reports_are_kept_and_named() -> None:
    world = World()
    a, _ = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    world.dispatcher.output(a, job.id, 1, "stdout", "1 ")
    world.dispatcher.output(a, job.id, 5, "stdout", "5 ")
    world.finish(a, job.id, seq=1)
    assert world.ended[-1].reason == "output inconsistent: chunks up to 5 arrived, but finished says 1"


def test_rejected_job_goes_back_to_the_front() -> None:
    world = World()
    a, link = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    world.dispatcher.rejected(a, job.id, "no free slot")
    assert world.jobs.get(job.id).status is JobStatus.QUEUED  # type: ignore[union-attr]
    world.clock.advance(1)
    assert link.runs() == [job.id, job.id]


class SlowRecorder:
    """A job store whose writes commit only when the test says so."""

    def __init__(self) -> None:
        self.pending: list[Deferred[None]] = []

    def put(self, job: Any) -> Deferred[None]:
        self.pending.append(Deferred())
        return self.pending[-1]

    def append_output(self, job_id: int, seq: int, stream: str, data: str) -> None:
        pass

    def commit(self) -> None:
        pending, self.pending = self.pending, []
        for each in pending:
            each.callback(None)


def test_run_and_ack_wait_for_the_record() -> None:
    world = World()
    recorder = SlowRecorder()
    world.dispatcher._recorder = recorder
    worker, link = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    assert world.jobs.get(job.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert link.runs() == []  # placed, but not sent before the write commits
    recorder.commit()
    assert link.runs() == [job.id]
    world.finish(worker, job.id)
    assert not [m for m in link.sent if m["type"] == "ack"]
    recorder.commit()
    assert acked(link) == [job.id]


def test_cancel_before_run_is_sent_never_sends_it() -> None:
    world = World()
    recorder = SlowRecorder()
    world.dispatcher._recorder = recorder
    worker, link = world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    assert world.dispatcher.cancel(job.id).status is JobStatus.CANCELLED
    recorder.commit()
    assert link.runs() == [] and worker.free == 1


def test_a_job_keeps_what_it_was_created_with() -> None:
    # The job store rewrites only the mutable columns on an update, so the
    # book must refuse to change any other field rather than let it be lost.
    book = JobBook(Clock())
    job = book.create("echo hi", target="any")
    with pytest.raises(ValueError, match="command cannot change"):
        book.update(job, command="echo bye")
    assert book.update(job, status=JobStatus.RUNNING, worker="w1").worker == "w1"


def test_a_fire_ahead_of_its_second_is_sent_with_the_delay_to_wait() -> None:
    world = World()
    _, link = world.connect("w1", slots=2)
    task = world.task()
    second = world.clock.seconds() + 0.05
    (job,) = world.dispatcher.fire(task, second)  # NoRecorder: committed at once
    (run,) = [message for message in link.sent if message["type"] == "run"]
    assert run["job"] == job.id
    assert run["delay"] == pytest.approx(0.05)
    # A fire on time, or late, carries no delay.
    (late,) = world.dispatcher.fire(world.task(2), world.clock.seconds() - 1)
    world.clock.advance(0)
    assert "delay" not in link.sent[-1] and link.sent[-1]["job"] == late.id


def test_every_job_says_what_triggered_it() -> None:
    world = World()
    a, _ = world.connect("a", slots=8)
    world.connect("b", slots=8)
    task = world.task(retries=1, retryDelay=5, target="all")
    fired = world.dispatcher.fire(task, 999_940.0)
    assert len(fired) == 2 and {job.triggered_by for job in fired} == {SCHEDULE}

    book = TaskBook(UTC, [world.task(2, missed="once")])
    FireHandler(lambda: book, world.dispatcher).run_missed({2: 999_820.0}, world.clock.seconds())
    (missed,) = [job for job in world.jobs if job.task_id == 2]
    assert missed.triggered_by == MISSED

    by = TriggeredBy("dashboard")
    (now,) = world.dispatcher.run_now("true", triggered_by=by)
    assert now.triggered_by is by

    # A retry names the job it runs again.
    (failed,) = [job for job in fired if job.target == "worker:a"]
    world.finish(a, failed.id, exit_code=1)
    world.clock.advance(5)
    (retry,) = [job for job in world.jobs if job.attempt == 2]
    assert retry.triggered_by == TriggeredBy.retry_of(failed.id)


def _cancel_requested_running_job(world: World) -> Any:
    """A running job on worker a whose cancel was asked for while a was away, as a restart finds it."""
    first = World()
    a, _ = first.connect("a")
    job = first.dispatcher.run_now("x")[0]
    first.dispatcher.disconnected(a)
    kept = first.dispatcher.cancel(job.id)
    assert kept.status is JobStatus.RUNNING and kept.cancel_requested_at == first.clock.seconds()
    world.jobs.restore([kept], [], kept.id, keys_since=0.0)
    world.dispatcher.restore([(kept, 0)])
    return kept


def test_a_kept_cancel_survives_a_restart_and_ends_the_job_cancelled_if_its_worker_never_returns() -> None:
    world = World(lost_after=30)
    job = _cancel_requested_running_job(world)
    world.clock.advance(30)
    assert world.ended[-1].id == job.id and world.ended[-1].status is JobStatus.CANCELLED
    assert "did not come back within 30s" in world.ended[-1].reason


def test_a_kept_cancel_survives_a_restart_and_follows_the_welcome_of_the_returning_worker() -> None:
    world = World(lost_after=30)
    job = _cancel_requested_running_job(world)
    a, link = world.connect("a", jobs={job.id: ("running", 0)})
    assert [m["type"] for m in link.sent] == ["welcome", "cancel"]
    assert link.sent[-1] == {"type": "cancel", "job": job.id}
    world.finish(a, job.id, exit_code=None, cancelled=True)
    assert world.ended[-1].status is JobStatus.CANCELLED
    world.clock.advance(30)  # no lost timer left behind
    assert [each.id for each in world.ended] == [job.id]


def test_a_kept_cancel_survives_a_restart_and_a_worker_back_without_the_job_ends_it_cancelled() -> None:
    world = World(lost_after=30)
    job = _cancel_requested_running_job(world)
    _, link = world.connect("a")
    assert [m["type"] for m in link.sent] == ["welcome"]
    assert world.ended[-1].id == job.id and world.ended[-1].status is JobStatus.CANCELLED


def test_cancel_of_a_running_job_is_recorded_once_with_when_it_was_asked() -> None:
    world = World()
    recorder = SlowRecorder()
    world.dispatcher._recorder = recorder
    puts: list[Any] = []
    put = recorder.put
    recorder.put = lambda job: puts.append(job) or put(job)  # type: ignore[method-assign]
    world.connect("a")
    job = world.dispatcher.run_now("x")[0]
    recorder.commit()
    asked = world.clock.seconds()
    puts.clear()
    world.dispatcher.cancel(job.id)
    world.clock.advance(5)
    again = world.dispatcher.cancel(job.id)
    assert again.cancel_requested_at == asked
    assert world.jobs.get(job.id).cancel_requested_at == asked  # type: ignore[union-attr]
    assert [(each.id, each.status, each.cancel_requested_at) for each in puts] == [(job.id, JobStatus.RUNNING, asked)]
    # Untouched: a job nobody cancelled.
    other = world.dispatcher.run_now("y")[0]
    assert other.cancel_requested_at is None
