"""The committed task set: changes are written to the store before they count.

Every change (ADD, REMOVE, CLEAR, SAVE, LOAD, and the REST equivalents) goes
through one queue.  Changes that arrive while a write is in flight are
applied together to a copy of the task book and written in one go (group
commit), so 100,000 tasks and many clients do not mean one full-file write
per ADD.  Only when the write has succeeded does the copy become the live
book, the cron engine learn of it, and the callers get their answers; a
failed write changes nothing in memory and fails every change in it.

With a store several nodes share (PostgreSQL, ``--db``), a *refresh* is a
change too, queued like the others so it never interleaves with a write:
it applies what the other nodes wrote, and the engine and the listeners see
it as they see any change.  A write that finds another node wrote first
(``TaskConflict``) refreshes and applies its batch again to the fresh tasks,
once; only a second conflict reaches the callers.  SAVE and LOAD then
export to and import from tasks.db (*exports*) instead of the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from scheduler.cron_engine import CronEngine
from scheduler.memory import collect_young, release_free_memory, settle_long_lived
from scheduler.task_book import TaskBook
from scheduler.task_store import SharedTaskStore, TaskConflict, TaskStore, paused_gc
from scheduler.tasks import Task

log = Logger()

T = TypeVar("T")

TaskListener = Callable[[Literal["added", "removed"], Task], None]


@dataclass
class _Change(Generic[T]):
    kind: Literal["edit", "save", "load", "refresh"]
    apply: Callable[[TaskBook], T] | None
    done: Deferred[T] = field(default_factory=Deferred)
    # refresh: the generation a notification named (None: look anyway).
    seen: int | None = None


class TaskState:
    def __init__(
        self,
        book: TaskBook,
        store: TaskStore,
        engine: CronEngine,
        clock: IReactorTime | None = None,
        *,
        exports: TaskStore | None = None,
    ) -> None:
        self._book = book
        self._store = store
        # Where SAVE writes and LOAD reads when that is not the store (the
        # node's tasks.db beside a shared store); None: the store itself.
        self._exports = exports
        self._engine = engine
        # To trim the heap on the turn after a load, once the loaded records
        # are really gone; without a clock, at once.
        self._clock = clock
        self._queue: list[_Change[Any]] = []
        self._running = False
        self.listeners: list[TaskListener] = []
        engine.add_many((task.id, task.schedule) for task in book)

    @property
    def book(self) -> TaskBook:
        """The committed tasks.  Read-only for callers: change through edit()."""
        return self._book

    def edit(self, apply: Callable[[TaskBook], T]) -> Deferred[T]:
        """Run *apply* on a draft of the book, persist, then commit.

        *apply* must raise before touching the draft if the change is
        invalid; its exception fails only its own Deferred.
        """
        return self._enqueue(_Change("edit", apply))

    def save(self) -> Deferred[int]:
        """Write the committed tasks to the store; fires with their count."""
        return self._enqueue(_Change("save", len))

    def load(self) -> Deferred[int]:
        """Replace the tasks with the store's (or the exports'); fires with their count."""
        return self._enqueue(_Change("load", None))

    def refresh(self, seen: int | None = None) -> Deferred[int]:
        """Apply what other nodes wrote to a shared store (nothing if it holds
        generation *seen* already); fires with the number of tasks changed."""
        return self._enqueue(_Change("refresh", None, seen=seen))

    def _enqueue(self, change: _Change[T]) -> Deferred[T]:
        self._queue.append(change)
        if not self._running:
            self._running = True
            Deferred.fromCoroutine(self._drain()).addErrback(self._crashed)
        return change.done

    def _crashed(self, failure: Failure) -> None:
        # Only a bug gets here; keep accepting changes rather than wedge.
        self._running = False
        log.failure("task state writer crashed", failure)

    async def _drain(self) -> None:
        while self._queue:
            # A load waits for the writes queued before it, and vice versa;
            # so do a refresh and an export.
            if self._alone(self._queue[0]):
                change = self._queue.pop(0)
                if change.kind == "load":
                    await self._load(change)
                elif change.kind == "refresh":
                    await self._refresh(change)
                else:
                    await self._export(change)
                continue
            batch: list[_Change[Any]] = []
            while self._queue and not self._alone(self._queue[0]):
                batch.append(self._queue.pop(0))
            await self._write(batch)
        self._running = False

    def _alone(self, change: _Change[Any]) -> bool:
        """Not part of a group commit: reads, and SAVE when it exports."""
        return change.kind in ("load", "refresh") or (change.kind == "save" and self._exports is not None)

    async def _export(self, change: _Change[Any]) -> None:
        assert self._exports is not None
        tasks = list(self._book)
        try:
            await self._exports.save(tasks)
        except Exception as error:
            change.done.errback(Failure(error))
            return
        change.done.callback(len(tasks))

    async def _refresh(self, change: _Change[Any]) -> None:
        try:
            count = await self._refreshed(change.seen)
        except Exception as error:
            change.done.errback(Failure(error))
            return
        change.done.callback(count)

    async def _refreshed(self, seen: int | None = None) -> int:
        """Commit what the shared store's other writers changed; how many tasks."""
        store = self._store
        if not isinstance(store, SharedTaskStore):
            return 0
        delta = await store.refresh(seen)
        if delta is None:
            return 0
        tasks = {task.id: task for task in self._book}
        for task_id in delta.removed:
            tasks.pop(task_id, None)
        for record in delta.changed:
            assert record.id is not None
            new = Task(record.id, record.job_name, record.schedule, record.command, record.options, record.extra)
            old = tasks.get(record.id)
            # An unchanged task keeps its object (the store knows it by identity).
            tasks[record.id] = old if old is not None and old == new else new
        self._commit(TaskBook(self._book.tz, tasks.values(), max(self._book.high_water, delta.high_water)))
        return len(delta.changed) + len(delta.removed)

    async def _load(self, change: _Change[Any]) -> None:
        # Now, while the young generations hold little: what they hold when
        # the new book is settled below stays uncollected.
        collect_young()
        try:
            records = await maybeDeferred((self._exports or self._store).load, known=self._book.lookup)
            with paused_gc():
                book = TaskBook.from_records(self._book.tz, records, self._book.high_water, reuse=self._book)
            if self._exports is not None:
                # An import: the file's tasks replace the store's.
                try:
                    await self._store.save(list(book))
                except TaskConflict:
                    await self._refreshed()
                    with paused_gc():
                        book = TaskBook.from_records(self._book.tz, records, self._book.high_water, reuse=self._book)
                    await self._store.save(list(book))
        except Exception as error:
            change.done.errback(Failure(error))
            return
        del records
        # The store holds exactly this now (it was read from it, or written).
        with paused_gc():
            self._commit(book)
            # The tasks live until the next LOAD: out of the collector's
            # passes, which would otherwise walk all of them (a million:
            # 20-640 ms a pass, scheduler/memory.py).
            settle_long_lived()
        # Trim on the next turn: the Deferred that delivered the records
        # holds them until this coroutine returns, and a trim before they are
        # freed leaves their memory with glibc (docs/performance.md, "tasks.db
        # and memory").  The reply to LOAD does not wait for the trim either.
        if self._clock is not None:
            self._clock.callLater(0, release_free_memory)
        else:
            release_free_memory()
        change.done.callback(len(book))

    async def _write(self, batch: list[_Change[Any]], retried: bool = False) -> None:
        draft = self._book.copy()
        outcomes: list[tuple[_Change[Any], Any]] = []
        failures: list[tuple[_Change[Any], Failure]] = []
        for change in batch:
            try:
                assert change.apply is not None
                outcomes.append((change, change.apply(draft)))
            except Exception as error:
                failures.append((change, Failure(error)))
        for change, failure in failures:
            change.done.errback(failure)
        if not outcomes:
            return
        try:
            await self._store.save(list(draft))
        except TaskConflict:
            conflict = Failure()
            if retried:
                self._fail(outcomes, conflict)
                return
            # Another node wrote first: take its tasks, then apply this
            # batch to them (a new task then takes an id above theirs).
            try:
                await self._refreshed()
            except Exception:
                self._fail(outcomes, Failure())
                return
            await self._write([change for change, _ in outcomes], retried=True)
            return
        except Exception as error:
            self._fail(outcomes, Failure(error))
            return
        self._commit(draft)
        for change, result in outcomes:
            change.done.callback(result)

    @staticmethod
    def _fail(outcomes: list[tuple[_Change[Any], Any]], failure: Failure) -> None:
        for change, _ in outcomes:
            change.done.errback(failure)

    def _commit(self, book: TaskBook) -> None:
        old = self._book
        self._book = book
        # By value, not identity: a LOAD builds a new Task for every line,
        # and an unchanged task must neither leave the engine and come back
        # (a new date iterator for its schedule) nor be announced as removed
        # and added: for a file of unchanged tasks, seconds of work for
        # nothing (docs/performance.md, "tasks.db and memory").
        added, removed = book.changes_from(old)
        self._engine.remove_many(task.id for task in removed)
        self._engine.add_many((task.id, task.schedule) for task in added)
        for listener in self.listeners:
            try:
                for task in removed:
                    listener("removed", task)
                for task in added:
                    listener("added", task)
            except Exception:
                log.failure("task listener {listener!r} failed", listener=listener)
