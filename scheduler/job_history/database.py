"""What a job history's database backend does, and the writes it is handed.

:class:`~scheduler.job_history.threaded.ThreadedJobHistory` runs a
:class:`Database` on one thread and batches the writes (``group_commit``),
so a backend (SQLite today, PostgreSQL beside it later) is one module of
plain blocking calls.  What the rest of the scheduler sees is in
``scheduler/job_store.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from scheduler.alert_deliveries import Delivery
from scheduler.alerts import Alert
from scheduler.audit import AuditEntry
from scheduler.job_outcomes import TaskOutcomes
from scheduler.jobs import Job
from scheduler.triggers import Revision


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """GET /api/audit's filters (each None: any) and page."""

    who: str | None = None
    action: str | None = None
    task_id: int | None = None
    since: float | None = None
    limit: int = 100
    before_id: int | None = None


# Revisions kept per task; older ones go in the commit that adds a newer one.
REVISIONS_PER_TASK = 1000


class JobStoreError(Exception):
    """The job database cannot be used."""


class JobStoreClosed(JobStoreError):
    """The store was closed (or never opened); nothing was written."""


class NameTaken(JobStoreError):
    """A channel by that name is already stored."""


class Fenced(JobStoreError):
    """A fired job's record refused: the node that made it no longer holds the leader lease."""


class FireTaken(JobStoreError):
    """A fired job's record refused: the fire (its key) is already recorded, by another job.

    Not a failure of the job: the fire runs, as that other job (with ``--db``,
    made by another node).  Here, so the dispatcher can tell it apart without
    loading the PostgreSQL backend.
    """

class Disowned(JobStoreError):
    """A job's record refused: another node manages the job now (it took the job
    over at its worker's hello, or the leader's sweep ended it), so this node's
    view of it is stale and the job leaves this node quietly."""


@dataclass(frozen=True, slots=True)
class Put:
    """One job record to store whole, as the backend's column values."""

    job_id: int
    final: bool
    row: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a job's output."""

    job_id: int
    seq: int
    stream: str
    data: str


@dataclass(frozen=True, slots=True)
class NewRevision:
    """One task revision to add, as the backend's column values."""

    task_id: int
    row: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class NewAuditEntry:
    """One audit log entry to add (scheduler/audit.py), as the backend's column values."""

    row: tuple[object, ...]


# -- the alert outbox and its channels (scheduler/alert_outbox.py) -------------


@dataclass(frozen=True, slots=True)
class NewAlerts:
    """Alerts to add to the outbox, as the backend's column values (``ALERT_FIELDS`` but the
    id and delivery state); one whose (key, channel) is already kept is ignored."""

    rows: tuple[tuple[object, ...], ...]


@dataclass(frozen=True, slots=True)
class AlertsQueued:
    """What a ``NewAlerts`` came to: rows added, rows refused for a full outbox, pending after."""

    added: int
    refused: int
    pending: int


@dataclass(frozen=True, slots=True)
class AlertAttempt:
    """What one delivery attempt of an outbox row came to."""

    row_id: int
    state: str
    attempts: int
    next_attempt_at: float
    last_attempt_at: float
    reply: str
    sent_at: float | None


@dataclass(frozen=True, slots=True)
class ChannelChange:
    """Add a channel (refused if its name is taken) or, with no config, remove it."""

    name: str
    config: str | None


Write: TypeAlias = Put | Chunk | NewRevision | NewAlerts | AlertAttempt | ChannelChange | NewAuditEntry
# Per put, alert attempt and channel change, None or the error that refused it;
# per new revision and audit entry, its id or the error; per new alerts, AlertsQueued.
Outcome: TypeAlias = Exception | int | AlertsQueued | None


class Database(Protocol):
    """One database's blocking work for the job history.

    ``open`` and the start-up reads run on the caller's thread; everything
    else runs on the history's one thread, in the order it was asked for.
    The methods mean what the ``JobHistory`` methods of the same names say.
    """

    # What error messages call the database: its file name, never its folder
    # (the messages can reach clients).
    name: str

    def open(self) -> None: ...

    def load_active(self) -> list[tuple[Job, int]]: ...

    def recent_keys(self, since: float) -> set[str]: ...

    def fired(self, task_id: int, scheduled: float) -> bool: ...

    def last_scheduled(self, until: float | None = None) -> dict[int, float]: ...

    def unretried(self) -> list[Job]: ...

    def outcomes(self) -> dict[int, TaskOutcomes]: ...

    def last_at_work(self) -> float | None: ...

    def max_job_id(self) -> int: ...

    def max_task_id(self) -> int: ...

    def row(self, job: Job) -> tuple[object, ...]:
        """The job as column values, made on the reactor thread when it is put:
        later changes to its (mutable) env cannot leak into a queued write."""

    def revision_row(self, revision: Revision) -> tuple[object, ...]:
        """The revision as column values, made on the reactor thread like ``row``."""

    def alert_row(self, alert: Alert) -> tuple[object, ...]:
        """The alert as column values, made on the reactor thread like ``row``."""

    def write_batch(self, writes: Sequence[Write]) -> list[Outcome]:
        """Write a batch in one transaction, in order; an ``Outcome`` per put and new revision.

        A put or revision refused for its own content must not fail the rest
        of the batch; anything raised fails the whole batch, which is then
        undone.  Adding a revision deletes its task's oldest beyond
        ``REVISIONS_PER_TASK`` (or the backend's own bound).
        """

    def get(self, job_id: int) -> Job | None: ...

    def query(
        self,
        status: str | None,
        task_id: int | None,
        worker: str | None,
        limit: int,
        before_id: int | None,
    ) -> list[Job]: ...

    def count(self, status: str | None, task_id: int | None, worker: str | None) -> int: ...

    def newest(self, task_ids: Sequence[int]) -> list[Job]: ...

    def output(self, job_id: int) -> str | None: ...

    def output_parts(self, job_id: int) -> tuple[int, list[tuple[str, str]]] | None: ...

    def revisions(self, task_id: int, limit: int, before_id: int | None) -> list[Revision]: ...

    def audit_row(self, entry: AuditEntry) -> tuple[object, ...]:
        """The audit entry as column values, made on the reactor thread like ``row``."""

    def audit(self, query: AuditQuery) -> tuple[list[AuditEntry], int]:
        """Audit entries matching the query, newest first, and how many match in all (paging aside)."""

    def prune(self, now: float) -> int: ...

    # The alert outbox: what the sender reads, and the channels it sends to.

    def channels(self) -> dict[str, str]:
        """Every channel's stored config (JSON text) by name; at start-up, blocking."""

    def due_alerts(
        self, now: float, limit: int, skip_ids: Sequence[int], skip_channels: Sequence[str]
    ) -> tuple[list[Delivery], float | None, int]:
        """Pending rows due by *now*, oldest first, at most *limit*, leaving out the ids and
        channels given; the next due time of the pending rows not given (None if none); and
        how many rows are pending."""

    def deliveries(
        self, task_id: int | None, state: str | None, channel: str | None, limit: int, before_id: int | None
    ) -> list[Delivery]:
        """Outbox rows matching every filter given, newest (highest id) first."""

    def output_tail(self, job_id: int, max_bytes: int) -> str | None:
        """The end of the job's kept output, at most about *max_bytes*; None if no such job."""

    def close(self) -> None: ...
