"""TaskState on a store several nodes share, in memory: a refresh applies the
other nodes' changes as any change (engine, listeners), queued so it never
interleaves with a write; a conflicting write refreshes and applies its
changes again once; SAVE and LOAD export to and import from tasks.db."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from scheduler.cron_engine import CronEngine
from scheduler.task_book import TaskBook, TaskNotFound
from scheduler.task_state import TaskState
from scheduler.task_store import SharedTaskStore, TaskConflict, TaskDelta, parse_lines
from scheduler.tasks import Task, TaskRecord
from tests.helpers import make_store, result_of


class SharedTable:
    """The database: each task's line and the generation that wrote it (None: removed)."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str | None, int]] = {}
        self.generation = 0

    def write(self, lines: dict[int, str | None]) -> int:
        self.generation += 1
        for task_id, line in lines.items():
            self.rows[task_id] = (line, self.generation)
        return self.generation


class MemorySharedStore:
    """One node's view of a SharedTable, with the conflict check of the real one."""

    def __init__(self, table: SharedTable) -> None:
        self.table = table
        self.generation = 0
        self.known: dict[int, str] = {}
        self.saves = 0
        # Set to a Deferred to hold the next save until the test fires it.
        self.hold: Deferred[None] | None = None
        self.refreshes = 0
        # Called before each save: another node writing in between.
        self.before_save: Any = None

    def _records(self, rows: dict[int, str]) -> list[TaskRecord]:
        records = []
        for task_id, line in rows.items():
            (record,) = parse_lines(line.encode(), "table", UTC)
            records.append(TaskRecord(record.job_name, record.schedule, record.command, record.options, record.extra, task_id))
        return records

    def load(self) -> Deferred[list[TaskRecord]]:
        self.known = {task_id: line for task_id, (line, _) in self.table.rows.items() if line is not None}
        self.generation = self.table.generation
        return succeed(self._records(self.known))

    def save(self, tasks: Sequence[Task]) -> Deferred[None]:
        self.saves += 1
        if self.before_save is not None:
            self.before_save()
        if self.table.generation != self.generation:
            return fail(TaskConflict("another node changed the tasks at the same time; nothing was saved, try again"))
        lines: dict[int, str | None] = {task.id: task.line for task in tasks if self.known.get(task.id) != task.line}
        lines.update({task_id: None for task_id in set(self.known) - {task.id for task in tasks}})
        self.generation = self.table.write(lines)
        self.known = {task.id: task.line for task in tasks}
        if self.hold is not None:
            held, self.hold = self.hold, None
            return held
        return succeed(None)

    def refresh(self, seen: int | None = None) -> Deferred[TaskDelta | None]:
        self.refreshes += 1
        if seen is not None and seen <= self.generation:
            return succeed(None)
        rows = {task_id: line for task_id, (line, written) in self.table.rows.items() if written > self.generation}
        changed = self._records({task_id: line for task_id, line in rows.items() if line is not None})
        removed = [task_id for task_id, line in rows.items() if line is None and task_id in self.known]
        for task_id, line in rows.items():
            if line is None:
                self.known.pop(task_id, None)
            else:
                self.known[task_id] = line
        self.generation = self.table.generation
        return succeed(TaskDelta(self.generation, changed, removed, max(self.table.rows, default=0)))


def _node(table: SharedTable, exports: Any = None) -> tuple[TaskState, MemorySharedStore, CronEngine, list[tuple[str, int]]]:
    store = MemorySharedStore(table)
    engine = CronEngine(0)
    book = TaskBook.from_records(UTC, result_of(store.load()))
    state = TaskState(book, store, engine, Clock(), exports=exports)
    heard: list[tuple[str, int]] = []
    state.listeners.append(lambda change, task: heard.append((change, task.id)))
    return state, store, engine, heard


def _add(state: TaskState, command: str) -> Deferred[Task]:
    return state.edit(lambda book: book.add("* * * * *", command))


def test_the_memory_store_is_a_shared_store() -> None:
    assert isinstance(MemorySharedStore(SharedTable()), SharedTaskStore)
    assert not isinstance(make_store(Path("/nonexistent/tasks.db")), SharedTaskStore)


def test_a_refresh_applies_another_nodes_adds_edits_and_removals_like_any_change() -> None:
    table = SharedTable()
    a, _, _, _ = _node(table)
    b, _, b_engine, heard = _node(table)
    for command in ("one", "two", "three"):
        result_of(_add(a, f"echo {command}"))
    assert result_of(b.refresh(seen=3)) == 3
    assert [task.command for task in b.book] == ["echo one", "echo two", "echo three"]
    assert b_engine.next_run(2) is not None
    assert heard == [("added", 1), ("added", 2), ("added", 3)]
    heard.clear()
    unchanged = b.book.get(1)
    result_of(a.edit(lambda book: book.replace(book.replacement(3, command="echo THREE"))))
    result_of(a.edit(lambda book: book.remove(2)))
    assert result_of(b.refresh(seen=5)) == 2
    assert [task.command for task in b.book] == ["echo one", "echo THREE"]
    assert b.book.get(1) is unchanged
    assert b_engine.next_run(2) is None
    assert heard == [("removed", 2), ("removed", 3), ("added", 3)]
    # A notification of what it already has costs nothing and changes nothing.
    assert result_of(b.refresh(seen=5)) == 0
    # Ids of removed tasks are not given out again.
    assert result_of(_add(b, "echo four")).id == 4


def test_a_refresh_waits_for_the_write_before_it_and_the_write_after_it_waits_for_the_refresh() -> None:
    table = SharedTable()
    a, _, _, _ = _node(table)
    b, b_store, _, _ = _node(table)
    held = b_store.hold = Deferred()
    first = _add(b, "echo b1")
    refreshed = b.refresh()
    second = _add(b, "echo b2")
    assert not first.called and b_store.refreshes == 0
    # Meanwhile a writes; b's refresh, once it runs, gets it before b's second add.
    result_of(_add(a, "echo a"))
    held.callback(None)
    assert result_of(first).id == 1
    assert result_of(refreshed) == 1 and b_store.refreshes == 1
    assert result_of(second).id == 3
    assert [task.command for task in b.book] == ["echo b1", "echo a", "echo b2"]
    assert b_store.saves == 2


def test_a_conflicting_write_refreshes_and_applies_its_changes_again_once() -> None:
    table = SharedTable()
    a, _, _, _ = _node(table)
    b, b_store, b_engine, heard = _node(table)
    result_of(_add(a, "echo a"))
    result_of(a.edit(lambda book: book.add("@daily", "echo named", job_name="backup")))
    # b has not heard of either: its changes meet a conflict, then apply to a's tasks.
    added = _add(b, "echo b")
    named = b.edit(lambda book: book.add("@daily", "echo again", job_name="backup"))
    assert result_of(added).id == 3
    failure = result_of(named)
    assert "jobName 'backup' is already used" in failure.getErrorMessage()
    assert [task.command for task in b.book] == ["echo a", "echo named", "echo b"]
    assert sorted(table.rows) == [1, 2, 3]
    assert b_store.saves == 2 and b_engine.next_run(1) is not None
    assert heard == [("added", 1), ("added", 2), ("added", 3)]


def test_a_second_conflict_reaches_the_caller_and_changes_nothing() -> None:
    table = SharedTable()
    b, b_store, _, heard = _node(table)
    # Another node writes before each of b's saves.
    b_store.before_save = lambda: table.write({})
    failure = result_of(_add(b, "echo b"))
    assert failure.check(TaskConflict)
    assert "another node changed the tasks at the same time" in failure.getErrorMessage()
    assert len(b.book) == 0 and heard == [] and table.rows == {}
    assert b_store.saves == 2


def test_a_removal_that_another_node_made_first_fails_alone() -> None:
    table = SharedTable()
    a, _, _, _ = _node(table)
    result_of(_add(a, "echo one"))
    result_of(_add(a, "echo two"))
    b, _, _, _ = _node(table)
    result_of(a.edit(lambda book: book.remove(1)))
    removed = b.edit(lambda book: book.remove(1))
    kept = _add(b, "echo three")
    assert result_of(removed).check(TaskNotFound)
    assert result_of(kept).id == 3
    assert [task.id for task in b.book] == [2, 3]


def test_save_exports_and_load_imports_with_the_file_beside_the_shared_store(tmp_path: Path) -> None:
    table = SharedTable()
    exports = make_store(tmp_path / "tasks.db")
    a, a_store, _, _ = _node(table, exports=exports)
    b, _, _, b_heard = _node(table)
    result_of(_add(a, "echo one"))
    result_of(_add(a, "echo two"))
    result_of(b.refresh())
    saves = a_store.saves
    assert result_of(a.save()) == 2
    # SAVE writes the file, not the database.
    assert a_store.saves == saves
    lines = (tmp_path / "tasks.db").read_text().splitlines()
    assert [json.loads(line)["command"] for line in lines] == ["echo one", "echo two"]
    (tmp_path / "tasks.db").write_text(lines[1] + "\n" + '{"schedule": "@daily", "command": "echo file", "jobName": "task_9"}\n')
    # LOAD replaces the cluster's tasks with the file's.
    assert result_of(a.load()) == 2
    assert [(task.id, task.command) for task in a.book] == [(2, "echo two"), (9, "echo file")]
    assert {task_id for task_id, (line, _) in table.rows.items() if line is not None} == {2, 9}
    result_of(b.refresh())
    assert [(task.id, task.command) for task in b.book] == [(2, "echo two"), (9, "echo file")]
    assert ("removed", 1) in b_heard
    (tmp_path / "tasks.db").unlink()
    with pytest.raises(Exception, match="no such file"):
        result_of(a.load()).raiseException()
    assert len(a.book) == 2


def test_a_load_that_meets_another_nodes_write_replaces_that_too(tmp_path: Path) -> None:
    table = SharedTable()
    (tmp_path / "tasks.db").write_text('{"schedule": "@daily", "command": "echo file", "jobName": "task_5"}\n')
    a, a_store, a_engine, _ = _node(table, exports=make_store(tmp_path / "tasks.db"))
    b, _, _, _ = _node(table)
    result_of(_add(b, "echo b"))
    # a has not heard of b's task: its import conflicts, refreshes, and replaces it too.
    assert result_of(a.load()) == 1
    assert a_store.saves == 2
    assert [(task.id, task.command) for task in a.book] == [(5, "echo file")]
    assert {task_id: line is not None for task_id, (line, _) in table.rows.items()} == {1: False, 5: True}
    assert a_engine.next_run(1) is None and a_engine.next_run(5) is not None
