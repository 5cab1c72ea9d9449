"""The audit log: who did what, when and from where, kept in the job store.

Append-only: entries are added (through the job store's group commit, like
task revisions) and only ever removed by age (``--keep-audit-days``).  Each
is also written to the main log as a structured event (``audit_action``,
``audit_who``, ... fields), so a log shipper sees them too.

What is recorded: every change of a task (from the revisions, with before
and after), every manual run, rerun and cancel of a job, every channel
added, removed or tested, the maintenance switch, every change of the
tokens file (names only) and of the secrets (names only), and bursts of
wrong tokens per address (:class:`WrongTokens`, one entry a minute at
most per address).  Never a token or a secret's value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from scheduler.access_tokens import Caller
from scheduler.triggers import Revision, TriggeredBy

log = Logger()

AuditAction = Literal[
    "task.add",
    "task.edit",
    "task.pause",
    "task.resume",
    "task.remove",
    "task.load",
    "task.clear",
    "task.restore",
    "job.run",
    "job.rerun",
    "job.cancel",
    "channel.add",
    "channel.remove",
    "channel.test",
    "maintenance.on",
    "maintenance.off",
    "tokens.change",
    "secrets.change",
    "auth.failed",
]
AUDIT_ACTIONS: tuple[AuditAction, ...] = get_args(AuditAction)

# Wrong tokens from one address are summed up over this many seconds.
WRONG_TOKEN_WINDOW = 60.0
# Addresses followed at once; beyond, the rest of a window counts as one.
MAX_ADDRESSES = 1000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    action: AuditAction
    who: str
    address: str | None = None
    task_id: int | None = None
    job_id: int | None = None
    detail: Mapping[str, Any] | None = None
    id: int | None = None

    def __post_init__(self) -> None:
        if self.action not in AUDIT_ACTIONS:
            raise ValueError(f"audit action must be one of {', '.join(AUDIT_ACTIONS)}, not {self.action!r}")


class AuditStore(Protocol):
    def record_audit(self, entry: AuditEntry) -> Deferred[int]: ...


def who_of(by: TriggeredBy) -> str:
    """The name an author goes by in the audit log: its token or person, else what it was."""
    return by.name or by.kind


# One job's entry among several of a request: task id, job id, detail.
JobEntry = tuple[int | None, int, Mapping[str, Any] | None]


# Seconds without a task change that end a burst of them: its main-log line goes out.
TASK_LINE_QUIET = 0.2


class AuditLog:
    """Adds entries to the store and the main log."""

    def __init__(self, store: AuditStore, clock: IReactorTime) -> None:
        self._store = store
        self._clock = clock
        # Task changes not yet in the main log, by (action, who, address):
        # their task ids; the call that logs them once changes stop coming.
        self._task_lines: dict[tuple[AuditAction, str, str | None], list[int]] = {}
        self._task_lines_call: IDelayedCall | None = None
        self._task_lines_grew = False

    def record(
        self,
        action: AuditAction,
        who: str,
        address: str | None = None,
        *,
        task_id: int | None = None,
        job_id: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        entry = AuditEntry(self._clock.seconds(), action, who, address, task_id, job_id, detail)
        _log_line(
            action,
            who,
            address,
            "".join([f" task {task_id}" if task_id is not None else "", f" job {job_id}" if job_id is not None else ""]),
            task_id=task_id,
            job_id=job_id,
        )
        self._keep(entry)

    def _keep(self, entry: AuditEntry) -> None:
        self._store.record_audit(entry).addErrback(
            lambda failure: log.error(
                "could not record the audit entry {action}: {error}", action=entry.action, error=failure.getErrorMessage()
            )
        )

    def by(self, action: AuditAction, caller: Caller | None, **fields: Any) -> None:
        """An entry for what *caller* did (an HTTP request's or a TCP connection's)."""
        self.record(
            action, caller.who if caller is not None else "anyone", caller.address if caller else None, **fields
        )

    def by_jobs(self, action: AuditAction, caller: Caller | None, entries: list[JobEntry]) -> None:
        """One entry per job of one request (a batch, or target all), and one line in the main log for them all.

        A line per job would cost more than the job itself in a batch of
        hundreds; the store keeps every entry all the same.
        """
        if len(entries) == 1:
            task_id, job_id, detail = entries[0]
            self.by(action, caller, task_id=task_id, job_id=job_id, detail=detail)
            return
        who = caller.who if caller is not None else "anyone"
        address = caller.address if caller is not None else None
        at = self._clock.seconds()
        job_ids = [job_id for _, job_id, _ in entries]
        log.info(
            "audit: {audit_action} by {audit_who}{audit_from} jobs {audit_about}",
            audit_action=action,
            audit_who=who,
            audit_address=address,
            audit_jobs=job_ids,
            audit_from=f" from {address}" if address else "",
            audit_about=_id_ranges(job_ids),
        )
        for task_id, job_id, detail in entries:
            self._keep(AuditEntry(at, action, who, address, task_id, job_id, detail))

    def revision(self, revision: Revision) -> None:
        """A task change (a TaskChanges listener), with its before and after.

        Each is an entry in the store; the main log has one line per action
        and author for a burst of changes (it ends when none came for
        TASK_LINE_QUIET seconds), naming their tasks: a LOAD of a million
        new tasks, recorded a slice per turn, wrote a million lines, 100 MB.
        """
        by = revision.by
        action: AuditAction = f"task.{revision.action}"  # type: ignore[assignment]
        who = who_of(by)
        detail = {"before": revision.before, "after": revision.after}
        self._keep(AuditEntry(self._clock.seconds(), action, who, by.address, revision.task_id, None, detail))
        self._task_lines.setdefault((action, who, by.address), []).append(revision.task_id)
        if self._task_lines_call is None:
            self._task_lines_call = self._clock.callLater(TASK_LINE_QUIET, self._log_task_lines)
        else:
            self._task_lines_grew = True

    def _log_task_lines(self) -> None:
        if self._task_lines_grew:  # still coming: wait for a quiet moment
            self._task_lines_grew = False
            self._task_lines_call = self._clock.callLater(TASK_LINE_QUIET, self._log_task_lines)
            return
        self.flush()

    def flush(self) -> None:
        """Write the task changes' lines now (at the latest when the scheduler stops)."""
        if self._task_lines_call is not None and self._task_lines_call.active():
            self._task_lines_call.cancel()
        self._task_lines_call = None
        self._task_lines_grew = False
        lines, self._task_lines = self._task_lines, {}
        for (action, who, address), task_ids in lines.items():
            if len(task_ids) == 1:
                _log_line(action, who, address, f" task {task_ids[0]}", task_id=task_ids[0])
            else:
                _log_line(action, who, address, f" tasks {_id_ranges(task_ids)}")


def _log_line(
    action: AuditAction, who: str, address: str | None, about: str, *, task_id: int | None = None, job_id: int | None = None
) -> None:
    """An audit line in the main log: "audit: <action> by <who>[ from <address>]<about>", as a structured event."""
    log.info(
        "audit: {audit_action} by {audit_who}{audit_from}{audit_about}",
        audit_action=action,
        audit_who=who,
        audit_address=address,
        audit_task=task_id,
        audit_job=job_id,
        audit_from=f" from {address}" if address else "",
        audit_about=about,
    )


def _id_ranges(ids: list[int]) -> str:
    """``1-100, 205``: a request's job ids are mostly consecutive."""
    spans: list[list[int]] = []
    for number in ids:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in spans)


class WrongTokens:
    """Wrong tokens, summed up per address: one ``auth.failed`` entry per burst.

    The first wrong token from an address opens a window of
    WRONG_TOKEN_WINDOW seconds; when it closes, one entry says how many came
    and on which port.  A flood costs one entry a minute per address.
    """

    def __init__(self, audit: AuditLog, clock: IReactorTime, window: float = WRONG_TOKEN_WINDOW) -> None:
        self._audit = audit
        self._clock = clock
        self._window = window
        self._counts: dict[tuple[str, str], tuple[int, float]] = {}
        self._timer: IDelayedCall | None = None

    def failed(self, port: str, address: str | None) -> None:
        key = (port, address or "?")
        count, first = self._counts.get(key, (0, self._clock.seconds()))
        if key not in self._counts and len(self._counts) >= MAX_ADDRESSES:
            key = (port, "(many addresses)")
            count, first = self._counts.get(key, (0, first))
        self._counts[key] = (count + 1, first)
        if self._timer is None:
            self._timer = self._clock.callLater(self._window, self.flush)

    def flush(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        counts, self._counts = self._counts, {}
        for (port, address), (count, first) in counts.items():
            self._audit.record(
                "auth.failed",
                "unknown",
                address,
                detail={"port": port, "count": count, "since": first},
            )

    def stop(self) -> None:
        self.flush()
