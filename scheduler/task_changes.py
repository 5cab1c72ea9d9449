"""Changing tasks, each change kept as a revision (who, when, before and after).

Port 5050 and the REST API change tasks only through :class:`TaskChanges`:
add, edit in place (guarded by an ETag where the caller has one), pause
and resume, skip the next run, remove, clear, load, and restore an earlier
revision.  Each change is applied through :class:`TaskState` (on disk
before it counts); once it is committed, a :class:`Revision` goes to the
job store, where ``GET /api/tasks/{id}/revisions`` reads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from scheduler.alerts import KnownChannels
from scheduler.task_book import TaskBook, TaskNotFound
from scheduler.task_state import TaskState
from scheduler.tasks import (
    OPTION_KEYS,
    Task,
    TaskError,
    TaskOptions,
    etag,
    parse_record,
    split_zone,
    with_new_ping,
)
from scheduler.triggers import Revision, RevisionAction, TriggeredBy

log = Logger()

# Revisions made per reactor turn for a change of many tasks (a LOAD, a CLEAR).
REVISIONS_PER_TURN = 1_000

# What an edit may change besides the options.
EDITABLE = frozenset({"schedule", "command", "jobName"}) | OPTION_KEYS


class StaleTask(Exception):
    """The task changed since the caller read it (its ETag no longer matches)."""


class RevisionStore(Protocol):
    def record_revision(self, revision: Revision) -> Deferred[int]: ...

    def revisions(self, task_id: int, limit: int = 100, before_id: int | None = None) -> Deferred[list[Revision]]: ...


def task_record(task: Task) -> dict[str, Any]:
    """A task as its revisions keep it: its tasks.db record, with its id."""
    record: dict[str, Any] = json.loads(task.line)
    record["id"] = task.id
    return record


class TaskChanges:
    def __init__(
        self,
        state: TaskState,
        revisions: RevisionStore | None,
        clock: IReactorTime,
        channels: KnownChannels | None = None,
    ) -> None:
        self._state = state
        self._revisions = revisions
        self._clock = clock
        # Alert rules may name only channels that exist (when given).
        self._channels = channels
        # Told of every revision as it is recorded (the audit log).
        self.listeners: list[Callable[[Revision], None]] = []

    def check_channels(self, options: TaskOptions) -> None:
        """TaskError naming the first channel an alert rule names that does not exist."""
        if self._channels is None:
            return
        for index, rule in enumerate(options.alerts):
            if rule.channel not in self._channels:
                raise TaskError(f"alerts[{index}].channel: no channel named '{rule.channel}' (POST /api/channels first)")

    @property
    def book(self) -> TaskBook:
        return self._state.book

    # -- one task ------------------------------------------------------------

    def add(
        self,
        schedule: str,
        command: str,
        options: TaskOptions | None = None,
        job_name: str | None = None,
        *,
        by: TriggeredBy,
    ) -> Deferred[Task]:
        if options is not None:
            self.check_channels(options)

        def apply(book: TaskBook) -> tuple[None, Task]:
            plain, zone = split_zone(schedule, options.timezone if options is not None else None)
            zoned = (options or TaskOptions()).evolve(timezone=zone) if zone is not None else options
            return None, book.add(plain, command, zoned, job_name)

        return self._change("add", by, apply)

    def edit(
        self, key: str | int, changes: Mapping[str, Any], *, by: TriggeredBy, if_match: str | None = None
    ) -> Deferred[Task]:
        """Change any of a task's fields in place (``EDITABLE``); it keeps its id."""
        unknown = sorted(set(changes) - EDITABLE)
        if unknown:
            raise TaskError(f"unknown field(s): {', '.join(unknown)}")
        for name in ("schedule", "command", "jobName"):
            if name in changes and not isinstance(changes[name], str):
                raise TaskError(f"{name} must be a string")
        option_changes = with_new_ping({name: value for name, value in changes.items() if name in OPTION_KEYS})
        # As when a task is added: a pause's end and reason come with the
        # pause itself, so a request means the same whatever the task was.
        if (changes.get("pausedUntil") is not None or changes.get("pauseReason") is not None) and changes.get(
            "paused"
        ) is not True:
            raise TaskError("pausedUntil and pauseReason go with paused: true")
        if option_changes.get("paused") is False:
            # Unpaused, as by resume: the pause's end time and reason go with it.
            option_changes.setdefault("pausedUntil", None)
            option_changes.setdefault("pauseReason", None)
        if "schedule" in changes:
            plain, zone = split_zone(changes["schedule"], changes.get("timezone"))
            changes = {**changes, "schedule": plain}
            if zone is not None:
                option_changes["timezone"] = zone

        def apply(book: TaskBook) -> tuple[Task, Task]:
            old = self._find(book, key, None)
            options = old.options.evolve(**option_changes) if option_changes else None
            if "pausedUntil" in option_changes and options is not None:
                self._check_until(options.pausedUntil)
            if "alerts" in option_changes and options is not None:
                self.check_channels(options)
            new = book.replacement(
                old.id,
                schedule=changes.get("schedule"),
                command=changes.get("command"),
                job_name=changes.get("jobName"),
                options=options,
            )
            # A change that would be refused anyway says why, stale or not.
            self._check_version(old, if_match)
            return old, book.replace(new)

        return self._change("edit", by, apply)

    def pause(
        self,
        key: str | int,
        *,
        by: TriggeredBy,
        until: float | None = None,
        reason: str | None = None,
        if_match: str | None = None,
    ) -> Deferred[Task]:
        """Stop a task from firing (until *until*, if given); its next run stays computed."""
        self._check_until(until)
        return self._set_options(
            "pause", key, by, if_match, paused=True, pausedUntil=until, pauseReason=reason
        )

    def resume(self, key: str | int, *, by: TriggeredBy, if_match: str | None = None) -> Deferred[Task]:
        return self._set_options("resume", key, by, if_match, paused=False, pausedUntil=None, pauseReason=None)

    def skip_next(self, key: str | int, skip: bool, *, by: TriggeredBy) -> Deferred[Task]:
        return self._set_options("edit", key, by, None, skipNext=skip)

    def remove(self, key: str | int, *, by: TriggeredBy, if_match: str | None = None) -> Deferred[Task]:
        def apply(book: TaskBook) -> tuple[Task, None]:
            old = self._find(book, key, if_match)
            return book.remove(old.id), None

        return self._change("remove", by, apply)

    def restore(self, task_id: int, revision: Revision, *, by: TriggeredBy) -> Deferred[Task]:
        """Put a task back as *revision* left it (re-adding it, with its id, if removed since)."""
        record = revision.after if revision.after is not None else revision.before
        if revision.task_id != task_id or record is None:
            raise TaskError(f"revision {revision.id} does not hold task {task_id}")
        parsed = parse_record({key: value for key, value in record.items() if key != "id"} | {"id": task_id}, self.book.tz)

        def apply(book: TaskBook) -> tuple[Task | None, Task]:
            return book.get(task_id), book.restore(task_id, parsed)

        return self._change("restore", by, apply)

    # -- every task ------------------------------------------------------------

    def clear(self, *, by: TriggeredBy) -> Deferred[int]:
        def apply(book: TaskBook) -> list[Task]:
            return book.clear()

        def recorded(removed: list[Task]) -> Deferred[int]:
            return self._record_many("clear", by, [(task, None) for task in removed]).addCallback(
                lambda _: len(removed)
            )

        return self._state.edit(apply).addCallback(recorded)

    def load(self, *, by: TriggeredBy) -> Deferred[int]:
        """LOAD: replace the tasks with the file's; a revision for each task it changes."""
        # The book itself, not a copy: a change replaces the book, never
        # edits it, and a million tasks took 0.2 s to copy on the reactor.
        before = self._state.book

        def recorded(count: int) -> Deferred[int]:
            added, removed = self._state.book.changes_from(before)
            gone = {task.id for task in added}
            changes: list[tuple[Task | None, Task | None]] = [(before.get(task.id), task) for task in added]
            changes.extend((old, None) for old in removed if old.id not in gone)
            return self._record_many("load", by, changes).addCallback(lambda _: count)

        return self._state.load().addCallback(recorded)

    def save(self) -> Deferred[int]:
        return self._state.save()

    # -- revisions ---------------------------------------------------------------

    def revisions(self, task_id: int, limit: int = 100, before_id: int | None = None) -> Deferred[list[Revision]]:
        if self._revisions is None:
            return succeed([])
        return self._revisions.revisions(task_id, limit, before_id)

    # -- internals ---------------------------------------------------------------

    def _set_options(
        self, action: RevisionAction, key: str | int, by: TriggeredBy, if_match: str | None, **options: Any
    ) -> Deferred[Task]:
        def apply(book: TaskBook) -> tuple[Task, Task]:
            old = self._find(book, key, if_match)
            return old, book.replace(book.replacement(old.id, options=old.options.evolve(**options)))

        return self._change(action, by, apply)

    def _check_until(self, until: float | None) -> None:
        if until is not None and until <= self._clock.seconds():
            raise TaskError("the time to resume at is already past")

    def _find(self, book: TaskBook, key: str | int, if_match: str | None) -> Task:
        task = book.get(key) if isinstance(key, int) else book.find(key)
        if task is None:
            raise TaskNotFound(f"no task with id {key}")
        self._check_version(task, if_match)
        return task

    def _check_version(self, task: Task, if_match: str | None) -> None:
        if if_match is not None and if_match.strip() not in ("*", etag(task)):
            raise StaleTask(f"task {task.id} has changed since it was read (its ETag is now {etag(task)})")

    def _change(
        self,
        action: RevisionAction,
        by: TriggeredBy,
        apply: Callable[[TaskBook], tuple[Task | None, Task | None]],
    ) -> Deferred[Any]:
        def done(pair: tuple[Task | None, Task | None]) -> Task | None:
            before, after = pair
            if before is None or after is None or before != after:
                self._record(action, by, before, after)
            return after if after is not None else before

        return self._state.edit(apply).addCallback(done)

    def _record_many(
        self, action: RevisionAction, by: TriggeredBy, changes: list[tuple[Task | None, Task | None]]
    ) -> Deferred[None]:
        """A revision for each of many changes (a LOAD, a CLEAR), REVISIONS_PER_TURN a
        reactor turn, each slice once the one before is on disk.

        A LOAD of a million new tasks made its million revisions (and their
        audit entries) in one turn: it held the reactor 64 s and queued
        3.9 GB of writes ahead of the job store's thread.  The store commits
        in order, so the last revision of a slice being recorded means all of
        it is.
        """
        done: Deferred[None] = Deferred()

        def record_slice(start: int) -> None:
            last: Deferred[Any] | None = None
            for before, after in changes[start : start + REVISIONS_PER_TURN]:
                last = self._record(action, by, before, after)
            following = start + REVISIONS_PER_TURN
            if following >= len(changes):
                done.callback(None)
            elif last is None:
                self._clock.callLater(0, record_slice, following)
            else:
                last.addBoth(lambda _: self._clock.callLater(0, record_slice, following))

        record_slice(0)
        return done

    def _record(
        self, action: RevisionAction, by: TriggeredBy, before: Task | None, after: Task | None
    ) -> Deferred[Any] | None:
        """The revision of one change, told to the listeners and recorded; None when nobody keeps it."""
        if self._revisions is None and not self.listeners:
            return None
        task = after if after is not None else before
        assert task is not None
        revision = Revision(
            task_id=task.id,
            at=self._clock.seconds(),
            action=action,
            by=by,
            before=None if before is None else task_record(before),
            after=None if after is None else task_record(after),
        )
        for listener in self.listeners:
            try:
                listener(revision)
            except Exception:
                log.failure("a task change listener failed")
        if self._revisions is None:
            return None
        return self._revisions.record_revision(revision).addErrback(
            lambda failure: log.error(
                "could not record a revision of task {task_id}: {error}",
                task_id=task.id,
                error=failure.getErrorMessage(),
            )
        )
