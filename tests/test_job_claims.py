"""Dispatch on every node, in memory: offers, claims and cancels across nodes
(scheduler.job_claims) on ``task.Clock``, with one shared jobs "table" standing
in for PostgreSQL (tests/test_job_claims_postgres.py has the real one)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from scheduler import cron
from scheduler.dispatch import Dispatcher, JobNotFound, QueueFull
from scheduler.job_book import JobBook
from scheduler.job_claims import CancelOutcome, JobClaims
from scheduler.job_history.database import FireTaken, JobStoreError
from scheduler.jobs import Job, JobStatus
from scheduler.tasks import Task, TaskOptions
from scheduler.worker_messages import Finished
from scheduler.worker_registry import Worker, WorkerRegistry
from tests.fakes import FakeLink
from tests.helpers import result_of


class Cluster:
    """The jobs table the nodes share: each job's record and the node managing it
    (None: offered), and the notifications between nodes."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.rows: dict[int, tuple[Job, str | None]] = {}
        self.ids = itertools.count(1)
        self.nodes: list[Node] = []
        self.tasks: dict[int, Task] = {}

    def node(self, name: str, **kw: Any) -> Node:
        node = Node(self, name, **kw)
        self.nodes.append(node)
        return node

    def notify(self, sender: str, topic: str, **fields: Any) -> None:
        # Delivered as PostgresEvents does: to every other node, on the reactor.
        for node in self.nodes:
            if node.name != sender and node.listening:
                self.clock.callLater(0, node.hear, topic, {"node": sender, **fields})

    def managed_by(self, job_id: int) -> str | None:
        return self.rows[job_id][1]

    def status(self, job_id: int) -> JobStatus:
        return self.rows[job_id][0].status


class NodeStore:
    """One node's view of the shared table: its ``JobRecorder`` and ``ClaimStore``."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.refuse: Exception | None = None  # the next puts fail with it
        self.offer_error: Exception | None = None
        self.claims: list[tuple[list[str], int]] = []
        self.looks = 0  # still_active asked
        # When a list: claims commit at once, and their answers wait here.
        self.paused: list[tuple[Deferred[list[Job]], list[Job]]] | None = None

    def put(self, job: Job) -> Deferred[None]:
        if self.refuse is not None:
            return fail(self.refuse)
        self.cluster.rows[job.id] = (job, self.name)
        return succeed(None)

    def append_output(self, job_id: int, seq: int, stream: str, data: str) -> None:
        pass

    def offer(self, job: Job) -> Deferred[None]:
        if self.offer_error is not None:
            return fail(self.offer_error)
        self.cluster.rows[job.id] = (job, None)
        self.cluster.notify(self.name, "jobs", targets=[job.target])
        return succeed(None)

    def claim(self, targets: Sequence[str], limit: int) -> Deferred[list[Job]]:
        self.claims.append((list(targets), limit))
        offered = sorted(
            job_id
            for job_id, (job, node) in self.cluster.rows.items()
            if node is None and job.status is JobStatus.QUEUED and job.target in targets
        )[:limit]
        for job_id in offered:
            self.cluster.rows[job_id] = (self.cluster.rows[job_id][0], self.name)
        claimed = [self.cluster.rows[job_id][0] for job_id in offered]
        if self.paused is not None:
            answer: Deferred[list[Job]] = Deferred()
            self.paused.append((answer, claimed))
            return answer
        return succeed(claimed)

    def cancel_elsewhere(self, job_id: int, at: float, reason: str) -> Deferred[tuple[str, str | None]]:
        job, node = self.cluster.rows[job_id]
        if job.status.final:
            return succeed(("finished", None))
        if node is None:
            ended = job.evolve(
                status=JobStatus.CANCELLED, finished_at=at, reason=reason, version=job.version + 1
            )
            self.cluster.rows[job_id] = (ended, None)
            self.cluster.notify(self.name, "jobs", ended=[job_id])
            return succeed(("cancelled", None))
        self.cluster.rows[job_id] = (job.evolve(cancel_requested_at=job.cancel_requested_at or at), node)
        self.cluster.notify(self.name, "cancels", job=job_id, manager=node)
        return succeed(("asked", node))

    def offered_count(self) -> Deferred[int]:
        return succeed(
            sum(
                1
                for job, node in self.cluster.rows.values()
                if node is None and job.status is JobStatus.QUEUED
            )
        )

    def still_active(self, job_ids: Sequence[int]) -> Deferred[list[int]]:
        self.looks += 1
        return succeed(
            [
                job_id
                for job_id in job_ids
                if job_id in self.cluster.rows and not self.cluster.status(job_id).final
            ]
        )

    def notify_ended(self, job_ids: Sequence[int]) -> Deferred[None]:
        self.cluster.notify(self.name, "jobs", ended=list(job_ids))
        return succeed(None)

    def cancels_owed(self) -> Deferred[list[int]]:
        return succeed(
            sorted(
                job_id
                for job_id, (job, node) in self.cluster.rows.items()
                if node == self.name and not job.status.final and job.cancel_requested_at is not None
            )
        )


class Node:
    def __init__(self, cluster: Cluster, name: str, **kw: Any) -> None:
        self.cluster = cluster
        self.name = name
        self.clock = cluster.clock
        self.store = NodeStore(cluster, name)
        self.jobs = JobBook(self.clock)
        self.jobs.id_source = lambda: next(cluster.ids)
        self.workers = WorkerRegistry()
        self.dispatcher = Dispatcher(self.clock, self.jobs, self.workers, self.store, cluster.tasks.get, **kw)
        self.claims = JobClaims(self.clock, self.store, self.dispatcher, name)
        self.dispatcher.offers = self.claims.offer
        self.dispatcher.offered = lambda: self.claims.offered_waiting
        self.workers.listeners.append(self.claims.worker_changed)
        self.dispatcher.ended_listeners.append(self.claims.job_ended)
        self.listening = True
        self.claims.start()

    def hear(self, topic: str, fields: dict[str, Any]) -> None:
        if topic == "jobs":
            self.claims.jobs_offered(fields)
        elif topic == "cancels":
            self.claims.cancel_heard(fields)

    def connect(self, name: str, slots: int = 1, labels: tuple[str, ...] = ()) -> tuple[Worker, FakeLink]:
        link = FakeLink()
        worker = Worker(name, frozenset(labels), slots, link, self.clock.seconds())
        self.dispatcher.hello(worker, {})
        self.clock.advance(0)
        return worker, link

    def finish(self, worker: Worker, job_id: int, **kw: Any) -> None:
        now = self.clock.seconds()
        self.dispatcher.finished(
            worker,
            Finished(
                job_id,
                exit_code=0,
                signal=None,
                timed_out=False,
                cancelled=kw.get("cancelled", False),
                seq=0,
                started_at=now,
                finished_at=now,
                output=(),
            ),
        )

    def cancel(self, job_id: int) -> CancelOutcome | Job:
        """What the API's cancel does: here if this node manages the job, else through the database."""
        try:
            return self.dispatcher.cancel(job_id)
        except JobNotFound:
            return result_of(Deferred.fromCoroutine(self.claims.cancel(job_id)))  # type: ignore[no-any-return]


def settle(cluster: Cluster) -> None:
    """Let every callLater(0) run (notifications, wakes, pumps)."""
    for _ in range(10):
        cluster.clock.advance(0)


def test_a_job_no_worker_here_can_take_is_offered_and_runs_on_the_node_that_claims_it() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    _, link = b.connect("w1")
    settle(cluster)
    job = a.dispatcher.run_now("echo hi")[0]
    # It left a's book (not ended: no listener heard an end) and is offered.
    assert a.jobs.get(job.id) is None and a.dispatcher.queued == 0
    assert cluster.managed_by(job.id) is None
    settle(cluster)
    # b heard "jobs", claimed it and sent it to its worker.
    assert cluster.managed_by(job.id) == "b"
    assert link.runs() == [job.id]
    assert b.jobs.get(job.id) is not None and b.jobs.get(job.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert (a.claims.counts.offered, b.claims.counts.claimed) == (1, 1)


def test_a_job_a_worker_here_can_take_is_never_offered() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    _, link = a.connect("w1")
    b.connect("w2")
    job = a.dispatcher.run_now("echo hi")[0]
    settle(cluster)
    assert link.runs() == [job.id] and cluster.managed_by(job.id) == "a"
    assert a.claims.counts.offered == 0


def test_the_offering_node_claims_its_own_job_back_when_a_worker_connects() -> None:
    cluster = Cluster()
    a = cluster.node("a")
    job = a.dispatcher.run_now("echo hi", target="label:gpu")[0]
    settle(cluster)
    assert cluster.managed_by(job.id) is None
    # A worker without the label: nothing to claim for it.
    _, plain = a.connect("w1")
    settle(cluster)
    assert cluster.managed_by(job.id) is None and plain.runs() == []
    _, gpu = a.connect("w2", labels=("gpu",))
    settle(cluster)
    assert gpu.runs() == [job.id] and cluster.managed_by(job.id) == "a"


def test_a_claim_takes_no_more_than_the_free_slots_and_one_waiting_job_per_slot_oldest_first() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    jobs = [a.dispatcher.run_now("true")[0] for _ in range(7)]
    settle(cluster)
    worker, link = b.connect("w1", slots=2)
    settle(cluster)
    assert link.runs() == [jobs[0].id, jobs[1].id]
    assert [cluster.managed_by(job.id) for job in jobs] == ["b", "b", "b", "b", None, None, None]
    assert b.dispatcher.queued == 2
    # A slot frees: the next job is b's already, and b claims one more to
    # wait, since the last claim took all it asked for.
    b.finish(worker, jobs[0].id)
    assert link.runs()[-1] == jobs[2].id
    settle(cluster)
    assert [cluster.managed_by(job.id) for job in jobs[4:]] == ["b", None, None]


def test_a_busy_node_keeps_one_job_per_slot_waiting_for_its_workers_and_offers_the_rest() -> None:
    cluster = Cluster()
    a = cluster.node("a")
    _, link = a.connect("w1", slots=1, labels=("x",))
    first, second, third = (a.dispatcher.run_now("true")[0] for _ in range(3))
    gpu = a.dispatcher.run_now("true", target="label:gpu")[0]
    mine = a.dispatcher.run_now("true", target="worker:w1")[0]
    settle(cluster)
    assert link.runs() == [first.id]
    assert a.dispatcher.waiting(second.id) == "every slot of the workers it may run on is busy"
    # Beyond one per slot, or for a worker not here: offered.
    assert [cluster.managed_by(job.id) for job in (second, third, gpu, mine)] == ["a", None, None, None]
    # Its worker gone, what waited for it is offered too.
    worker = a.workers.get("w1")
    assert worker is not None
    a.workers.remove(worker)
    settle(cluster)
    assert cluster.managed_by(second.id) is None and a.dispatcher.queued == 0


def test_a_slot_freeing_asks_the_database_only_while_offers_may_be_left() -> None:
    cluster = Cluster()
    b = cluster.node("b")
    worker, _ = b.connect("w1", slots=2)
    settle(cluster)
    asked = len(b.store.claims)
    assert asked == 1  # the worker connected: one claim, which found nothing
    for _ in range(3):
        job = b.dispatcher.run_now("true")[0]
        b.finish(worker, job.id)
        settle(cluster)
    assert len(b.store.claims) == asked


def test_the_sweep_claims_what_a_lost_notification_did_not_bring_and_asks_only_with_room() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    worker, link = b.connect("w1")
    settle(cluster)
    b.listening = False  # b's listener is down: it hears nothing
    jobs = [a.dispatcher.run_now("true")[0] for _ in range(2)]
    settle(cluster)
    assert cluster.managed_by(jobs[0].id) is None
    cluster.clock.advance(JobClaims.SWEEP)
    settle(cluster)
    # One runs, one waits here for the slot.
    assert link.runs() == [jobs[0].id] and b.dispatcher.queued == 1
    # No room now: sweeps do not ask the database.
    asked = len(b.store.claims)
    for _ in range(5):
        cluster.clock.advance(JobClaims.SWEEP)
    assert len(b.store.claims) == asked
    # A slot frees, and the job waiting here takes it at once; the last
    # claim took all it asked for, so more may wait: b asks.
    b.finish(worker, jobs[0].id)
    assert link.runs() == [jobs[0].id, jobs[1].id]
    settle(cluster)
    assert len(b.store.claims) == asked + 1
    # That one found none; from now on, one a second while there is room.
    cluster.clock.advance(JobClaims.SWEEP)
    settle(cluster)
    assert len(b.store.claims) == asked + 2


def test_a_resync_claims_at_once() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    _, link = b.connect("w1")
    settle(cluster)
    b.listening = False
    job = a.dispatcher.run_now("true")[0]
    settle(cluster)
    b.listening = True
    b.claims.resync()
    settle(cluster)
    assert link.runs() == [job.id]


def test_a_held_job_stays_here_until_it_may_start_then_is_offered() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    task = Task(1, "task_1", cron.parse("* * * * *", UTC), "sleep 9", TaskOptions(overlap="queue"))
    cluster.tasks[1] = task
    worker, link_a = a.connect("w1")
    _, link_b = b.connect("w2")
    settle(cluster)
    first = a.dispatcher.fire(task, 1_000_060.0)[0]
    second = a.dispatcher.fire(task, 1_000_120.0)[0]
    settle(cluster)
    # The second waits for the first (overlap: queue), here: not offered.
    assert link_a.runs() == [first.id]
    assert a.dispatcher.waiting(second.id) == "its previous run is still going (overlap: queue)"
    assert cluster.managed_by(second.id) == "a"
    a.finish(worker, first.id)
    settle(cluster)
    # Released onto a's own worker, free again.
    assert link_a.runs() == [first.id, second.id] and link_b.runs() == []


def test_a_cancel_through_another_node_ends_an_offered_job_in_the_database() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    job = a.dispatcher.run_now("true")[0]
    settle(cluster)
    assert b.cancel(job.id) == "cancelled"
    assert cluster.status(job.id) is JobStatus.CANCELLED
    # Nobody claims it any more.
    _, link = b.connect("w1")
    settle(cluster)
    assert link.runs() == []


def test_a_cancel_through_another_node_reaches_the_worker_of_the_node_that_runs_it() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    worker, link = b.connect("w1")
    settle(cluster)
    job = a.dispatcher.run_now("sleep 60")[0]
    settle(cluster)
    assert link.runs() == [job.id]
    assert a.cancel(job.id) == "asked"
    settle(cluster)
    assert [m["job"] for m in link.sent if m["type"] == "cancel"] == [job.id]
    b.finish(worker, job.id, cancelled=True)
    assert cluster.status(job.id) is JobStatus.CANCELLED
    assert a.claims.counts.cancels_relayed == 1


def test_a_cancel_missed_while_not_listening_is_taken_up_at_the_resync() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    _, link = b.connect("w1")
    settle(cluster)
    job = a.dispatcher.run_now("sleep 60")[0]
    settle(cluster)
    b.listening = False
    assert a.cancel(job.id) == "asked"
    settle(cluster)
    assert not [m for m in link.sent if m["type"] == "cancel"]
    b.listening = True
    b.claims.resync()
    settle(cluster)
    assert [m["job"] for m in link.sent if m["type"] == "cancel"] == [job.id]


def test_a_cancel_of_a_finished_job_says_so() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    worker, _ = b.connect("w1")
    settle(cluster)
    job = a.dispatcher.run_now("true")[0]
    settle(cluster)
    b.finish(worker, job.id)
    assert a.cancel(job.id) == "finished"


def test_a_fire_another_node_recorded_first_is_dropped_not_failed() -> None:
    cluster = Cluster()
    a = cluster.node("a")
    task = Task(1, "task_1", cron.parse("* * * * *", UTC), "true", TaskOptions())
    cluster.tasks[1] = task
    worker, link = a.connect("w1")
    ended: list[Job] = []
    a.jobs.listeners.append(lambda job: job.status.final and ended.append(job))
    a.store.refuse = FireTaken("job 1: its fire 1@60 is already recorded")
    job = a.dispatcher.fire(task, 1_000_060.0)[0]
    settle(cluster)
    # Never sent, never ended (no failed record), its slot free again, its fire still seen.
    assert link.runs() == [] and ended == []
    assert a.jobs.get(job.id) is None and worker.free == 1
    assert a.dispatcher.fire(task, 1_000_060.0) == []


def test_a_job_the_database_would_not_take_as_an_offer_is_offered_again() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    a.store.offer_error = JobStoreError("lost the connection to the job database")
    job = a.dispatcher.run_now("true")[0]
    settle(cluster)
    assert cluster.managed_by(job.id) == "a" and a.claims.counts.offered == 0
    a.store.offer_error = None
    cluster.clock.advance(JobClaims.OFFER_AGAIN)
    settle(cluster)
    assert cluster.managed_by(job.id) is None and a.claims.counts.offered == 1
    _, link = b.connect("w1")
    settle(cluster)
    assert link.runs() == [job.id]


def test_a_cancel_heard_before_the_claim_it_waited_for_comes_back_is_kept_for_it() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    job = a.dispatcher.run_now("sleep 60")[0]
    settle(cluster)
    # b claims; the claim commits, its answer is on its way back.
    b.store.paused = []
    _, link = b.connect("w1")
    settle(cluster)
    assert cluster.managed_by(job.id) == "b" and len(b.store.paused) == 1
    # The cancel (which waited for the claim's commit) is asked of b, which
    # does not have the job yet.
    assert a.cancel(job.id) == "asked"
    settle(cluster)
    assert link.sent == []
    answer, claimed = b.store.paused.pop()
    answer.callback(claimed)
    settle(cluster)
    # Taken up, then cancelled at once.
    assert link.runs() == [job.id]
    assert [m["job"] for m in link.sent if m["type"] == "cancel"] == [job.id]


def test_a_stopping_node_offers_what_waits_here() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    task = Task(1, "task_1", cron.parse("* * * * *", UTC), "sleep 9", TaskOptions(overlap="queue"))
    cluster.tasks[1] = task
    a.connect("w1")
    a.dispatcher.fire(task, 1_000_060.0)
    second = a.dispatcher.fire(task, 1_000_120.0)[0]
    settle(cluster)
    assert cluster.managed_by(second.id) == "a"
    assert a.dispatcher.hand_over() == 1
    assert cluster.managed_by(second.id) is None and a.dispatcher.queued == 0
    _, link_b = b.connect("w2")
    settle(cluster)
    assert link_b.runs() == [second.id]


def test_a_busy_node_claims_once_per_few_jobs_not_per_job() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    jobs = [a.dispatcher.run_now("true")[0] for _ in range(12)]
    settle(cluster)
    worker, link = b.connect("w1", slots=4)
    settle(cluster)
    assert len(link.runs()) == 4 and b.dispatcher.queued == 4
    asked = len(b.store.claims)
    # One slot frees: a job waiting here takes it; room for 1 is under half the slots.
    b.finish(worker, link.runs()[0])
    settle(cluster)
    assert len(b.store.claims) == asked and len(link.runs()) == 5
    # Another: room for 2, half the slots: one claim, for 2.
    b.finish(worker, link.runs()[1])
    settle(cluster)
    assert b.store.claims[asked:] == [(["any", "worker:w1"], 2)]
    assert [cluster.managed_by(job.id) for job in jobs].count("b") == 10


def test_a_task_whose_run_another_node_claimed_skips_its_next_fire_until_that_run_ends() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    task = Task(1, "task_1", cron.parse("* * * * *", UTC), "sleep 9", TaskOptions(overlap="skip"))
    cluster.tasks[1] = task
    worker, link = b.connect("w1", slots=2)
    settle(cluster)
    first = a.dispatcher.fire(task, 1_000_060.0)[0]
    settle(cluster)
    assert link.runs() == [first.id]
    # a let it go, but knows it is still going: overlap skip.
    assert a.dispatcher.fire(task, 1_000_120.0) == []
    b.finish(worker, first.id)
    settle(cluster)
    # b told a it ended: the next fire runs.
    third = a.dispatcher.fire(task, 1_000_180.0)[0]
    settle(cluster)
    assert link.runs() == [first.id, third.id]


def test_a_task_run_queued_behind_one_on_another_node_starts_when_that_one_ends() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    task = Task(1, "task_1", cron.parse("* * * * *", UTC), "sleep 9", TaskOptions(overlap="queue"))
    cluster.tasks[1] = task
    worker, link = b.connect("w1", slots=2)
    settle(cluster)
    first = a.dispatcher.fire(task, 1_000_060.0)[0]
    second = a.dispatcher.fire(task, 1_000_120.0)[0]
    settle(cluster)
    # The second waits on a for the first, which runs on b.
    assert link.runs() == [first.id]
    assert a.dispatcher.waiting(second.id) == "its previous run is still going (overlap: queue)"
    b.finish(worker, first.id)
    settle(cluster)
    assert link.runs() == [first.id, second.id]


def test_an_end_not_heard_is_found_by_the_sweep() -> None:
    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    task = Task(1, "task_1", cron.parse("* * * * *", UTC), "sleep 9", TaskOptions(overlap="skip"))
    cluster.tasks[1] = task
    worker, link = b.connect("w1")
    settle(cluster)
    first = a.dispatcher.fire(task, 1_000_060.0)[0]
    settle(cluster)
    a.listening = False
    b.finish(worker, first.id)
    settle(cluster)
    assert a.dispatcher.fire(task, 1_000_120.0) == []
    cluster.clock.advance(JobClaims.SWEEP)
    settle(cluster)
    assert a.jobs.elsewhere == [] and a.store.looks >= 1
    third = a.dispatcher.fire(task, 1_000_180.0)[0]
    settle(cluster)
    assert link.runs() == [first.id, third.id]
    # Heard this time; then nothing is let go, and the sweeps look at nothing.
    a.listening = True
    b.finish(worker, third.id)
    settle(cluster)
    assert a.jobs.elsewhere == []
    looks = a.store.looks
    cluster.clock.advance(JobClaims.SWEEP)
    cluster.clock.advance(JobClaims.SWEEP)
    assert a.store.looks == looks


def test_offers_claims_and_relayed_cancels_are_counted_in_the_metrics() -> None:
    from scheduler.metrics import SchedulerMetrics

    cluster = Cluster()
    a, b = cluster.node("a"), cluster.node("b")
    metrics = SchedulerMetrics(
        queued=lambda: 0, running=lambda: 0, workers=lambda: 0, tasks=lambda: 0, tick_lag=lambda: 0
    )
    metrics.watch_claims(lambda: a.claims.counts)
    _, link = b.connect("w1")
    settle(cluster)
    job = a.dispatcher.run_now("sleep 60")[0]
    a.dispatcher.run_now("true", target="label:gpu")
    settle(cluster)
    assert link.runs() == [job.id]
    assert a.cancel(job.id) == "asked"
    text = metrics.render().decode()
    for line in (
        "scheduler_jobs_offered_total 2.0",
        "scheduler_jobs_claimed_total 0.0",
        "scheduler_cancels_relayed_total 1.0",
    ):
        assert line in text
    assert b.claims.counts.claimed == 1


def test_an_offer_of_a_fire_another_node_recorded_first_leaves_no_run_going() -> None:
    cluster = Cluster()
    a = cluster.node("a")
    task = Task(1, "task_1", cron.parse("* * * * *", UTC), "true", TaskOptions(overlap="skip"))
    cluster.tasks[1] = task
    a.store.offer_error = FireTaken("job 1: its fire 1@60 is already recorded")
    assert len(a.dispatcher.fire(task, 1_000_060.0)) == 1
    settle(cluster)
    assert a.jobs.elsewhere == [] and a.claims.counts.offered == 0
    # Not tried again, and the task's next fire is not taken for an overlap.
    cluster.clock.advance(JobClaims.OFFER_AGAIN)
    assert a.claims.counts.offered == 0
    a.store.offer_error = None
    assert len(a.dispatcher.fire(task, 1_000_120.0)) == 1


def test_the_queue_limit_counts_the_jobs_offered_to_the_cluster() -> None:
    cluster = Cluster()
    a, b = cluster.node("a", queue_limit=3), cluster.node("b", queue_limit=3)
    for _ in range(2):
        a.dispatcher.run_now("true")
    settle(cluster)
    # b counts what the others offered at its (first) resync.
    b.claims.resync()
    settle(cluster)
    assert (a.claims.offered_waiting, b.claims.offered_waiting) == (2, 2)
    a.dispatcher.run_now("true")
    with pytest.raises(
        QueueFull, match=r"the job queue is full \(0 queued here and 3 offered to the other nodes, limit 3\)"
    ):
        a.dispatcher.run_now("true")
    cluster.clock.advance(JobClaims.SWEEP)
    with pytest.raises(QueueFull):
        b.dispatcher.run_now("true")
    # Claimed, they no longer count, once counted again.
    b.connect("w1", slots=3)
    settle(cluster)
    cluster.clock.advance(JobClaims.SWEEP)
    settle(cluster)
    assert a.claims.offered_waiting == 0
    assert len(a.dispatcher.run_now("true")) == 1


def test_a_node_whose_peers_have_no_worker_keeps_what_its_workers_can_run() -> None:
    cluster = Cluster()
    a = cluster.node("a")
    rows = [("a", "http://a", 1, 1000.0), ("b", "http://b", 0, 1000.0), ("c", "http://c", 3, 900.0)]
    claims = JobClaims(cluster.clock, a.store, a.dispatcher, "a", peers=lambda: succeed(list(rows)))
    a.dispatcher.offers = claims.offer
    a.dispatcher.others_have_workers = lambda: claims.others_have_workers
    claims.start()
    cluster.clock.advance(JobClaims.SWEEP)
    # b has no worker, c's heartbeat is long gone.
    assert claims.others_have_workers is False
    _, link = a.connect("w1")
    jobs = [a.dispatcher.run_now("true")[0] for _ in range(4)]
    gpu = a.dispatcher.run_now("true", target="label:gpu")[0]
    settle(cluster)
    assert link.runs() == [jobs[0].id]
    # All its worker can run waits here; what it cannot is offered all the same.
    assert [cluster.managed_by(job.id) for job in jobs] == ["a"] * 4
    assert cluster.managed_by(gpu.id) is None
    rows[1] = ("b", "http://b", 2, 1001.0)
    cluster.clock.advance(JobClaims.PEERS_EVERY)
    settle(cluster)
    assert claims.others_have_workers is True
    # One waits for the slot here; the rest is offered, the newest first.
    assert [cluster.managed_by(job.id) for job in jobs] == ["a", "a", None, None]
    claims.stop()
