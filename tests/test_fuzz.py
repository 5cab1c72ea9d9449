"""Bad input, generated: the command port, the REST API and the worker socket.

Everything runs in memory.  The TCP protocol is driven through
``StringTransport`` with the synchronous store of ``tests.helpers`` (a
command's reply is there as soon as its line is); the REST API through
``StubTreq`` and the worker socket by calling ``onMessage`` directly, both
on a real ``SchedulerService`` and the real reactor (the Hypothesis test
runs in a thread and does each step on the reactor, so the stores' threads
can answer in between).

The runs are deterministic (``derandomize``) and small, so the file stays
fast; the properties are what matters:

- the TCP port answers every line exactly once, in the documented shapes,
  and changes the tasks only through well-formed ADD/REMOVE/CLEAR/LOAD,
  while the tasks file always equals what LIST shows (a model checks both);
- the REST API answers JSON errors with a 4xx status, never 500;
- a worker gets an ``error`` for every malformed message and can never
  change a job that is not assigned to it.

The inputs that once broke these properties (non-ASCII digits, huge
numbers, deep nesting, times in milliseconds) have regression tests of
their own at the end of each section.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_twisted  # type: ignore[import-untyped]
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from scheduler.cron import MACROS as CRON_MACROS
from scheduler.jobs import JobStatus
from scheduler.service import SchedulerService
from scheduler.settings import Settings
from scheduler.task_state import TaskState
from scheduler.tcp_commands import VERBS as TCP_VERBS
from scheduler.tcp_commands import TcpCommands, visible
from scheduler.tcp_protocol import CommandFactory
from scheduler.worker_protocol import WorkerServerProtocol
from tests.helpers import UTC, make_state, settled

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

VERBS = set(TCP_VERBS)
MAX_LINE = 512


# -- the command port ---------------------------------------------------------------


class Wire:
    """One in-memory connection to the port-5050 protocol."""

    def __init__(self, state: TaskState, clock: Clock, *, max_line: int = MAX_LINE) -> None:
        commands = TcpCommands(state, state._engine.next_run, lambda: {"tasks": len(state.book)})
        self.protocol = CommandFactory(commands, clock, max_line=max_line).buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self._seen = 0

    def feed(self, data: bytes) -> list[str]:
        """Deliver *data*; return the reply lines it produced."""
        self.protocol.dataReceived(data)
        return self.replies()

    def replies(self) -> list[str]:
        out = self.transport.value()[self._seen :]
        self._seen += len(out)
        text = out.decode("utf-8")
        assert text == "" or text.endswith("\n"), f"a reply without its newline: {text!r}"
        # Only "\n" ends a reply: a command may hold U+2028, \x0b, \x1c ...
        return text.split("\n")[:-1]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


def _tasks(state: TaskState) -> list[tuple[int, str, str, str]]:
    return [(task.id, task.job_name, task.schedule.expression, task.command) for task in state.book]


def _verb(raw: bytes) -> str | None:
    """The command word the server will see in *raw*, or None if undecodable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.strip().split(" ", 1)[0].upper()


# Schedules: fields that are each valid, joined in the ways a person types them.
MINUTES = ["*", "0", "59", "*/5", "1-10", "0,30", "5-50/15"]
HOURS = ["*", "0", "23", "9-17", "*/2", "1,13"]
DAYS = ["*", "1", "15", "28", "1-7", "*/10"]
MONTHS = ["*", "1", "12", "JAN", "jan-mar", "*/3", "Jun,Dec"]
WEEKDAYS = ["*", "0", "7", "MON-FRI", "sun", "1,3,5"]
SECONDS = ["0", "30", "*/10", "0-59/15", "5,35"]
MACROS = [*CRON_MACROS, "@DAILY"]

five_fields = st.tuples(*(st.sampled_from(values) for values in (MINUTES, HOURS, DAYS, MONTHS, WEEKDAYS)))
valid_schedules = st.one_of(
    five_fields.map(list),
    st.tuples(five_fields, st.sampled_from(SECONDS)).map(lambda pair: [*pair[0], pair[1]]),
    st.sampled_from(MACROS).map(lambda macro: [macro]),
)
# Each is rejected whatever command follows it (a sixth field made of cron
# characters is the seconds field, so "61" there is out of range too).
invalid_schedules = st.sampled_from(
    [
        "61 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "* * * FOO *",
        "* * * * XYZ",
        "*-5 * * * *",
        ",1 * * * *",
        "0 0 31 2 *",
        "0 0 30 2 *",
        "* * * * * 60",
        "* * * * * */0",
        "@never",
        "@",
    ]
)
SEPARATORS = st.sampled_from([" ", "  ", "\t", " \t "])
# Command words: anything printable that is not whitespace (str.split's idea of it).
WORD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=8,
)
commands = st.tuples(
    st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True),
    st.lists(st.tuples(SEPARATORS, WORD), max_size=4),
).map(lambda parts: parts[0] + "".join(sep + word for sep, word in parts[1]))


class TcpMachine(RuleBasedStateMachine):
    """The TCP protocol against a model: an ordered dict of tasks and the id counter.

    Every ADD, REMOVE and CLEAR is written to tasks.db before its OK, so the
    file must equal the model after every step, and a scheduler restarted
    on it must LIST the same.
    """

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="fuzz-tcp-"))
        self.path = self.folder / "tasks.db"
        self.clock = Clock()
        self.model: dict[int, tuple[str, str]] = {}
        self.high_water = 0
        self._start()

    def _start(self) -> None:
        self.state = make_state(self.path)
        self.wire = Wire(self.state, self.clock)
        assert self.wire.feed(b"SESSION\n") == ["OK session: the connection stays open; QUIT closes it"]

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def send(self, line: str | bytes) -> list[str]:
        raw = line.encode("utf-8") if isinstance(line, str) else line
        return self.wire.feed(raw + b"\n")

    @initialize()
    def empty_at_first(self) -> None:
        assert self.send("LIST") == ["OK 0 tasks"]

    # -- rules -----------------------------------------------------------------

    @rule(
        verb=st.sampled_from(["ADD", "add", "Add"]),
        fields=valid_schedules,
        separator=SEPARATORS,
        command=commands,
    )
    def add(self, verb: str, fields: list[str], separator: str, command: str) -> None:
        reply = self.send(f"{verb} {separator.join(fields)}{separator}{command}")
        task_id = self.high_water + 1
        assert len(reply) == 1 and reply[0].startswith(f"OK id={task_id} jobName=task_{task_id} next="), reply
        self.high_water = task_id
        self.model[task_id] = (" ".join(fields), command)

    @rule(schedule=invalid_schedules, command=commands)
    def add_invalid_schedule(self, schedule: str, command: str) -> None:
        reply = self.send(f"ADD {schedule} {command}")
        assert len(reply) == 1 and reply[0].startswith("ERR invalid schedule"), reply

    @rule(
        line=st.sampled_from(
            [
                "ADD",
                "ADD ",
                "ADD * * * * *",
                "ADD */10 * * * * 30",
                "ADD @daily",
                "ADD @daily \x00",
                "ADD @daily echo\x00hi",
                "ADD @daily echo\rhi",
                "REMOVE",
                "REMOVE   ",
                "SAVE now",
                "LOAD other.db",
            ]
        )
    )
    def malformed_command(self, line: str) -> None:
        reply = self.send(line)
        assert len(reply) == 1 and reply[0].startswith("ERR "), reply

    @precondition(lambda self: self.model)
    @rule(data=st.data(), by_name=st.booleans())
    def remove(self, data: st.DataObject, by_name: bool) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.model)))
        key = f"task_{task_id}" if by_name else str(task_id)
        assert self.send(f"REMOVE {key}") == [f"OK removed id={task_id} jobName=task_{task_id}"]
        del self.model[task_id]

    @rule(task_id=st.integers(min_value=0, max_value=10**20), by_name=st.booleans())
    def remove_missing(self, task_id: int, by_name: bool) -> None:
        assume(task_id not in self.model)
        key = f"task_{task_id}" if by_name else str(task_id)
        assert self.send(f"REMOVE {key}") == [f"ERR no task with id or jobName '{key}'"]

    @rule()
    def clear(self) -> None:
        count = len(self.model)
        assert self.send("CLEAR") == [f"OK cleared {count} task{'' if count == 1 else 's'}"]
        self.model.clear()

    @rule()
    def save(self) -> None:
        count = len(self.model)
        assert self.send("SAVE") == [f"OK saved {count} task{'' if count == 1 else 's'}"]

    @rule()
    def load(self) -> None:
        assert self.send("load") == self._load_reply()

    def _load_reply(self) -> list[str]:
        if not self.path.exists():
            return ["ERR tasks.db: no such file"]  # nothing written yet: an error, nothing changes
        count = len(self.model)
        return [f"OK loaded {count} task{'' if count == 1 else 's'}"]

    @rule(
        line=st.one_of(
            st.binary(max_size=60),
            st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass")),
            st.binary(min_size=MAX_LINE + 1, max_size=MAX_LINE + 40),
        )
    )
    def garbage(self, line: bytes) -> None:
        line = line.replace(b"\n", b"")
        verb = _verb(line)
        # Real commands are the other rules' business; "Host:" closes the connection.
        assume(verb not in VERBS and not line.lower().startswith(b"host:"))
        reply = self.send(line)
        assert len(reply) == 1 and reply[0].startswith("ERR "), reply
        assert "internal error" not in reply[0], (line, reply)

    @rule()
    def restart(self) -> None:
        """A new scheduler process on the same file, then LOAD: the same tasks."""
        self._start()
        assert self.send("LOAD") == self._load_reply()
        # A fresh process takes new ids after the highest one in the file.
        self.high_water = max(self.model, default=0)

    # -- invariants -------------------------------------------------------------

    @invariant()
    def list_equals_model(self) -> None:
        lines = self.send("LIST")
        count = len(self.model)
        assert lines[-1] == f"OK {count} task{'' if count == 1 else 's'}"
        listed = []
        for line in lines[:-1]:
            task_id, job_name, schedule, next_run, command = line.split("\t", 4)
            assert next_run == "-" or re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", next_run)
            listed.append((int(task_id), job_name, schedule, command))
        # LIST shows control and bidi characters escaped; the file keeps them.
        assert listed == [(tid, f"task_{tid}", sched, visible(cmd)) for tid, (sched, cmd) in self.model.items()]

    @invariant()
    def file_equals_model(self) -> None:
        if not self.path.exists():
            assert not self.model
            return
        data = self.path.read_bytes()
        assert data == b"" or data.endswith(b"\n")
        # str.splitlines() would cut at U+2028 inside a command; JSON lines end at "\n".
        stored = [json.loads(line) for line in data.split(b"\n") if line]
        assert stored == [
            {"schedule": sched, "command": cmd, "jobName": f"task_{tid}"}
            for tid, (sched, cmd) in self.model.items()
        ]


TcpMachine.TestCase.settings = settings(FUZZ, max_examples=40, stateful_step_count=25)
test_tcp_protocol_against_a_model = TcpMachine.TestCase


@contextmanager
def _fresh_state() -> Iterator[TaskState]:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-bytes-"))
    try:
        state = make_state(folder / "tasks.db")
        for schedule, command in (
            ("@daily", "echo one"),
            ("*/5 * * * *", "echo two"),
            ("0 9 * * MON-FRI", "echo 3"),
        ):
            state.edit(lambda book, s=schedule, c=command: book.add(s, c))
        yield state
    finally:
        shutil.rmtree(folder, ignore_errors=True)


raw_lines = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=60).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.tuples(
        st.sampled_from([*sorted(VERBS - {"QUIT"}), "add", "remove", "Ping"]),
        st.sampled_from([" ", "  ", "\t", ""]),
        st.one_of(
            st.text(max_size=40), st.sampled_from(["1", "task_2", "3", "99", "٣", "-1", "* * * * * x"])
        ),
        st.sampled_from(["", "\r", " ", "\r\r"]),
    ).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
    st.binary(min_size=MAX_LINE - 2, max_size=MAX_LINE + 3),
).map(lambda raw: raw.replace(b"\n", b""))

HTTP_START = re.compile(r"^(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE) \S", re.IGNORECASE)


@settings(FUZZ, max_examples=150)
@given(
    lines=st.lists(raw_lines, max_size=12), cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=20)
)
@example(lines=[b"GET / HTTP/1.1", b"CLEAR"], cuts=[3])
@example(lines=[b"PING", b"host: x", b"CLEAR"], cuts=[])
@example(lines=[b"x" * (MAX_LINE + 1), b"PING"], cuts=[MAX_LINE, 2])
@example(lines=[b"x" * MAX_LINE + b"\r", b"PING"], cuts=[MAX_LINE])
@example(lines=[b"LIST \x00", b"QUIT", b"CLEAR"], cuts=[1, 1, 1])
def test_random_bytes_into_the_command_port(lines: list[bytes], cuts: list[int]) -> None:
    """Line by line: one reply each, documented shapes, state only via real commands.

    The same bytes delivered in arbitrary pieces to a second, identical
    scheduler must produce exactly the same replies.
    """
    clock = Clock()
    with _fresh_state() as state:
        wire = Wire(state, clock)
        transcript: list[str] = []
        for number, line in enumerate(lines):
            before = _tasks(state)
            try:
                text: str | None = line.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            verb = _verb(line)
            overlong = len(line) > MAX_LINE
            reply = wire.feed(line + b"\n")
            transcript += reply
            after = _tasks(state)
            if (
                text is not None
                and not overlong
                and ((number == 0 and HTTP_START.match(text)) or text.lower().startswith("host:"))
            ):
                # A browser talking to the command port: closed, nothing run.
                assert reply == [] and wire.closed and after == before
                break
            if verb == "QUIT" and not overlong:
                assert reply == ["OK bye"] and wire.closed
                break
            assert reply, f"no reply to {line!r}"
            if verb in ("LIST", "HELP") and not overlong and "\0" not in (text or ""):
                assert reply[-1].startswith("OK"), reply
                if verb == "LIST":
                    assert len(reply) == len(after) + 1
                    assert all(re.match(r"^\d+\ttask_\d+\t", each) for each in reply[:-1])
            else:
                assert len(reply) == 1, (line, reply)
                assert reply[0] == "PONG" or reply[0].startswith(("OK", "ERR ")), (line, reply)
            assert "internal error" not in reply[-1], (line, reply)
            if after != before:
                assert verb in ("ADD", "REMOVE", "CLEAR", "LOAD") and reply[0].startswith("OK "), (
                    line,
                    reply,
                )
            if reply[0].startswith("ERR"):
                assert after == before

    # The same bytes, cut anywhere, to an identical scheduler: the same replies.
    stream = b"".join(line + b"\n" for line in lines)
    with _fresh_state() as state:
        wire = Wire(state, clock)
        pieces, start = [], 0
        for cut in cuts:
            pieces.append(stream[start : start + cut])
            start += cut
        pieces.append(stream[start:])
        chunked: list[str] = []
        for piece in pieces:
            chunked += wire.feed(piece)
        assert chunked == transcript


def test_remove_with_a_non_ascii_digit_is_a_clean_error(tmp_path: Path) -> None:
    wire = Wire(make_state(tmp_path / "tasks.db"), Clock())
    assert wire.feed("REMOVE ²\n".encode()) == ["ERR no task with id or jobName '²'"]


def test_a_huge_number_in_a_schedule_is_a_clean_error(tmp_path: Path) -> None:
    wire = Wire(make_state(tmp_path / "tasks.db"), Clock(), max_line=32768)
    reply = wire.feed(b"ADD " + b"7" * 5000 + b" * * * * echo x\n")
    assert (
        len(reply) == 1 and reply[0].startswith("ERR invalid schedule") and "minute must be 0-59" in reply[0]
    )


# -- the REST API -----------------------------------------------------------------
#
# Hypothesis calls a test function synchronously, but the service needs the
# reactor turning (its stores answer from threads).  So each test here is an
# async pytest-twisted test that runs the Hypothesis test in a thread, and
# that thread does every step on the reactor with blockingCallFromThread.


def _on_reactor(function: Any, *args: Any) -> Any:
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread

    return blockingCallFromThread(reactor, function, *args)


def _in_thread(function: Any, *args: Any) -> Deferred[Any]:
    from twisted.internet.threads import deferToThread

    return deferToThread(function, *args)


class Api:
    """StubTreq on a real SchedulerService, as in tests/test_http_api.py."""

    def __init__(self, service: SchedulerService) -> None:
        self.service = service
        # Through the guard, as the real site does (Host, Origin, token checks).
        self.treq = StubTreq(service.guard)

    def post(
        self, path: str, raw: bytes, content_type: bytes = b"application/json"
    ) -> tuple[int, bytes, bytes]:
        """From a thread (Hypothesis'): one request, answered on the reactor."""
        return self.request("POST", path, raw, content_type)

    def request(
        self, method: str, path: str, raw: bytes | None = None, content_type: bytes = b"application/json"
    ) -> tuple[int, bytes, bytes]:
        async def call() -> tuple[int, bytes, bytes]:
            headers = {b"Content-Type": [content_type]} if raw is not None else {}
            response = await settled(
                self.treq, self.treq.request(method, "http://localhost" + path, data=raw, headers=headers)
            )
            content = await settled(self.treq, response.content())
            kind = response.headers.getRawHeaders(b"content-type", [b""])[0]
            return response.code, kind, content

        result: tuple[int, bytes, bytes] = _on_reactor(lambda: Deferred.fromCoroutine(call()))
        return result


def _make_service(folder: Path) -> SchedulerService:
    from twisted.internet import reactor

    settings = Settings(
        tasks_file=str(folder / "tasks.db"),
        tcp="tcp:0:interface=127.0.0.1",
        http="tcp:0:interface=127.0.0.1",
        tz=UTC,
    )
    return SchedulerService(reactor, settings)


async def _close(service: SchedulerService) -> None:
    service.dispatcher.stop()
    await service.job_store.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=8,
)
odd_schedules = st.sampled_from(
    [
        "0 0 L * *",
        "0 0 l * *",
        "0 0 * * 5#2",
        "0 0 * * fri#1",
        "0 0 * * 5L",
        "0 0 * * L",
        "*/100 * * * *",
        "* * * * * *",
        " @daily ",
        "@DAILY",
        "0 0 1-31/31 * *",
        "0 0 15W * *",
        "0 0 ? * *",
        "H * * * *",
        "0 0 * * 0-7",
        "0-59 0-23 1-31 1-12 0-7 0-59",
        "1,2,3,,4 * * * *",
        "* * * * * * *",
        "",
        " ",
    ]
)
schedule_values = st.one_of(
    valid_schedules.map(" ".join), invalid_schedules, odd_schedules, st.text(max_size=30), json_values
)
task_bodies = st.fixed_dictionaries(
    {},
    optional={
        "schedule": schedule_values,
        "command": st.one_of(commands, st.text(max_size=20), json_values),
        "jobName": st.one_of(
            st.text(max_size=12), st.sampled_from(["task_1", "task_999", "backup", "a b"]), json_values
        ),
        "target": st.one_of(
            st.sampled_from(["any", "all", "worker:w1", "label:gpu", "worker:", "nowhere"]), json_values
        ),
        "timeout": st.one_of(st.floats(), st.integers(), json_values),
        "retries": st.one_of(st.integers(min_value=-2, max_value=102), json_values),
        "retryDelay": st.one_of(st.floats(), st.integers(), json_values),
        "overlap": st.one_of(st.sampled_from(["allow", "skip", "queue", "ALLOW"]), json_values),
        "missed": st.one_of(st.sampled_from(["skip", "once", "all", "none"]), json_values),
        "missedCap": st.one_of(st.integers(min_value=-1, max_value=1002), json_values),
        "colour": json_values,
    },
)
job_bodies = st.fixed_dictionaries(
    {},
    optional={
        "command": st.one_of(commands, st.text(max_size=20), json_values),
        "target": st.one_of(
            st.sampled_from(["any", "all", "worker:nobody", "label:x", "label:"]), json_values
        ),
        "timeout": st.one_of(st.floats(), st.integers(), st.none(), json_values),
        "env": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3), json_values),
        "cwd": st.one_of(st.text(max_size=10), st.none(), json_values),
        "retries": json_values,
    },
)
plausible_task_bodies = st.fixed_dictionaries(
    {"schedule": st.one_of(valid_schedules.map(" ".join), odd_schedules), "command": commands},
    optional={
        "jobName": st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True),
        "target": st.sampled_from(["any", "all", "worker:w1", "label:gpu"]),
        "timeout": st.one_of(st.none(), st.floats(0.001, 604800), st.integers(1, 604800)),
        "retries": st.integers(0, 100),
        "retryDelay": st.one_of(st.floats(0, 86400), st.integers(0, 86400)),
        "overlap": st.sampled_from(["allow", "skip", "queue"]),
        "missed": st.sampled_from(["skip", "once", "all"]),
        "missedCap": st.integers(1, 1000),
    },
)
plausible_job_bodies = st.fixed_dictionaries(
    {"command": commands},
    optional={
        "target": st.sampled_from(["any", "all", "worker:nobody", "label:x"]),
        "timeout": st.one_of(st.none(), st.floats(0.001, 604800), st.integers(1, 604800)),
        "env": st.dictionaries(
            st.from_regex(r"[A-Z_]{1,5}", fullmatch=True), st.text(max_size=5), max_size=3
        ),
        "cwd": st.one_of(st.none(), st.from_regex(r"[a-z/]{1,10}", fullmatch=True)),
    },
)
raw_bodies = st.one_of(
    st.binary(max_size=60),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.sampled_from([b"", b"{", b"[]", b"null", b"{}", b'{"a": NaN}', b'{"command": "x"', b"\xff\xfe{}"]),
)


def _check_answer(code: int, kind: bytes, content: bytes) -> Any:
    assert code != 500, content[:300]
    assert 200 <= code < 300 or 400 <= code < 500, (code, content[:300])
    assert kind.startswith(b"application/json"), (code, kind, content[:300])
    payload = json.loads(content)
    if code >= 400:
        assert isinstance(payload, dict) and set(payload) == {"error"}, payload
        assert isinstance(payload["error"], str) and payload["error"]
    return payload


def _exchange(api: Api, path: str, body: bytes, content_type: bytes = b"application/json") -> dict[str, Any]:
    """The answer to one POST, with the tasks and active jobs just before and after."""

    def snapshot() -> tuple[list[tuple[int, str, str, str]], int]:
        return _tasks(api.service.state), len(api.service.dispatcher.jobs)

    tasks_before, jobs_before = _on_reactor(snapshot)
    code, kind, content = api.post(path, body, content_type)
    tasks_after, jobs_after = _on_reactor(snapshot)
    return {
        "code": code,
        "payload": _check_answer(code, kind, content),
        "tasks": (tasks_before, tasks_after),
        "jobs": (jobs_before, jobs_after),
    }


def _encoded(bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return bodies.map(lambda body: json.dumps(body).encode())


@settings(FUZZ, max_examples=200)
@given(
    request=st.one_of(
        st.tuples(st.just("/api/tasks"), _encoded(plausible_task_bodies)),
        st.tuples(st.just("/api/tasks"), _encoded(task_bodies)),
        st.tuples(st.just("/api/jobs"), _encoded(plausible_job_bodies)),
        st.tuples(st.just("/api/jobs"), _encoded(job_bodies)),
        st.tuples(st.sampled_from(["/api/tasks", "/api/jobs"]), raw_bodies),
    ),
    content_type=st.sampled_from(
        [b"application/json", b"application/json", b"application/json; charset=utf-8", b"text/plain", b""]
    ),
)
@example(
    request=("/api/tasks", b'{"schedule": "@daily", "command": "echo hi"}'), content_type=b"application/json"
)
@example(request=("/api/jobs", b'{"command": "echo hi", "timeout": NaN}'), content_type=b"application/json")
@example(
    request=("/api/tasks", b'{"schedule": "0 0 L * *", "command": "x"}'), content_type=b"application/json"
)
@example(request=("/api/jobs", b'{"command": "echo hi", "target": "all"}'), content_type=b"application/json")
def _random_bodies(api: Api, request: tuple[str, bytes], content_type: bytes) -> None:
    path, body = request
    answer = _exchange(api, path, body, content_type)
    code, payload = answer["code"], answer["payload"]
    (tasks_before, tasks_after), (jobs_before, jobs_after) = answer["tasks"], answer["jobs"]
    if code >= 400:
        assert tasks_after == tasks_before and jobs_after == jobs_before
        return
    sent = json.loads(body)
    assert isinstance(sent, dict)
    if path == "/api/tasks":
        assert code == 201
        assert tasks_after[:-1] == tasks_before and len(tasks_after) == len(tasks_before) + 1
        task_id, job_name, schedule, command = tasks_after[-1]
        assert isinstance(sent["schedule"], str) and schedule == sent["schedule"].strip()
        assert command == sent["command"] and payload["id"] == task_id
        assert job_name == sent.get("jobName", f"task_{task_id}")
    else:
        assert code == 202 and tasks_after == tasks_before
        created = payload if isinstance(payload, list) else [payload]
        assert all(job["command"] == sent["command"] and job["status"] == "queued" for job in created)
        assert jobs_after == jobs_before + len(created)


@settings(FUZZ, max_examples=30)
@given(fields=valid_schedules, command=commands, separator=SEPARATORS)
def _valid_task_bodies(api: Api, fields: list[str], command: str, separator: str) -> None:
    body = json.dumps({"schedule": separator.join(fields), "command": command}).encode()
    answer = _exchange(api, "/api/tasks", body)
    assert answer["code"] == 201, answer["payload"]
    assert len(answer["tasks"][1]) == len(answer["tasks"][0]) + 1


@pytest_twisted.ensureDeferred
async def test_random_bodies_into_the_rest_api(tmp_path: Path) -> None:
    """JSON errors with a 4xx status or a 2xx success, never 500; changes only on success.

    Bodies are random JSON, task- and job-shaped objects with random field
    values, and random bytes, under several Content-Types; and every
    well-formed task body is accepted.
    """
    service = _make_service(tmp_path)
    try:
        api = Api(service)
        await _in_thread(_random_bodies, api)
        await _in_thread(_valid_task_bodies, api)
    finally:
        await _close(service)


@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_is_a_400(tmp_path: Path) -> None:
    service = _make_service(tmp_path)
    try:
        answer = await _in_thread(_exchange, Api(service), "/api/tasks", b"[" * 100_000)
        assert answer["code"] == 400
    finally:
        await _close(service)


@pytest_twisted.ensureDeferred
async def test_a_huge_number_in_a_schedule_is_a_400(tmp_path: Path) -> None:
    service = _make_service(tmp_path)
    body = json.dumps({"schedule": "9" * 5000 + " * * * *", "command": "x"}).encode()
    try:
        answer = await _in_thread(_exchange, Api(service), "/api/tasks", body)
        assert answer["code"] == 400
    finally:
        await _close(service)


# -- the worker socket --------------------------------------------------------------

REPORTS = ("started", "output", "finished", "rejected")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A Unix time in seconds, as docs/protocol.md bounds them (to year 9999)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 253402300799


def _is_count(value: object, low: int) -> bool:
    """An id or seq: docs/protocol.md keeps them within 2**53."""
    return _is_int(value) and low <= value <= 2**53  # type: ignore[operator]


def _report_is_malformed(message: dict[str, Any]) -> bool:
    """docs/protocol.md's fields, checked independently of the scheduler's code.

    Fields the scheduler does not use (``pid``, ``seq`` of ``finished``,
    ``reason``) are not required; optional ones may be missing or null.
    """
    kind = message["type"]
    job = message.get("job")
    if not _is_count(job, 1):
        return True
    if kind == "started":
        return not _is_number(message.get("at"))
    if kind == "output":
        seq = message.get("seq")
        return (
            message.get("stream") not in ("stdout", "stderr")
            or not _is_count(seq, 1)
            or not isinstance(message.get("data"), str)
        )
    if kind == "finished":
        return (
            any(
                message.get(name) is not None
                and not (_is_int(message[name]) and -(2**31) <= message[name] < 2**31)
                for name in ("exitCode", "signal")
            )
            or any(not isinstance(message.get(name, False), bool) for name in ("timedOut", "cancelled"))
            or any(
                message.get(name) is not None and not _is_number(message[name])
                for name in ("startedAt", "finishedAt")
            )
        )
    return False


def _echo(message: dict[str, Any]) -> dict[str, Any]:
    """What docs/protocol.md says an ``error`` repeats: ``type`` and ``job`` only."""
    echo: dict[str, Any] = {}
    if isinstance(message.get("type"), str):
        echo["type"] = message["type"][:100]
    if _is_int(message.get("job")) and abs(message["job"]) <= 2**53:
        echo["job"] = message["job"]
    return echo


def _hello_is_malformed(message: dict[str, Any]) -> bool:
    name, labels, slots, jobs = (message.get(key) for key in ("name", "labels", "slots", "jobs"))
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= 100
        or any(ch.isspace() or ch in ",:" for ch in name)
    ):
        return True
    if labels is not None and not (
        isinstance(labels, list) and all(isinstance(label, str) and 0 < len(label) <= 100 for label in labels)
    ):
        return True
    if not (_is_int(slots) and 1 <= slots <= 10_000):
        return True
    if jobs is None:
        return "jobs" in message
    return not isinstance(jobs, list) or not all(
        isinstance(entry, dict)
        and entry.get("state") in ("running", "finished")
        and _is_count(entry.get("job"), 1)
        and _is_count(entry.get("seq"), 0)
        for entry in jobs
    )


class Connection:
    """A WorkerServerProtocol in memory: onMessage in, sendMessage captured."""

    def __init__(self, service: SchedulerService) -> None:
        protocol = WorkerServerProtocol()
        protocol.factory = service.worker_factory
        protocol.state = protocol.STATE_OPEN
        protocol.peer = "tcp:127.0.0.1:40000"
        protocol.sendMessage = self._sent  # type: ignore[method-assign]
        protocol.sendClose = self._closed  # type: ignore[method-assign]
        self.protocol = protocol
        self.sent: list[dict[str, Any]] = []
        self.closes: list[str | None] = []

    def _sent(self, payload: bytes, isBinary: bool = False) -> None:
        assert not isBinary
        self.sent.append(json.loads(payload))

    def _closed(self, code: int | None = None, reason: str | None = None) -> None:
        self.closes.append(reason)

    def say(self, payload: bytes, binary: bool = False) -> list[dict[str, Any]]:
        """On the reactor: one message in, the replies it produced."""
        before = len(self.sent)
        self.protocol.onMessage(payload, binary)
        return self.sent[before:]

    def hello(self, name: str, slots: int = 50) -> None:
        reply = self.say(json.dumps({"type": "hello", "protocol": 1, "name": name, "slots": slots}).encode())
        assert [message["type"] for message in reply] == ["welcome"], reply


class Workers:
    """Two connected workers with jobs: bob (the fuzzer's voice) and alice (the bystander)."""

    def __init__(self, service: SchedulerService) -> None:
        self.service = service
        self.dispatcher = service.dispatcher
        self.alice = Connection(service)
        self.bob = Connection(service)
        self.alice_jobs: list[int] = []

    async def start(self) -> None:
        self.alice.hello("alice")
        self.bob.hello("bob")
        self.alice_jobs = [
            job.id for _ in range(3) for job in self.dispatcher.run_now("sleep 9", target="worker:alice")
        ]
        await self.top_up()
        runs = [message["job"] for message in self.alice.sent if message["type"] == "run"]
        assert runs == self.alice_jobs
        alice = self.service.workers.get("alice")
        assert alice is not None
        first, second, _ = self.alice_jobs
        self.dispatcher.started(alice, first, 1.0)
        self.dispatcher.output(alice, first, 1, "stdout", "alice's output\n")
        self.dispatcher.started(alice, second, 2.0)

    def bob_jobs(self) -> list[int]:
        bob = self.service.workers.get("bob")
        assert bob is not None
        return sorted(bob.running)

    async def top_up(self) -> None:
        """Keep a few jobs running on bob (the fuzzer finishes them)."""
        made = [
            job.id
            for _ in range(max(0, 3 - len(self.bob_jobs())))
            for job in self.dispatcher.run_now("sleep 9", target="worker:bob")
        ]
        # A read queues behind the writes: once it answers, the jobs are recorded and sent.
        await self.service.job_store.get(max(made or self.alice_jobs))
        assert set(made) <= set(self.bob_jobs())

    async def settle(self) -> None:
        """Until the job store has written what is queued (acks wait for that)."""
        await self.service.job_store.get(self.alice_jobs[0])

    def alice_state(self) -> object:
        alice = self.service.workers.get("alice")
        return (
            alice is not None and alice.link is self.alice.protocol,
            None if alice is None else frozenset(alice.running),
            len(self.alice.sent),
            self.alice.closes[:],
            [self.dispatcher.jobs.get(job_id) for job_id in self.alice_jobs],
            [self.dispatcher.last_seq(job_id) for job_id in self.alice_jobs],
            [self.dispatcher.live_output(job_id) for job_id in self.alice_jobs],
        )

    def bob_says(self, payload: bytes, binary: bool, job: object) -> dict[str, Any]:
        """On the reactor: what bob's message did, and what was true just before."""
        active = self.dispatcher.jobs.get(job) if _is_int(job) else None  # type: ignore[arg-type]
        bob = self.service.workers.get("bob")
        assigned = active is not None and bob is not None and active.worker == "bob" and job in bob.running
        alice_before = self.alice_state()
        index = len(self.bob.sent)
        replies = self.bob.say(payload, binary)
        return {
            "index": index,
            "replies": replies,
            "known_job": active is not None,
            "assigned": assigned,
            "alice": (alice_before, self.alice_state()),
            "bob_connected": self.service.workers.get("bob") is not None and not self.bob.closes,
        }


@dataclass(frozen=True)
class JobRef:
    """A job of alice's or bob's, chosen when the message is sent.

    Strategies must not depend on state that changes between examples (the
    ids of bob's jobs do), so they draw a reference and the test resolves it.
    """

    owner: str
    index: int


def _job_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(JobRef, st.sampled_from(["alice", "bob", "bob"]), st.integers(0, 5)),
        st.builds(JobRef, st.just("bob"), st.integers(0, 5)),
        st.integers(min_value=-2, max_value=10**6),
        json_values,
    )


def _reports() -> st.SearchStrategy[dict[str, Any]]:
    job = _job_values()
    number = st.one_of(st.floats(), st.integers(min_value=-(2**70), max_value=2**70))
    well_formed = st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("started"), "job": job, "pid": st.integers(1, 99999), "at": number}
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("output"),
                "job": job,
                "stream": st.sampled_from(["stdout", "stderr"]),
                "seq": st.integers(min_value=1, max_value=10**6),
                "data": st.text(max_size=20),
            }
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("finished"),
                "job": job,
                "exitCode": st.one_of(st.none(), st.integers(-1, 255)),
                "signal": st.one_of(st.none(), st.integers(1, 64)),
                "timedOut": st.booleans(),
                "cancelled": st.booleans(),
                "seq": st.integers(0, 10),
            },
            optional={"startedAt": st.one_of(st.none(), number), "finishedAt": st.one_of(st.none(), number)},
        ),
        st.fixed_dictionaries({"type": st.just("rejected"), "job": job, "reason": st.text(max_size=10)}),
    )
    any_field = st.fixed_dictionaries(
        {"type": st.sampled_from([*REPORTS, "hello", "welcome", "ack", "error", "Started", "x"])},
        optional={
            name: st.one_of(job, json_values)
            for name in (
                "job",
                "at",
                "pid",
                "stream",
                "seq",
                "data",
                "exitCode",
                "signal",
                "timedOut",
                "cancelled",
                "startedAt",
                "finishedAt",
                "reason",
                "protocol",
            )
        },
    )
    # A valid report with one field dropped or given a value of a random type.
    broken = st.tuples(
        well_formed,
        st.sampled_from(["job", "at", "stream", "seq", "data", "exitCode", "timedOut"]),
        st.one_of(st.just(None), json_values),
        st.booleans(),
    ).map(
        lambda parts: (
            {key: value for key, value in parts[0].items() if key != parts[1]}
            if parts[3]
            else {**parts[0], parts[1]: parts[2]}
        )
    )
    return st.one_of(well_formed, any_field, broken)


# (message or raw bytes, sent as a binary frame?)
Frame = tuple[dict[str, Any] | bytes, bool]


def _frames() -> st.SearchStrategy[Frame]:
    reports = _reports()
    return st.one_of(
        st.tuples(reports, st.just(False)),
        st.tuples(reports, st.just(False)),
        st.tuples(reports, st.just(False)),
        st.tuples(reports, st.just(True)),
        st.tuples(json_values.map(lambda value: json.dumps(value).encode()), st.just(False)),
        st.tuples(st.binary(max_size=40), st.booleans()),
        st.tuples(
            st.sampled_from(
                [b"", b"{}", b"[]", b'{"type": null}', b'{"type": 7}', b'"started"', b"\xff", b"{"]
            ),
            st.just(False),
        ),
    )


def _resolve(value: Any, alice: list[int], bob: list[int]) -> Any:
    if isinstance(value, JobRef):
        jobs = alice if value.owner == "alice" else bob
        return jobs[value.index % len(jobs)] if jobs else 10**6
    return value


def _payload(frame: Frame, alice: list[int], bob: list[int]) -> tuple[bytes, bool, Any]:
    """The bytes to send, whether binary, and the message as the scheduler will decode it."""
    content, binary = frame
    if isinstance(content, dict):
        content = {key: _resolve(value, alice, bob) for key, value in content.items()}
        payload = json.dumps(content).encode()
    else:
        payload = content
    if binary:
        return payload, True, None
    try:
        return payload, False, json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return payload, False, None


@settings(FUZZ, max_examples=150)
@given(frames=st.lists(_frames(), min_size=1, max_size=5))
def _worker_messages(world: Workers, frames: list[Frame]) -> None:
    _on_reactor(lambda: Deferred.fromCoroutine(world.top_up()))
    for frame in frames:
        payload, binary, message = _payload(frame, world.alice_jobs, _on_reactor(world.bob_jobs))
        job = message.get("job") if isinstance(message, dict) else None
        outcome = _on_reactor(world.bob_says, payload, binary, job)
        # A freed slot may send bob a queued job ("run"): not a reply.
        replies = [reply for reply in outcome["replies"] if reply["type"] != "run"]
        kinds = [reply["type"] for reply in replies]
        alice_before, alice_after = outcome["alice"]
        # Nothing bob says touches alice, her jobs or her connection; bob stays connected.
        assert alice_after == alice_before, message
        assert outcome["bob_connected"]
        assert all(reply.get("reason") != "internal error on the scheduler (logged)" for reply in replies), (
            message,
            replies,
        )
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            assert kinds == ["error"], (payload, binary, replies)
            if isinstance(message, dict):
                assert replies[0]["message"] == _echo(message)
            continue
        kind = message["type"]
        if kind == "hello":
            assert kinds == ["error"], replies  # a second hello on one connection
        elif kind not in REPORTS:
            assert kinds == [], (message, replies)  # unknown types are ignored
        elif _report_is_malformed(message):
            assert kinds == ["error"], (message, replies)
            assert replies[0]["message"] == _echo(message)
        elif kind == "finished" and not outcome["known_job"]:
            assert kinds == ["ack"], (message, replies)  # a repeat of a recorded result
        elif not outcome["assigned"]:
            assert kinds == ["error"], (message, replies)
            assert "not assigned" in replies[0]["reason"]
        elif kind == "finished":
            # The ack follows once the result is on disk.
            assert kinds in ([], ["ack"]), (message, replies)
            _on_reactor(lambda: Deferred.fromCoroutine(world.settle()))
            later = _on_reactor(lambda index=outcome["index"]: world.bob.sent[index:])
            assert [reply for reply in later if reply["type"] == "ack"] == [{"type": "ack", "job": job}], (
                later
            )
        else:
            assert kinds == [], (message, replies)


def _first_messages_strategy() -> st.SearchStrategy[Frame]:
    names = st.one_of(
        st.from_regex(r"[a-z][a-z0-9._-]{0,12}", fullmatch=True), st.text(max_size=8), json_values
    )
    entries = st.one_of(
        st.fixed_dictionaries(
            {
                "job": st.integers(-1, 20),
                "state": st.sampled_from(["running", "finished", "lost"]),
                "seq": st.integers(-1, 5),
            }
        ),
        json_values,
    )
    hellos = st.fixed_dictionaries(
        {
            "type": st.just("hello"),
            "protocol": st.one_of(st.just(1), json_values),
            "name": names,
            "slots": st.one_of(st.integers(-1, 8), json_values),
        },
        optional={
            "labels": st.one_of(st.lists(st.text(max_size=5), max_size=3), json_values),
            "jobs": st.one_of(st.lists(entries, max_size=3), json_values),
        },
    )
    return st.one_of(st.tuples(hellos, st.just(False)), st.tuples(hellos, st.just(False)), _frames())


@settings(FUZZ, max_examples=120)
@given(first=_first_messages_strategy())
@example(
    first=(
        {
            "type": "hello",
            "protocol": 1,
            "name": "mallory",
            "slots": 1,
            "jobs": [{"job": 1, "state": "running", "seq": 0}],
        },
        False,
    )
)
@example(first=({"type": "hello", "protocol": 2, "name": "w", "slots": 1}, False))
def _first_messages(world: Workers, first: Frame) -> None:
    payload, binary, message = _payload(first, world.alice_jobs, [])
    if isinstance(message, dict):
        assume(message.get("name") not in ("alice", "bob"))

    def exchange() -> tuple[list[dict[str, Any]], list[str | None], object, object]:
        before = world.alice_state()
        connection = Connection(world.service)
        replies = connection.say(payload, binary)
        after = world.alice_state()
        if connection.protocol.worker is not None:
            connection.protocol.onClose(True, 1000, "done")
        return replies, connection.closes, before, after

    replies, closes, before, after = _on_reactor(exchange)
    kinds = [reply["type"] for reply in replies]
    assert after == before, message
    assert all(reply.get("reason") != "internal error on the scheduler (logged)" for reply in replies), (
        message,
        replies,
    )
    if (
        not isinstance(message, dict)
        or not isinstance(message.get("type"), str)
        or message["type"] != "hello"
    ):
        assert kinds == ["error"] and not closes, (payload, binary, replies)
    elif message.get("protocol") != 1:
        assert kinds == ["refused"] and closes, replies
    elif _hello_is_malformed(message):
        assert kinds == ["error"] and not closes, (message, replies)
    else:
        assert kinds == ["welcome"] and not closes, (message, replies)
        reported = {entry["job"] for entry in message.get("jobs", [])}
        # A new worker owns none of the jobs it claims: all of them are dropped.
        assert set(replies[0]["drop"]) == reported and replies[0]["resume"] == {}


@pytest_twisted.ensureDeferred
async def test_random_messages_on_the_worker_socket(tmp_path: Path) -> None:
    """Every malformed message gets ``error``; nothing escapes; alice's jobs are safe.

    bob, a connected worker, sends random bytes, random JSON and reports
    with random or broken fields about his jobs, alice's jobs and unknown
    ones; alice's jobs, output and connection never change.  Then fresh
    connections send random first messages (hellos among them).
    """
    service = _make_service(tmp_path)
    try:
        world = Workers(service)
        await world.start()
        await _in_thread(_worker_messages, world)
        await _in_thread(_first_messages, world)
    finally:
        await _close(service)


@pytest_twisted.ensureDeferred
async def test_a_huge_time_is_a_field_error(tmp_path: Path) -> None:
    service = _make_service(tmp_path)
    try:
        world = Workers(service)
        await world.start()
        job = world.bob_jobs()[0]
        replies = world.bob.say(json.dumps({"type": "started", "job": job, "pid": 1, "at": 10**400}).encode())
        assert [reply["type"] for reply in replies] == ["error"]
        assert "'at'" in replies[0]["reason"], replies
    finally:
        await _close(service)


@pytest_twisted.ensureDeferred
async def test_a_worker_time_beyond_year_9999_does_not_break_the_jobs_api(tmp_path: Path) -> None:
    service = _make_service(tmp_path)
    try:
        world = Workers(service)
        await world.start()
        job = world.bob_jobs()[0]
        # Milliseconds where seconds belong: a plausible worker bug.
        replies = world.bob.say(json.dumps({"type": "started", "job": job, "pid": 1, "at": 1.8e12}).encode())
        assert all(reply.get("reason") != "internal error on the scheduler (logged)" for reply in replies), (
            replies
        )
        await world.settle()
        api = Api(service)
        for path in (f"/api/jobs/{job}", "/api/jobs"):
            code, _, content = await _in_thread(api.request, "GET", path)
            assert code == 200, (path, code, content[:200])
    finally:
        await _close(service)


@pytest_twisted.ensureDeferred
async def test_one_workers_huge_seq_does_not_lose_another_workers_result(tmp_path: Path) -> None:
    service = _make_service(tmp_path)
    try:
        world = Workers(service)
        await world.start()
        alice_job = world.alice_jobs[0]
        bob_job = world.bob_jobs()[0]
        # In one reactor turn, so both land in the same write batch.
        world.bob.say(
            json.dumps(
                {"type": "output", "job": bob_job, "stream": "stdout", "seq": 2**63, "data": "x"}
            ).encode()
        )
        world.alice.say(
            json.dumps(
                {
                    "type": "finished",
                    "job": alice_job,
                    "exitCode": 0,
                    "signal": None,
                    "timedOut": False,
                    "cancelled": False,
                    "seq": 1,
                }
            ).encode()
        )
        stored = await service.job_store.get(alice_job)
        assert stored is not None and stored.status is JobStatus.SUCCEEDED, stored
    finally:
        await _close(service)
