"""scheduler.task_store_postgres against a real PostgreSQL: the tasks round-trip
as tasks.db's lines, a save writes only what changed, a node that wrote in
between makes a save fail as a conflict (writing nothing), another node
reads what changed since its generation, and a row that cannot be parsed
is refused by id and reason."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import psycopg
import pytest
import pytest_twisted
from psycopg import sql
from twisted.internet.task import Clock

from scheduler.cluster_events import channel, schema_of
from scheduler.cron_engine import CronEngine
from scheduler.task_book import TaskBook
from scheduler.task_state import TaskState
from scheduler.task_store import LoadError, StoreError, TaskConflict
from scheduler.task_store_postgres import PostgresTaskStore
from scheduler.tasks import TaskOptions
from tests.postgres_support import PASSWORD, pg_url, postgres_server  # noqa: F401


def _store(url: str, node: str = "a", reactor: Any = None) -> PostgresTaskStore:
    store = PostgresTaskStore(url, reactor, node=node, tz=UTC)
    store.open()
    return store


def _rows(url: str) -> dict[int, tuple[str | None, int]]:
    with psycopg.connect(url) as conn:
        return {task_id: (line, generation) for task_id, line, generation in conn.execute("SELECT id, line, generation FROM tasks")}


def _book(store: PostgresTaskStore) -> TaskBook:
    book = TaskBook.from_records(UTC, store.load_now())
    book.reserve_ids(store.high_water)
    return book


def test_tasks_round_trip_as_their_tasks_db_lines(pg_url: str) -> None:  # noqa: F811
    store = _store(pg_url)
    try:
        assert store.load_now() == [] and store.generation == 0
        book = TaskBook(UTC)
        book.add("*/5 * * * *", "echo 'hé' \"quoted\"")
        book.add("@daily", "backup", TaskOptions(retries=2, timezone="Europe/Berlin", env={"A": "1"}), job_name="backup")
        store.save_now(list(book))
        assert store.generation == 1
    finally:
        store.close()
    again = _store(pg_url, "b")
    try:
        loaded = _book(again)
        assert [(task.id, task.line) for task in loaded] == [(task.id, task.line) for task in book]
        assert loaded.find("backup").options.retries == 2
        assert again.generation == 1 and again.high_water == 2
    finally:
        again.close()


def test_a_save_writes_only_what_changed_and_a_removal_leaves_a_trace(pg_url: str) -> None:  # noqa: F811
    store = _store(pg_url)
    try:
        book = TaskBook(UTC)
        for number in range(50):
            book.add("@hourly", f"echo {number}")
        store.save_now(list(book))
        book.add("@hourly", "echo new")
        book.replace(book.replacement(7, command="echo seven"))
        book.remove(9)
        store.save_now(list(book))
        rows = _rows(pg_url)
        assert sorted(task_id for task_id, (_, generation) in rows.items() if generation == 2) == [7, 9, 51]
        assert rows[9] == (None, 2)
        assert '"command": "echo seven"' in (rows[7][0] or "")
        # Nothing changed: nothing written, the generation stays.
        store.save_now(list(book))
        assert store.generation == 2
        # A node starting now sees 50 tasks, and no new task takes id 9 again.
        other = _store(pg_url, "b")
        loaded = _book(other)
        other.close()
        assert len(loaded) == 50 and loaded.get(9) is None
        assert loaded.add("@daily", "next").id == 52
    finally:
        store.close()


def test_a_large_save_goes_through_copy_and_reads_back_the_same(pg_url: str) -> None:  # noqa: F811
    store = _store(pg_url)
    try:
        book = TaskBook(UTC)
        for number in range(1500):
            book.add(f"{number % 60} * * * *", f"echo {number}")
        store.save_now(list(book))
        for task_id in range(1, 1201):
            book.replace(book.replacement(task_id, command=f"echo again {task_id}"))
        store.save_now(list(book))
        loaded = _book(_store(pg_url, "b"))
        assert [(task.id, task.line) for task in loaded] == [(task.id, task.line) for task in book]
        assert sum(1 for _, generation in _rows(pg_url).values() if generation == 2) == 1200
    finally:
        store.close()


def test_a_save_after_another_nodes_write_is_a_conflict_and_writes_nothing(pg_url: str) -> None:  # noqa: F811
    a, b = _store(pg_url, "a"), _store(pg_url, "b")
    try:
        a.load_now()
        b_book = _book(b)
        a_book = TaskBook(UTC)
        a_book.add("@daily", "from a")
        a.save_now(list(a_book))
        b_book.add("@daily", "from b")
        with pytest.raises(TaskConflict, match="another node changed the tasks at the same time; nothing was saved"):
            b.save_now(list(b_book))
        assert {line for line, _ in _rows(pg_url).values()} == {a_book.get(1).line}  # type: ignore[union-attr]
        # Once b has read a's change, its own goes through, under a new id.
        delta = b.refresh_now()
        assert delta is not None and [record.command for record in delta.changed] == ["from a"]
        fresh = TaskBook(UTC, [], delta.high_water)
        fresh.add("@daily", "from b")
        b.save_now([*a_book, *fresh])
        assert sorted(_rows(pg_url)) == [1, 2] and b.generation == 2
        # What b read from a was not written again.
        assert [task_id for task_id, (_, generation) in _rows(pg_url).items() if generation == 2] == [2]
    finally:
        a.close()
        b.close()


def test_another_node_reads_the_changes_since_its_generation(pg_url: str) -> None:  # noqa: F811
    a, b = _store(pg_url, "a"), _store(pg_url, "b")
    try:
        book = TaskBook(UTC)
        for command in ("one", "two", "three"):
            book.add("@daily", f"echo {command}")
        a.save_now(list(book))
        assert len(b.load_now()) == 3 and b.generation == 1
        assert b.refresh_now() is not None  # nothing new: an empty delta
        book.remove(2)
        book.replace(book.replacement(3, schedule="@hourly"))
        a.save_now(list(book))
        delta = b.refresh_now()
        assert delta is not None
        assert (delta.generation, delta.removed, [record.id for record in delta.changed]) == (2, [2], [3])
        assert delta.changed[0].schedule.expression == "@hourly"
        # Told of generation 2, which it has: no query at all.
        assert b.refresh_now(seen=2) is None
        # A removal it never saw the task of is no removal for it.
        c = _store(pg_url, "c")
        assert [record.id for record in c.load_now()] == [1, 3]
        c.close()
    finally:
        a.close()
        b.close()


def test_a_save_notifies_the_other_nodes_in_its_transaction(pg_url: str) -> None:  # noqa: F811
    store = _store(pg_url, "a")
    try:
        with psycopg.connect(pg_url, autocommit=True) as listener:
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(schema_of(listener), "tasks"))))
            book = TaskBook(UTC)
            book.add("@daily", "echo hi")
            store.save_now(list(book))
            notes = list(listener.notifies(timeout=5, stop_after=1))
        assert [note.payload for note in notes] == ['{"node":"a","generation":1}']
    finally:
        store.close()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "task 1: not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
        ('{"schedule": "61 * * * *", "command": "x", "jobName": "task_1"}', "task 1: "),
        ('{"schedule": "@daily", "command": "x", "jobName": "task_4"}', "task 1: its record names id 4"),
    ],
)
def test_a_row_that_cannot_be_used_is_refused_by_id_and_reason(pg_url: str, line: str, reason: str) -> None:  # noqa: F811
    store = _store(pg_url)
    try:
        book = TaskBook(UTC)
        book.add("@daily", "echo fine")
        store.save_now(list(book))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE tasks SET line = %s WHERE id = 1", (line,))
        with pytest.raises(LoadError) as caught:
            _store(pg_url, "b").load_now()
        assert str(caught.value).startswith("the tasks in PostgreSQL: " + reason)
        assert PASSWORD not in str(caught.value) and PASSWORD not in caught.value.full_message
        # And a node that was running refuses the refresh, keeping what it had.
        with pytest.raises(LoadError, match="task 1"):
            conn2 = psycopg.connect(pg_url, autocommit=True)
            conn2.execute("UPDATE task_set SET generation = 2")
            conn2.execute("UPDATE tasks SET generation = 2")
            conn2.close()
            store.refresh_now()
        assert store.generation == 1
    finally:
        store.close()


def test_a_lost_connection_is_replaced_and_the_work_tried_again(pg_url: str) -> None:  # noqa: F811
    store = _store(pg_url)

    def end_its_session() -> None:
        conn = store._conn
        assert conn is not None
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (conn.info.backend_pid,))

    try:
        book = TaskBook(UTC)
        book.add("@daily", "echo one")
        store.save_now(list(book))
        # As after a PostgreSQL restart: the next save and refresh go through.
        end_its_session()
        book.add("@daily", "echo two")
        store.save_now(list(book))
        assert sorted(_rows(pg_url)) == [1, 2]
        end_its_session()
        assert store.refresh_now() is not None
        # A database that is gone fails clearly, without the password.
        store._conn = None
        store.url = store.url.replace(f"@127.0.0.1:{psycopg.conninfo.conninfo_to_dict(pg_url)['port']}/", "@127.0.0.1:1/")
        book.add("@daily", "echo three")
        with pytest.raises(StoreError, match=r"could not write the tasks to PostgreSQL: .*cannot connect") as caught:
            store.save_now(list(book))
        assert PASSWORD not in str(caught.value)
    finally:
        store.close()


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
def test_a_lost_answer_to_commit_is_resolved_by_the_writes_token(
    pg_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    committed: bool,
) -> None:
    store = _store(pg_url)
    try:
        book = TaskBook(UTC)
        book.add("@daily", "echo one")
        store.save_now(list(book))
        real_write = store._write

        def write_then_lose_the_answer(conn: psycopg.Connection[Any], *args: Any) -> int:
            if committed:
                real_write(conn, *args)
            store._committing = True  # as if COMMIT had been sent
            conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(store, "_write", write_then_lose_the_answer)
        book.add("@daily", "echo two")
        if committed:
            store.save_now(list(book))
            assert store.generation == 2
        else:
            with pytest.raises(StoreError, match="lost the connection while saving; nothing was saved"):
                store.save_now(list(book))
            assert store.generation == 1
        monkeypatch.undo()
        assert sorted(_rows(pg_url)) == ([1, 2] if committed else [1])
        # Either way the next save needs no refresh: no conflict, and the task once.
        book.add("@daily", "echo three")
        store.save_now(list(book))
        assert [line is not None for line, _ in _rows(pg_url).values()] == [True, True, True]
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_task_state_on_postgresql_applies_another_nodes_changes(reactor: Any, pg_url: str) -> None:  # noqa: F811
    """Two TaskStates on one database, through the stores' threads."""
    states = []
    stores = []
    for node in ("a", "b"):
        store = _store(pg_url, node, reactor)
        store.start()
        stores.append(store)
        states.append(TaskState(_book(store), store, CronEngine(0), Clock()))
    a, b = states
    try:
        await a.edit(lambda book: book.add("@daily", "echo a"))
        # b has not heard yet: its own add conflicts, refreshes, and goes through once.
        added = await b.edit(lambda book: book.add("@daily", "echo b"))
        assert added.id == 2
        assert [task.command for task in b.book] == ["echo a", "echo b"]
        assert await a.refresh(seen=2) == 1
        assert [task.command for task in a.book] == ["echo a", "echo b"]
        assert await a.refresh(seen=2) == 0
    finally:
        for store in stores:
            store.close()
