"""A :class:`JobHistory` over any :class:`Database`, its work on one thread.

The reactor thread never waits on the database once the reactor runs:
writes are group-committed and reads run after them on the history's one
thread (``group_commit``).  Only ``open`` and the start-up reads, made
before the reactor runs, use the database from the calling thread.  A
backend subclasses this only to build its :class:`Database`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from scheduler.alert_deliveries import Delivery
from scheduler.alerts import Alert
from scheduler.audit import AuditEntry
from scheduler.job_history.database import (
    AlertAttempt,
    AlertsQueued,
    AuditQuery,
    ChannelChange,
    Chunk,
    Database,
    JobStoreClosed,
    JobStoreError,
    NewAlerts,
    NewAuditEntry,
    NewRevision,
    Put,
)
from scheduler.job_history.group_commit import GroupCommitter
from scheduler.job_outcomes import TaskOutcomes
from scheduler.jobs import Job, JobStatus
from scheduler.triggers import Revision

log = Logger()


class ThreadedJobHistory:
    """Implements :class:`scheduler.job_store.JobHistory`."""

    def __init__(self, database: Database, reactor: Any, *, thread_name: str) -> None:
        self._database = database
        self.name = database.name
        self._commits = GroupCommitter(database, reactor, name=database.name, thread_name=thread_name)
        # Told what became of each committed record_alerts: the sender wakes,
        # the metrics count what a full outbox refused.
        self.alert_listeners: list[Callable[[AlertsQueued], None]] = []

    @property
    def transactions(self) -> int:
        """Committed write batches; tests use it to see how writes were grouped."""
        return self._commits.transactions

    # -- start-up, blocking ---------------------------------------------------

    def open(self) -> None:
        """Connect, create or check the schema, and start the history's thread."""
        if self._commits.started or self._commits.closing:
            raise JobStoreError(f"{self.name}: job store was already opened")
        self._database.open()
        self._commits.start()

    def load_active(self) -> list[tuple[Job, int]]:
        return self._database.load_active()

    def recent_keys(self, since: float) -> set[str]:
        return self._database.recent_keys(since)

    def fired(self, task_id: int, scheduled: float) -> bool:
        """A point lookup, run on the caller's thread: the job book asks it
        only for times older than what it keeps in memory (missed runs at
        start-up, a clock stepped back)."""
        return self._database.fired(task_id, scheduled)

    def last_scheduled(self) -> dict[int, float]:
        return self._database.last_scheduled()

    def cron_cursors(self, until: float) -> Deferred[tuple[dict[int, float], float | None]]:
        return self._commits.read(lambda: (self._database.last_scheduled(until), self._database.last_at_work()))

    def unretried(self) -> list[Job]:
        return self._database.unretried()

    def outcomes(self) -> dict[int, TaskOutcomes]:
        return self._database.outcomes()

    def last_at_work(self) -> float | None:
        return self._database.last_at_work()

    def max_job_id(self) -> int:
        return self._database.max_job_id()

    def max_task_id(self) -> int:
        return self._database.max_task_id()

    # -- writes ---------------------------------------------------------------

    def put(self, job: Job) -> Deferred[None]:
        if not self._commits.accepting:
            return fail(JobStoreClosed(f"{self.name}: job store is closed; job {job.id} not saved"))
        try:
            row = self._database.row(job)
        except (TypeError, ValueError) as error:
            return fail(error)
        return self._commits.put(Put(job.id, JobStatus(job.status).final, row))

    def append_output(self, job_id: int, seq: int, stream: str, data: str) -> None:
        if not self._commits.accepting:
            log.warn(
                "job store is closed; dropped output chunk {seq} of job {job_id}", seq=seq, job_id=job_id
            )
            return
        self._commits.append(Chunk(job_id, seq, stream, data))

    def record_revision(self, revision: Revision) -> Deferred[int]:
        if not self._commits.accepting:
            return fail(
                JobStoreClosed(f"{self.name}: job store is closed; revision of task {revision.task_id} not saved")
            )
        try:
            row = self._database.revision_row(revision)
        except (TypeError, ValueError) as error:
            return fail(error)
        return self._commits.add_revision(NewRevision(revision.task_id, row))

    def record_audit(self, entry: AuditEntry) -> Deferred[int]:
        """Queue an audit log entry (its ``id`` is ignored); fires with its id once committed."""
        if not self._commits.accepting:
            return fail(JobStoreClosed(f"{self.name}: job store is closed; audit entry {entry.action} not saved"))
        try:
            row = self._database.audit_row(entry)
        except (TypeError, ValueError) as error:
            return fail(error)
        return self._commits.add_audit(NewAuditEntry(row))

    def audit(self, query: AuditQuery) -> Deferred[tuple[list[AuditEntry], int]]:
        """The audit entries matching *query*, newest first, and how many match in all."""
        return self._commits.read(lambda: self._database.audit(query))

    def record_alerts(self, alerts: list[Alert]) -> Deferred[None]:
        """Queue alerts in the outbox, in the transaction of whatever else this reactor turn wrote.

        A (key, channel) already kept is ignored; past the outbox's bound an
        alert is refused, which the listeners hear of (it is no error to the caller).
        """
        if not alerts:
            return succeed(None)
        if not self._commits.accepting:
            return fail(JobStoreClosed(f"{self.name}: job store is closed; {len(alerts)} alerts not saved"))
        try:
            rows = tuple(self._database.alert_row(alert) for alert in alerts)
        except (TypeError, ValueError) as error:
            return fail(error)

        def queued(outcome: AlertsQueued) -> None:
            for listener in self.alert_listeners:
                try:
                    listener(outcome)
                except Exception:
                    log.failure("an alert listener failed")

        return self._commits.add_alerts(NewAlerts(rows)).addCallback(queued)

    def record_attempt(self, attempt: AlertAttempt) -> Deferred[None]:
        if not self._commits.accepting:
            return fail(JobStoreClosed(f"{self.name}: job store is closed; alert {attempt.row_id} not updated"))
        return self._commits.record_attempt(attempt)

    def add_channel(self, name: str, config: str) -> Deferred[None]:
        """Store a new channel; fails with NameTaken if there is one by that name."""
        if not self._commits.accepting:
            return fail(JobStoreClosed(f"{self.name}: job store is closed; channel {name} not saved"))
        return self._commits.change_channel(ChannelChange(name, config))

    def remove_channel(self, name: str) -> Deferred[None]:
        if not self._commits.accepting:
            return fail(JobStoreClosed(f"{self.name}: job store is closed; channel {name} not removed"))
        return self._commits.change_channel(ChannelChange(name, None))

    def channels(self) -> dict[str, str]:
        return self._database.channels()

    def due_alerts(
        self, now: float, limit: int, skip_ids: Sequence[int] = (), skip_channels: Sequence[str] = ()
    ) -> Deferred[tuple[list[Delivery], float | None, int]]:
        ids, names = tuple(skip_ids), tuple(skip_channels)
        return self._commits.read(lambda: self._database.due_alerts(now, limit, ids, names))

    def deliveries(
        self,
        *,
        task_id: int | None = None,
        state: str | None = None,
        channel: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> Deferred[list[Delivery]]:
        return self._commits.read(lambda: self._database.deliveries(task_id, state, channel, limit, before_id))

    def output_tail(self, job_id: int, max_bytes: int) -> Deferred[str | None]:
        return self._commits.read(lambda: self._database.output_tail(job_id, max_bytes))

    # -- reads ----------------------------------------------------------------

    def get(self, job_id: int) -> Deferred[Job | None]:
        return self._commits.read(lambda: self._database.get(job_id))

    def query(
        self,
        *,
        status: str | None = None,
        task_id: int | None = None,
        worker: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> Deferred[list[Job]]:
        return self._commits.read(lambda: self._database.query(status, task_id, worker, limit, before_id))

    def count(self, *, status: str | None = None, task_id: int | None = None, worker: str | None = None) -> Deferred[int]:
        return self._commits.read(lambda: self._database.count(status, task_id, worker))

    def newest(self, task_ids: Sequence[int]) -> Deferred[list[Job]]:
        asked = list(task_ids)
        return self._commits.read(lambda: self._database.newest(asked))

    def output(self, job_id: int) -> Deferred[str | None]:
        return self._commits.read(lambda: self._database.output(job_id))

    def output_parts(self, job_id: int) -> Deferred[tuple[int, list[tuple[str, str]]] | None]:
        return self._commits.read(lambda: self._database.output_parts(job_id))

    def revisions(self, task_id: int, limit: int = 100, before_id: int | None = None) -> Deferred[list[Revision]]:
        return self._commits.read(lambda: self._database.revisions(task_id, limit, before_id))

    def prune(self, now: float) -> Deferred[int]:
        return self._commits.read(lambda: self._database.prune(now))

    # -- closing --------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Write what is queued, then close the database and stop the thread."""
        return self._commits.close()
