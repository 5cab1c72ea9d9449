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
- the worker socket answers every frame, lone message or batch, as
  docs/protocol.md (version 2) says, against a model of it: ``error`` with
  its echo for what is malformed, nothing for unknown types, ``drop`` for a
  report on a job not running on that worker, an ``ack`` once a result is
  on disk; and nothing one worker says touches another's jobs.

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
from dataclasses import dataclass, field
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
from scheduler.task_changes import TaskChanges
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
        commands = TcpCommands(TaskChanges(state, None, Clock()), state._engine.next_run, lambda: {"tasks": len(state.book)})
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
#
# docs/protocol.md (version 2) is the model: what the scheduler must answer
# to each frame is worked out from the document's rules alone (the fields of
# each message, "Whose jobs", batches, the echo of an ``error``), never from
# the scheduler's code, and compared with what it sent.  The scheduler sends
# through an Outbox, one frame per reactor turn (``callLater(0)``): the
# in-memory connection flushes it after each frame it feeds, and unpacks the
# batches it gets back.

REPORTS = ("started", "output", "finished", "rejected")
MAX_ID = 2**53
MAX_TIME = 253402300799
MAX_BATCH = 1000
INTERNAL_ERROR = "internal error on the scheduler (logged)"
UNSUPPORTED = (
    " is not supported: this scheduler speaks protocol 2; upgrade the worker to the scheduler's release"
)
# An error's `message` where the document says it is omitted.
NO_ECHO = "(omitted)"
# A job's time when the examples need one: 2025-11-26.
T0 = 1_764_195_600.0


class _NotJson:
    """What a frame holds when it is not JSON text (binary, not UTF-8, not JSON)."""


NOT_JSON = _NotJson()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: object, low: int) -> bool:
    """A job id (from 1) or seq (from 0): integers up to 2^53."""
    return _is_int(value) and low <= value <= MAX_ID  # type: ignore[operator]


def _is_time(value: object) -> bool:
    """Unix seconds, integer or float, to the end of year 9999."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_TIME


def _is_int32(value: object) -> bool:
    return _is_int(value) and -(2**31) <= value < 2**31  # type: ignore[operator]


def _is_name(value: object) -> bool:
    """A worker name, label or instance: 1 to 100 characters, no whitespace, commas or colons."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 100
        and not any(ch.isspace() or ch in ",:" for ch in value)
    )


def _chunk_is_malformed(chunk: object) -> bool:
    """An ``output`` message's chunk, or an entry of a ``finished``'s ``output``."""
    return (
        not isinstance(chunk, dict)
        or chunk.get("stream") not in ("stdout", "stderr")
        or not _is_count(chunk.get("seq"), 1)
        or not isinstance(chunk.get("data"), str)
    )


def _report_is_malformed(message: dict[str, Any]) -> bool:
    """docs/protocol.md's fields for a report, checked independently of the scheduler's code.

    "An optional field may be missing or null, which mean the same"; a
    field "required, or null" must be present.  Fields the document does not
    describe are ignored.
    """
    kind = message["type"]
    if not _is_count(message.get("job"), 1):
        return True
    if kind == "started":
        pid = message.get("pid")
        return not (_is_int(pid) and 1 <= pid < 2**31) or not _is_time(message.get("at"))
    if kind == "output":
        return _chunk_is_malformed(message)
    if kind == "finished":
        output = message.get("output")
        return (
            any(
                name not in message or (message[name] is not None and not _is_int32(message[name]))
                for name in ("exitCode", "signal")
            )
            or any(not isinstance(message.get(name), bool) for name in ("timedOut", "cancelled"))
            # "true or false; not both true"
            or (message["timedOut"] is True and message["cancelled"] is True)
            or not _is_count(message.get("seq"), 0)
            or any(not _is_time(message.get(name)) for name in ("startedAt", "finishedAt"))
            or (
                output is not None and (not isinstance(output, list) or any(map(_chunk_is_malformed, output)))
            )
        )
    # rejected: "`job` is required; `reason` (a string) is optional".
    reason = message.get("reason")
    return reason is not None and not isinstance(reason, str)


def _is_protocol_2(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 2


def _hello_is_malformed(message: dict[str, Any]) -> bool:
    """A hello's fields (its ``protocol`` is 2) against docs/protocol.md."""
    slots, labels, jobs = message.get("slots"), message.get("labels"), message.get("jobs")
    return (
        not _is_name(message.get("name"))
        or not (_is_int(slots) and 1 <= slots <= 10_000)
        or not _is_name(message.get("instance"))
        or not _is_time(message.get("time"))
        or (labels is not None and not (isinstance(labels, list) and all(map(_is_name, labels))))
        or (
            jobs is not None
            and not (
                isinstance(jobs, list)
                and all(
                    isinstance(entry, dict)
                    and _is_count(entry.get("job"), 1)
                    and entry.get("state") in ("running", "finished")
                    and _is_count(entry.get("seq"), 0)
                    for entry in jobs
                )
            )
        )
    )


def _echo(received: object) -> object:
    """What docs/protocol.md says an ``error`` repeats: ``type`` and ``job`` of an object, never more."""
    if not isinstance(received, dict):
        return NO_ECHO
    echo: dict[str, Any] = {}
    if isinstance(received.get("type"), str):
        echo["type"] = received["type"][:100]
    # "its `job` (if an integer no larger than 2^53 either way)"
    if _is_int(received.get("job")) and abs(received["job"]) <= MAX_ID:
        echo["job"] = received["job"]
    return echo


def _output_problems(held: set[int], last: int) -> list[str]:
    """What docs/protocol.md says the reason holds when the chunks *held* do not match
    a finished's ``seq`` *last*: "chunk 2 of 2", "chunks 2, 4-6 of 8", "chunks up to 5 ..."."""
    gaps: list[tuple[int, int]] = []
    start = 1
    for seq in sorted(seq for seq in held if seq <= last):
        if seq > start:
            gaps.append((start, seq - 1))
        start = seq + 1
    if start <= last:
        gaps.append((start, last))
    problems = []
    if gaps:
        runs = ", ".join(str(first) if first == end else f"{first}-{end}" for first, end in gaps)
        chunks = "chunk" if len(gaps) == 1 and gaps[0][0] == gaps[0][1] else "chunks"
        problems.append(f"output incomplete: {chunks} {runs} of {last} never arrived")
    highest = max(held, default=0)
    if highest > last:
        problems.append(f"output inconsistent: chunks up to {highest} arrived, but finished says {last}")
    return problems


def _status(report: dict[str, Any]) -> JobStatus:
    """The status docs/protocol.md says a ``finished`` records (never both flags: that is malformed)."""
    if report["cancelled"]:
        return JobStatus.CANCELLED
    if report["timedOut"]:
        return JobStatus.TIMED_OUT
    return JobStatus.SUCCEEDED if report["exitCode"] == 0 else JobStatus.FAILED


# An expected answer: ("error", its echo) or ("drop", [job]).
Answer = tuple[str, object]


@dataclass
class BobModel:
    """What the scheduler must do with one of bob's frames, from docs/protocol.md.

    ``running``: the jobs running on bob when the frame arrives; the frame's
    reports end some (``finished``, ``rejected``: a rejected job is tried on
    bob again no sooner than 1 s later, so not within one frame).
    """

    running: set[int]
    accepted: list[dict[str, Any]] = field(default_factory=list)

    def frame(self, value: object) -> list[Answer]:
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            return [("error", _echo(value))]
        if value["type"] != "batch":
            return self._entries([value])
        messages = value.get("messages")
        if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_BATCH:
            return [("error", _echo(value))]
        # Each entry "exactly as if each had come in a frame of its own".
        return self._entries(messages)

    def _entries(self, entries: list[object]) -> list[Answer]:
        answers = (self._entry(entry) for entry in entries)
        return [answer for answer in answers if answer is not None]

    def _entry(self, entry: object) -> Answer | None:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            return ("error", _echo(entry))
        kind = entry["type"]
        if kind in ("batch", "hello"):
            return ("error", _echo(entry))  # a batch in a batch; a second hello
        if kind not in REPORTS:
            return None  # unknown types, and a worker's error, are ignored
        if _report_is_malformed(entry):
            return ("error", _echo(entry))
        job = entry["job"]
        if job not in self.running:
            return ("drop", [job])
        if kind in ("finished", "rejected"):
            self.running.discard(job)
        self.accepted.append(entry)
        return None


def _answers(replies: list[dict[str, Any]]) -> list[Answer]:
    """The scheduler's replies in the model's terms (their shapes checked)."""
    out: list[Answer] = []
    for reply in replies:
        kind = reply["type"]
        if kind == "error":
            assert set(reply) <= {"type", "reason", "message"}, reply
            assert isinstance(reply["reason"], str) and reply["reason"], reply
            out.append(("error", reply.get("message", NO_ECHO)))
        elif kind == "drop":
            assert set(reply) == {"type", "jobs", "reason"} and isinstance(reply["reason"], str), reply
            out.append(("drop", reply["jobs"]))
        else:
            out.append((kind, reply))
    return out


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
        # Every message received, batch frames unpacked.
        self.sent: list[dict[str, Any]] = []
        self.closes: list[str | None] = []

    def _sent(self, payload: bytes, isBinary: bool = False) -> None:
        assert not isBinary
        frame = json.loads(payload)
        if frame["type"] != "batch":
            self.sent.append(frame)
            return
        # What the scheduler batches follows the rules it holds workers to.
        messages = frame["messages"]
        assert set(frame) == {"type", "messages"} and 2 <= len(messages) <= MAX_BATCH, frame
        assert all(message["type"] not in ("batch", "hello") for message in messages), frame
        # One ack covers every result recorded since the previous one.
        assert [message["type"] for message in messages].count("ack") <= 1, frame
        self.sent.extend(messages)

    def _closed(self, code: int | None = None, reason: str | None = None) -> None:
        self.closes.append(reason)

    def flush(self) -> None:
        """Send at once what the scheduler's Outbox holds for this turn."""
        if self.protocol._outbox is not None:
            self.protocol._outbox.flush()

    def say(self, payload: bytes, binary: bool = False) -> list[dict[str, Any]]:
        """On the reactor: one frame in, the messages it produced."""
        before = len(self.sent)
        self.protocol.onMessage(payload, binary)
        self.flush()
        return self.sent[before:]

    def hello(self, name: str, slots: int = 50) -> None:
        clock = self.protocol.factory.clock
        message = {
            "type": "hello",
            "protocol": 2,
            "name": name,
            "slots": slots,
            "instance": f"{name}-agent",
            "time": clock.seconds(),
        }
        reply = self.say(json.dumps(message).encode())
        assert [message["type"] for message in reply] == ["welcome"], reply


class Workers:
    """Two connected workers with jobs: bob (the fuzzer's voice) and alice (the bystander).

    Kept across Hypothesis examples, with what the model needs to know of
    bob: the jobs he ended, those he rejected (and when), and the results
    he is owed an ``ack`` for.
    """

    def __init__(self, service: SchedulerService) -> None:
        self.service = service
        self.dispatcher = service.dispatcher
        self.alice = Connection(service)
        self.bob = Connection(service)
        self.alice_jobs: list[int] = []
        # Every job made for bob; those his finished ended.
        self.bob_made: list[int] = []
        self.ended: list[int] = []
        # Jobs bob rejected that wait in the queue: the time just before the frame.
        self.rejected: dict[int, float] = {}
        # Accepted finished reports whose ack has not come yet.
        self.unacked: dict[int, dict[str, Any]] = {}
        # The output chunks of bob's jobs the scheduler has accepted, by seq (a resend is ignored).
        self.chunks: dict[int, dict[int, str]] = {}
        # The start the scheduler kept from the first accepted `started` of a job.
        self.started: dict[int, float] = {}
        # bob's messages looked at so far.
        self.seen = 0

    def now(self) -> float:
        return self.service.worker_factory.clock.seconds()

    async def start(self) -> None:
        self.alice.hello("alice")
        self.bob.hello("bob")
        self.seen = len(self.bob.sent)
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
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        self.bob_made += made
        # A job bob rejected less than 1 s ago may hold the new ones in the queue until then.
        for _ in range(40):
            # A read queues behind the writes: once it answers, the jobs are recorded and sent.
            await self.service.job_store.get(max(made or self.alice_jobs))
            self.alice.flush()
            assert self.news() == []
            self.check_placements()
            if set(made) <= set(self.bob_jobs()):
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert set(made) <= set(self.bob_jobs())

    def news(self) -> list[dict[str, Any]]:
        """bob's messages since the last look, but runs and acks (acks are checked off here)."""
        self.bob.flush()
        new = self.bob.sent[self.seen :]
        self.seen = len(self.bob.sent)
        for message in new:
            if message["type"] == "ack":
                assert set(message) == {"type", "jobs"} and message["jobs"], message
                for job in message["jobs"]:
                    # Only for a finished that was accepted, and once.
                    assert job in self.unacked, (message, sorted(self.unacked))
                    del self.unacked[job]
        return [message for message in new if message["type"] not in ("run", "ack")]

    def check_placements(self) -> None:
        """docs/protocol.md, ``rejected``: "the scheduler queues the job again and
        tries this worker again no sooner than 1 s later"."""
        now = self.now()
        for job_id, when in list(self.rejected.items()):
            job = self.dispatcher.jobs.get(job_id)
            if job is not None and job.status is JobStatus.QUEUED:
                continue
            del self.rejected[job_id]
            if job is not None and job.worker == "bob":
                assert now - when >= 1.0, (
                    f"job {job_id}, rejected by bob, was placed on bob again within {now - when:.3f}s"
                )

    async def settle(self, reports: list[dict[str, Any]]) -> None:
        """Until bob has the ack of every result he is owed; then the records, as reported."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        for _ in range(100):
            if not self.unacked:
                break
            # A read queues behind the writes, and the ack waits for the write.
            await self.service.job_store.get(self.alice_jobs[0])
            await deferLater(reactor, 0, lambda: None)
            assert self.news() == []
        assert not self.unacked, f"no ack for the recorded results of jobs {sorted(self.unacked)}"
        for report in reports:
            stored = await self.service.job_store.get(report["job"])
            assert stored is not None and stored.status is _status(report), (report, stored)
            assert (stored.exit_code, stored.signal) == (report["exitCode"], report["signal"]), (
                report,
                stored,
            )
            # Worker times are kept within what the scheduler saw.
            assert stored.started_at is not None and stored.finished_at is not None, stored
            assert stored.created_at <= stored.started_at <= stored.finished_at <= self.now(), (
                report,
                stored,
            )
            # "The first start the scheduler hears of is the one it keeps."
            if report["job"] in self.started:
                assert stored.started_at == self.started[report["job"]], (report, stored)
            # The output read back in seq order, every chunk kept; if chunks 1 to `seq` did not
            # all come, or some above it did, the reason says so, and so does a closing line.
            chunks = self.chunks.get(report["job"], {})
            joined = "".join(chunks[seq] for seq in sorted(chunks))
            output = await self.service.job_store.output(report["job"])
            problems = _output_problems(set(chunks), report["seq"])
            if not problems:
                assert stored.reason is None and output == joined, (report, stored, output, joined)
                continue
            # "both problems at once are joined by `; `"
            assert stored.reason in ("; ".join(problems), "; ".join(reversed(problems))), (report, stored)
            assert output is not None and output.startswith(joined), (report, output, joined)
            tail = output[len(joined) :]
            assert tail.endswith("\n") and "\n" not in tail[:-1] and stored.reason in tail, (report, tail)

    def alice_state(self) -> object:
        self.alice.flush()
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

    def bob_state(self) -> dict[int, object]:
        bob = self.service.workers.get("bob")
        assert bob is not None
        return {
            job_id: (
                self.dispatcher.jobs.get(job_id),
                job_id in bob.running,
                self.dispatcher.last_seq(job_id),
                self.dispatcher.live_output(job_id),
            )
            for job_id in self.bob_made
        }

    def refs(self) -> dict[str, list[int]]:
        return {
            "alice": self.alice_jobs,
            "bob": self.bob_jobs(),
            "ended": self.ended,
            "queued": sorted(self.rejected),
        }

    def bob_says(self, frame: Frame) -> list[dict[str, Any]]:
        """On the reactor: bob sends *frame*, and the answer is checked against the model.

        Returns the finished reports it had accepted: their acks come once
        the results are on disk (``settle``).
        """
        assert self.news() == []  # between frames, nothing but runs and acks
        self.check_placements()
        bob = self.service.workers.get("bob")
        assert bob is not None and bob.link is self.bob.protocol
        queued = set(self.rejected)
        payload, binary, value = _payload(frame, self.refs())
        model = BobModel(set(bob.running))
        expected = model.frame(value)
        finished = [report for report in model.accepted if report["type"] == "finished"]
        when = self.now()
        alice_before, bob_before = self.alice_state(), self.bob_state()
        self.bob.protocol.onMessage(payload, binary)
        # Not yet owed: the results' records cannot be on disk before this turn ends
        # (the job store writes in a thread), and "the ack is sent only once the record is on disk".
        replies = self.news()
        self.unacked.update((report["job"], report) for report in finished)
        alice_after, bob_after = self.alice_state(), self.bob_state()
        sent = value if value is not NOT_JSON else (payload[:200], binary)

        assert all(reply.get("reason") != INTERNAL_ERROR for reply in replies), (sent, replies)
        # Nothing bob says touches alice, her jobs or her connection; bob stays connected.
        assert alice_after == alice_before, sent
        assert self.service.workers.get("bob") is bob and not self.bob.closes, (sent, self.bob.closes)
        for report in model.accepted:
            chunks = self.chunks.setdefault(report["job"], {})
            if report["type"] == "output":
                chunks.setdefault(report["seq"], report["data"])
            elif report["type"] == "finished":
                # "handled exactly as `output` messages before this one"
                for chunk in report.get("output") or []:
                    chunks.setdefault(chunk["seq"], chunk["data"])
                self.ended.append(report["job"])
            elif report["type"] == "rejected":
                self.rejected[report["job"]] = when
        self.check_placements()
        assert _answers(replies) == expected, (sent, replies)
        # The jobs still running on bob are the model's, and queued ones placed again.
        running = set(bob.running)
        assert model.running <= running and running - model.running <= queued, (sent, running, model.running)
        # A frame changes only the jobs its accepted reports are about (drop: "changes nothing").
        changed = {job for job, state in bob_before.items() if bob_after[job] != state}
        assert changed <= {report["job"] for report in model.accepted} | queued, (sent, changed)
        for report in model.accepted:
            job = self.dispatcher.jobs.get(report["job"])
            if report["type"] == "started" and job is not None:
                assert job.started_at is not None and job.created_at <= job.started_at <= self.now(), job
                assert self.started.setdefault(job.id, job.started_at) == job.started_at, (report, job)
        return finished


@dataclass(frozen=True)
class JobRef:
    """A job of alice's or bob's, chosen when the message is sent.

    Strategies must not depend on state that changes between examples (the
    ids of bob's jobs do), so they draw a reference and the test resolves
    it: ``bob``'s running jobs, the ones he ``ended``, the ones he rejected
    that are ``queued``, or ``alice``'s.
    """

    owner: str
    index: int


def _job_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(JobRef, st.sampled_from(["alice", "bob", "bob", "ended", "queued"]), st.integers(0, 5)),
        st.builds(JobRef, st.just("bob"), st.integers(0, 5)),
        st.integers(min_value=-2, max_value=10**6),
        st.sampled_from([0, MAX_ID, MAX_ID + 1, 2**63, True, 1.0, "1"]),
        json_values,
    )


def _break(parts: tuple[dict[str, Any], str, Any, bool]) -> dict[str, Any]:
    """A message with one field dropped, or given another value (MISSING: dropped)."""
    message, name, value, drop = parts
    if drop or value is MISSING:
        return {key: each for key, each in message.items() if key != name}
    return {**message, name: value}


def _edge(message: dict[str, Any], table: dict[str, list[Any]], odd: st.SearchStrategy[Any]) -> Any:
    """*message* with one field (mostly one of its own) dropped or set to an edge or odd value."""
    own = sorted(set(message) & set(table))
    fields = (
        _weighted((3, st.sampled_from(own)), (1, st.sampled_from(sorted(table))))
        if own
        else st.sampled_from(sorted(table))
    )
    return fields.flatmap(
        lambda name: _weighted((3, st.sampled_from(table[name])), (1, odd)).map(
            lambda value: _break((message, name, value, False))
        )
    )


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


# A field left out (in the tables below, and for _break).
MISSING = _Missing()

# For each field, values at and past the edge of its rule in docs/protocol.md,
# and MISSING: the near-valid messages of the fuzzing, and a sweep of their own.
EDGE_TIMES = [MISSING, None, -1, -0.001, 0, MAX_TIME, MAX_TIME + 1, 1.8e12, "1764195600", True, float("nan")]
EDGE_INT32 = [MISSING, None, 0, 1, -(2**31), -(2**31) - 1, 2**31 - 1, 2**31, 1.0, "0", True]
EDGE_FLAGS = [MISSING, None, True, False, 0, 1, "true"]
FIELD_VALUES: dict[str, list[Any]] = {
    "job": [MISSING, None, 0, -1, 1, MAX_ID, MAX_ID + 1, 1.0, "1", True, [1]],
    "pid": [MISSING, None, 0, 1, 2**31 - 1, 2**31, -5, 1.0, "7", True],
    "at": EDGE_TIMES,
    "stream": [MISSING, None, "stdin", "STDOUT", "", 1, ["stdout"]],
    "seq": [MISSING, None, -1, 0, 1, MAX_ID, MAX_ID + 1, 1.0, "1", True],
    "data": [MISSING, None, "", "\u00e9\U0001f600\udc80", 1, ["x"], {"x": 1}],
    "exitCode": EDGE_INT32,
    "signal": EDGE_INT32,
    "timedOut": EDGE_FLAGS,
    "cancelled": EDGE_FLAGS,
    "startedAt": EDGE_TIMES,
    "finishedAt": EDGE_TIMES,
    "output": [
        MISSING,
        None,
        [],
        "",
        0,
        False,
        {},
        "x",
        [None],
        [{}],
        [[]],
        [{"stream": "stdout", "seq": 1, "data": "x"}, {"stream": "stderr", "seq": 2, "data": "y"}],
        [{"stream": "stdout", "seq": 0, "data": "x"}],
        [{"stream": "stdout", "seq": MAX_ID + 1, "data": "x"}],
        [{"stream": "stdin", "seq": 1, "data": "x"}],
        [{"stream": "stdout", "seq": 1, "data": None}],
        [{"stream": "stdout", "seq": 1}],
        [{"seq": 1, "data": "x"}],
    ],
    "reason": [MISSING, None, "", "r" * 300, 5, True, ["x"], {"why": "full"}],
}
HELLO_NAMES = [
    MISSING,
    None,
    "",
    "w",
    "x" * 100,
    "x" * 101,
    "a b",
    "a,b",
    "a:b",
    "a\tb",
    "a\u2003b",
    "\u00e9",
    5,
    ["w"],
]
HELLO_VALUES: dict[str, list[Any]] = {
    "protocol": [MISSING, None, 1, 2, 2.0, 3, "2", True, [2]],
    "name": HELLO_NAMES,
    "instance": HELLO_NAMES,
    "slots": [MISSING, None, 0, 1, 10_000, 10_001, -1, 1.0, "4", True],
    "time": EDGE_TIMES,
    "labels": [
        MISSING,
        None,
        [],
        ["gpu", "x" * 100],
        [""],
        ["a b"],
        ["a,b"],
        ["a:b"],
        ["x" * 101],
        [5],
        [None],
        "gpu",
        {},
    ],
    "jobs": [
        MISSING,
        None,
        [],
        "x",
        {},
        [None],
        [[1]],
        [{"job": 1, "state": "finished", "seq": 0}, {"job": MAX_ID, "state": "running", "seq": MAX_ID}],
        [{"job": 0, "state": "running", "seq": 0}],
        [{"job": MAX_ID + 1, "state": "running", "seq": 0}],
        [{"job": "1", "state": "running", "seq": 0}],
        [{"job": 1, "state": "lost", "seq": 0}],
        [{"job": 1, "state": None, "seq": 0}],
        [{"job": 1, "state": "running", "seq": -1}],
        [{"job": 1, "state": "running", "seq": MAX_ID + 1}],
        [{"job": 1, "state": "running", "seq": 1.0}],
        [{"job": 1, "state": "running"}],
        [{"state": "running", "seq": 0}],
        [{"job": 1, "seq": 0}],
    ],
}


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of *choices*, drawn in proportion to its weight.

    ``st.one_of`` flattens the one_ofs inside it into one list of branches,
    so a strategy with many branches of its own would crowd out the rest.
    """
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


REPORT_FIELDS = (
    "job",
    "pid",
    "at",
    "stream",
    "seq",
    "data",
    "exitCode",
    "signal",
    "timedOut",
    "cancelled",
    "startedAt",
    "finishedAt",
    "output",
    "reason",
)


def _reports() -> st.SearchStrategy[dict[str, Any]]:
    job = _job_values()
    times = st.one_of(st.floats(0, 4e9), st.integers(0, 4 * 10**9), st.just(MAX_TIME))
    odd = _weighted(
        (1, st.none()),
        (2, json_values),
        (1, st.floats()),
        (1, st.integers(min_value=-(2**70), max_value=2**70)),
        (
            4,
            st.sampled_from(
                [0, -1, 2**31, MAX_ID, MAX_ID + 1, 1.8e12, MAX_TIME + 1, True, "1", [1], {}, "", "x" * 101]
            ),
        ),
    )
    chunk = {
        "stream": st.sampled_from(["stdout", "stderr"]),
        "seq": st.integers(min_value=1, max_value=12),
        "data": st.text(max_size=20),
    }
    finished = st.fixed_dictionaries(
        {
            "type": st.just("finished"),
            "job": job,
            "exitCode": st.one_of(st.none(), st.integers(-1, 255), st.sampled_from([-(2**31), 2**31 - 1])),
            "signal": st.one_of(st.none(), st.integers(1, 64)),
            "timedOut": st.booleans(),
            "cancelled": st.booleans(),
            "seq": st.integers(0, 12),
            "startedAt": times,
            "finishedAt": times,
        },
        optional={"output": st.one_of(st.none(), st.lists(st.fixed_dictionaries(chunk), max_size=3))},
    )
    well_formed = st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("started"), "job": job, "pid": st.integers(1, 2**31 - 1), "at": times}
        ),
        st.fixed_dictionaries({"type": st.just("output"), "job": job, **chunk}),
        finished,
        st.fixed_dictionaries(
            {"type": st.just("rejected"), "job": job},
            optional={"reason": st.one_of(st.none(), st.text(max_size=10))},
        ),
    )
    any_field = st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [*REPORTS, "hello", "welcome", "ack", "drop", "error", "batch", "Started", "x" * 150]
            )
        },
        optional={name: st.one_of(job, odd) for name in REPORT_FIELDS},
    )
    # A valid report with one of its fields (or, less often, another) dropped or set to an edge value.
    broken = well_formed.flatmap(lambda report: _edge(report, FIELD_VALUES, odd))
    # A finished whose output holds one broken chunk.
    broken_chunk = st.tuples(
        finished.filter(lambda report: bool(report.get("output"))),
        st.sampled_from(["stream", "seq", "data"]),
        odd,
        st.booleans(),
    ).map(
        lambda parts: {
            **parts[0],
            "output": [_break((parts[0]["output"][0], *parts[1:])), *parts[0]["output"][1:]],
        }
    )
    return _weighted((2, well_formed), (1, any_field), (3, broken), (1, broken_chunk))


# (message or raw bytes, sent as a binary frame?)
Frame = tuple[Any, bool]


def _frames() -> st.SearchStrategy[Frame]:
    reports = _reports()
    entries = _weighted(
        (6, reports),
        (1, json_values),
        (
            1,
            st.fixed_dictionaries(
                {"type": st.just("batch"), "messages": st.lists(reports, min_size=1, max_size=2)}
            ),
        ),
        (
            1,
            st.sampled_from(
                [
                    {
                        "type": "error",
                        "reason": "field 'job' must be ...",
                        "message": {"type": "run", "job": 1},
                    },
                    {
                        "type": "hello",
                        "protocol": 2,
                        "name": "bob",
                        "slots": 1,
                        "instance": "bob-agent",
                        "time": T0,
                    },
                ]
            ),
        ),
    )
    batches = st.fixed_dictionaries(
        {"type": st.just("batch"), "messages": st.lists(entries, min_size=1, max_size=20)},
        optional={"job": _job_values()},
    )
    edge_batches = st.one_of(
        st.just({"type": "batch", "messages": []}),
        st.tuples(entries, st.sampled_from([MAX_BATCH, MAX_BATCH + 1])).map(
            lambda parts: {"type": "batch", "messages": [parts[0]] * parts[1]}
        ),
        st.fixed_dictionaries({"type": st.just("batch")}, optional={"messages": json_values}),
    )
    return _weighted(
        (3, st.tuples(reports, st.just(False))),
        (1, st.tuples(reports, st.just(True))),
        (4, st.tuples(batches, st.just(False))),
        (1, st.tuples(edge_batches, st.just(False))),
        (1, st.tuples(json_values.map(lambda value: json.dumps(value).encode()), st.just(False))),
        (1, st.tuples(st.binary(max_size=40), st.booleans())),
        (
            1,
            st.tuples(
                st.sampled_from(
                    [
                        b"",
                        b"{}",
                        b"[]",
                        b'{"type": null}',
                        b'{"type": 7}',
                        b'"started"',
                        b"\xff",
                        b"{",
                        b'{"type": "batch", "messages": [1, null, "x"]}',
                        b'{"type": "batch", "messages": {"0": {"type": "started"}}}',
                        b'{"type": "' + b"t" * 150 + b'", "job": 3}',
                        b'{"type": "batch", "messages": [{"type": "' + b"t" * 150 + b'", "job": 3}]}',
                    ]
                ),
                st.just(False),
            ),
        ),
    )


def _resolve(value: Any, refs: dict[str, list[int]]) -> Any:
    if isinstance(value, JobRef):
        jobs = refs[value.owner]
        return jobs[value.index % len(jobs)] if jobs else 10**6 + value.index
    if isinstance(value, dict):
        return {key: _resolve(each, refs) for key, each in value.items()}
    if isinstance(value, list):
        return [_resolve(each, refs) for each in value]
    return value


def _payload(frame: Frame, refs: dict[str, list[int]]) -> tuple[bytes, bool, object]:
    """The bytes to send, whether binary, and the value the scheduler will decode (or NOT_JSON)."""
    content, binary = frame
    payload = content if isinstance(content, bytes) else json.dumps(_resolve(content, refs)).encode()
    if binary:
        return payload, True, NOT_JSON
    try:
        return payload, False, json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return payload, False, NOT_JSON


def _finished_report(job: object, **fields: Any) -> dict[str, Any]:
    report = {
        "type": "finished",
        "job": job,
        "exitCode": 0,
        "signal": None,
        "timedOut": False,
        "cancelled": False,
        "seq": 0,
        "startedAt": T0,
        "finishedAt": T0 + 1,
    }
    return {**report, **fields}


@settings(FUZZ, max_examples=200)
@given(frames=st.lists(_frames(), min_size=1, max_size=5))
@example(
    frames=[
        (
            {
                "type": "batch",
                "messages": [
                    _finished_report(
                        JobRef("bob", 0), seq=1, output=[{"stream": "stdout", "seq": 1, "data": "18\n"}]
                    ),
                    _finished_report(JobRef("bob", 1), exitCode=None, signal=9),
                    {"type": "started", "job": JobRef("ended", 0), "pid": 7, "at": T0},
                ],
            },
            False,
        )
    ]
)
@example(
    frames=[
        (
            {
                "type": "batch",
                "messages": [
                    {"type": "rejected", "job": JobRef("bob", 0)},
                    _finished_report(JobRef("bob", 1)),
                    {"type": "started", "job": JobRef("bob", 0), "pid": 7, "at": T0},
                ],
            },
            False,
        )
    ]
)
@example(
    frames=[
        ({"type": "batch", "messages": [_finished_report(JobRef("bob", 0))] * (MAX_BATCH + 1)}, False),
        ({"type": "batch", "messages": []}, False),
        (
            {"type": "batch", "messages": [{"type": "batch", "messages": [{"type": "x"}]}, {"type": "x"}]},
            False,
        ),
        ({"type": "batch", "messages": [_finished_report(JobRef("bob", 0))] * MAX_BATCH}, False),
    ]
)
@example(frames=[({"type": "rejected", "job": JobRef("bob", 0), "reason": 5}, False)])
@example(frames=[(_finished_report(JobRef("bob", 0), output=""), False)])
def _worker_messages(world: Workers, frames: list[Frame]) -> None:
    _bob_sends(world, frames)


def _bob_sends(world: Workers, frames: list[Frame]) -> None:
    """From a thread: bob sends *frames*, each answer checked against the model."""
    _on_reactor(lambda: Deferred.fromCoroutine(world.top_up()))
    for frame in frames:
        finished = _on_reactor(world.bob_says, frame)
        if finished:
            _on_reactor(lambda reports=finished: Deferred.fromCoroutine(world.settle(reports)))


def _first_messages_strategy() -> st.SearchStrategy[Frame]:
    valid_names = st.from_regex(r"[a-z][a-z0-9._-]{0,12}", fullmatch=True)
    names = st.one_of(
        valid_names,
        st.sampled_from(["x" * 100, "x" * 101, "a b", "a,b", "a:b", "", "\u00e9t\u00e9", "a\u2003b", "a\nb"]),
        st.text(max_size=8),
        json_values,
    )
    times = st.one_of(st.floats(0, 4e9), st.integers(0, 4 * 10**9), st.just(MAX_TIME))
    valid_entries = st.fixed_dictionaries(
        {
            "job": st.integers(1, 30),
            "state": st.sampled_from(["running", "finished"]),
            "seq": st.integers(0, 5),
        }
    )
    entries = st.one_of(
        valid_entries,
        st.fixed_dictionaries(
            {},
            optional={
                "job": st.one_of(st.integers(-1, 30), json_values),
                "state": st.one_of(st.sampled_from(["running", "finished", "lost"]), json_values),
                "seq": st.one_of(st.integers(-1, 5), json_values),
            },
        ),
        json_values,
    )
    valid = st.fixed_dictionaries(
        {
            "type": st.just("hello"),
            "protocol": st.just(2),
            "name": valid_names,
            "slots": st.integers(1, 8),
            "instance": valid_names,
            "time": times,
        },
        optional={
            "labels": st.one_of(st.none(), st.lists(valid_names, max_size=3)),
            "jobs": st.one_of(st.none(), st.lists(valid_entries, max_size=3)),
        },
    )
    # Each field valid more often than not, so most hellos have one or two odd fields.
    odd = st.fixed_dictionaries(
        {
            "type": st.just("hello"),
            "protocol": st.one_of(*[st.just(2)] * 6, st.just(1), json_values),
            "name": st.one_of(valid_names, valid_names, valid_names, names),
            "slots": st.one_of(*[st.integers(1, 8)] * 3, st.integers(-1, 0), st.just(10_001), json_values),
            "instance": st.one_of(valid_names, valid_names, valid_names, names),
            "time": st.one_of(times, times, times, st.just(1.8e12), st.floats(), json_values),
        },
        optional={
            "labels": st.one_of(
                st.none(),
                st.lists(valid_names, max_size=3),
                st.lists(valid_names, max_size=3),
                st.lists(names, min_size=1, max_size=3),
                json_values,
            ),
            "jobs": st.one_of(
                st.none(),
                st.lists(valid_entries, max_size=3),
                st.lists(valid_entries, max_size=3),
                st.lists(entries, min_size=1, max_size=3),
                json_values,
            ),
        },
    )
    # A valid hello with one field dropped, or given a value its rule does not allow.
    bad_names = _weighted(
        (3, st.sampled_from(["", "x" * 101, "a b", "a,b", "a:b", "a\tb", "a\u2003b", " x", "x\n"])),
        (1, json_values.filter(lambda value: not isinstance(value, str))),
    )
    bad_entries = st.one_of(
        st.tuples(
            valid_entries,
            st.sampled_from(["job", "state", "seq"]),
            st.sampled_from([None, 0, -1, MAX_ID + 1, "1", "lost", "Running", 1.0, True]),
            st.booleans(),
        ).map(_break),
        json_values.filter(lambda value: not isinstance(value, dict)),
    )
    not_lists = json_values.filter(lambda value: not isinstance(value, list) and value is not None)
    bad_fields = st.one_of(
        st.tuples(st.just("protocol"), st.sampled_from([1, 3, "2", None, 2.5, True, [2]])),
        st.tuples(st.sampled_from(["name", "instance"]), bad_names),
        st.tuples(st.just("slots"), st.sampled_from([0, -1, 10_001, 1.5, "4", True, None])),
        st.tuples(
            st.just("time"),
            st.sampled_from([-1, -0.5, 1.8e12, MAX_TIME + 1, "1764195600", None, True, float("nan")]),
        ),
        st.tuples(
            st.just("labels"),
            st.one_of(
                st.tuples(st.lists(valid_names, max_size=2), bad_names).map(lambda p: [*p[0], p[1]]),
                not_lists,
            ),
        ),
        st.tuples(
            st.just("jobs"),
            st.one_of(
                st.tuples(st.lists(valid_entries, max_size=2), bad_entries).map(lambda p: [*p[0], p[1]]),
                not_lists,
            ),
        ),
    )
    broken = _weighted(
        (
            1,
            st.tuples(valid, bad_fields, st.sampled_from([False, False, False, True])).map(
                lambda parts: _break((parts[0], parts[1][0], parts[1][1], parts[2]))
            ),
        ),
        (1, valid.flatmap(lambda hello: _edge(hello, HELLO_VALUES, json_values))),
    )
    return _weighted(
        (1, st.tuples(valid, st.just(False))),
        (2, st.tuples(odd, st.just(False))),
        (4, st.tuples(broken, st.just(False))),
        (1, st.tuples(valid.map(lambda hello: {"type": "batch", "messages": [hello]}), st.just(False))),
        (2, _frames()),
    )


def _hello(**fields: Any) -> dict[str, Any]:
    hello = {"type": "hello", "protocol": 2, "name": "w", "slots": 1, "instance": "w-agent", "time": T0}
    return {**hello, **fields}


@settings(FUZZ, max_examples=400)
@given(first=_first_messages_strategy())
@example(first=(_hello(protocol=1, name="mallory", jobs=[{"job": 1, "state": "running", "seq": 0}]), False))
@example(first=(_hello(jobs=[{"job": 1, "state": "finished", "seq": 3}], labels=["gpu"]), False))
@example(first=(_hello(labels=None), False))
@example(first=(_hello(jobs=None), False))
@example(first=({"type": "t" * 150, "job": 3, "data": "not echoed"}, False))
@example(first=({"type": "error", "reason": "field 'job' must be ...", "message": {"type": "run"}}, False))
def _first_messages(world: Workers, first: Frame) -> None:
    assume(_first_message(world, first))


def _first_message(world: Workers, first: Frame) -> bool:
    """From a thread: a new connection sends *first*, and the answer is checked against the model.

    False if *first* is a hello naming alice or bob: taking a live worker's
    name over is not this test's business.
    """

    def exchange() -> dict[str, Any] | None:
        assert world.news() == []
        world.check_placements()
        payload, binary, value = _payload(first, world.refs())
        if isinstance(value, dict) and value.get("name") in ("alice", "bob"):
            return None
        before = world.alice_state()
        sent_at = world.now()
        connection = Connection(world.service)
        replies = connection.say(payload, binary)
        after = world.alice_state()
        worker = connection.protocol.worker
        registered = None if worker is None else (worker.name, worker.labels, worker.slots)
        if worker is not None:
            connection.protocol.onClose(True, 1000, "done")
        assert world.news() == []
        world.check_placements()
        return {
            "value": value,
            "sent": value if value is not NOT_JSON else (payload[:200], binary),
            "replies": replies,
            "closes": connection.closes,
            "alice": (before, after),
            "registered": registered,
            "sent_at": sent_at,
        }

    outcome = _on_reactor(exchange)
    if outcome is None:
        return False
    value, sent, replies, closes = outcome["value"], outcome["sent"], outcome["replies"], outcome["closes"]
    kinds = [reply["type"] for reply in replies]
    assert outcome["alice"][1] == outcome["alice"][0], sent
    assert all(reply.get("reason") != INTERNAL_ERROR for reply in replies), (sent, replies)
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        assert kinds == ["error"] and not closes, (sent, replies)
        assert _answers(replies) == [("error", _echo(value))], (sent, replies)
    elif value["type"] != "hello":
        # "Anything else before the hello, a `batch` included, is answered with `error`."
        assert kinds == ["error"] and not closes, (sent, replies)
        assert _answers(replies) == [("error", _echo(value))], (sent, replies)
    elif not _is_protocol_2(value.get("protocol")):
        assert kinds == ["refused"] and set(replies[0]) == {"type", "reason"} and closes, (sent, replies)
        # "with P as JSON (`1`, `null`)"
        reason, written = replies[0]["reason"], json.dumps(value.get("protocol"))
        if len(written) <= 20:
            assert reason == f"protocol {written}{UNSUPPORTED}", (sent, reason)
        else:
            assert reason.startswith("protocol ") and reason.endswith(UNSUPPORTED), (sent, reason)
    elif _hello_is_malformed(value):
        assert kinds == ["error"] and not closes, (sent, replies)
        assert _answers(replies) == [("error", _echo(value))], (sent, replies)
    else:
        assert kinds == ["welcome"] and not closes, (sent, replies)
        (welcome,) = replies
        # "every field is always present"
        assert set(welcome) == {"type", "protocol", "name", "resume", "drop", "clockOffset"}, welcome
        assert welcome["protocol"] == 2 and welcome["name"] == value["name"], welcome
        # A new worker owns none of the jobs it claims: all of them are dropped.
        reported = {entry["job"] for entry in value.get("jobs") or []}
        assert welcome["resume"] == {} and sorted(welcome["drop"]) == sorted(reported), (sent, welcome)
        offset = welcome["clockOffset"]
        assert _is_time(abs(offset)) and abs(offset - (outcome["sent_at"] - value["time"])) < 1.0, (
            sent,
            welcome,
        )
        labels = frozenset(value.get("labels") or [])
        assert outcome["registered"] == (value["name"], labels, value["slots"]), outcome["registered"]
    return True


@pytest_twisted.ensureDeferred
async def test_random_messages_on_the_worker_socket(tmp_path: Path) -> None:
    """Every frame gets what docs/protocol.md says; nothing escapes; alice's jobs are safe.

    bob, a connected worker, sends random bytes, random JSON, reports with
    random or broken fields about his running jobs, his ended ones, the ones
    he rejected, alice's and unknown ones, and batches of all of these; each
    answer (``error`` with its echo, ``drop``, nothing, an ``ack`` once the
    result is on disk) is checked against a model of the document, and
    alice's jobs, output and connection never change.  Then fresh
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


SWEEP_REPORTS = {
    "started": {"type": "started", "job": JobRef("bob", 0), "pid": 4242, "at": T0},
    "output": {"type": "output", "job": JobRef("bob", 0), "stream": "stdout", "seq": 1, "data": "x\n"},
    "finished": _finished_report(
        JobRef("bob", 0), seq=1, output=[{"stream": "stdout", "seq": 1, "data": "x\n"}]
    ),
    "rejected": {"type": "rejected", "job": JobRef("bob", 0), "reason": "no free slot"},
}


def _sweep(world: Workers) -> None:
    for report in SWEEP_REPORTS.values():
        for name, values in FIELD_VALUES.items():
            batch = {"type": "batch", "messages": [_break((report, name, value, False)) for value in values]}
            _bob_sends(world, [(batch, False)])
    hello = _hello(name="sweep", labels=["gpu"], jobs=[{"job": 1, "state": "running", "seq": 0}])
    for name, values in HELLO_VALUES.items():
        for value in values:
            assert _first_message(world, (_break((hello, name, value, False)), False))


@pytest_twisted.ensureDeferred
async def test_each_field_at_and_past_the_edge_of_its_rule(tmp_path: Path) -> None:
    """Near-valid messages, every one: each field of each report (in a batch of
    its variants) and of the hello (alone, on a new connection) left out or set
    to each value at and past the edge of its rule, checked against the model
    as in the fuzzing."""
    service = _make_service(tmp_path)
    try:
        world = Workers(service)
        await world.start()
        await _in_thread(_sweep, world)
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
async def test_a_worker_time_beyond_year_9999_is_an_error_and_does_not_break_the_jobs_api(
    tmp_path: Path,
) -> None:
    service = _make_service(tmp_path)
    try:
        world = Workers(service)
        await world.start()
        job = world.bob_jobs()[0]
        # Milliseconds where seconds belong: a plausible worker bug.
        for report, field_name in (
            ({"type": "started", "job": job, "pid": 1, "at": 1.8e12}, "'at'"),
            (_finished_report(job, finishedAt=1.8e12), "'finishedAt'"),
        ):
            replies = world.bob.say(json.dumps(report).encode())
            assert [reply["type"] for reply in replies] == ["error"], replies
            assert field_name in replies[0]["reason"], replies
        await world.settle([])
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
        # In one reactor turn, so all land in the same write batch.
        for seq, answer in ((2**63, ["error"]), (MAX_ID, [])):
            replies = world.bob.say(
                json.dumps(
                    {"type": "output", "job": bob_job, "stream": "stdout", "seq": seq, "data": "x"}
                ).encode()
            )
            assert [reply["type"] for reply in replies] == answer, replies
        world.alice.say(json.dumps(_finished_report(alice_job, seq=1)).encode())
        stored = await service.job_store.get(alice_job)
        assert stored is not None and stored.status is JobStatus.SUCCEEDED, stored
    finally:
        await _close(service)
