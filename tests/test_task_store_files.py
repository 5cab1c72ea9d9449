"""tasks.db as a file: temp files nothing can redirect, modes, what LOAD reads, what errors show."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from scheduler.task_changes import TaskChanges
from scheduler.task_state import TaskState
from scheduler.task_store import LoadError, StoreError
from scheduler.tcp_commands import TcpCommands
from scheduler.tcp_protocol import CommandFactory
from tests.helpers import make_state, make_store, result_of

SEED = b'{"schedule": "* * * * *", "command": "echo Hello", "jobName": "task_1"}\n'


# Every test here creates files under the usual umask (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("usual_umask")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def command(state: TaskState, line: str) -> list[str]:
    commands = TcpCommands(TaskChanges(state, None, Clock()), state._engine.next_run, lambda: {})
    protocol = CommandFactory(commands, Clock()).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(line.encode() + b"\n")
    return transport.value().decode().splitlines()


# -- the temp file --------------------------------------------------------------


def test_a_link_planted_at_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    # A link planted at a predictable temp name (.tasks.db.<pid>.tmp) must
    # not make a write land in the file it points to.
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    planted = tmp_path / f".tasks.db.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    path = tmp_path / "tasks.db"
    make_store(path).write_now(['{"schedule": "@daily", "command": "x", "jobName": "task_1"}'])
    assert victim.read_bytes() == b"precious\n"
    assert not path.is_symlink()
    assert path.read_bytes() == b'{"schedule": "@daily", "command": "x", "jobName": "task_1"}\n'
    assert planted.is_symlink()  # left alone; start-up removes it (below)


def test_temp_files_have_random_names_and_are_private_while_written(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    def replace(source: str, target: str) -> None:
        seen.append((os.path.basename(source), mode(Path(source))))
        os.replace(source, target)

    store = make_store(tmp_path / "tasks.db", replace=replace)
    store.write_now(["{}"])
    store.write_now(["{}"])
    (first, first_mode), (second, second_mode) = seen
    assert first != second
    assert str(os.getpid()) not in first
    for name in (first, second):
        assert name.startswith(".tasks.db.") and name.endswith(".tmp")
    assert first_mode == second_mode == 0o600
    assert os.listdir(tmp_path) == ["tasks.db"]


def test_stale_temps_are_removed_without_following_links(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (tmp_path / ".tasks.db.k3j_x9q2.tmp").write_bytes(b"half a write")
    (tmp_path / ".tasks.db.4242.tmp").write_bytes(b"an old-style name")
    (tmp_path / ".tasks.db.link.tmp").symlink_to(victim)
    (tmp_path / ".tasks.db.folder.tmp").mkdir()
    removed = make_store(path).remove_stale_temps()
    assert sorted(os.path.basename(name) for name in removed) == [
        ".tasks.db.4242.tmp",
        ".tasks.db.k3j_x9q2.tmp",
        ".tasks.db.link.tmp",
    ]
    assert victim.read_bytes() == b"precious\n"
    assert path.read_bytes() == SEED
    assert sorted(os.listdir(tmp_path)) == [".tasks.db.folder.tmp", "tasks.db", "victim"]


# -- modes ----------------------------------------------------------------------


def test_a_new_tasks_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    state = make_state(path)
    result_of(state.edit(lambda book: book.add("@daily", "echo secret")))
    assert mode(path) == 0o600


def test_a_rewrite_keeps_the_mode_the_file_had(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)
    path.chmod(0o640)
    state = make_state(path)
    result_of(state.edit(lambda book: book.add("@daily", "x")))
    assert mode(path) == 0o640
    path.chmod(0o600)
    result_of(state.save())
    assert mode(path) == 0o600


# -- LOAD reads regular files only, and a missing file is an error --------------


def test_load_of_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)
    state = make_state(path)
    path.unlink()
    os.mkfifo(path)
    replies: list[list[str]] = []
    reader = threading.Thread(target=lambda: replies.append(command(state, "LOAD")), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():
        # Unblock a read that waits for a writer (one that closes at once), then fail.
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("LOAD of a FIFO blocked")
    assert replies == [["ERR tasks.db: not a regular file (a FIFO); tasks are read from regular files only"]]
    assert [task.command for task in state.book] == ["echo Hello"]


def test_load_of_a_folder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)
    state = make_state(path)
    path.unlink()
    path.mkdir()
    assert command(state, "LOAD")[0].startswith("ERR tasks.db: ")
    assert len(state.book) == 1


def test_load_of_a_missing_file_is_an_error_and_keeps_the_tasks(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)
    state = make_state(path)
    path.unlink()
    assert command(state, "LOAD") == ["ERR tasks.db: no such file"]
    assert [task.command for task in state.book] == ["echo Hello"]


def test_load_of_a_dangling_link_is_an_error_and_keeps_the_tasks(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)
    state = make_state(path)
    path.unlink()
    path.symlink_to(tmp_path / "gone")
    assert command(state, "LOAD") == ["ERR tasks.db: a symbolic link to a file that does not exist"]
    assert [task.command for task in state.book] == ["echo Hello"]
    # Starting on it fails too, rather than starting empty and replacing the link.
    with pytest.raises(LoadError, match="symbolic link to a file that does not exist"):
        make_store(path).load_now()


def test_a_first_start_without_a_file_has_no_tasks(tmp_path: Path) -> None:
    assert make_store(tmp_path / "tasks.db").load_now() == []


def test_load_through_a_link_to_a_regular_file_still_works(tmp_path: Path) -> None:
    # An operator may keep tasks.db elsewhere and link it.
    real = tmp_path / "elsewhere.db"
    real.write_bytes(SEED)
    path = tmp_path / "tasks.db"
    path.symlink_to(real)
    state = make_state(path)
    assert command(state, "LOAD") == ["OK loaded 1 task"]


# -- error replies name the file, not the server's folders ----------------------


@pytest.fixture
def logged() -> Iterator[list[str]]:
    seen: list[str] = []

    def observe(event: LogEvent) -> None:
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)


def test_error_replies_do_not_show_the_folder(tmp_path: Path, logged: list[str]) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(SEED)
    failing = [False]

    def replace(source: str, target: str) -> None:
        if failing[0]:
            raise OSError(28, "No space left on device")
        os.replace(source, target)

    state = make_state(path, replace=replace)
    path.write_bytes(SEED + b"not json\n")
    (reply,) = command(state, "LOAD")
    assert reply == "ERR tasks.db, line 2: not valid JSON (Expecting value at column 1)"
    failing[0] = True
    (reply,) = command(state, "ADD @daily x")
    assert reply == "ERR could not write tasks.db: No space left on device"
    assert str(tmp_path) not in reply
    # The log says where.
    assert any(f"could not write {path}: No space left on device" in line for line in logged)
    outcome = result_of(state.save())
    assert isinstance(outcome.value, StoreError)
    # Start-up, which only the operator sees, names the whole path.
    with pytest.raises(LoadError) as caught:
        make_store(path).load_now()
    assert str(caught.value).startswith("tasks.db, line 2: ")
    assert caught.value.full_message.startswith(f"{path}, line 2: ")
