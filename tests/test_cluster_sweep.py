"""Failover in memory, on ``task.Clock``: the leader's sweep of silent nodes' jobs
(``scheduler.cluster_sweep``), a worker's jobs taken over at its hello and let go
when another node has them (``Dispatcher.take_over``), retries on the leader only."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from scheduler.cluster_sweep import ClusterSweep, silent_reason
from scheduler.dispatch import Dispatcher
from scheduler.job_book import JobBook
from scheduler.job_store import Disowned
from scheduler.jobs import Job, JobStatus
from scheduler.worker_registry import Worker, WorkerRegistry
from tests.fakes import FakeLink
from tests.test_dispatch import World


class Store:
    """The database's side of the sweep: nodes' heartbeats and their jobs, by this clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.seen: dict[str, float] = {}
        self.jobs: dict[int, tuple[Job, str | None]] = {}
        self.asked_since: list[float] = []
        self.broken = False

    def silent_nodes(self, lost_after: float) -> Deferred[list[str]]:
        if self.broken:
            return fail(RuntimeError("database down"))
        now = self.clock.seconds()
        nodes = {node for job, node in self.jobs.values() if node is not None and not job.status.final}
        return succeed(sorted(node for node in nodes if now - self.seen.get(node, float("-inf")) > lost_after))

    def release(self, node: str, now: float, reason: str) -> Deferred[tuple[list[Job], int]]:
        lost, offered = [], 0
        for job_id, (job, owner) in list(self.jobs.items()):
            if owner != node:
                continue
            if job.status is JobStatus.RUNNING:
                ended = job.evolve(status=JobStatus.LOST, finished_at=now, reason=reason)
                self.jobs[job_id] = (ended, "leader")
                lost.append(ended)
            elif job.status is JobStatus.QUEUED:
                self.jobs[job_id] = (job, None)
                offered += 1
        return succeed((lost, offered))

    def unretried_since(self, since: float) -> Deferred[list[Job]]:
        self.asked_since.append(since)
        return succeed([])


def job(job_id: int, status: JobStatus = JobStatus.RUNNING, **fields: Any) -> Job:
    fields.setdefault("worker", "w1")
    return Job(id=job_id, command="sleep 60", created_at=0.0, status=status, **fields)


class Cluster:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = Store(self.clock)
        self.leading = True
        self.ended: list[Job] = []
        self.retried: list[list[Job]] = []
        self.sweep = ClusterSweep(
            self.clock,
            self.store,
            leading=lambda: self.leading,
            lost_after=10,
            ended=self.ended.append,
            retry=self.retried.append,
            every=2,
        )


def test_the_leader_ends_a_silent_nodes_running_jobs_and_offers_its_queued_ones() -> None:
    c = Cluster()
    c.store.seen = {"a": 1000.0, "b": 1000.0}
    c.store.jobs = {1: (job(1), "a"), 2: (job(2, JobStatus.QUEUED, worker=None), "a"), 3: (job(3), "b")}
    c.sweep.start()
    # b keeps beating; a stopped at 1000.
    for _ in range(5):
        c.clock.advance(2)
        c.store.seen["b"] = c.clock.seconds()
    assert c.ended == [] and c.sweep.lost == 0  # 10 s: not yet past lost_after
    c.clock.advance(2)
    assert [(each.id, each.status, each.reason) for each in c.ended] == [(1, JobStatus.LOST, silent_reason("a", 10))]
    assert (c.sweep.lost, c.sweep.offered) == (1, 1)
    assert c.store.jobs[2][1] is None and c.store.jobs[3][0].status is JobStatus.RUNNING
    # Settled once: the next sweeps find nothing more of a.
    for _ in range(5):
        c.clock.advance(2)
        c.store.seen["b"] = c.clock.seconds()
    assert len(c.ended) == 1


def test_a_follower_does_not_sweep_and_a_new_leader_asks_for_every_retry_owed() -> None:
    c = Cluster()
    c.leading = False
    c.store.jobs = {1: (job(1), "a")}
    c.sweep.start()
    c.clock.pump([2] * 20)
    assert c.ended == [] and c.store.asked_since == []
    c.leading = True
    c.clock.advance(2)
    assert [each.id for each in c.ended] == [1]
    # The first step since it leads asks for every end; the next ones since
    # the last step, with an overlap for other nodes' clocks and commits.
    c.clock.advance(2)
    assert c.store.asked_since == [0.0, 1042.0 - 30]
    c.sweep.stopped_leading()
    c.clock.advance(2)
    assert c.store.asked_since[-1] == 0.0


def test_a_failing_sweep_is_logged_and_the_timer_goes_on_until_stopped() -> None:
    c = Cluster()
    c.store.seen = {"a": 0.0}
    c.store.jobs = {1: (job(1), "a")}
    c.store.broken = True
    c.sweep.start()
    c.clock.pump([2] * 3)
    assert c.ended == []
    c.store.broken = False
    c.clock.advance(2)
    assert [each.id for each in c.ended] == [1]
    c.sweep.stop()
    assert c.clock.getDelayedCalls() == []


def test_a_sweep_still_running_is_not_started_again() -> None:
    c = Cluster()
    pending: Deferred[list[str]] = Deferred()
    asked = []

    def slow(lost_after: float) -> Deferred[list[str]]:
        asked.append(lost_after)
        return pending

    c.store.silent_nodes = slow  # type: ignore[method-assign]
    c.sweep.start()
    c.clock.advance(2)
    c.sweep.step()
    assert asked == [10]
    pending.callback([])
    c.clock.advance(2)
    assert asked == [10, 10]


# -- takeover at the hello, and letting go --------------------------------------------


class TakeOver:
    """The job history's takeover: the jobs stored by id, each with its last seq, of node "a"."""

    def __init__(self) -> None:
        self.stored: dict[int, tuple[Job, int]] = {}
        self.asked: list[tuple[str, list[int]]] = []

    def __call__(self, name: str, job_ids: list[int]) -> Deferred[list[tuple[Job, int, str | None]]]:
        self.asked.append((name, job_ids))
        taken: list[tuple[Job, int, str | None]] = [
            (*self.stored[job_id], "a") for job_id in job_ids if job_id in self.stored and self.stored[job_id][0].worker == name
        ]
        return succeed(taken)


def test_without_a_database_the_hello_asks_nothing() -> None:
    world = World()
    assert world.dispatcher.take_over("w1", {5: ("running", 3)}) is None


def test_a_hello_takes_over_another_nodes_running_jobs_and_resumes_their_output() -> None:
    take_over = TakeOver()
    take_over.stored[7] = (job(7, started_at=1.0, cancel_requested_at=None), 4)
    world = World(take_over=take_over)
    # Nothing to take over: no query, no wait.
    assert world.dispatcher.take_over("w1", {}) is None
    reported = {7: ("running", 6), 8: ("running", 1)}
    done = world.dispatcher.take_over("w1", reported)
    assert done is not None and done.called
    assert take_over.asked == [("w1", [7, 8])]
    adopted = world.jobs.get(7)
    assert adopted is not None and adopted.status is JobStatus.RUNNING
    assert world.dispatcher.taken_over == 1
    worker, link = world.connect("w1", jobs=reported)
    welcome = link.sent[0]
    # Its output from chunk 5 on; job 8 is nobody's to run here.
    assert welcome["resume"] == {"7": 4} and welcome["drop"] == [8]
    world.finish(worker, 7, seq=6)
    assert [(each.id, each.status) for each in world.ended] == [(7, JobStatus.SUCCEEDED)]
    # Kept: the lost timer the takeover set was cancelled by the hello.
    world.clock.advance(world.dispatcher.lost_after + 1)
    assert len(world.ended) == 1


def test_a_cancel_asked_before_the_takeover_is_delivered_after_the_welcome() -> None:
    take_over = TakeOver()
    take_over.stored[7] = (job(7, cancel_requested_at=5.0), 0)
    world = World(take_over=take_over)
    world.dispatcher.take_over("w1", {7: ("running", 0)})
    _, link = world.connect("w1", jobs={7: ("running", 0)})
    assert {"type": "cancel", "job": 7} in link.sent


class Refusing:
    """A recorder whose records of some jobs another node owns now."""

    def __init__(self) -> None:
        self.disowned: set[int] = set()
        self.puts: list[Job] = []

    def put(self, job: Job) -> Deferred[None]:
        self.puts.append(job)
        if job.id in self.disowned:
            return fail(Disowned(f"job {job.id} is managed by another node now"))
        return succeed(None)

    def append_output(self, job_id: int, seq: int, stream: str, data: str) -> None:
        pass


def _node(recorder: Refusing, **kw: Any) -> tuple[Clock, Dispatcher, JobBook, list[Job]]:
    clock = Clock()
    jobs = JobBook(clock)
    ended: list[Job] = []
    jobs.listeners.append(lambda each: each.status.final and ended.append(each))
    dispatcher = Dispatcher(clock, jobs, WorkerRegistry(), recorder, lambda task_id: None, lost_after=30, **kw)
    return clock, dispatcher, jobs, ended


def test_the_old_node_lets_a_taken_over_job_go_without_a_second_result() -> None:
    recorder = Refusing()
    clock, dispatcher, jobs, ended = _node(recorder, take_over=TakeOver())
    worker = Worker("w1", frozenset(), 1, FakeLink(), 0.0)
    dispatcher.hello(worker, {})
    (running,) = dispatcher.run_now("sleep 60")
    assert jobs.get(running.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    # The worker goes to another node, which takes the job over.
    dispatcher.disconnected(worker)
    recorder.disowned.add(running.id)
    clock.advance(30)
    # The lost record was refused: no lost end here, the job only leaves the book.
    assert ended == [] and jobs.get(running.id) is None
    assert recorder.puts[-1].status is JobStatus.LOST
    assert dispatcher.let_go == 1


def test_a_lost_timer_still_ends_the_job_when_its_record_is_this_nodes() -> None:
    recorder = Refusing()
    clock, dispatcher, _jobs, ended = _node(recorder, take_over=TakeOver())
    worker = Worker("w1", frozenset(), 1, FakeLink(), 0.0)
    dispatcher.hello(worker, {})
    (running,) = dispatcher.run_now("sleep 60")
    dispatcher.disconnected(worker)
    clock.advance(30)
    assert [(each.id, each.status) for each in ended] == [(running.id, JobStatus.LOST)]


def test_a_follower_arms_no_retry_and_a_sweep_end_is_retried_by_the_leader() -> None:
    leading = {"now": False}
    world = World(leading=lambda: leading["now"])
    task = world.task(1, retries=2, retryDelay=10)
    worker, link = world.connect("w1")
    first = world.dispatcher.fire(task, world.clock.seconds())[0]
    world.finish(worker, first.id, exit_code=1)
    world.clock.advance(60)
    assert link.runs() == [first.id]  # no retry on a follower
    leading["now"] = True
    lost = job(99, task_id=1, key="1@5", finished_at=world.clock.seconds()).evolve(status=JobStatus.LOST)
    world.dispatcher.swept_lost(lost)
    world.clock.advance(10)
    assert len(link.runs()) == 2


def test_a_job_loaded_at_start_from_another_node_is_taken_up_as_the_database_has_it_now() -> None:
    take_over = TakeOver()
    world = World(take_over=take_over)
    # Loaded at this node's start, when node a had it at output chunk 1.
    world.jobs.restore([job(7)], [], 7, keys_since=0)
    world.dispatcher.restore([(job(7), 1)])
    take_over.stored[7] = (job(7, started_at=1.5), 5)
    world.dispatcher.take_over("w1", {7: ("running", 6)})
    assert world.jobs.get(7).started_at == 1.5  # type: ignore[union-attr]
    _, link = world.connect("w1", jobs={7: ("running", 6)})
    assert link.sent[0]["resume"] == {"7": 5}
    assert world.dispatcher.taken_over == 1


# -- the welcome waits for the takeover (the protocol, in memory) ---------------------


class Pending:
    """A takeover the test answers when it likes."""

    def __init__(self) -> None:
        self.calls: list[Deferred[list[tuple[Job, int, str | None]]]] = []

    def __call__(self, name: str, job_ids: list[int]) -> Deferred[list[tuple[Job, int, str | None]]]:
        waiting: Deferred[list[tuple[Job, int, str | None]]] = Deferred()
        self.calls.append(waiting)
        return waiting


def _cluster_world(take_over: Any) -> Any:
    from tests.test_worker_conformance import World as ProtocolWorld

    world = ProtocolWorld(lost_after=30)
    world.dispatcher = world.factory.dispatcher = Dispatcher(
        world.clock, world.jobs, world.workers, world.recorder, world.tasks.get, lost_after=30, take_over=take_over
    )
    return world


def test_the_welcome_waits_for_the_takeover_and_nothing_else_may_come_before_it() -> None:
    from tests.test_worker_conformance import running

    pending = Pending()
    world = _cluster_world(pending)
    connection = world.connect()
    assert connection.hello("w1", jobs=[running(7, 3)]) == []
    (answer,) = connection.say(world.started(7))
    assert answer["type"] == "error" and "nothing but the hello may come before the welcome" in answer["reason"]
    pending.calls[0].callback([(job(7), 2, "a")])
    world.clock.advance(0)
    welcome = connection.of_type("welcome")
    assert len(welcome) == 1 and welcome[0]["resume"] == {"7": 2}
    assert world.workers.get("w1") is not None


def test_a_worker_without_jobs_is_welcomed_at_once_even_with_a_database() -> None:
    pending = Pending()
    world = _cluster_world(pending)
    assert [reply["type"] for reply in world.connect().hello("w1")] == ["welcome"]
    assert pending.calls == []


def test_a_takeover_the_database_could_not_do_refuses_the_worker_so_it_dials_again() -> None:
    from tests.test_worker_conformance import running

    pending = Pending()
    world = _cluster_world(pending)
    connection = world.connect()
    connection.hello("w1", jobs=[running(7)])
    pending.calls[0].errback(RuntimeError("connection to the database lost"))
    world.clock.advance(0)
    (refused,) = connection.of_type("refused")
    assert "could not take over this worker's jobs" in refused["reason"]
    assert connection.closes and world.workers.get("w1") is None


def test_a_worker_gone_during_the_takeover_is_not_welcomed_and_its_jobs_wait_lost_after() -> None:
    from tests.test_worker_conformance import running

    pending = Pending()
    world = _cluster_world(pending)
    connection = world.connect()
    connection.hello("w1", jobs=[running(7)])
    connection.drop()
    pending.calls[0].callback([(job(7), 0, "a")])
    world.clock.advance(0)
    assert connection.of_type("welcome") == [] and world.workers.get("w1") is None
    world.clock.advance(30)
    assert world.recorder.status(7) is JobStatus.LOST


def test_a_stale_job_loaded_at_start_that_the_worker_does_not_report_is_let_go_not_lost() -> None:
    recorder = Refusing()
    _, dispatcher, jobs, ended = _node(recorder, take_over=TakeOver())
    # Loaded at start as running on w1; another node has ended it since.
    jobs.restore([job(7)], [], 7, keys_since=0)
    dispatcher.restore([(job(7), 0)])
    assert jobs.get(7) is not None
    recorder.disowned.add(7)
    dispatcher.hello(Worker("w1", frozenset(), 1, FakeLink(), 0.0), {})
    assert ended == [] and jobs.get(7) is None
    assert [(each.id, each.status) for each in recorder.puts] == [(7, JobStatus.LOST)]


def test_a_takeover_the_database_does_not_answer_in_time_refuses_the_worker_and_its_jobs_wait() -> None:
    from tests.test_worker_conformance import running

    pending = Pending()
    world = _cluster_world(pending)
    connection = world.connect()
    connection.hello("w1", jobs=[running(7)])
    world.clock.advance(world.factory.hello_timeout)
    (refused,) = connection.of_type("refused")
    assert "did not answer in time" in refused["reason"]
    connection.closed()
    # The takeover commits after all: the job waits lost_after for its worker.
    pending.calls[0].callback([(job(7), 0, "a")])
    world.clock.advance(0)
    assert connection.of_type("welcome") == [] and world.jobs.get(7) is not None
    world.clock.advance(30)
    assert world.recorder.status(7) is JobStatus.LOST
