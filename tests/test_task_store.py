"""tasks.db: the seed's format, ids through jobNames, atomic writes."""

from __future__ import annotations

import json
import os
from datetime import UTC
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from scheduler.cron_engine import CronEngine
from scheduler.task_book import TaskBook, TaskNotFound
from scheduler.task_state import TaskState
from scheduler.task_store import LoadError, StoreError, parse_lines
from scheduler.tasks import TaskError, TaskOptions
from tests.helpers import make_state, make_store, result_of

UTC = UTC
SEED = b'{"schedule": "* * * * *", "command": "echo Hello", "jobName": "task_1"}\n'


def test_seed_file_round_trips_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)
    store = make_store(path)
    book = TaskBook.from_records(UTC, store.load_now())
    store.write_now([task.line for task in book])
    assert path.read_bytes() == SEED
    assert book.find("1").job_name == "task_1"


def test_ids_come_from_job_names_and_are_not_reused() -> None:
    data = (
        b'{"schedule": "@daily", "command": "a", "jobName": "task_12"}\n'
        b'{"schedule": "@daily", "command": "b", "jobName": "backup"}\n'
        b'{"schedule": "@daily", "command": "c", "jobName": "task_3", "owner": "ops"}\n'
    )
    book = TaskBook.from_records(UTC, parse_lines(data, "tasks.db", UTC))
    assert sorted(t.id for t in book) == [3, 12, 13]
    assert book.find("backup").id == 13
    assert book.add("@hourly", "d").id == 14
    # Unknown keys are kept, and custom names remember their id.
    assert json.loads(book.find("3").line)["owner"] == "ops"
    assert json.loads(book.find("backup").line)["id"] == 13


def test_duplicate_job_names_get_fresh_ids_and_need_the_id() -> None:
    data = SEED + SEED
    book = TaskBook.from_records(UTC, parse_lines(data, "tasks.db", UTC))
    assert sorted(t.id for t in book) == [1, 2]
    with pytest.raises(TaskError, match="ambiguous"):
        book.find("task_1")


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        (SEED + b'{"schedule": "* * * * *", "comm', 2, "not valid JSON"),
        (SEED + b'{"schedule": "61 * * * *", "command": "x", "jobName": "a"}\n', 2, "minute must be 0-59"),
        (b"\n" + SEED + b'{"schedule": "* * * * *", "jobName": "a"}\n', 3, "missing key 'command'"),
        (b"[1, 2]\n", 1, "expected a JSON object"),
        (b'{"schedule": "* * * * *", "command": "\xff", "jobName": "a"}\n', 1, "not UTF-8"),
        (b'{"schedule": "* * * * *", "command": "x", "jobName": "a", "retries": -1}\n', 1, "retries"),
    ],
)
def test_bad_lines_are_named(data: bytes, line: int, reason: str) -> None:
    with pytest.raises(LoadError) as caught:
        parse_lines(data, "tasks.db", UTC)
    assert caught.value.line == line
    assert reason in str(caught.value)
    assert str(caught.value).startswith(f"tasks.db, line {line}: ")


def test_failed_fsync_or_rename_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    for store in (make_store(path, fsync=broken), make_store(path, replace=broken)):
        with pytest.raises(StoreError, match="No space left"):
            store.write_now(["{}"])
        assert path.read_bytes() == SEED
        assert os.listdir(tmp_path) == ["tasks.db"]


def test_changes_are_on_disk_before_they_are_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    state = make_state(path)
    task = result_of(state.edit(lambda book: book.add("* * * * *", "echo Hello")))
    assert path.read_bytes() == SEED
    assert task.id == 1
    result_of(state.edit(lambda book: book.remove(1)))
    assert path.read_bytes() == b""


def test_a_failed_write_changes_nothing_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)
    fail = [True]

    def fsync(fd: int) -> None:
        if fail[0]:
            raise OSError(5, "Input/output error")

    state = make_state(path, fsync=fsync)
    outcome = result_of(state.edit(lambda book: book.add("@daily", "x")))
    assert isinstance(outcome.value, StoreError)
    assert [t.id for t in state.book] == [1]
    assert path.read_bytes() == SEED
    fail[0] = False
    # Task 2 was never acknowledged, so its id is free again.
    assert result_of(state.edit(lambda book: book.add("@daily", "x"))).id == 2


def test_load_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    state = make_state(path)
    result_of(state.edit(lambda book: book.add("@daily", "keep me")))
    path.write_bytes(SEED + b"not json\n")
    outcome = result_of(state.load())
    assert "line 2" in str(outcome.value)
    assert [t.command for t in state.book] == ["keep me"]
    path.write_bytes(SEED)
    assert result_of(state.load()) == 1
    assert [t.command for t in state.book] == ["echo Hello"]


def test_load_trims_the_heap_on_the_next_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The records a LOAD parsed are freed only when the load's callbacks
    # unwind; trimming before that would keep them resident.
    trims: list[float] = []
    clock = Clock()
    monkeypatch.setattr("scheduler.task_state.release_free_memory", lambda: trims.append(clock.seconds()))
    (tmp_path / "tasks.db").write_text('{"id": 1, "jobName": "a", "schedule": "@daily", "command": "true"}\n')
    state = TaskState(TaskBook(UTC), make_store(tmp_path / "tasks.db"), CronEngine(0), clock)
    loaded = state.load()
    assert loaded.called and trims == []
    clock.advance(0)
    assert trims == [0.0]


def test_invalid_changes_fail_alone(tmp_path: Path) -> None:
    state = make_state(tmp_path / "tasks.db")
    bad = result_of(state.edit(lambda book: book.remove(99)))
    assert isinstance(bad.value, TaskNotFound)
    with pytest.raises(TaskError, match="target"):
        TaskOptions.from_mapping({"target": "nowhere"})


# -- the plain-line path and LOAD's reuse (docs/performance.md, "A million tasks")


def _plain(number: int, schedule: str = "*/5 * * * *", command: str | None = None) -> str:
    return json.dumps({"schedule": schedule, "command": command or f"echo {number}", "jobName": f"task_{number}"})


def test_plain_lines_read_as_the_json_path_reads_them() -> None:
    # The same line as the seed's three keys (the fast path) and with a
    # space more (json.loads): the same task, and the same line written back.
    lines = [_plain(1), _plain(2, "H H * * *"), '{"schedule": "@daily", "command": "a\\u00e9 b", "jobName": "x"}']
    fast = parse_lines("\n".join(lines).encode(), "tasks.db", UTC)
    slow = parse_lines("\n".join(line.replace("{", "{ ", 1) for line in lines).encode(), "tasks.db", UTC)
    assert fast == slow
    book = TaskBook.from_records(UTC, fast)
    assert [task.line for task in book] == [*lines[:2], json.dumps({**json.loads(lines[2]), "id": 3}, ensure_ascii=False)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"schedule": "61 * * * *", "command": "x", "jobName": "task_1"}', "minute must be 0-59"),
        ('{"schedule": "* * * * *", "command": " ", "jobName": "task_1"}', "command is empty"),
        ('{"schedule": "* * * * *", "command": "x", "jobName": " "}', "jobName must be a non-empty string"),
        ('{"schedule": "* * * * *", "command": "x", "jobName": "task_0"}', "id must be a positive integer"),
    ],
)
def test_plain_lines_fail_as_the_json_path_fails(line: str, reason: str) -> None:
    for text in (line, line.replace("{", "{ ", 1)):
        with pytest.raises(LoadError) as caught:
            parse_lines(f"{_plain(1)}\n\n{text}\n".encode(), "tasks.db", UTC)
        assert caught.value.line == 3 and reason in caught.value.reason


def test_a_load_hands_back_the_known_tasks_a_line_still_describes() -> None:
    data = "\n".join([_plain(1), _plain(2), _plain(3)]).encode()
    book = TaskBook.from_records(UTC, parse_lines(data, "tasks.db", UTC))
    changed = "\n".join([_plain(1), _plain(2, command="echo changed"), _plain(3, "*/10 * * * *")]).encode()
    again = parse_lines(changed, "tasks.db", UTC, known=book.get)
    assert again[0] is book.get(1)
    assert again[1] is not book.get(2) and again[1].command == "echo changed"
    assert again[2] is not book.get(3) and again[2].schedule.expression == "*/10 * * * *"
    reloaded = TaskBook.from_records(UTC, again, reuse=book)
    assert reloaded.get(1) is book.get(1) and reloaded.get(2) is again[1]


def test_a_name_with_leading_zeros_is_not_the_known_task_of_that_id() -> None:
    book = TaskBook.from_records(UTC, parse_lines(_plain(1).encode(), "tasks.db", UTC))
    line = json.dumps({"schedule": "*/5 * * * *", "command": "echo 1", "jobName": "task_01"})
    (record,) = parse_lines(line.encode(), "tasks.db", UTC, known=book.get)
    assert record is not book.get(1) and record.job_name == "task_01" and record.id == 1


@pytest.mark.parametrize(
    "name",
    ["task_1", "task_0", "task_007", "task_", "task_12\n", "task_12\n\n", "task_1x", "Task_1", "task_\u0661", "task_\u00b2",
     "task_" + "9" * 18, "task_" + "9" * 19, "backup", " task_1", "task_1 "],
)
def test_id_from_job_name_reads_what_job_name_matches(name: str) -> None:
    from scheduler.tasks import JOB_NAME, id_from_job_name

    match = JOB_NAME.match(name)
    assert id_from_job_name(name) == (int(match.group(1)) if match else None)


# -- LOAD of a million: pieces, the book's C paths, the collector ----------------


def test_a_file_read_in_pieces_numbers_its_lines_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pieces of a few lines each: lines, blank lines and a bad line at the
    # piece boundaries read and fail as in one piece.
    lines = [_plain(1), "", _plain(2, "H H * * *"), '{"schedule": "@daily", "command": "a\\u00e9", "jobName": "x"}', _plain(3)]
    data = "\n".join(lines).encode()
    whole = parse_lines(data, "tasks.db", UTC)
    for piece in (1, 10, 70, 200):
        monkeypatch.setattr("scheduler.task_store._PIECE", piece)
        assert parse_lines(data, "tasks.db", UTC) == whole
        assert parse_lines(data + b"\n", "tasks.db", UTC) == whole
        with pytest.raises(LoadError) as caught:
            parse_lines(data + b"\n\n{not json\n" + _plain(4).encode(), "tasks.db", UTC)
        assert caught.value.line == 7
        with pytest.raises(LoadError) as caught:
            parse_lines(data + b"\n" + b'{"schedule": "@daily", "command": "\xff", "jobName": "y"}\n', "tasks.db", UTC)
        assert caught.value.line == 6 and "not UTF-8" in caught.value.reason
    assert len(whole) == 4



def _plain_file(lines: list[str]) -> bytes:
    return "\n".join(lines).encode() + b"\n"


# Ids above the small ints Python keeps one object each of, so the book's
# keys can be told apart by identity.
BIG = 10**6


@pytest.mark.parametrize(
    "edit",
    ["unchanged", "edited in place", "changed", "reordered", "duplicate", "unnamed"],
)
def test_the_c_paths_of_from_records_build_what_the_record_by_record_path_builds(
    edit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = json.dumps({"schedule": "@daily", "command": "x", "jobName": f"task_{BIG + 3}", "retries": 2})
    lines = [_plain(BIG + 1), _plain(BIG + 2), options, _plain(BIG + 4)]
    book = TaskBook.from_records(UTC, parse_lines(_plain_file(lines), "tasks.db", UTC), 7)
    edited = {
        "unchanged": lines,
        "edited in place": [lines[0], _plain(BIG + 2, command="echo new"), options, lines[3]],
        "changed": [_plain(BIG + 5), _plain(BIG + 2, command="echo new"), options, _plain(BIG + 1)],
        "reordered": [lines[1], lines[0], *lines[2:]],
        "duplicate": [*lines, lines[0]],
        "unnamed": [*lines, '{"schedule": "@daily", "command": "y", "jobName": "backup"}'],
    }[edit]
    data = _plain_file(edited)

    def loaded() -> TaskBook:
        records = parse_lines(data, "tasks.db", UTC, known=book.lookup)
        return TaskBook.from_records(UTC, records, book.high_water, reuse=book)

    fast = loaded()
    monkeypatch.setattr("scheduler.task_book._adopt_in_place", lambda records, previous: None)
    monkeypatch.setattr("scheduler.task_book._adopt_all", lambda records, previous: None)
    monkeypatch.setattr("scheduler.task_book.is_", lambda a, b: False)
    slow = loaded()
    assert slow is not book
    assert [task.line for task in fast] == [task.line for task in slow]
    assert fast.high_water == slow.high_water
    # The same objects: a task unchanged is the book's own, keyed by its own id.
    for mine, theirs in zip(fast, slow, strict=True):
        assert (mine is book.get(mine.id)) == (theirs is book.get(theirs.id))
    for key in fast._tasks:
        old = book.get(key)
        if fast.get(key) is old and old is not None:
            assert key is old.id
    assert fast.changes_from(book) == slow.changes_from(book)


def test_a_load_of_an_unchanged_file_of_plain_lines_gives_the_book_back() -> None:
    data = _plain_file([_plain(1), _plain(2)])
    book = TaskBook.from_records(UTC, parse_lines(data, "tasks.db", UTC))
    again = TaskBook.from_records(UTC, parse_lines(data, "tasks.db", UTC, known=book.lookup), book.high_water, reuse=book)
    assert again is book and again.changes_from(book) == ([], [])
    # In another order, or above another high water, it is a new book.
    swapped = _plain_file([_plain(2), _plain(1)])
    records = parse_lines(swapped, "tasks.db", UTC, known=book.lookup)
    assert TaskBook.from_records(UTC, records, book.high_water, reuse=book) is not book
    assert TaskBook.from_records(UTC, records[::-1], book.high_water + 5, reuse=book).high_water == book.high_water + 5


def test_a_load_takes_the_tasks_out_of_the_collectors_passes(tmp_path: Path) -> None:
    import gc

    from scheduler.memory import settle_after_loads

    path = tmp_path / "tasks.db"
    path.write_bytes(_plain_file([_plain(1), _plain(2)]))
    state = make_state(path)
    before = gc.get_freeze_count()
    try:
        # Off (as in tests and any process but the scheduler's): nothing frozen.
        assert result_of(state.load()) == 2
        assert gc.get_freeze_count() == before
        settle_after_loads()
        path.write_bytes(_plain_file([_plain(1), _plain(3)]))
        assert result_of(state.load()) == 2
        assert gc.get_freeze_count() > before
        assert not any(obj is state.book.get(3) for obj in gc.get_objects())
    finally:
        settle_after_loads(False)
        gc.unfreeze()


@pytest.mark.parametrize("edit", ["none", "add", "replace", "remove last", "remove middle", "replace many", "replace and add", "clear", "equal copy"])
def test_changes_found_in_place_are_the_changes_found_task_by_task(edit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    book = TaskBook.from_records(UTC, parse_lines(_plain_file([_plain(n) for n in range(1, 101)]), "tasks.db", UTC))
    draft = book.copy()
    if edit in ("add", "replace and add"):
        draft.add("@daily", "new")
    if edit in ("replace", "replace and add"):
        draft.replace(draft.replacement(50, command="echo changed"))
    if edit == "remove last":
        draft.remove(100)
    if edit == "remove middle":
        draft.remove(50)
    if edit == "replace many":
        for task_id in range(1, 101):
            draft.replace(draft.replacement(task_id, command=f"echo {task_id} changed"))
    if edit == "clear":
        draft.clear()
    if edit == "equal copy":
        # Equal tasks that are other objects: no change.
        draft.replace(draft.replacement(7))
    found = draft.changes_from(book)
    monkeypatch.setattr("scheduler.task_book._changes_in_place", lambda mine, theirs: None)
    assert found == draft.changes_from(book)
    assert ([], []) == book.changes_from(book) == book.copy().changes_from(book)


def test_a_write_that_fails_half_way_through_its_lines_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lines are formatted and written a piece at a time; one that cannot
    # be encoded (a lone surrogate) ends the write with the old file whole.
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)
    store = make_store(path)
    monkeypatch.setattr("scheduler.task_store._WRITE_PIECE", 2)
    with pytest.raises(UnicodeEncodeError):
        store.write_now([_plain(1), _plain(2), _plain(3), '{"command": "\ud800"}'])
    assert path.read_bytes() == SEED
    assert os.listdir(tmp_path) == ["tasks.db"]
    store.write_now(_plain(n) for n in range(1, 6))
    assert path.read_bytes() == _plain_file([_plain(n) for n in range(1, 6)])


def test_changes_known_from_a_load_in_place_are_the_changes_from_that_book_only() -> None:
    book = TaskBook.from_records(UTC, parse_lines(_plain_file([_plain(1), _plain(2), _plain(3)]), "tasks.db", UTC))
    edited = _plain_file([_plain(1), _plain(2, command="echo new"), _plain(3)])
    loaded = TaskBook.from_records(UTC, parse_lines(edited, "tasks.db", UTC, known=book.lookup), book.high_water, reuse=book)
    added, removed = loaded.changes_from(book)
    assert [task.command for task in added] == ["echo new"] and removed == [book.get(2)]
    assert loaded.changes_from(TaskBook(UTC)) == (list(loaded), [])
    assert loaded.changes_from(loaded.copy()) == ([], [])
