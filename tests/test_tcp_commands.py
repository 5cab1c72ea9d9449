"""The command port in memory: the verbs and their replies, the verb table, the line protocol."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from scheduler.cron_engine import CronEngine
from scheduler.task_book import TaskBook
from scheduler.task_changes import TaskChanges
from scheduler.task_state import TaskState
from scheduler.task_store import FlatFileTaskStore
from scheduler.tasks import TaskError
from scheduler.tcp_commands import HELP, VERBS, TcpCommands, Verb, split_add
from scheduler.tcp_protocol import CommandFactory
from tests.helpers import UTC, InlineReactor, make_state

README = Path(__file__).resolve().parent.parent / "README.md"


class Client:
    def __init__(self, state: TaskState, clock: Clock, **kw: object) -> None:
        commands = TcpCommands(TaskChanges(state, None, Clock()), state._engine.next_run, lambda: {"tasks": len(state.book)})
        factory = CommandFactory(commands, clock, **kw)  # type: ignore[arg-type]
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> list[str]:
        self.protocol.dataReceived(data)
        return self.lines()

    def lines(self) -> list[str]:
        return self.transport.value().decode().splitlines()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


@pytest.fixture
def state(tmp_path: Path) -> TaskState:
    return make_state(tmp_path / "tasks.db")


@pytest.fixture
def clock() -> Clock:
    return Clock()


# -- the verbs and their replies (tcp_commands.py) ------------------------------


def test_ping(state: TaskState, clock: Clock) -> None:
    client = Client(state, clock)
    assert client.send(b"PING\n") == ["PONG"]


def test_remove_by_id_or_job_name_and_clear(state: TaskState, clock: Clock) -> None:
    client = Client(state, clock)
    client.send(b"ADD @hourly a\nADD @hourly b\nADD @hourly c\n")
    out = client.send(b"REMOVE 2\nREMOVE task_3\nREMOVE 2\nREMOVE\nCLEAR\nSTATUS\n")
    assert out[3:] == [
        "OK removed id=2 jobName=task_2",
        "OK removed id=3 jobName=task_3",
        "ERR no task with id or jobName '2'",
        "ERR REMOVE needs a task id or jobName, e.g. REMOVE 2",
        "OK cleared 1 task",
        "OK tasks=0",
    ]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"ADD 61 * * * * echo x", "ERR invalid schedule '61 * * * *': minute must be 0-59"),
        (b"ADD * * * * *", "ERR ADD needs a schedule and a command"),
        (b"ADD", "ERR ADD needs a schedule and a command"),
        (b"FROB", "ERR unknown command 'FROB' (try HELP)"),
        (b"", "ERR empty line"),
        (b"   ", "ERR empty line"),
        (b"\xff\xfe", "ERR line is not valid UTF-8"),
        (b"PING\x00", "ERR line contains a NUL byte"),
        (b"SAVE /etc/passwd", "ERR SAVE takes no argument"),
        (b"LOAD /etc/passwd", "ERR LOAD takes no argument"),
    ],
)
def test_bad_input_gets_a_clear_error(state: TaskState, clock: Clock, line: bytes, reply: str) -> None:
    client = Client(state, clock)
    out = client.send(line + b"\nPING\n")
    assert out[0].startswith(reply)
    assert out[1] == "PONG"  # and the connection carries on
    assert len(state.book) == 0


def test_help_lists_every_command(state: TaskState, clock: Clock) -> None:
    out = Client(state, clock).send(b"HELP\n")
    for verb in ("ADD", "LIST", "REMOVE", "CLEAR", "STATUS", "SAVE", "LOAD", "PING"):
        assert any(line.startswith(verb) for line in out)
    assert out[-1] == "OK"


@pytest.mark.parametrize(
    ("argument", "schedule", "command"),
    [
        ("* * * * * echo hi", "* * * * *", "echo hi"),
        ("@daily   backup.sh  --all", "@daily", "backup.sh  --all"),
        ("*/10 * * * * 30 echo half", "*/10 * * * * 30", "echo half"),
        ("0 0 * * * 7z a x.7z", "0 0 * * *", "7z a x.7z"),
    ],
)
def test_split_add(argument: str, schedule: str, command: str) -> None:
    assert split_add(argument) == (schedule, command)


def test_split_add_needs_a_command() -> None:
    with pytest.raises(TaskError):
        split_add("*/10 * * * * 30")


def test_list_shows_control_and_bidi_characters_escaped(state: TaskState, clock: Clock, tmp_path: Path) -> None:
    # A command that would clear the operator's screen, or reorder what
    # they read, is shown with its characters escaped; the task keeps them.
    command = "echo \x1b[2J\x1b]0;owned\x07 \u202eexe.txt\u2066 a\tb \x9b \u2028 \\x1b"
    out = Client(state, clock).send(f"ADD @daily {command}\nLIST\n".encode())
    assert out[0].startswith("OK id=1")
    listed = out[1].split("\t")
    assert listed[4] == "echo \\x1b[2J\\x1b]0;owned\\x07 \\u202eexe.txt\\u2066 a\\tb \\x9b \\u2028 \\x1b"
    assert out[2] == "OK 1 task"
    assert [task.command for task in state.book] == [command]
    assert json.loads((tmp_path / "tasks.db").read_text())["command"] == command


def test_list_escapes_job_names_from_the_file(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "tasks.db").write_text(
        json.dumps({"schedule": "@daily", "command": "true", "jobName": "a\x1b[31mb", "id": 4}) + "\n"
    )
    state = make_state(tmp_path / "tasks.db")
    out = Client(state, clock).send(b"LIST\nREMOVE 4\n")
    assert out[0].split("\t")[:2] == ["4", "a\\x1b[31mb"]
    assert out[2] == "OK removed id=4 jobName=a\\x1b[31mb"


def _many_tasks(tmp_path: Path, count: int) -> TaskState:
    with open(tmp_path / "tasks.db", "w") as out:
        for number in range(1, count + 1):
            out.write(json.dumps({"schedule": "@daily", "command": f"echo {number}", "jobName": f"task_{number}"}) + "\n")
    return make_state(tmp_path / "tasks.db")


def test_a_long_list_goes_out_over_several_turns_and_other_clients_are_served_between(
    tmp_path: Path, clock: Clock
) -> None:
    # 5,000 lines are several chunks: one turn sends about 64 KB, the rest
    # follow on later turns, and the line after LIST waits for its end.
    state = _many_tasks(tmp_path, 5000)
    lister = Client(state, clock)
    lister.protocol.dataReceived(b"LIST\nPING\n")
    first = lister.lines()
    assert 0 < len(first) < 5000
    assert "PONG" not in first
    # Another connection is answered while the listing is under way.
    assert Client(state, clock).send(b"PING\n") == ["PONG"]
    for _ in range(20):
        clock.advance(0)
    lines = lister.lines()
    assert len(lines) == 5002
    assert lines[0].startswith("1\ttask_1\t@daily\t") and lines[4999].endswith("\techo 5000")
    assert lines[5000:] == ["OK 5000 tasks", "PONG"]


def test_a_list_waits_while_the_transport_is_full(tmp_path: Path, clock: Clock) -> None:
    state = _many_tasks(tmp_path, 5000)
    lister = Client(state, clock)
    lister.protocol.dataReceived(b"LIST\n")
    producer = lister.transport.producer
    assert producer is not None and lister.transport.streaming
    producer.pauseProducing()
    sent = len(lister.lines())
    for _ in range(20):
        clock.advance(0)
    assert len(lister.lines()) == sent
    producer.resumeProducing()
    for _ in range(20):
        clock.advance(0)
    assert lister.lines()[-1] == "OK 5000 tasks"
    assert lister.transport.producer is None


def test_a_list_stops_when_the_connection_goes(tmp_path: Path, clock: Clock) -> None:
    state = _many_tasks(tmp_path, 5000)
    lister = Client(state, clock)
    lister.protocol.dataReceived(b"LIST\n")
    producer = lister.transport.producer
    assert producer is not None
    producer.stopProducing()
    sent = len(lister.lines())
    for _ in range(20):
        clock.advance(0)
    assert len(lister.lines()) == sent < 5001
    assert not clock.getDelayedCalls()


# -- the verb table: HELP, README and the protocol follow it --------------------


def readme_commands() -> list[str]:
    """The command words in the first column of the README's port-5050 table."""
    text = README.read_text()
    section = text.split("## The command port (5050)", 1)[1].split("\n## ", 1)[0]
    table = section.split("### Commands and replies", 1)[1]
    return re.findall(r"^\| `([A-Z]+)[ `]", table, re.MULTILINE)


def sample(verb: Verb) -> bytes:
    """A line running *verb* as a user would type it."""
    arguments = {"ADD": " @daily true", "REMOVE": " 1", "AUTH": " wrong"}
    return f"{verb.word}{arguments.get(verb.word, '')}\n".encode()


def test_every_verb_is_in_the_readme_table_and_nothing_else() -> None:
    assert sorted(readme_commands()) == sorted(VERBS), "README's port-5050 table and the verb table differ"


def test_help_has_one_line_per_verb_in_table_order(state: TaskState, clock: Clock) -> None:
    lines = Client(state, clock).send(b"HELP\n")
    assert lines == [*HELP.splitlines(), "OK"]
    assert [line.split(" ", 1)[0] for line in lines[:-1]] == list(VERBS)
    for verb, line in zip(VERBS.values(), lines, strict=False):
        assert line.startswith(verb.usage + " ") and line.endswith(" " + verb.summary)


@pytest.mark.parametrize("verb", VERBS.values(), ids=list(VERBS))
def test_a_verb_without_a_handler_is_answered_by_the_connection(verb: Verb, state: TaskState, clock: Clock) -> None:
    reply = Client(state, clock).send(sample(verb))
    assert reply and not reply[0].startswith("ERR unknown command")
    assert "internal error" not in reply[-1]


# -- the line protocol: framing, order, closing (tcp_protocol.py) ---------------


def test_one_shot_connection_closes_after_linger(state: TaskState, clock: Clock) -> None:
    client = Client(state, clock, linger=0.3)
    client.send(b"PING\n")
    assert not client.closed
    clock.advance(0.29)
    assert not client.closed
    clock.advance(0.02)
    assert client.closed


def test_half_close_answers_then_closes_at_once(state: TaskState, clock: Clock) -> None:
    client = Client(state, clock)
    client.protocol.dataReceived(b"PING\nSTATUS")
    client.protocol.readConnectionLost()
    assert client.lines() == ["PONG", "OK tasks=0"]
    assert client.closed


def test_pipelined_commands_answer_in_order(state: TaskState, clock: Clock, tmp_path: Path) -> None:
    client = Client(state, clock)
    lines = client.send(b"ADD * * * * * echo Hello every minute!\r\nadd @daily   echo  two  spaces\nLIST\nPING\n")
    assert lines[0].startswith("OK id=1 jobName=task_1 next=")
    assert lines[1].startswith("OK id=2 jobName=task_2 next=")
    assert lines[2].split("\t")[:3] == ["1", "task_1", "* * * * *"]
    assert lines[2].split("\t")[4] == "echo Hello every minute!"
    assert lines[3].split("\t")[4] == "echo  two  spaces"
    assert lines[4:] == ["OK 2 tasks", "PONG"]
    assert (tmp_path / "tasks.db").read_text().count("\n") == 2


def test_overlong_line_resynchronises(state: TaskState, clock: Clock) -> None:
    client = Client(state, clock, max_line=100)
    out = client.send(b"ADD * * * * * " + b"x" * 500)
    assert out == ["ERR line longer than 100 bytes (ignored up to the next newline)"]
    out = client.send(b"y" * 500 + b"\nPING\n")
    assert out[1:] == ["PONG"]
    assert len(state.book) == 0


def test_http_is_closed_before_anything_runs(state: TaskState, clock: Clock) -> None:
    client = Client(state, clock)
    out = client.send(b"POST / HTTP/1.1\r\nHost: localhost:5050\r\n\r\nADD * * * * * touch /tmp/pwned\n")
    assert out == []
    assert client.closed
    assert len(state.book) == 0


def test_session_stays_open_until_quit_or_idle(state: TaskState, clock: Clock) -> None:
    client = Client(state, clock, linger=0.3, idle_timeout=60)
    client.send(b"session\n")
    clock.advance(10)
    assert client.send(b"PING\n")[-1] == "PONG"
    clock.advance(59)
    assert not client.closed
    assert client.send(b"QUIT\n")[-1] == "OK bye"
    assert client.closed
    other = Client(state, clock, idle_timeout=60)
    other.send(b"SESSION\n")
    clock.advance(61)
    assert other.closed


class ManualPool:
    """A thread pool whose work runs only when the test says so."""

    def __init__(self) -> None:
        self.work: list[tuple[Any, Any, tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, onResult: Any, func: Any, *args: Any) -> None:
        self.work.append((onResult, func, args))

    def run_all(self) -> int:
        count = 0
        while self.work:
            onResult, func, args = self.work.pop(0)
            onResult(True, func(*args))
            count += 1
        return count


def test_piped_changes_share_one_write_and_answer_in_order(tmp_path: Path) -> None:
    pool = ManualPool()
    store = FlatFileTaskStore(str(tmp_path / "tasks.db"), UTC, pool, InlineReactor())  # type: ignore[arg-type]
    state = TaskState(TaskBook(UTC), store, CronEngine(0))
    client = Client(state, Clock())
    client.protocol.dataReceived(b"ADD @daily a\nADD @daily b\nREMOVE 1\nADD @daily c\nLIST\nPING\n")
    assert client.lines() == []  # nothing is acknowledged before it is written
    writes = pool.run_all()
    lines = client.lines()
    assert writes == 2  # the first ADD alone, then the rest together
    assert [line.split(" next=")[0] for line in lines[:4]] == [
        "OK id=1 jobName=task_1",
        "OK id=2 jobName=task_2",
        "OK removed id=1 jobName=task_1",
        "OK id=3 jobName=task_3",
    ]
    assert [line.split("\t")[0] for line in lines[4:6]] == ["2", "3"]
    assert lines[6:] == ["OK 2 tasks", "PONG"]
    assert (tmp_path / "tasks.db").read_text().count("\n") == 2


@pytest.mark.parametrize("verb", VERBS.values(), ids=list(VERBS))
def test_only_the_queueing_verbs_join_a_pending_write(verb: Verb, tmp_path: Path) -> None:
    pool = ManualPool()
    store = FlatFileTaskStore(str(tmp_path / "tasks.db"), UTC, pool, InlineReactor())  # type: ignore[arg-type]
    state = TaskState(TaskBook(UTC), store, CronEngine(0))
    client = Client(state, Clock())
    client.protocol.dataReceived(b"ADD @daily a\n" + sample(verb))
    # While the ADD's write is in flight, a queueing line has been handed
    # over already; any other one waits for the ADD's reply.
    handed_over = not client.protocol._lines
    assert handed_over == verb.queues
    pool.run_all()
    assert client.lines()[0].startswith("OK id=1 jobName=task_1")
