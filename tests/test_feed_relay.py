"""The live feed across nodes, in memory (scheduler.feed_relay): what another
node's "feed" notification makes this node read and publish, on ``task.Clock``,
with a jobs and output "table" standing in for PostgreSQL
(tests/test_feed_relay_postgres.py has the real one)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from scheduler.feed_relay import RETRY_AFTER, FeedRelay, Relayed, RelayedChunk
from scheduler.job_history.database import JobStoreError
from scheduler.jobs import Job, JobStatus

HERE = "a"


class Store:
    """Jobs (each with the node managing it) and their output chunks; each read
    answers at once, or waits for ``answer()`` when ``held``."""

    def __init__(self) -> None:
        self.jobs: dict[int, tuple[Job, str | None]] = {}
        self.output: dict[int, list[RelayedChunk]] = {}
        self.reads: list[tuple[list[int], dict[int, int], bool]] = []
        self.held: list[Deferred[Relayed]] | None = None
        self.failing = False
        self.chunk_limit = 1000

    def add(self, job: Job, node: str | None = "b") -> None:
        self.jobs[job.id] = (job, node)

    def print(self, job_id: int, data: str, stream: str = "stdout") -> None:
        chunks = self.output.setdefault(job_id, [])
        chunks.append(RelayedChunk(job_id, len(chunks) + 1, stream, data))

    def relayed(self, job_ids: Sequence[int], after: Mapping[int, int], others_active: bool) -> Deferred[Relayed]:
        self.reads.append((list(job_ids), dict(after), others_active))
        if self.failing:
            return fail(JobStoreError("the database is away"))
        if self.held is not None:
            waiting: Deferred[Relayed] = Deferred()
            self.held.append(waiting)
            return waiting
        return succeed(self._read(job_ids, after, others_active))

    def answer(self) -> None:
        assert self.held
        self.held.pop(0).callback(self._read(*self.reads[-1 - len(self.held)]))

    def _read(self, job_ids: Sequence[int], after: Mapping[int, int], others_active: bool) -> Relayed:
        asked = set(job_ids)
        jobs = [
            job
            for job, node in self.jobs.values()
            if node != HERE and (job.id in asked or (others_active and not job.status.final))
        ]
        chunks = [
            chunk
            for job_id, seq in sorted(after.items())
            if self.jobs.get(job_id, (None, None))[1] != HERE
            for chunk in self.output.get(job_id, [])
            if chunk.seq > seq
        ]
        return Relayed(sorted(jobs, key=lambda job: job.id), chunks[: self.chunk_limit], len(chunks) > self.chunk_limit)

    def output_with_seq(self, job_id: int) -> Deferred[tuple[str, int] | None]:
        if job_id not in self.jobs:
            return succeed(None)
        chunks = self.output.get(job_id, [])
        return succeed(("".join(chunk.data for chunk in chunks), chunks[-1].seq if chunks else 0))


class Feed:
    """The subscribers: None watches every job change, a number also that job's output."""

    def __init__(self) -> None:
        self.subscribers: list[int | None] = []

    def __len__(self) -> int:
        return len(self.subscribers)

    def watched_jobs(self) -> set[int]:
        return {job for job in self.subscribers if job is not None}


class Node:
    def __init__(self) -> None:
        self.clock = Clock()
        self.store = Store()
        self.feed = Feed()
        self.published: list[tuple[str, Any]] = []
        self.relay = FeedRelay(
            self.clock,
            self.store,
            self.feed,
            publish_job=lambda job: self.published.append(("job", (job.id, job.status))),
            publish_output=lambda chunk: self.published.append(("output", (chunk.job_id, chunk.seq, chunk.data))),
        )

    def hear(self, **fields: Any) -> None:
        self.relay.heard({"node": "b", **fields})


def job(job_id: int, status: JobStatus = JobStatus.RUNNING) -> Job:
    return Job(job_id, f"echo {job_id}", 0.0, status=status)


def test_a_node_with_no_subscriber_reads_nothing() -> None:
    node = Node()
    node.store.add(job(1))
    node.hear(jobs=[1], output=[1])
    node.hear(more=True)
    node.relay.resync()
    assert node.store.reads == [] and node.published == []
    assert node.relay.unwatched == 2


def test_another_nodes_job_changes_are_published_but_not_this_nodes_own() -> None:
    node = Node()
    node.feed.subscribers.append(None)
    node.store.add(job(1))
    node.store.add(job(2), node=HERE)
    node.store.add(job(3, JobStatus.SUCCEEDED))
    node.hear(jobs=[1, 2, 3])
    assert node.store.reads == [([1, 2, 3], {}, False)]
    assert node.published == [("job", (1, JobStatus.RUNNING)), ("job", (3, JobStatus.SUCCEEDED))]


def test_output_is_read_only_for_watched_jobs_after_the_last_seq_published() -> None:
    node = Node()
    node.feed.subscribers += [None, 1]
    node.store.add(job(1))
    node.store.add(job(2))
    for line in ("one\n", "two\n"):
        node.store.print(1, line)
    node.store.print(2, "unwatched\n")
    node.hear(jobs=[1], output=[1, 2])
    assert node.store.reads[-1] == ([1], {1: 0}, False)
    node.store.print(1, "three\n")
    node.hear(output=[1])
    assert node.store.reads[-1] == ([], {1: 2}, False)
    assert [data for kind, data in node.published if kind == "output"] == [
        (1, 1, "one\n"),
        (1, 2, "two\n"),
        (1, 3, "three\n"),
    ]


def test_a_page_that_read_the_log_gets_only_the_chunks_after_it() -> None:
    node = Node()
    node.feed.subscribers.append(1)
    node.store.add(job(1))
    node.store.print(1, "before\n")
    log = node.relay.stored_log(1)
    assert log.result == ("before\n", 1)
    node.store.print(1, "after\n")
    node.hear(output=[1])
    assert node.published == [("output", (1, 2, "after\n"))]


def test_a_log_read_does_not_skip_chunks_another_subscriber_still_waits_for() -> None:
    node = Node()
    node.feed.subscribers.append(1)
    node.store.add(job(1))
    node.store.print(1, "one\n")
    node.hear(output=[1])
    node.store.print(1, "two\n")
    # A second page reads the log (two chunks) before the relay reads the second one.
    node.feed.subscribers.append(1)
    node.relay.stored_log(1)
    node.hear(output=[1])
    assert [data for _, data in node.published] == [(1, 1, "one\n"), (1, 2, "two\n")]


def test_what_is_heard_during_a_read_is_gathered_into_the_next_one() -> None:
    node = Node()
    node.feed.subscribers += [None, 1]
    node.store.held = []
    for job_id in (1, 2, 3):
        node.store.add(job(job_id))
    node.hear(jobs=[1])
    node.hear(jobs=[2], output=[1])
    node.hear(jobs=[3])
    assert len(node.store.reads) == 1
    node.store.answer()
    assert node.store.reads[1] == ([2, 3], {1: 0}, False)
    node.store.answer()
    assert len(node.store.reads) == 2 and node.relay.reads == 2
    assert [data[0] for kind, data in node.published if kind == "job"] == [1, 2, 3]


def test_a_capped_notification_or_a_resync_reloads_the_others_active_jobs_and_the_watched_output() -> None:
    node = Node()
    node.feed.subscribers += [None, 7]
    node.store.add(job(5))
    node.store.add(job(7))
    node.hear(jobs=[5])
    node.store.jobs[5] = (replace(job(5), status=JobStatus.SUCCEEDED), "b")
    node.store.add(job(6, JobStatus.QUEUED), node=None)
    node.store.print(7, "missed\n")
    node.hear(jobs=[1], more=True)
    # The job shown running (5) is read again: it ended meanwhile.
    assert node.store.reads[-1] == ([1, 5], {7: 0}, True)
    node.relay.resync()
    assert node.store.reads[-1] == ([6, 7], {7: 1}, True)
    assert ("job", (5, JobStatus.SUCCEEDED)) in node.published
    assert ("job", (6, JobStatus.QUEUED)) in node.published
    assert ("output", (7, 1, "missed\n")) in node.published


def test_a_read_cut_at_its_limit_is_followed_by_another() -> None:
    node = Node()
    node.feed.subscribers.append(1)
    node.store.add(job(1))
    node.store.chunk_limit = 2
    for number in range(5):
        node.store.print(1, f"{number}\n")
    node.hear(output=[1])
    assert [after for _, after, _ in node.store.reads] == [{1: 0}, {1: 2}, {1: 4}]
    assert [data[1] for _, data in node.published] == [1, 2, 3, 4, 5]


def test_a_failed_read_is_tried_again_later_with_nothing_dropped() -> None:
    node = Node()
    node.feed.subscribers += [None, 1]
    node.store.add(job(1))
    node.store.print(1, "kept\n")
    node.store.failing = True
    node.hear(jobs=[1], output=[1])
    node.hear(jobs=[1])
    assert len(node.store.reads) == 1 and node.published == []
    node.store.failing = False
    node.clock.advance(RETRY_AFTER)
    assert node.store.reads[-1] == ([1], {1: 0}, False)
    assert node.published == [("output", (1, 1, "kept\n")), ("job", (1, JobStatus.RUNNING))]


def test_nonsense_in_a_notification_is_ignored() -> None:
    node = Node()
    node.feed.subscribers.append(None)
    node.store.add(job(1))
    node.hear(jobs=["1", None, True, 1.5, 1], output="2")
    assert node.store.reads == [([1], {}, False)]


def test_a_subscriber_that_left_before_the_answer_gets_nothing_published() -> None:
    node = Node()
    node.feed.subscribers.append(None)
    node.store.held = []
    node.store.add(job(1))
    node.hear(jobs=[1])
    node.feed.subscribers.clear()
    node.store.answer()
    assert node.published == []


def test_a_job_this_node_published_itself_goes_on_after_its_last_chunk_when_another_node_takes_it() -> None:
    node = Node()
    node.feed.subscribers.append(1)
    node.store.add(job(1), node=HERE)
    node.store.print(1, "here\n")
    node.relay.published_here(1, 1)
    node.relay.published_here(2, 1)
    # Another node took it over (a worker's hello there) and it prints on.
    node.store.jobs[1] = (job(1), "b")
    node.store.print(1, "there\n")
    node.hear(output=[1, 2])
    assert node.store.reads == [([], {1: 1}, False)]
    assert node.published == [("output", (1, 2, "there\n"))]


def test_a_stopped_relay_reads_no_more_and_does_not_retry() -> None:
    node = Node()
    node.feed.subscribers.append(None)
    node.store.failing = True
    node.hear(jobs=[1])
    node.relay.stop()
    node.store.failing = False
    node.clock.advance(RETRY_AFTER * 2)
    node.hear(jobs=[2])
    assert len(node.store.reads) == 1 and node.clock.getDelayedCalls() == []


def test_a_watched_job_read_for_its_record_has_its_output_read_with_it() -> None:
    """The record read may already be the job's end (committed after the
    notification): its last lines come first, not after it."""
    node = Node()
    node.feed.subscribers.append(1)
    node.store.add(job(1, JobStatus.SUCCEEDED))
    node.store.print(1, "last words\n")
    node.hear(jobs=[1])
    assert node.published == [("output", (1, 1, "last words\n")), ("job", (1, JobStatus.SUCCEEDED))]


def test_a_publish_that_fails_is_logged_and_the_next_read_still_comes() -> None:
    node = Node()
    node.feed.subscribers.append(None)
    node.store.add(job(1))
    node.store.add(job(2))
    failures: list[int] = []

    def publish_job(relayed: Job) -> None:
        failures.append(relayed.id)
        raise ValueError("a broken record")

    node.relay._publish_job = publish_job
    node.store.held = []
    node.hear(jobs=[1])
    node.hear(jobs=[2])
    node.store.answer()
    node.store.answer()
    assert failures == [1, 2] and node.clock.getDelayedCalls() == []
