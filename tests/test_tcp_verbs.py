"""The verb table is the one list of commands: HELP, README, AUTH and queueing follow it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from scheduler.engine import CronEngine
from scheduler.state import TaskState
from scheduler.store import FlatFileTaskStore
from scheduler.taskbook import TaskBook
from scheduler.tcp_commands import HELP, VERBS, TcpCommands, Verb
from scheduler.tcp_protocol import CommandFactory, CommandLineProtocol
from tests.helpers import UTC, InlineReactor, make_state

README = Path(__file__).resolve().parent.parent / "README.md"
TOKEN = "tcp-token-0123456789abcdef"


def readme_commands() -> list[str]:
    """The command words in the first column of the README's port-5050 table."""
    text = README.read_text()
    section = text.split("## The command port (5050)", 1)[1].split("\n## ", 1)[0]
    table = section.split("### Commands and replies", 1)[1]
    return re.findall(r"^\| `([A-Z]+)[ `]", table, re.MULTILINE)


def connect(state: TaskState, clock: Clock, **kw: Any) -> tuple[CommandLineProtocol, StringTransport]:
    commands = TcpCommands(state, state._engine.next_run, lambda: {"tasks": len(state.book)})
    protocol = CommandFactory(commands, clock, **kw).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def sample(verb: Verb) -> bytes:
    """A line running *verb* as a user would type it."""
    arguments = {"ADD": " @daily true", "REMOVE": " 1", "AUTH": " wrong"}
    return f"{verb.word}{arguments.get(verb.word, '')}\n".encode()


def test_every_verb_is_in_the_readme_table_and_nothing_else() -> None:
    listed = readme_commands()
    assert sorted(listed) == sorted(VERBS), "README's port-5050 table and the verb table differ"


def test_help_has_one_line_per_verb_in_table_order(tmp_path: Path) -> None:
    protocol, transport = connect(make_state(tmp_path / "tasks.db"), Clock())
    protocol.dataReceived(b"HELP\n")
    lines = transport.value().decode().splitlines()
    assert lines == [*HELP.splitlines(), "OK"]
    assert [line.split(" ", 1)[0] for line in lines[:-1]] == list(VERBS)
    for verb, line in zip(VERBS.values(), lines, strict=False):
        assert line.startswith(verb.usage + " ") and line.endswith(" " + verb.summary)


@pytest.mark.parametrize("verb", VERBS.values(), ids=list(VERBS))
def test_a_verb_without_a_handler_is_answered_by_the_connection(verb: Verb, tmp_path: Path) -> None:
    protocol, transport = connect(make_state(tmp_path / "tasks.db"), Clock())
    protocol.dataReceived(sample(verb))
    reply = transport.value().decode().splitlines()
    assert reply and not reply[0].startswith("ERR unknown command")
    assert "internal error" not in reply[-1]


@pytest.mark.parametrize("verb", VERBS.values(), ids=list(VERBS))
def test_only_the_open_verbs_run_before_auth(verb: Verb, tmp_path: Path) -> None:
    protocol, transport = connect(make_state(tmp_path / "tasks.db"), Clock(), token=TOKEN)
    protocol.dataReceived(sample(verb))
    reply = transport.value().decode().splitlines()
    refused = bool(reply) and reply[0].startswith("ERR authentication required")
    assert refused != verb.open_before_auth, reply


class ManualPool:
    """A thread pool whose work runs only when the test says so."""

    def __init__(self) -> None:
        self.work: list[tuple[Any, Any, tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, onResult: Any, func: Any, *args: Any) -> None:
        self.work.append((onResult, func, args))

    def run_all(self) -> None:
        while self.work:
            onResult, func, args = self.work.pop(0)
            onResult(True, func(*args))


@pytest.mark.parametrize("verb", VERBS.values(), ids=list(VERBS))
def test_only_the_queueing_verbs_join_a_pending_write(verb: Verb, tmp_path: Path) -> None:
    pool = ManualPool()
    store = FlatFileTaskStore(str(tmp_path / "tasks.db"), UTC, pool, InlineReactor())  # type: ignore[arg-type]
    state = TaskState(TaskBook(UTC), store, CronEngine(0))
    protocol, transport = connect(state, Clock())
    protocol.dataReceived(b"ADD @daily a\n" + sample(verb))
    # While the ADD's write is in flight, a queueing line has been handed
    # over already; any other one waits for the ADD's reply.
    handed_over = not protocol._lines
    assert handed_over == verb.queues
    pool.run_all()
    assert transport.value().decode().startswith("OK id=1 jobName=task_1")
