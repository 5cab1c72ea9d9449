"""The set of tasks in memory, with id allocation.  Synchronous and pure."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import tzinfo
from itertools import compress, islice
from operator import attrgetter, is_, is_not
from typing import cast

from scheduler import cron
from scheduler.tasks import (
    Task,
    TaskError,
    TaskOptions,
    TaskRecord,
    check_command,
    id_from_job_name,
)


class TaskNotFound(LookupError):
    pass


# A record's id as it holds it (None until given one), read in C.
_record_id = attrgetter("_id")


def _adopted(record: TaskRecord, old: Task | None, task_id: int) -> Task:
    """The task *record* (with id *task_id*) becomes in a book that had *old* for that id."""
    if old is record or (old is not None and old.same_fields(record)):
        # The old task itself, keyed by its own id object by the caller:
        # the record (and its id) can then go, which leaves the memory of a
        # LOAD of unchanged tasks free as a whole.
        return old
    if type(record) is Task:
        # Read with its id known: the record is the task (no copy).
        return record
    return Task(task_id, record.job_name, record.schedule, record.command, record.options, record.extra)


def _adopt_all(records: list[TaskRecord], previous: dict[int, Task]) -> dict[int, Task] | None:
    """``from_records``' book when every record carries an id and no two the
    same one (what a file the scheduler wrote holds), else None.

    A LOAD of a million mostly unchanged tasks gets back, for most lines,
    the very task of that id (the store is handed the book's lookup): those
    are matched, and the dict built, by C loops over the lists; only the
    other records take a Python step (docs/performance.md, "A million
    tasks").
    """
    ids = cast(list[int], list(map(_record_id, records)))
    olds = list(map(previous.get, ids))
    # Until patched below, where a record is not the task of its id.
    tasks = cast(list[Task], list(records))
    for index in compress(range(len(ids)), map(is_not, records, olds)):
        if ids[index] is None:
            return None
        old = olds[index]
        task = tasks[index] = _adopted(records[index], old, ids[index])
        if task is old:
            ids[index] = task.id
    book = dict(zip(ids, tasks, strict=True))
    if len(book) != len(records):
        # Two records named the same id: the later one takes a fresh id,
        # which the record-by-record path decides.
        return None
    return book


# At most this many tasks differing in place before changes_from (or
# from_records) looks task by task (a task removed from the middle moves
# every later one).
_IN_PLACE = 64


def _adopt_in_place(
    records: list[TaskRecord], previous: dict[int, Task]
) -> tuple[dict[int, Task], list[Task], list[Task]] | None:
    """``from_records``' book when the records are the tasks of *previous*,
    in its order, but for at most _IN_PLACE that name the same id at the
    same place (a file edited in a few lines), with what changed
    (``changes_from``'s answer); else None.

    A copy of *previous* with those few put in: no dict built from a
    million records (0.3 s on the reactor for a LOAD of a file with one
    line changed).
    """
    if len(records) != len(previous):
        return None
    pairs = list(
        islice(compress(zip(records, previous.values(), strict=True), map(is_not, records, previous.values())), _IN_PLACE + 1)
    )
    if len(pairs) > _IN_PLACE or any(record.id != old.id for record, old in pairs):
        return None
    book = previous.copy()
    added: list[Task] = []
    removed: list[Task] = []
    for record, old in pairs:
        # The key stays the old task's own id object (see _adopted).
        task = book[old.id] = _adopted(record, old, old.id)
        if task is not old and task != old:
            added.append(task)
            removed.append(old)
    return book, added, removed


def _changes_in_place(mine: dict[int, Task], theirs: dict[int, Task]) -> tuple[list[Task], list[Task]] | None:
    """``changes_from`` when the two books hold the same ids at the same
    places as far as the shorter goes, but for at most _IN_PLACE (a group
    commit's draft: tasks replaced in place, new ones after the rest);
    else None.

    The two are compared in step, pointers only, and what either holds
    beyond the other is new or gone: no lookup per task (two passes of a
    million lookups held the reactor 130-180 ms after every ADD or SAVE).
    A book's key is always its task's id, so the same task at a place is
    the same id there.
    """
    # As far as the shorter goes: what is beyond it is taken below.
    pairs = list(
        islice(
            compress(zip(mine.values(), theirs.values(), strict=False), map(is_not, mine.values(), theirs.values())),
            _IN_PLACE + 1,
        )
    )
    if len(pairs) > _IN_PLACE or any(task.id != was.id for task, was in pairs):
        return None
    changed = [(task, was) for task, was in pairs if task != was]
    added = [task for task, _ in changed]
    removed = [was for _, was in changed]
    added.extend(islice(mine.values(), len(theirs), None))
    removed.extend(islice(theirs.values(), len(mine), None))
    return added, removed


class TaskBook:
    """Tasks by id, in insertion order.

    Ids come from jobNames of the form ``task_<id>``, so a task keeps its id
    through SAVE, LOAD and restarts; a new task takes the next id above any
    this process has seen, so ids are never reused while it runs.
    """

    def __init__(self, tz: tzinfo, tasks: Iterable[Task] = (), high_water: int = 0) -> None:
        self.tz = tz
        self._tasks: dict[int, Task] = {task.id: task for task in tasks}
        self._high_water = max([high_water, *self._tasks])
        # What this book changed from another, when built from it in place
        # (from_records): changes_from's answer for that book.
        self._changes: tuple[weakref.ref[TaskBook], list[Task], list[Task]] | None = None

    @classmethod
    def from_records(
        cls,
        tz: tzinfo,
        records: Iterable[TaskRecord],
        high_water: int = 0,
        reuse: TaskBook | None = None,
    ) -> TaskBook:
        """Build a book from a loaded file.

        A record keeps the id in its jobName unless it is not of the form
        ``task_<n>`` or that id is already taken; those get fresh ids after
        every named one is placed.  A record equal to the task of its id in
        *reuse* (the book being replaced) keeps that Task object, so a LOAD
        of a mostly unchanged file holds one copy of each task, not two.
        """
        if not isinstance(records, list):
            records = list(records)
        previous = reuse._tasks if reuse is not None else {}
        if (
            reuse is not None
            and tz is reuse.tz
            and high_water <= reuse._high_water
            and len(records) == len(previous)
            and all(map(is_, records, previous.values()))
        ):
            # Every record is the task *reuse* holds at that place (a LOAD
            # of an unchanged file): the book would be *reuse* again, so it
            # is, found by one pass in C over the two lists.
            return reuse
        book = cls(tz, high_water=high_water)
        in_place = _adopt_in_place(records, previous) if reuse is not None else None
        adopted: dict[int, Task] | None
        if in_place is not None:
            adopted, added, removed = in_place
            # Known now, and asked twice on the reactor (the commit, the
            # revisions): 85 ms each at a million tasks.  A weak reference:
            # the old book must be free to go.
            book._changes = (weakref.ref(cast(TaskBook, reuse)), added, removed)
        else:
            adopted = _adopt_all(records, previous)
        if adopted is not None:
            # Every record had an id of its own: the whole book in C, but
            # for the records that are not already the task of their id.
            book._tasks = adopted
            if adopted:
                book._high_water = max(book._high_water, max(adopted))
            return book
        tasks = book._tasks
        fresh: list[TaskRecord] = []
        for record in records:
            task_id = record.id
            if task_id is None or task_id in tasks:
                fresh.append(record)
                continue
            task = _adopted(record, previous.get(task_id), task_id)
            # Keyed by the task's own id object (see _adopted).
            tasks[task.id] = task
        if tasks:
            book._high_water = max(book._high_water, max(tasks))
        for record in fresh:
            book._put(Task(book._next_id(), record.job_name, record.schedule, record.command, record.options, record.extra))
        return book

    def changes_from(self, old: TaskBook) -> tuple[list[Task], list[Task]]:
        """What differs from *old*, by value: (tasks new or changed here, tasks of *old* gone or replaced).

        The tasks the same object in both (most, after a LOAD of an
        unchanged file) are passed over in C, without a Python step each: a
        million of them took half a second that way.
        """
        if old is self:
            return [], []
        if self._changes is not None and self._changes[0]() is old:
            return list(self._changes[1]), list(self._changes[2])
        mine, theirs = self._tasks, old._tasks
        in_place = _changes_in_place(mine, theirs)
        if in_place is not None:
            return in_place
        added = [
            task
            for task in compress(mine.values(), map(is_not, mine.values(), map(theirs.get, mine)))
            if task != theirs.get(task.id)
        ]
        replaced = {task.id for task in added}
        removed = [
            task
            for task in compress(theirs.values(), map(is_not, theirs.values(), map(mine.get, theirs)))
            if task.id in replaced or task.id not in mine
        ]
        return added, removed

    def copy(self) -> TaskBook:
        # Tasks are immutable, so a shallow copy is a full snapshot; the
        # dict copied in C (a million tasks: 15 ms, against 150 ms through
        # the constructor, on every group commit).
        book = TaskBook(self.tz, high_water=self._high_water)
        book._tasks = self._tasks.copy()
        return book

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def get(self, task_id: int) -> Task | None:
        return self._tasks.get(task_id)

    @property
    def lookup(self) -> Callable[[int], Task | None]:
        """``get`` without a Python call per lookup (a LOAD makes a million)."""
        return self._tasks.get

    @property
    def high_water(self) -> int:
        return self._high_water

    def reserve_ids(self, up_to: int) -> None:
        """New tasks get ids above *up_to* (ids the job history still names)."""
        self._high_water = max(self._high_water, up_to)

    def find(self, key: str) -> Task:
        """A task by id (``12``) or jobName (``task_12``, ``backup``)."""
        key = key.strip()
        # isdigit() would admit '²', which int() refuses.
        if key.isascii() and key.isdigit() and len(key) <= 18:
            task = self._tasks.get(int(key))
            if task is not None:
                return task
        matches = [task for task in self._tasks.values() if task.job_name == key]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            ids = ", ".join(str(task.id) for task in matches)
            raise TaskError(f"jobName '{key}' is ambiguous (ids {ids}); use the id")
        raise TaskNotFound(f"no task with id or jobName '{key}'")

    def add(
        self,
        schedule: str,
        command: str,
        options: TaskOptions | None = None,
        job_name: str | None = None,
    ) -> Task:
        options = options or TaskOptions()
        # Taken first: H in the schedule hashes the jobName, task_<id> by
        # default.  A failed add leaves the id unused, which ids allow.
        task_id = self._next_id()
        try:
            parsed = cron.parse(schedule, options.tz or self.tz, seed=job_name or f"task_{task_id}")
        except cron.InvalidSchedule as error:
            raise TaskError(str(error)) from None
        check_command(command)
        if job_name is None:
            job_name = f"task_{task_id}"
        else:
            self._check_job_name(job_name, task_id)
        task = Task(task_id, job_name, parsed, command, options)
        self._put(task)
        return task

    def replace(self, task: Task) -> Task:
        """Put *task*, made by ``replacement``, in place of the task with its id."""
        if task.id not in self._tasks:
            raise TaskNotFound(f"no task with id {task.id}")
        self._tasks[task.id] = task
        return task

    def replacement(
        self,
        task_id: int,
        *,
        schedule: str | None = None,
        command: str | None = None,
        options: TaskOptions | None = None,
        job_name: str | None = None,
    ) -> Task:
        """The task *task_id* changed in place, checked like a new task, without changing the book.

        It keeps its id, so its job history stays with it; what is not given
        stays as it was, and unknown keys of its record are kept.  ``replace``
        puts it in the book.
        """
        old = self._tasks.get(task_id)
        if old is None:
            raise TaskNotFound(f"no task with id {task_id}")
        options = options if options is not None else old.options
        expression = schedule if schedule is not None else old.schedule.expression
        try:
            parsed = cron.parse(expression, options.tz or self.tz, seed=job_name or old.job_name)
        except cron.InvalidSchedule as error:
            raise TaskError(str(error)) from None
        if command is not None:
            check_command(command)
        if job_name is not None and job_name != old.job_name:
            self._check_job_name(job_name, task_id)
        return Task(
            task_id,
            job_name if job_name is not None else old.job_name,
            parsed,
            command if command is not None else old.command,
            options,
            old.extra,
        )

    def restore(self, task_id: int, record: TaskRecord) -> Task:
        """Put *record* back as task *task_id* (a revision being restored), replacing it if there."""
        if any(task.job_name == record.job_name and task.id != task_id for task in self._tasks.values()):
            raise TaskError(f"jobName '{record.job_name}' is now used by another task")
        task = Task(task_id, record.job_name, record.schedule, record.command, record.options, record.extra)
        self._put(task)
        return task

    def remove(self, task_id: int) -> Task:
        task = self._tasks.pop(task_id, None)
        if task is None:
            raise TaskNotFound(f"no task with id {task_id}")
        return task

    def clear(self) -> list[Task]:
        removed = list(self._tasks.values())
        self._tasks.clear()
        return removed

    def _check_job_name(self, job_name: str, task_id: int) -> None:
        if not job_name.strip() or len(job_name) > 200 or any(ch.isspace() for ch in job_name):
            raise TaskError("jobName must be 1-200 characters without spaces")
        named_id = id_from_job_name(job_name)
        if named_id is not None and named_id != task_id:
            # task_<n> names carry ids; a mismatched one would change id on reload.
            raise TaskError(f"jobName '{job_name}' is reserved for the task with id {named_id}")
        if any(task.job_name == job_name for task in self._tasks.values()):
            raise TaskError(f"jobName '{job_name}' is already used")

    def _next_id(self) -> int:
        self._high_water += 1
        while self._high_water in self._tasks:
            self._high_water += 1
        return self._high_water

    def _put(self, task: Task) -> None:
        self._tasks[task.id] = task
        if task.id > self._high_water:
            self._high_water = task.id
