"""The job store: every job's record and output, kept after the job ends.

This module is the job history's public face.  The rest of the scheduler
codes against :class:`JobHistory` (the dispatcher only against its writing
side, :class:`JobRecorder`), and the service builds a :class:`JobStore`, the
history in SQLite.  The parts live in ``scheduler/job_history/``:

- ``threaded``: a ``JobHistory`` over any backend ``Database``, whose work
  runs on one thread;
- ``group_commit``: one transaction per batch of writes, reads queued
  behind them;
- ``output``: the output cap, the trim of the oldest chunks, their tallies;
- ``database``: what a backend does, and the errors;
- ``sqlite`` and ``sqlite_schema``: the SQLite backend, its schema and rows.

- ``postgres``: the PostgreSQL backend (``--db``), and the leader lease's store.

A backend is a ``Database`` beside ``sqlite`` and a class like
:class:`JobStore` that builds it (:class:`PostgresJobStore`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail

from scheduler.alert_deliveries import Delivery
from scheduler.alerts import Alert
from scheduler.audit import AuditEntry
from scheduler.feed_relay import Relayed, RelayedChunk
from scheduler.job_history.database import (
    REVISIONS_PER_TASK,
    AlertAttempt,
    AuditQuery,
    Disowned,
    JobStoreClosed,
    JobStoreError,
    NameTaken,
    Put,
)
from scheduler.job_history.sqlite import SqliteDatabase
from scheduler.job_history.sqlite_schema import SCHEMA_VERSION
from scheduler.job_history.threaded import ThreadedJobHistory
from scheduler.job_outcomes import TaskOutcomes
from scheduler.jobs import Job
from scheduler.triggers import Revision

__all__ = [
    "REVISIONS_PER_TASK",
    "SCHEMA_VERSION",
    "AuditQuery",
    "Disowned",
    "JobHistory",
    "JobRecorder",
    "JobStore",
    "JobStoreClosed",
    "JobStoreError",
    "NameTaken",
    "PostgresJobStore",
]


class JobRecorder(Protocol):
    """The writing side of the job history, which the dispatcher uses."""

    def put(self, job: Job) -> Deferred[None]:
        """Store the whole record, replacing any with its id.

        Fires once its transaction has committed; fails with the database's
        error if it did not.
        """

    def append_output(self, job_id: int, seq: int, stream: str, data: str) -> None:
        """Queue one chunk of a job's output; a (job_id, seq) already stored is ignored."""


class JobHistory(JobRecorder, Protocol):
    """Everything the scheduler asks of its job history."""

    # Start-up, blocking: called before the reactor runs (``fired`` also
    # later, for fires older than the job book keeps in memory).

    def open(self) -> None:
        """Connect, create or check the schema, and get ready to write."""

    def load_active(self) -> list[tuple[Job, int]]:
        """Queued and running jobs, each with the last output seq stored (0 if none)."""

    def recent_keys(self, since: float) -> set[str]:
        """The fire keys of the jobs scheduled at or after *since*."""

    def fired(self, task_id: int, scheduled: float) -> bool:
        """Does the history hold a run of this fire?"""

    def last_scheduled(self) -> dict[int, float]:
        """The latest scheduled time recorded for each task."""

    def unretried(self) -> list[Job]:
        """Each task's newest job, where it ended failed, timed out or lost, oldest first.

        A retry is a later job of its task, so these are the jobs whose
        retry may still be owed: the retry timers of the last run of the
        scheduler lived in memory, and start-up arms them again from here.
        """

    def outcomes(self) -> dict[int, TaskOutcomes]:
        """Each task's last success, last job and the runs that ended badly since that success.

        The alert watch rebuilds its streaks and timers from it at start-up.
        """

    def last_at_work(self) -> float | None:
        """The last moment the history shows the scheduler at work (a job created, started or ended)."""

    def cron_cursors(self, until: float) -> Deferred[tuple[dict[int, float], float | None]]:
        """Where a node that starts leading catches up from, read behind the writes queued
        before it: each task's latest scheduled time up to *until*, and ``last_at_work``."""

    def max_job_id(self) -> int:
        """The highest job id ever stored, even if that job was pruned since."""

    def max_task_id(self) -> int:
        """The highest task id any stored job or revision names: a new task must not
        take it, or it would inherit another task's history."""

    # Reads, queued behind the writes asked for before them.

    def get(self, job_id: int) -> Deferred[Job | None]:
        """The job's record; None if there is no such job."""

    def query(
        self,
        *,
        status: str | None = None,
        task_id: int | None = None,
        worker: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> Deferred[list[Job]]:
        """Jobs matching every filter given, newest (highest id) first."""

    def count(self, *, status: str | None = None, task_id: int | None = None, worker: str | None = None) -> Deferred[int]:
        """How many jobs match every filter given (``query`` without its page)."""

    def newest(self, task_ids: Sequence[int]) -> Deferred[list[Job]]:
        """The newest (highest id) job of each task asked for that has one, in no order."""

    def output(self, job_id: int) -> Deferred[str | None]:
        """The kept output in seq order, after a marker if the cap dropped some; None if no such job."""

    def output_parts(self, job_id: int) -> Deferred[tuple[int, list[tuple[str, str]]] | None]:
        """The bytes the cap dropped, and the kept output as (stream, text) runs in seq order; None if no such job."""

    def prune(self, now: float) -> Deferred[int]:
        """Delete finished jobs past retention, with their output; returns how many."""

    # Task revisions: kept here rather than in tasks.db, whose format is the
    # seed's, and written in order with the job records.

    def record_revision(self, revision: Revision) -> Deferred[int]:
        """Queue a task revision (its ``id`` is ignored); fires with the id it was given once committed.

        At most ``REVISIONS_PER_TASK`` are kept per task: the commit that
        adds one past it deletes the task's oldest.
        """

    def revisions(self, task_id: int, limit: int = 100, before_id: int | None = None) -> Deferred[list[Revision]]:
        """The task's revisions with an id below *before_id* (if given), newest first, at most *limit*."""

    # The alert outbox (scheduler/alert_outbox.py): alerts ride in the
    # transaction of the job records written in the same reactor turn.

    # The audit log (scheduler/audit.py): written like revisions.

    def record_audit(self, entry: AuditEntry) -> Deferred[int]:
        """Queue an audit log entry; fires with its id once committed."""

    def audit(self, query: AuditQuery) -> Deferred[tuple[list[AuditEntry], int]]:
        """Audit entries matching *query*, newest first, and how many match in all (paging aside)."""

    def record_alerts(self, alerts: list[Alert]) -> Deferred[None]:
        """Queue alerts (an ``AlertQueue``); a (key, channel) already kept is ignored,
        and past the outbox's bound an alert is refused (logged and counted, not an error)."""

    def record_attempt(self, attempt: AlertAttempt) -> Deferred[None]:
        """Queue what a delivery attempt of an outbox row came to."""

    def due_alerts(
        self, now: float, limit: int, skip_ids: Sequence[int] = (), skip_channels: Sequence[str] = ()
    ) -> Deferred[tuple[list[Delivery], float | None, int]]:
        """Pending rows due by *now* (oldest first, at most *limit*, without the ids and
        channels given), the next due time of the other pending rows, and the pending count."""

    def deliveries(
        self,
        *,
        task_id: int | None = None,
        state: str | None = None,
        channel: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> Deferred[list[Delivery]]:
        """Outbox rows matching every filter given, newest first."""

    def output_tail(self, job_id: int, max_bytes: int) -> Deferred[str | None]:
        """The end of the job's kept output (about *max_bytes*); None if no such job."""

    def channels(self) -> dict[str, str]:
        """Every stored channel's config (JSON) by name; at start-up, blocking."""

    def add_channel(self, name: str, config: str) -> Deferred[None]:
        """Store a new channel; fails with NameTaken if the name is taken."""

    def remove_channel(self, name: str) -> Deferred[None]:
        """Forget a channel (its outbox rows stay, and fail when their turn comes)."""

    def close(self) -> Deferred[None]:
        """Write what is queued, then close the database."""


class JobStore(ThreadedJobHistory):
    """The job history in SQLite, written in batches off the reactor."""

    def __init__(
        self,
        path: str,
        reactor: Any,
        *,
        output_cap: int = 1024 * 1024,
        keep_per_task: int = 100,
        keep_seconds: float = 7 * 86400,
        keep_revisions: int = REVISIONS_PER_TASK,
        outbox_limit: int = 10_000,
        keep_audit_seconds: float = 90 * 86400,
        connect: Callable[..., sqlite3.Connection] = sqlite3.connect,
    ) -> None:
        self.path = path
        # connect is injectable so tests can make the database fail or stall.
        self.database = SqliteDatabase(
            path,
            output_cap=output_cap,
            keep_per_task=keep_per_task,
            keep_seconds=keep_seconds,
            keep_revisions=keep_revisions,
            outbox_limit=outbox_limit,
            keep_audit_seconds=keep_audit_seconds,
            connect=connect,
        )
        super().__init__(self.database, reactor, thread_name="jobstore")


class PostgresJobStore(ThreadedJobHistory):
    """The job history in PostgreSQL (``--db``), written in batches off the reactor.

    Its ``name`` (in every error message) is the URL without its password.
    """

    def __init__(
        self,
        url: str,
        reactor: Any,
        *,
        output_cap: int = 1024 * 1024,
        keep_per_task: int = 100,
        keep_seconds: float = 7 * 86400,
        keep_revisions: int = REVISIONS_PER_TASK,
        outbox_limit: int = 10_000,
        keep_audit_seconds: float = 90 * 86400,
    ) -> None:
        # Imported here: psycopg is only loaded by those who use PostgreSQL.
        from scheduler.job_history.postgres import PostgresDatabase

        self.database = PostgresDatabase(
            url,
            output_cap=output_cap,
            keep_per_task=keep_per_task,
            keep_seconds=keep_seconds,
            keep_revisions=keep_revisions,
            outbox_limit=outbox_limit,
            keep_audit_seconds=keep_audit_seconds,
        )
        super().__init__(self.database, reactor, thread_name="jobstore")

    def reserve_ids(self, count: int) -> list[int]:
        """*count* new job ids from the database's sequence (blocking; see ``IdBlocks``)."""
        return self.database.reserve_ids(count)

    # -- the cluster's jobs: a ``ClaimStore`` (scheduler/job_claims.py) ----------

    def offer(self, job: Job) -> Deferred[None]:
        """Record *job* (queued) as managed by no node, and tell the other nodes.

        A put like any other, in order with the rest: a fire's first
        record, fenced, may be this very write.
        """
        from scheduler.job_history.postgres import OFFERED

        if not self._commits.accepting:
            return fail(JobStoreClosed(f"{self.name}: job store is closed; job {job.id} not offered"))
        return self._commits.put(Put(job.id, False, (*self.database.row(job), OFFERED)))

    def claim(self, targets: Sequence[str], limit: int) -> Deferred[list[Job]]:
        asked = list(targets)
        return self._commits.read(lambda: self.database.claim(asked, limit))

    def cancel_elsewhere(self, job_id: int, at: float, reason: str) -> Deferred[tuple[str, str | None]]:
        return self._commits.read(lambda: self.database.cancel_elsewhere(job_id, at, reason))

    def cancels_owed(self) -> Deferred[list[int]]:
        return self._commits.read(self.database.cancels_owed)

    def offered_count(self) -> Deferred[int]:
        return self._commits.read(self.database.offered_count)

    def still_active(self, job_ids: Sequence[int]) -> Deferred[list[int]]:
        asked = list(job_ids)
        return self._commits.read(lambda: self.database.still_active(asked))

    def notify_ended(self, job_ids: Sequence[int]) -> Deferred[None]:
        """After the writes queued so far (the ends among them) have committed."""
        ended = list(job_ids)
        return self._commits.read(lambda: self.database.notify_ended(ended))

    # The live feed's relay (scheduler/feed_relay.py: a ``RelayStore``).

    def relayed(self, job_ids: Sequence[int], after: Mapping[int, int], others_active: bool) -> Deferred[Relayed]:
        """Other nodes' jobs and output for this node's feed, in one read on the history's thread."""
        asked, seqs = list(job_ids), dict(after)

        def read() -> Relayed:
            jobs, chunks, more = self.database.relayed(asked, seqs, others_active)
            return Relayed(jobs, [RelayedChunk(*chunk) for chunk in chunks], more)

        return self._commits.read(read)

    def output_with_seq(self, job_id: int) -> Deferred[tuple[str, int] | None]:
        """A job's stored output and the last seq in it."""
        return self._commits.read(lambda: self.database.output_with_seq(job_id))

    # Across nodes (queued behind this node's writes, so what it wrote
    # before is committed first).

    def take_over(self, worker: str, job_ids: Sequence[int]) -> Deferred[list[tuple[Job, int, str | None]]]:
        """This node manages those of *job_ids* still running on *worker* from now on
        (``PostgresDatabase.take_over``): each with its last output seq and the node that had it."""
        asked = list(job_ids)
        return self._commits.read(lambda: self.database.take_over(worker, asked))

    def silent_nodes(self, lost_after: float) -> Deferred[list[str]]:
        """Other nodes with active jobs whose heartbeat is older than *lost_after*."""
        return self._commits.read(lambda: self.database.silent_nodes(lost_after))

    def release(self, node: str, now: float, reason: str) -> Deferred[tuple[list[Job], int]]:
        """A silent node's running jobs end lost, its queued ones are offered again."""
        return self._commits.read(lambda: self.database.release(node, now, reason))

    def unretried_since(self, since: float) -> Deferred[list[Job]]:
        """``unretried``'s jobs that ended at or after *since*."""
        return self._commits.read(lambda: self.database.unretried_since(since))
