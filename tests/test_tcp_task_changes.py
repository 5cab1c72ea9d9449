"""Port 5050's task changes in memory: EDIT, PAUSE [until], RESUME, LIST's paused column,
STATUS's paused= and maintenance=, and HELP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from scheduler.task_changes import TaskChanges
from scheduler.task_state import TaskState
from scheduler.tcp_commands import TcpCommands
from scheduler.tcp_protocol import CommandFactory
from scheduler.triggers import TriggeredBy
from tests.helpers import make_state
from tests.test_http_api import Api, close_api, make_api
from tests.test_task_changes import START, MemoryRevisions

# 2026-01-01T00:00:30+00:00 is START: the next minute is 00:01.
NEXT_MINUTE = "2026-01-01T00:01:00+00:00"


class Client:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.path = tmp_path / "tasks.db"
        self.state: TaskState = make_state(self.path, now=START)
        self.revisions = MemoryRevisions()
        self.changes = TaskChanges(self.state, self.revisions, self.clock)
        commands = TcpCommands(self.changes, self.state._engine.next_run, self.status)
        factory = CommandFactory(commands, self.clock)
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(b"SESSION\n")
        self.transport.clear()

    def status(self) -> dict[str, int | str]:
        return {"tasks": len(self.state.book), "paused": sum(task.options.paused for task in self.state.book)}

    def send(self, text: str) -> list[str]:
        self.protocol.dataReceived(text.encode())
        lines = self.transport.value().decode().splitlines()
        self.transport.clear()
        return lines


@pytest.fixture
def client(tmp_path: Path) -> Client:
    made = Client(tmp_path)
    assert made.send("ADD * * * * * echo hi\nADD @hourly echo two\n")[0] == f"OK id=1 jobName=task_1 next={NEXT_MINUTE}"
    return made


def test_edit_changes_schedule_and_command_in_place(client: Client) -> None:
    assert client.send("PAUSE 2\n") == ["OK paused id=2 jobName=task_2"]
    assert client.send("EDIT 1 */10 * * * * echo edited  twice\n") == [
        "OK edited id=1 jobName=task_1 next=2026-01-01T00:10:00+00:00"
    ]
    # By jobName, with seconds; a paused task stays paused through an edit.
    assert client.send("EDIT task_2 @daily echo daily\n") == [
        "OK edited id=2 jobName=task_2 next=2026-01-02T00:00:00+00:00"
    ]
    assert client.send("LIST\n") == [
        "1\ttask_1\t*/10 * * * *\t2026-01-01T00:10:00+00:00\techo edited  twice",
        "2\ttask_2\t@daily\tpaused (next 2026-01-02T00:00:00+00:00)\techo daily",
        "OK 2 tasks",
    ]
    assert [json.loads(line)["jobName"] for line in client.path.read_text().splitlines()] == ["task_1", "task_2"]
    edit = client.revisions.of(1)[0]
    assert edit.action == "edit" and edit.by.kind == "tcp"
    assert edit.before is not None and edit.before["command"] == "echo hi"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("EDIT\n", "ERR EDIT needs a task id or jobName, a schedule and a command, e.g. EDIT 2 */5 * * * * echo hi"),
        ("EDIT 1\n", "ERR EDIT needs a task id or jobName, a schedule and a command, e.g. EDIT 2 */5 * * * * echo hi"),
        ("EDIT 1 * * * * *\n", "ERR EDIT needs a schedule and a command, e.g. EDIT 2 */5 * * * * echo hi (got 5 words)"),
        ("EDIT 1 61 * * * * x\n", "ERR invalid schedule '61 * * * *': minute must be 0-59"),
        ("EDIT 9 * * * * * x\n", "ERR no task with id or jobName '9'"),
    ],
)
def test_edit_errors(client: Client, line: str, reply: str) -> None:
    assert client.send(line) == [reply]
    assert client.send("LIST\n")[0] == f"1\ttask_1\t* * * * *\t{NEXT_MINUTE}\techo hi"


def test_pause_and_resume_with_and_without_until(client: Client) -> None:
    assert client.send("PAUSE 1\nPAUSE task_2 until 2026-01-01T02:00:00+01:00\n") == [
        "OK paused id=1 jobName=task_1",
        "OK paused id=2 jobName=task_2 until=2026-01-01T01:00:00+00:00",
    ]
    assert client.send("LIST\n") == [
        f"1\ttask_1\t* * * * *\tpaused (next {NEXT_MINUTE})\techo hi",
        "2\ttask_2\t@hourly\tpaused (next 2026-01-01T01:00:00+00:00)\techo two",
        "OK 2 tasks",
    ]
    assert client.send("STATUS\n") == ["OK tasks=2 paused=2"]
    assert client.state.book.get(2).options.pausedUntil == START - 30 + 3600  # type: ignore[union-attr]
    assert client.send("RESUME 1\nRESUME task_2\n") == [
        f"OK resumed id=1 jobName=task_1 next={NEXT_MINUTE}",
        "OK resumed id=2 jobName=task_2 next=2026-01-01T01:00:00+00:00",
    ]
    assert client.send("STATUS\n") == ["OK tasks=2 paused=0"]
    assert "paused" not in "".join(client.send("LIST\n"))
    assert [each.action for each in client.revisions.of(2)] == ["resume", "pause", "add"]
    assert all(each.by == TriggeredBy("tcp", name="192.168.1.1") for each in client.revisions.of(2))


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("PAUSE\n", "ERR PAUSE needs a task id or jobName, e.g. PAUSE 2 or PAUSE 2 until 2026-12-24T18:00:00+01:00"),
        (
            "PAUSE 1 for 2h\n",
            "ERR PAUSE takes a task and optionally 'until <ISO time>', e.g. PAUSE 2 until 2026-12-24T18:00:00+01:00",
        ),
        (
            "PAUSE 1 until\n",
            "ERR PAUSE takes a task and optionally 'until <ISO time>', e.g. PAUSE 2 until 2026-12-24T18:00:00+01:00",
        ),
        (
            "PAUSE 1 until tomorrow\n",
            "ERR the time after 'until' must be an ISO 8601 time with its offset, such as 2026-12-24T18:00:00+01:00",
        ),
        (
            # Without an offset the time is ambiguous.
            "PAUSE 1 until 2026-12-24T18:00:00\n",
            "ERR the time after 'until' must be an ISO 8601 time with its offset, such as 2026-12-24T18:00:00+01:00",
        ),
        ("PAUSE 1 until 2025-12-31T23:00:00+00:00\n", "ERR the time to resume at is already past"),
        ("PAUSE 9\n", "ERR no task with id or jobName '9'"),
        ("PAUSE 9 until 2099-01-01T00:00:00+00:00\n", "ERR no task with id or jobName '9'"),
        ("RESUME\n", "ERR RESUME needs a task id or jobName, e.g. RESUME 2"),
        ("RESUME 9\n", "ERR no task with id or jobName '9'"),
    ],
)
def test_pause_and_resume_errors(client: Client, line: str, reply: str) -> None:
    assert client.send(line) == [reply]
    assert client.send("STATUS\n") == ["OK tasks=2 paused=0"]


def test_help_lists_the_new_verbs(client: Client) -> None:
    lines = client.send("HELP\n")
    assert lines[-1] == "OK"
    words = [line.split()[0] for line in lines[:-1]]
    for verb in ("EDIT", "PAUSE", "RESUME"):
        assert verb in words
    assert any(line.startswith("PAUSE <id|jobName> [until <time>]") for line in lines)


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor)
    yield made
    await close_api(made)


@pytest_twisted.ensureDeferred
async def test_status_counts_paused_tasks_and_says_if_maintenance_is_on(api: Api) -> None:
    service = api.service
    commands = TcpCommands(service.changes, service.engine.next_run, service.status)
    assert commands.handle("STATUS") == "OK tasks=0 workers=0 queued=0 running=0 paused=0 maintenance=off"
    assert (await commands.handle("ADD @daily echo a")).startswith("OK id=1 ")  # type: ignore[misc]
    assert (await commands.handle("ADD @daily echo b")).startswith("OK id=2 ")  # type: ignore[misc]
    assert await commands.handle("PAUSE 2") == "OK paused id=2 jobName=task_2"  # type: ignore[misc]
    await service.maintenance.switch(True, 0.0, "test")
    assert commands.handle("STATUS") == "OK tasks=2 workers=0 queued=0 running=0 paused=1 maintenance=on"
    # The TCP change is in the revision history the API shows.
    revisions = await service.changes.revisions(2)
    assert [each.action for each in revisions] == ["pause", "add"]
    assert revisions[0].by.kind == "tcp"
