"""Protocol 2 conformance: the scheduler's side, rule by rule, from docs/protocol.md.

Each test is named after a rule, table row or field requirement of the
document and checks it from the outside: a scripted fake worker feeds a
``WorkerServerProtocol`` one frame at a time (``onMessage``), and the test
reads what the scheduler sent back and what it recorded.  Nothing here
starts a socket or sleeps:

- ``Connection`` is one protocol object in memory with ``sendMessage``,
  ``sendClose`` and ``sendPing`` captured.  Like Autobahn, ``sendClose``
  moves the connection out of ``STATE_OPEN``, so a frame sent after the
  close is kept apart (``late``) rather than counted as delivered.
- ``World`` is a real ``Dispatcher`` with a ``JobBook`` and a
  ``WorkerRegistry`` on ``twisted.internet.task.Clock``, recording into
  ``Recorder``, an in-memory job store (the latest record of each job, and
  its output chunks by seq, first write wins).  Final records leave the
  ``JobBook``, so ended jobs are read from the recorder.
- The scheduler gathers what it sends within one reactor turn into one
  frame (``clock.callLater(0, ...)``): after each message the harness runs
  ``clock.advance(0)``, and keeps both the frames and the messages they
  carry (a ``batch`` frame is flattened into its entries).
- The clock is the scheduler's time; a hello's ``time`` is the worker's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import provider

from scheduler import cron
from scheduler.dispatch import Dispatcher
from scheduler.http_json import worker_json
from scheduler.job_book import JobBook
from scheduler.jobs import Job, JobStatus
from scheduler.settings import Settings
from scheduler.tasks import Task, TaskOptions
from scheduler.worker_protocol import WorkerServerFactory, WorkerServerProtocol
from scheduler.worker_registry import WorkerRegistry

# The scheduler's clock when a World starts: a plausible Unix time.
T0 = 1_764_195_600.0
MAX_INT = 2**53
IN_USE = (
    "the worker name 'w1' is in use by another live connection: is a second worker running "
    "with the same --name? Give each worker a name of its own"
)

Message = dict[str, Any]


def near(value: float) -> Any:
    """Equal to *value* to the microsecond (pytest.approx's relative default is
    half an hour at today's Unix times)."""
    return pytest.approx(value, rel=0, abs=1e-6)


# -- the in-memory job store ---------------------------------------------------------


class Recorder:
    """The dispatcher's JobRecorder in memory.

    ``hold``: records of ended jobs are not "on disk" until ``release()``
    fires their Deferreds (other records commit at once).
    """

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.puts: list[Job] = []
        self.chunks: dict[int, dict[int, tuple[str, str]]] = {}
        self.hold = False
        self.pending: list[Deferred[None]] = []

    def put(self, job: Job) -> Deferred[None]:
        self.puts.append(job)
        self.jobs[job.id] = job
        if self.hold and job.status.final:
            waiting: Deferred[None] = Deferred()
            self.pending.append(waiting)
            return waiting
        return succeed(None)

    def append_output(self, job_id: int, seq: int, stream: str, data: str) -> None:
        # As the job store: a (job_id, seq) already stored is ignored.
        self.chunks.setdefault(job_id, {}).setdefault(seq, (stream, data))

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for waiting in pending:
            waiting.callback(None)

    def fail(self) -> None:
        """The held records could not be written."""
        pending, self.pending = self.pending, []
        for waiting in pending:
            waiting.errback(OSError("disk full"))

    def status(self, job_id: int) -> JobStatus:
        return self.jobs[job_id].status

    def final_puts(self, job_id: int) -> list[Job]:
        return [job for job in self.puts if job.id == job_id and job.status.final]

    def seqs(self, job_id: int) -> list[int]:
        return sorted(self.chunks.get(job_id, {}))

    def output(self, job_id: int) -> str:
        """The stored output, read back in seq order."""
        chunks = self.chunks.get(job_id, {})
        return "".join(chunks[seq][1] for seq in sorted(chunks))

    def snapshot(self) -> tuple[int, dict[int, dict[int, tuple[str, str]]]]:
        return len(self.puts), {job: dict(chunks) for job, chunks in self.chunks.items()}


# -- a scripted worker's connection ---------------------------------------------------


class Connection:
    """One WorkerServerProtocol in memory, as a worker at *peer* sees it."""

    def __init__(self, world: World, peer: str) -> None:
        self.world = world
        protocol = WorkerServerProtocol()
        protocol.factory = world.factory
        protocol.state = protocol.STATE_OPEN
        protocol.peer = peer
        protocol.sendMessage = self._frame  # type: ignore[method-assign]
        protocol.sendClose = self._close  # type: ignore[method-assign]
        protocol.sendPing = self._ping  # type: ignore[method-assign]
        self.protocol = protocol
        # Frames as the worker received them (decoded), and those sent after the close.
        self.frames: list[Message] = []
        self.raw: list[bytes] = []
        self.late: list[Message] = []
        self.closes: list[str | None] = []
        # ("frame", n) and ("close", reason) in the order they happened.
        self.events: list[tuple[str, object]] = []
        self.pings = 0

    # -- captured --------------------------------------------------------

    def _frame(self, payload: bytes, isBinary: bool = False, *args: Any, **kwargs: Any) -> None:
        assert not isBinary, "the scheduler sends text frames only"
        frame = json.loads(payload)
        if self.protocol.state != self.protocol.STATE_OPEN:
            self.late.append(frame)
            return
        self.raw.append(payload)
        self.frames.append(frame)
        self.events.append(("frame", len(self.frames) - 1))

    def _close(self, code: int | None = None, reason: str | None = None) -> None:
        if self.protocol.state == self.protocol.STATE_OPEN:
            self.protocol.state = self.protocol.STATE_CLOSING
        self.closes.append(reason)
        self.events.append(("close", reason))

    def _ping(self, payload: bytes | None = None) -> None:
        self.pings += 1

    @property
    def messages(self) -> list[Message]:
        """Every message received, batches flattened, in order."""
        out: list[Message] = []
        for frame in self.frames:
            if frame.get("type") == "batch" and isinstance(frame.get("messages"), list):
                out.extend(frame["messages"])
            else:
                out.append(frame)
        return out

    def types(self) -> list[str]:
        return [message["type"] for message in self.messages]

    def of_type(self, kind: str) -> list[Message]:
        return [message for message in self.messages if message["type"] == kind]

    def runs(self) -> list[int]:
        return [message["job"] for message in self.of_type("run")]

    # -- sending ---------------------------------------------------------

    def raw_frame(self, payload: bytes, binary: bool = False) -> list[Message]:
        """Feed one frame; what the scheduler sent in answer (after the turn ends)."""
        before = len(self.messages)
        self.protocol.onMessage(payload, binary)
        self.world.clock.advance(0)
        return self.messages[before:]

    def say(self, message: Message) -> list[Message]:
        return self.raw_frame(json.dumps(message).encode())

    def batch(self, *messages: object) -> list[Message]:
        return self.say({"type": "batch", "messages": list(messages)})

    def hello(self, name: str = "w1", **fields: Any) -> list[Message]:
        return self.say(self.world.hello_message(name, **fields))

    def drop(self) -> None:
        """The TCP connection ends (as Autobahn reports it)."""
        self.protocol.state = self.protocol.STATE_CLOSED
        self.protocol.onClose(False, 1006, "connection lost")
        self.world.clock.advance(0)

    def closed(self) -> None:
        """The close handshake the scheduler started has finished."""
        self.protocol.state = self.protocol.STATE_CLOSED
        self.protocol.onClose(True, 1000, self.closes[-1] if self.closes else None)
        self.world.clock.advance(0)


class World:
    def __init__(
        self, *, lost_after: float = Settings.lost_after, reserved: frozenset[str] = frozenset()
    ) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.jobs = JobBook(self.clock)
        self.workers = WorkerRegistry()
        self.recorder = Recorder()
        self.tasks: dict[int, Task] = {}
        self.dispatcher = Dispatcher(
            self.clock, self.jobs, self.workers, self.recorder, self.tasks.get, lost_after=lost_after
        )
        # *reserved*: names with a token of their own in the worker tokens file.
        self.factory = WorkerServerFactory(self.dispatcher, self.clock, reserved=reserved.__contains__)
        self._port = 40000

    @property
    def now(self) -> float:
        return self.clock.seconds()

    def connect(self, peer: str | None = None, *, token_name: str | None = None) -> Connection:
        """A new WebSocket, open (the hello deadline starts now).

        *token_name*: the connection used that worker name's own token (as
        the handshake check decides); None for the shared token.
        """
        self._port += 1
        connection = Connection(self, peer or f"tcp:10.0.0.1:{self._port}")
        connection.protocol._allowed_name = token_name
        connection.protocol.onOpen()
        return connection

    def hello_message(self, name: str = "w1", **fields: Any) -> Message:
        """A valid hello (the worker's clock = the scheduler's), with *fields* replaced."""
        message: Message = {
            "type": "hello",
            "protocol": 2,
            "name": name,
            "labels": [],
            "slots": 4,
            "instance": f"agent-of-{name}",
            "time": self.now,
            "jobs": [],
        }
        message.update(fields)
        return message

    def worker(self, name: str = "w1", **fields: Any) -> Connection:
        """A connected, welcomed worker."""
        connection = self.connect()
        replies = connection.hello(name, **fields)
        assert [reply["type"] for reply in replies][:1] == ["welcome"], replies
        return connection

    def job(self, target: str = "worker:w1", task_id: int | None = None) -> int:
        (job,) = self.dispatcher.run_now("sleep 9", target=target, task_id=task_id)
        self.clock.advance(0)
        return job.id

    def retried_task(self) -> int:
        """A task whose failed or lost runs are retried once, 1 s later."""
        task = Task(
            1, "nightly", cron.parse("0 3 * * *", UTC), "sleep 9", TaskOptions(retries=1, retryDelay=1.0)
        )
        self.tasks[task.id] = task
        return task.id

    def attempts(self, task_id: int) -> list[Job]:
        """The task's jobs still in play."""
        return [job for job in self.jobs if job.task_id == task_id]

    def active(self, job_id: int) -> Job:
        job = self.jobs.get(job_id)
        assert job is not None, f"job {job_id} is not active"
        return job

    def finished(self, job: int, exit_code: int | None = 0, **fields: Any) -> Message:
        """A valid finished for *job* (worker clock = scheduler clock)."""
        message: Message = {
            "type": "finished",
            "job": job,
            "exitCode": exit_code,
            "signal": None,
            "timedOut": False,
            "cancelled": False,
            "seq": 0,
            "startedAt": self.now,
            "finishedAt": self.now,
        }
        message.update(fields)
        return message

    def started(self, job: int, **fields: Any) -> Message:
        message: Message = {"type": "started", "job": job, "pid": 4242, "at": self.now}
        message.update(fields)
        return message


def output(job: int, seq: int, data: str = "x", stream: str = "stdout") -> Message:
    return {"type": "output", "job": job, "stream": stream, "seq": seq, "data": data}


def rejected(job: int, reason: str = "no free slot") -> Message:
    return {"type": "rejected", "job": job, "reason": reason}


def running(job: int, seq: int = 0) -> Message:
    return {"job": job, "state": "running", "seq": seq}


def types(messages: list[Message]) -> list[str]:
    return [message["type"] for message in messages]


def only_error(replies: list[Message], field: str) -> Message:
    """The replies are one error whose reason names *field*."""
    assert types(replies) == ["error"], replies
    assert f"'{field}'" in replies[0]["reason"], replies[0]
    return replies[0]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def logged() -> Iterator[list[tuple[LogLevel, str]]]:
    lines: list[tuple[LogLevel, str]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level in (LogLevel.warn, LogLevel.info, LogLevel.error):
            lines.append((level, formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# == Connection and frames ============================================================


def test_the_scheduler_pings_every_20s_and_drops_a_peer_silent_for_20s_more(world: World) -> None:
    assert world.factory.autoPingInterval == 20
    assert world.factory.autoPingTimeout == 20


def test_a_frame_is_at_most_2_mib(world: World) -> None:
    assert world.factory.maxMessagePayloadSize == 2 * 1024 * 1024
    assert world.factory.maxFramePayloadSize == 2 * 1024 * 1024


def test_a_binary_frame_is_answered_with_error(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    replies = w1.raw_frame(json.dumps(world.started(job)).encode(), binary=True)
    assert types(replies) == ["error"]
    assert world.active(job).started_at is None
    assert w1.closes == []


def test_the_scheduler_writes_json_as_ascii_with_u_escapes(world: World) -> None:
    w1 = world.connect()
    w1.hello("wörker-ß")
    assert w1.raw and all(payload.isascii() for payload in w1.raw)
    assert w1.messages[0]["name"] == "wörker-ß"


def test_the_scheduler_reads_utf8_json_that_is_not_escaped(world: World) -> None:
    w1 = world.connect()
    replies = w1.raw_frame(json.dumps(world.hello_message("wörker"), ensure_ascii=False).encode("utf-8"))
    assert types(replies) == ["welcome"]
    assert world.workers.get("wörker") is not None


def test_fields_not_described_are_ignored(world: World) -> None:
    w1 = world.worker(colour="blue")
    job = world.job()
    assert w1.say(world.started(job, colour="blue", at=T0)) == []
    assert world.active(job).started_at == T0


def test_field_names_are_case_sensitive(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    message = world.started(job)
    message["At"] = message.pop("at")
    only_error(w1.say(message), "at")
    assert world.active(job).started_at is None


# == Batches ==========================================================================


def test_a_batchs_entries_are_handled_in_order(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    replies = w1.batch(output(job, 1, "a"), world.finished(job, seq=1), output(job, 2, "late"))
    # The finished ended the job before the third entry: that one is a report on an ended job.
    assert types(replies) == ["drop", "ack"] or types(replies) == ["ack", "drop"], replies
    assert world.recorder.status(job) is JobStatus.SUCCEEDED
    assert world.recorder.output(job) == "a"
    assert world.recorder.jobs[job].reason is None


def test_a_malformed_batch_entry_gets_its_own_error_and_the_others_are_handled(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    replies = w1.batch(
        output(job, 1, "a"), {"type": "started", "job": job, "pid": 1, "at": "soon"}, output(job, 2, "b")
    )
    error = only_error(replies, "at")
    assert error["message"] == {"type": "started", "job": job}
    assert world.recorder.output(job) == "ab"
    assert world.active(job).started_at is None


def test_a_batchs_errors_come_in_the_order_of_its_entries(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    replies = w1.batch(
        world.started(job, at="soon"),
        output(job, 1, "a"),
        output(job, 2, "b", stream="tty"),
        world.started(job, pid=0),
    )
    assert types(replies) == ["error", "error", "error"]
    assert [
        "'at'" in replies[0]["reason"],
        "'stream'" in replies[1]["reason"],
        "'pid'" in replies[2]["reason"],
    ] == [
        True,
        True,
        True,
    ]
    assert world.recorder.seqs(job) == [1]


def test_a_batch_entry_that_is_not_an_object_gets_an_error_and_the_others_are_handled(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    replies = w1.batch(7, output(job, 1, "a"), "junk")
    assert types(replies) == ["error", "error"]
    assert world.recorder.output(job) == "a"


def test_a_batch_inside_a_batch_is_an_error_and_the_other_entries_are_handled(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    replies = w1.batch(
        output(job, 1, "a"), {"type": "batch", "messages": [output(job, 2, "b")]}, output(job, 3, "c")
    )
    assert types(replies) == ["error"]
    assert replies[0].get("message", {}).get("type") == "batch"
    assert world.recorder.seqs(job) == [1, 3]


def test_a_batch_of_1000_messages_is_handled_whole(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    replies = w1.batch(*(output(job, seq, "x") for seq in range(1, 1001)))
    assert replies == []
    assert world.recorder.seqs(job) == list(range(1, 1001))


@pytest.mark.parametrize("count", [0, 1001])
def test_a_batch_outside_1_to_1000_messages_is_an_error_naming_messages_and_nothing_is_handled(
    world: World, count: int
) -> None:
    w1 = world.worker()
    job = world.job()
    only_error(w1.batch(*(output(job, seq, "x") for seq in range(1, count + 1))), "messages")
    assert world.recorder.seqs(job) == []
    assert w1.closes == []


@pytest.mark.parametrize("messages", [None, {"0": {"type": "started"}}, "run"])
def test_a_batch_whose_messages_is_not_a_list_is_an_error_naming_messages(
    world: World, messages: object
) -> None:
    w1 = world.worker()
    only_error(w1.say({"type": "batch", "messages": messages}), "messages")


def test_a_hello_travels_alone_not_in_a_batch(world: World) -> None:
    w1 = world.connect()
    replies = w1.batch(world.hello_message())
    assert "welcome" not in types(replies)
    assert world.workers.get("w1") is None
    assert w1.closes == []
    assert types(w1.hello()) == ["welcome"]


def test_what_the_scheduler_sends_in_one_turn_travels_in_one_frame_as_a_batch(world: World) -> None:
    w1 = world.worker()
    frames_before = len(w1.frames)
    (first,) = world.dispatcher.run_now("sleep 9", target="worker:w1")
    (second,) = world.dispatcher.run_now("date", target="worker:w1")
    world.clock.advance(0)
    new_frames = w1.frames[frames_before:]
    assert len(new_frames) == 1, new_frames
    assert new_frames[0]["type"] == "batch"
    assert [message["type"] for message in new_frames[0]["messages"]] == ["run", "run"]
    assert [message["job"] for message in new_frames[0]["messages"]] == [first.id, second.id]


# == Handshake ========================================================================


def test_a_protocol_1_hello_is_refused_naming_version_2_and_closed(world: World) -> None:
    w1 = world.connect()
    replies = w1.hello(protocol=1)
    assert replies == [
        {
            "type": "refused",
            "reason": "protocol 1 is not supported: this scheduler speaks protocol 2; "
            "upgrade the worker to the scheduler's release",
        }
    ]
    assert w1.closes and w1.late == []
    assert world.workers.get("w1") is None


@pytest.mark.parametrize("protocol", [3, 0])
def test_a_hello_of_any_protocol_but_2_is_refused(world: World, protocol: int) -> None:
    w1 = world.connect()
    replies = w1.hello(protocol=protocol)
    assert types(replies) == ["refused"]
    assert replies[0]["reason"].startswith(
        f"protocol {protocol} is not supported: this scheduler speaks protocol 2"
    )
    assert w1.closes


def test_no_hello_within_10s_is_refused_then_closed(world: World) -> None:
    w1 = world.connect()
    world.clock.advance(9.99)
    assert w1.frames == [] and w1.closes == []
    world.clock.advance(0.01)
    assert w1.messages == [{"type": "refused", "reason": "no hello within 10s"}]
    assert w1.late == []
    assert w1.closes
    kinds = [kind for kind, _ in w1.events]
    assert kinds == ["frame", "close"], w1.events


def test_a_malformed_hello_gets_an_error_and_a_corrected_one_is_welcome(world: World) -> None:
    w1 = world.connect()
    world.clock.advance(2)
    only_error(w1.hello(slots=0), "slots")
    assert w1.closes == []
    world.clock.advance(3)
    assert types(w1.hello(time=world.now)) == ["welcome"]
    world.clock.advance(60)
    assert "refused" not in w1.types() and w1.closes == []


def test_a_malformed_hello_does_not_extend_the_hello_deadline(world: World) -> None:
    w1 = world.connect()
    world.clock.advance(9)
    only_error(w1.hello(name="a b"), "name")
    world.clock.advance(0.99)
    assert w1.closes == []
    world.clock.advance(0.01)
    assert w1.messages[-1] == {"type": "refused", "reason": "no hello within 10s"}
    assert w1.closes


def test_a_hello_in_time_stops_the_hello_deadline(world: World) -> None:
    w1 = world.connect()
    world.clock.advance(9.5)
    assert types(w1.hello(time=world.now)) == ["welcome"]
    world.clock.advance(60)
    assert "refused" not in w1.types() and w1.closes == []


def test_a_per_worker_token_used_with_another_name_is_refused() -> None:
    world = World(reserved=frozenset({"w1"}))
    w2 = world.connect(token_name="w1")
    assert w2.hello("w2") == [
        {"type": "refused", "reason": "this token is not valid for the worker name 'w2'"}
    ]
    assert w2.closes and world.workers.get("w2") is None


def test_the_shared_token_used_for_a_name_with_its_own_token_is_refused() -> None:
    world = World(reserved=frozenset({"w1"}))
    w1 = world.connect(token_name=None)
    assert w1.hello("w1") == [
        {
            "type": "refused",
            "reason": "the worker name 'w1' has its own token in the scheduler's worker tokens file; "
            "connect with that token",
        }
    ]
    assert w1.closes and world.workers.get("w1") is None
    assert types(world.connect(token_name="w1").hello("w1")) == ["welcome"]


def test_the_welcome_has_every_field(world: World) -> None:
    w1 = world.connect()
    (welcome,) = w1.hello("w1")
    assert welcome["type"] == "welcome"
    assert welcome["protocol"] == 2
    assert welcome["name"] == "w1"
    assert welcome["resume"] == {}
    assert welcome["drop"] == []
    assert welcome["clockOffset"] == near(0.0)


def test_a_report_before_the_hello_is_not_handled_and_gets_nothing_but_an_error(world: World) -> None:
    w2 = world.worker("w2")
    job = world.job("worker:w2")
    w1 = world.connect()
    replies = w1.say(world.started(job))
    assert set(types(replies)) <= {"error", "refused"}, replies
    assert world.active(job).started_at is None
    assert w2.closes == []


def test_nothing_but_welcome_or_refused_is_sent_before_the_welcome(world: World) -> None:
    """Queued work waits for the welcome: the welcome is the first message."""
    job = world.job()
    w1 = world.connect()
    assert w1.frames == []
    w1.hello()
    assert w1.types()[0] == "welcome"
    assert w1.runs() == [job]


def test_a_malformed_message_before_the_welcome_does_not_close_and_the_hello_still_works(
    world: World,
) -> None:
    w1 = world.connect()
    for payload in (b"{", b"[1]", b'{"type": 5}'):
        replies = w1.raw_frame(payload)
        assert types(replies) == ["error"]
    assert w1.closes == []
    assert types(w1.hello()) == ["welcome"]


# == Malformed messages and unknown types ============================================


@pytest.mark.parametrize(
    ("payload", "reason_has"),
    [
        (b"\xff\xfe", None),
        (b"not json", None),
        (b"[1, 2]", None),
        (b'"hello"', None),
        (b"null", None),
        (b'{"job": 4}', "'type'"),
        (b'{"type": 4}', "'type'"),
        (b'{"type": null}', "'type'"),
    ],
)
def test_a_frame_that_is_not_a_message_is_answered_with_error_and_never_closes(
    world: World, payload: bytes, reason_has: str | None
) -> None:
    w1 = world.worker()
    job = world.job()
    replies = w1.raw_frame(payload)
    assert types(replies) == ["error"]
    if reason_has is not None:
        assert reason_has in replies[0]["reason"]
    assert w1.closes == []
    # The connection still works.
    assert w1.say(world.started(job, at=T0)) == []
    assert world.active(job).started_at == T0


def test_an_error_repeats_only_the_type_and_job_of_an_object(world: World) -> None:
    w1 = world.worker()
    replies = w1.say(
        {"type": "output", "job": 5, "stream": "stdout", "seq": "x", "data": "A" * 100_000, "extra": 1}
    )
    assert replies == [
        {"type": "error", "reason": replies[0]["reason"], "message": {"type": "output", "job": 5}}
    ]


@pytest.mark.parametrize(
    ("job", "echoed"),
    [(MAX_INT + 1, None), (-(MAX_INT + 1), None), (-MAX_INT, -MAX_INT), (-5, -5), ("7", None)],
)
def test_an_error_repeats_the_job_only_if_an_integer_within_2_53_either_way(
    world: World, job: object, echoed: int | None
) -> None:
    w1 = world.worker()
    (error,) = w1.say({"type": "started", "job": job, "pid": 1, "at": T0})
    assert error["type"] == "error"
    assert error["message"] == ({"type": "started"} if echoed is None else {"type": "started", "job": echoed})


def test_an_error_repeats_a_type_cut_to_100_characters(world: World) -> None:
    w1 = world.connect()
    long_type = "t" * 5000
    replies = w1.say({"type": long_type, "job": 3, "data": "x" * 5000})
    for reply in replies:
        if reply["type"] == "error" and "message" in reply:
            assert reply["message"] == {"type": "t" * 100, "job": 3}
    assert len(json.dumps(replies)) < 1000


def test_an_error_for_a_frame_that_is_not_an_object_has_no_message(world: World) -> None:
    w1 = world.worker()
    (error,) = w1.raw_frame(b"[1]")
    assert error["type"] == "error" and "message" not in error


@pytest.mark.parametrize(
    "junk",
    [
        {"type": "started", "job": 2**64, "pid": 1, "at": T0},
        {"type": "output", "job": 1, "stream": "stdout", "seq": 1e300, "data": ""},
        {"type": "finished", "job": 1, "exitCode": 2**63},
        {"type": "finished", "job": 1, "output": {"stream": "stdout"}},
        {"type": "rejected", "job": [1]},
        {"type": "batch", "messages": [[[[]]]]},
        {"type": "hello", "protocol": 2, "name": {"a": 1}},
    ],
)
def test_nothing_a_worker_sends_crashes_the_scheduler(world: World, junk: Message) -> None:
    w1 = world.worker()
    job = world.job()
    replies = w1.say(junk)
    assert replies and set(types(replies)) == {"error"}, replies
    assert all("internal" not in reply["reason"] for reply in replies)
    assert w1.closes == []
    assert world.active(job).status is JobStatus.RUNNING


def test_unknown_types_are_ignored_and_logged_once_per_connection_with_a_count_at_close(
    world: World, logged: list[tuple[LogLevel, str]]
) -> None:
    w1 = world.worker()
    job = world.job()
    for _ in range(3):
        assert w1.say({"type": "reticulate", "job": job}) == []
    assert sum("reticulate" in line for _, line in logged) == 1
    before = len(logged)
    w1.drop()
    assert any(re.search(r"\b3\b", line) for _, line in logged[before:]), logged[before:]


def test_a_workers_error_is_treated_as_an_unknown_type_and_never_answered(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    for _ in range(3):
        assert (
            w1.say(
                {"type": "error", "reason": "field 'job' must be ...", "message": {"type": "run", "job": job}}
            )
            == []
        )
    assert w1.closes == []
    assert world.active(job).status is JobStatus.RUNNING


# == Required fields ==================================================================


@pytest.mark.parametrize("field", ["protocol", "name", "slots", "instance", "time"])
def test_a_hello_without_a_required_field_is_answered_with_an_error_naming_it(
    world: World, field: str
) -> None:
    w1 = world.connect()
    message = world.hello_message()
    del message[field]
    replies = w1.say(message)
    if field == "protocol":
        # "protocol is not 2" is also a refusal: either answer must name the field.
        assert types(replies) in (["error"], ["refused"]), replies
        assert "protocol" in replies[0]["reason"]
    else:
        only_error(replies, field)
        assert replies[0]["message"] == {"type": "hello"}
        assert w1.closes == []
    assert world.workers.get("w1") is None


@pytest.mark.parametrize("field", ["labels", "jobs"])
def test_a_hellos_optional_fields_may_be_missing_or_null(world: World, field: str) -> None:
    message = world.hello_message()
    del message[field]
    assert types(world.connect().say(message)) == ["welcome"]
    message = world.hello_message("w2")
    message[field] = None
    assert types(world.connect().say(message)) == ["welcome"]
    assert world.workers.get("w2") is not None
    assert world.workers.get("w2").labels == frozenset()  # type: ignore[union-attr]


@pytest.mark.parametrize("field", ["job", "state", "seq"])
def test_a_hello_jobs_entry_without_a_field_is_an_error_naming_it(world: World, field: str) -> None:
    entry = running(4, 0)
    del entry[field]
    only_error(world.connect().hello(jobs=[entry]), field)
    assert world.workers.get("w1") is None


def test_a_hello_jobs_entry_state_is_running_or_finished(world: World) -> None:
    only_error(world.connect().hello(jobs=[{"job": 4, "state": "lost", "seq": 0}]), "state")


REPORT_FIELDS: dict[str, list[str]] = {
    "started": ["job", "pid", "at"],
    "output": ["job", "stream", "seq", "data"],
    "finished": ["job", "exitCode", "signal", "timedOut", "cancelled", "seq", "startedAt", "finishedAt"],
    "rejected": ["job"],
}


def _report(world: World, kind: str, job: int) -> Message:
    if kind == "started":
        return world.started(job)
    if kind == "output":
        return output(job, 1, "data")
    if kind == "finished":
        return world.finished(job)
    return rejected(job)


@pytest.mark.parametrize(
    ("kind", "field"), [(kind, field) for kind, fields in REPORT_FIELDS.items() for field in fields]
)
def test_a_report_without_a_required_field_is_answered_with_an_error_naming_it_and_changes_nothing(
    world: World, kind: str, field: str
) -> None:
    w1 = world.worker()
    job = world.job()
    message = _report(world, kind, job)
    del message[field]
    before = (world.recorder.snapshot(), world.active(job))
    error = only_error(w1.say(message), field)
    assert error["message"] == ({"type": kind} if field == "job" else {"type": kind, "job": job})
    assert (world.recorder.snapshot(), world.active(job)) == before
    assert w1.closes == []


@pytest.mark.parametrize("field", ["exitCode", "signal"])
def test_finished_exitcode_and_signal_may_be_null(world: World, field: str) -> None:
    w1 = world.worker()
    job = world.job()
    message = world.finished(job, exit_code=None, signal=15) if field == "exitCode" else world.finished(job)
    message[field] = None
    assert types(w1.say(message)) == ["ack"]
    assert world.recorder.status(job) is (JobStatus.FAILED if field == "exitCode" else JobStatus.SUCCEEDED)


def test_a_rejected_job_may_go_to_another_worker_at_once(world: World) -> None:
    w1 = world.worker("w1", labels=["pool"])
    job = world.job("label:pool")
    assert w1.runs() == [job]
    w2 = world.worker("w2", labels=["pool"], slots=1)
    w1.say(rejected(job))
    assert w2.runs() == [job]


def test_a_rejected_job_goes_to_the_front_of_its_queue(world: World) -> None:
    w1 = world.worker("w1", labels=["pool"], slots=1)
    first = world.job("label:pool")
    waiting = world.job("label:pool")
    assert w1.runs() == [first]
    assert world.active(waiting).status is JobStatus.QUEUED
    w1.say(rejected(first))
    w2 = world.worker("w2", labels=["pool"], slots=1)
    assert w2.runs() == [first]
    world.clock.advance(1)
    assert w1.runs() == [first, waiting]


def test_a_rejected_job_that_someone_asked_to_cancel_ends_cancelled(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.dispatcher.cancel(job)
    world.clock.advance(0)
    assert w1.say(rejected(job, "shutting down")) == []
    assert world.recorder.status(job) is JobStatus.CANCELLED
    world.clock.advance(5)
    assert w1.runs() == [job]


@pytest.mark.parametrize("reason", ["missing", None])
def test_rejected_reason_is_optional(world: World, reason: str | None) -> None:
    w1 = world.worker()
    job = world.job()
    message: Message = {"type": "rejected", "job": job}
    if reason != "missing":
        message["reason"] = reason
    assert w1.say(message) == []
    assert world.active(job).status is JobStatus.QUEUED


def test_rejected_reason_must_be_a_string(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    only_error(w1.say({"type": "rejected", "job": job, "reason": {"why": "full"}}), "reason")
    assert world.active(job).status is JobStatus.RUNNING


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("started", "job", "1"),
        ("started", "job", True),
        ("started", "pid", "4242"),
        ("started", "at", "now"),
        ("output", "stream", "tty"),
        ("output", "data", 5),
        ("output", "data", None),
        ("output", "seq", 1.5),
        ("finished", "exitCode", "0"),
        ("finished", "exitCode", 0.5),
        ("finished", "signal", "TERM"),
        ("finished", "timedOut", "no"),
        ("finished", "cancelled", 0),
        ("finished", "timedOut", None),
        ("finished", "seq", None),
        ("finished", "startedAt", None),
        ("finished", "finishedAt", "later"),
        ("finished", "output", "hello"),
        ("finished", "output", ""),
        ("finished", "output", False),
        ("finished", "output", 0),
        ("finished", "output", {}),
        ("finished", "output", [{"stream": "stdout", "seq": 1}]),
        ("finished", "output", [{"stream": "tty", "seq": 1, "data": "x"}]),
        ("finished", "output", [{"stream": "stdout", "seq": 0, "data": "x"}]),
    ],
)
def test_a_mistyped_field_is_answered_with_an_error_naming_it_and_changes_nothing(
    world: World, kind: str, field: str, value: object
) -> None:
    w1 = world.worker()
    job = world.job()
    message = _report(world, kind, job)
    message[field] = value
    before = (world.recorder.snapshot(), world.active(job))
    replies = w1.say(message)
    assert types(replies) == ["error"], replies
    # An inline chunk's fields are named for themselves or through 'output'.
    named = ("output", "data", "seq", "stream") if field == "output" else (field,)
    assert any(f"'{name}'" in replies[0]["reason"] for name in named), replies[0]
    assert (world.recorder.snapshot(), world.active(job)) == before


# == Values ===========================================================================


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", "x" * 101),
        ("name", "build 1"),
        ("name", "build\t1"),
        ("name", "build\n1"),
        ("name", "build,1"),
        ("name", "build:1"),
        ("name", "build\u00a01"),
        ("name", 7),
        ("instance", ""),
        ("instance", "a b"),
        ("instance", "a,b"),
        ("instance", "a:b"),
        ("instance", "x" * 101),
        ("instance", 7),
        ("labels", ["gpu", "has space"]),
        ("labels", ["a,b"]),
        ("labels", ["zone:eu"]),
        ("labels", [""]),
        ("labels", ["x" * 101]),
        ("labels", "gpu"),
        ("labels", [7]),
        ("slots", 0),
        ("slots", 10_001),
        ("slots", -1),
        ("slots", 2.5),
        ("slots", True),
        ("time", -1),
        ("time", 1_764_195_600_000),
        ("time", 253402300800),
        ("time", "now"),
        ("time", True),
    ],
)
def test_a_hello_value_out_of_its_range_is_an_error_naming_the_field(
    world: World, field: str, value: object
) -> None:
    w1 = world.connect()
    changed: dict[str, Any] = {field: value}
    only_error(w1.say(world.hello_message(**changed)), field)
    assert world.workers.get("w1") is None
    assert w1.closes == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "x" * 100),
        ("name", "build-1.eu_west/é"),
        ("instance", "y" * 100),
        ("labels", ["x" * 100, "gpu"]),
        ("slots", 1),
        ("slots", 10_000),
        ("time", 0),
        ("time", 253402300799),
        ("time", 1_764_195_600),
    ],
)
def test_a_hello_value_at_the_edge_of_its_range_is_welcome(world: World, field: str, value: object) -> None:
    w1 = world.connect()
    changed: dict[str, Any] = {"instance": "agent-1", field: value}
    assert types(w1.say(world.hello_message(**changed))) == ["welcome"]


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("started", "job", 0),
        ("started", "job", -3),
        ("started", "job", MAX_INT + 1),
        ("started", "pid", 0),
        ("started", "pid", -1),
        ("started", "pid", 2**31),
        ("started", "at", T0 * 1000),
        ("started", "at", -0.5),
        ("started", "at", 253402300800),
        ("output", "seq", 0),
        ("output", "seq", -1),
        ("output", "seq", MAX_INT + 1),
        ("finished", "seq", -1),
        ("finished", "seq", MAX_INT + 1),
        ("finished", "exitCode", 2**31),
        ("finished", "exitCode", -(2**31) - 1),
        ("finished", "signal", 2**31),
        ("finished", "startedAt", T0 * 1000),
        ("finished", "finishedAt", T0 * 1000),
        ("finished", "finishedAt", -1),
        ("rejected", "job", 0),
        ("rejected", "job", MAX_INT + 1),
    ],
)
def test_a_report_value_out_of_its_range_is_an_error_naming_the_field(
    world: World, kind: str, field: str, value: object
) -> None:
    w1 = world.worker()
    job = world.job()
    message = _report(world, kind, job)
    message[field] = value
    before = (world.recorder.snapshot(), world.active(job))
    only_error(w1.say(message), field)
    assert (world.recorder.snapshot(), world.active(job)) == before


def test_output_seq_0_is_refused_because_chunks_are_numbered_from_1(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    only_error(w1.say(output(job, 0, "zero")), "seq")
    assert world.recorder.seqs(job) == []


@pytest.mark.parametrize(("field", "value"), [("pid", 2**31 - 1), ("pid", 1), ("at", 1_764_195_600)])
def test_a_started_value_at_the_edge_of_its_range_is_taken(world: World, field: str, value: int) -> None:
    w1 = world.worker()
    job = world.job()
    assert w1.say(world.started(job, **{field: value})) == []
    assert world.active(job).started_at == T0


@pytest.mark.parametrize(("exit_code", "signal"), [(-(2**31), None), (2**31 - 1, None), (None, 2**31 - 1)])
def test_exit_codes_and_signals_are_32_bit_signed_integers(
    world: World, exit_code: int | None, signal: int | None
) -> None:
    w1 = world.worker()
    job = world.job()
    assert types(w1.say(world.finished(job, exit_code=exit_code, signal=signal))) == ["ack"]
    assert world.recorder.jobs[job].exit_code == exit_code
    assert world.recorder.jobs[job].signal == signal


def test_a_report_on_the_largest_job_id_is_well_formed(world: World) -> None:
    w1 = world.worker()
    replies = w1.say(world.started(MAX_INT))
    assert types(replies) == ["drop"] and replies[0]["jobs"] == [MAX_INT]


# == Whose jobs =======================================================================

SITUATIONS = [
    "never existed",
    "another worker's",
    "queued, not running yet",
    "recorded",
    "declared lost",
    "cancelled",
]


def _situation(world: World, situation: str) -> tuple[Connection, int]:
    """w1 connected, and a job it must not report on, for the reason given."""
    if situation == "never existed":
        return world.worker(), 4242
    if situation == "another worker's":
        w1 = world.worker()
        world.worker("w2")
        return w1, world.job("worker:w2")
    if situation == "recorded":
        w1 = world.worker()
        job = world.job()
        w1.say(world.finished(job))
        assert world.recorder.status(job) is JobStatus.SUCCEEDED
        return w1, job
    if situation == "declared lost":
        old = world.worker()
        job = world.job()
        old.drop()
        world.clock.advance(world.dispatcher.lost_after)
        assert world.recorder.status(job) is JobStatus.LOST
        return world.worker(), job
    # A job for w1 waiting in the queue (w1 has no free slot), and cancelled there.
    w1 = world.worker(slots=1)
    world.job()
    job = world.job()
    assert world.active(job).status is JobStatus.QUEUED
    if situation == "queued, not running yet":
        return w1, job
    world.dispatcher.cancel(job)
    world.clock.advance(0)
    assert world.recorder.status(job) is JobStatus.CANCELLED
    return w1, job


@pytest.mark.parametrize("kind", list(REPORT_FIELDS))
@pytest.mark.parametrize("situation", SITUATIONS)
def test_a_report_on_a_job_not_running_on_this_name_is_answered_with_drop_and_changes_nothing(
    world: World, situation: str, kind: str
) -> None:
    w1, job = _situation(world, situation)
    before = (world.recorder.snapshot(), world.jobs.get(job))
    message = _report(world, kind, job)
    replies = w1.say(message)
    assert types(replies) == ["drop"], replies
    assert replies[0]["jobs"] == [job]
    world.clock.advance(5)
    assert (world.recorder.snapshot(), world.jobs.get(job)) == before
    assert w1.closes == []


def test_a_report_on_a_job_that_never_existed_is_answered_with_drop(world: World) -> None:
    w1 = world.worker()
    replies = w1.say(world.finished(31337))
    assert types(replies) == ["drop"] and replies[0]["jobs"] == [31337]
    assert 31337 not in world.recorder.jobs


def test_a_job_belongs_to_the_name_not_the_connection(world: World) -> None:
    old = world.worker()
    job = world.job()
    old.drop()
    new = world.worker(jobs=[running(job)])
    assert new.say(world.started(job, at=T0)) == []
    assert world.active(job).started_at == T0


def test_a_report_from_a_replaced_connection_is_an_error_and_changes_nothing(world: World) -> None:
    old = world.worker()
    job = world.job()
    new = world.worker(jobs=[running(job)])  # the same instance: takes over at once
    assert old.closes
    for kind in REPORT_FIELDS:
        before = (world.recorder.snapshot(), world.active(job))
        old.protocol.state = old.protocol.STATE_OPEN  # its close has not gone through yet
        replies = old.say(_report(world, kind, job))
        assert types(replies) == ["error"], (kind, replies)
        assert (world.recorder.snapshot(), world.active(job)) == before
    assert new.say(output(job, 1, "real")) == []
    assert types(new.say(world.finished(job, seq=1))) == ["ack"]
    assert world.recorder.output(job) == "real"


def test_a_replaced_connection_closing_changes_nothing(world: World) -> None:
    old = world.worker()
    job = world.job()
    world.worker(jobs=[running(job)])
    old.closed()
    world.clock.advance(world.dispatcher.lost_after * 2)
    assert world.active(job).status is JobStatus.RUNNING
    assert world.workers.get("w1") is not None


# == Worker clocks ====================================================================


@pytest.mark.parametrize("behind", [3.0, -2.5, 0.25])
def test_the_welcome_carries_the_clock_offset_positive_when_the_worker_is_behind(
    world: World, behind: float
) -> None:
    w1 = world.connect()
    (welcome,) = w1.hello(time=world.now - behind)
    assert welcome["clockOffset"] == near(behind)


def test_the_clock_offset_is_in_the_api_workers_list(world: World) -> None:
    world.connect().hello(time=world.now - 3)
    worker = world.workers.get("w1")
    assert worker is not None
    assert worker_json(worker, UTC)["clockOffset"] == near(3.0)


def test_a_clock_offset_over_1s_is_logged_as_a_warning(
    world: World, logged: list[tuple[LogLevel, str]]
) -> None:
    world.connect().hello("w1", time=world.now - 0.5)
    assert not [line for level, line in logged if level is LogLevel.warn and "w1" in line]
    world.connect().hello("w2", time=world.now + 3)
    assert [line for level, line in logged if level is LogLevel.warn and "w2" in line]


def test_a_workers_times_are_shifted_by_its_clock_offset(world: World) -> None:
    w1 = world.connect()
    w1.hello(time=world.now - 3)  # the worker's clock is 3 s behind
    job = world.job()
    world.clock.advance(1)
    assert w1.say(world.started(job, at=T0 - 3 + 0.5)) == []
    assert world.active(job).started_at == near(T0 + 0.5)
    world.clock.advance(1)
    w1.say(world.finished(job, startedAt=T0 - 3 + 0.5, finishedAt=T0 - 3 + 1.5))
    record = world.recorder.jobs[job]
    assert record.started_at == near(T0 + 0.5)
    assert record.finished_at == near(T0 + 1.5)


def test_a_worker_3s_behind_never_gets_a_negative_duration_or_a_start_before_creation(world: World) -> None:
    w1 = world.connect()
    w1.hello(time=world.now - 3)
    job = world.job()
    created = world.active(job).created_at
    world.clock.advance(0.2)
    worker_now = world.now - 3
    w1.say(world.finished(job, startedAt=worker_now - 0.15, finishedAt=worker_now - 0.05))
    record = world.recorder.jobs[job]
    assert record.started_at is not None and record.finished_at is not None
    assert created <= record.started_at <= record.finished_at <= world.now
    assert record.started_at == near(created + 0.05)
    assert record.finished_at == near(created + 0.15)


def test_each_connection_has_its_own_clock_offset(world: World) -> None:
    old = world.connect()
    old.hello(time=world.now - 3)
    job = world.job()
    old.drop()
    world.clock.advance(10)
    new = world.connect()
    (welcome,) = new.hello(time=world.now, jobs=[running(job)])  # its clock was set right meanwhile
    assert welcome["clockOffset"] == near(0.0)
    new.say(world.started(job, at=T0 + 2))
    assert world.active(job).started_at == near(T0 + 2)


def test_a_start_is_kept_no_earlier_than_the_jobs_creation(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.clock.advance(1)
    w1.say(world.started(job, at=T0 - 5))
    assert world.active(job).started_at == near(T0)


def test_a_start_is_kept_no_later_than_now(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.clock.advance(1)
    w1.say(world.started(job, at=T0 + 100))
    assert world.active(job).started_at == near(T0 + 1)


def test_an_end_is_kept_no_earlier_than_the_start(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.clock.advance(1)
    w1.say(world.finished(job, startedAt=T0 + 0.5, finishedAt=T0 + 0.2))
    record = world.recorder.jobs[job]
    assert record.started_at == near(T0 + 0.5)
    assert record.finished_at == near(T0 + 0.5)


def test_an_end_is_kept_no_later_than_now(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.clock.advance(1)
    w1.say(world.finished(job, startedAt=T0 + 0.5, finishedAt=T0 + 50))
    assert world.recorder.jobs[job].finished_at == near(T0 + 1)


def test_a_finished_start_time_is_clamped_too(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.clock.advance(1)
    w1.say(world.finished(job, startedAt=T0 - 60, finishedAt=T0 + 0.5))
    record = world.recorder.jobs[job]
    assert record.started_at == near(T0)
    assert record.finished_at == near(T0 + 0.5)


# == Order: started, output, finished in any order ===================================


def test_out_of_order_chunks_are_kept_in_seq_order(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    for seq, data in ((1, "one "), (3, "three "), (2, "two ")):
        assert w1.say(output(job, seq, data)) == []
    assert world.recorder.seqs(job) == [1, 2, 3]
    assert world.recorder.output(job) == "one two three "
    w1.say(world.finished(job, seq=3))
    assert world.recorder.jobs[job].reason is None
    assert world.recorder.status(job) is JobStatus.SUCCEEDED


def test_live_output_of_a_running_job_is_read_back_in_seq_order(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    for seq, data in ((2, "b"), (1, "a"), (4, "d"), (3, "c")):
        w1.say(output(job, seq, data, stream="stderr" if seq % 2 else "stdout"))
    assert world.dispatcher.live_output(job) == "abcd"


def test_a_seq_already_held_is_ignored(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.say(output(job, 1, "first"))
    w1.say(output(job, 2, "second"))
    assert w1.say(output(job, 1, "again")) == []
    assert w1.say(output(job, 2, "again")) == []
    assert world.recorder.output(job) == "firstsecond"
    assert world.dispatcher.live_output(job) == "firstsecond"


def test_a_resent_chunk_beyond_a_gap_is_ignored_too(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.say(output(job, 1, "a"))
    w1.say(output(job, 3, "c"))
    assert w1.say(output(job, 3, "again")) == []
    w1.say(output(job, 2, "b"))
    assert w1.say(output(job, 3, "again")) == []
    assert world.recorder.output(job) == "abc"
    assert world.dispatcher.live_output(job) == "abc"


def test_output_before_started_is_kept(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.say(output(job, 1, "early"))
    w1.say(world.started(job))
    w1.say(world.finished(job, seq=1))
    assert world.recorder.output(job) == "early"
    assert world.recorder.jobs[job].reason is None


def test_a_finished_without_started_serves_as_the_start(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.clock.advance(2)
    assert types(w1.say(world.finished(job, startedAt=T0 + 0.5, finishedAt=T0 + 1.5))) == ["ack"]
    record = world.recorder.jobs[job]
    assert record.started_at == near(T0 + 0.5)
    assert record.finished_at == near(T0 + 1.5)


def test_the_first_start_heard_of_is_kept_not_a_later_finished_started_at(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.clock.advance(2)
    w1.say(world.started(job, at=T0 + 0.25))
    w1.say(world.finished(job, startedAt=T0 + 0.75, finishedAt=T0 + 1.5))
    assert world.recorder.jobs[job].started_at == near(T0 + 0.25)


def test_a_finished_with_inline_output_is_handled_as_output_messages_before_it(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    replies = w1.say(
        world.finished(
            job,
            seq=2,
            output=[
                {"stream": "stdout", "seq": 1, "data": "hello\n"},
                {"stream": "stderr", "seq": 2, "data": "warn\n"},
            ],
        )
    )
    assert types(replies) == ["ack"]
    assert world.recorder.chunks[job] == {1: ("stdout", "hello\n"), 2: ("stderr", "warn\n")}
    assert world.recorder.jobs[job].reason is None


def test_inline_output_joins_chunks_already_sent_and_ignores_those_held(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.say(output(job, 1, "a"))
    w1.say(output(job, 3, "c"))
    w1.say(
        world.finished(
            job,
            seq=3,
            output=[{"stream": "stdout", "seq": 2, "data": "b"}, {"stream": "stdout", "seq": 3, "data": "X"}],
        )
    )
    assert world.recorder.output(job) == "abc"
    assert world.recorder.jobs[job].reason is None


def test_a_finished_with_null_output_is_fine(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    assert types(w1.say(world.finished(job, output=None))) == ["ack"]


# == Output gaps against finished.seq ================================================


@pytest.mark.parametrize(
    ("arrived", "last", "reason"),
    [
        ([1, 2, 3, 7, 8], 8, "output incomplete: chunks 4-6 of 8 never arrived"),
        ([1, 2, 3, 4, 5], 8, "output incomplete: chunks 6-8 of 8 never arrived"),
        ([], 3, "output incomplete: chunks 1-3 of 3 never arrived"),
    ],
)
def test_chunks_missing_at_finished_are_named_in_the_reason_and_at_the_end_of_the_output(
    world: World, arrived: list[int], last: int, reason: str
) -> None:
    w1 = world.worker()
    job = world.job()
    for seq in arrived:
        w1.say(output(job, seq, f"line {seq}\n"))
    assert types(w1.say(world.finished(job, seq=last))) == ["ack"]
    record = world.recorder.jobs[job]
    assert record.status is JobStatus.SUCCEEDED  # as reported
    assert record.reason == reason
    stored = world.recorder.output(job)
    assert stored.rstrip("\n").splitlines()[-1].find(reason) >= 0, stored
    assert all(f"line {seq}\n" in stored for seq in arrived)


def test_the_gap_reason_keeps_the_reported_failure(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.say(output(job, 1, "a"))
    w1.say(world.finished(job, exit_code=2, seq=2))
    record = world.recorder.jobs[job]
    assert record.status is JobStatus.FAILED and record.exit_code == 2
    # How a gap of one chunk is written is not in the doc ("chunk 2" or "chunks 2-2"); the rest is.
    assert record.reason is not None
    assert record.reason.startswith("output incomplete: chunk") and record.reason.endswith(
        " 2 of 2 never arrived"
    )


def test_chunks_above_finished_seq_are_kept_and_named_in_the_reason(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    for seq in range(1, 6):
        w1.say(output(job, seq, f"line {seq}\n"))
    assert types(w1.say(world.finished(job, exit_code=1, seq=2))) == ["ack"]
    record = world.recorder.jobs[job]
    assert record.status is JobStatus.FAILED
    assert record.reason == "output inconsistent: chunks up to 5 arrived, but finished says 2"
    assert world.recorder.seqs(job)[:5] == [1, 2, 3, 4, 5]
    assert world.recorder.output(job).startswith("".join(f"line {seq}\n" for seq in range(1, 6)))


@pytest.mark.parametrize(("arrived", "last"), [([], 0), ([1, 2, 3], 3), ([2, 1], 2)])
def test_a_job_with_all_its_chunks_has_no_gap_reason(world: World, arrived: list[int], last: int) -> None:
    w1 = world.worker()
    job = world.job()
    for seq in arrived:
        w1.say(output(job, seq, "z"))
    w1.say(world.finished(job, seq=last))
    assert world.recorder.jobs[job].reason is None
    assert "incomplete" not in world.recorder.output(job)


# == finished: the status recorded ===================================================


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"cancelled": True, "exitCode": 0}, JobStatus.CANCELLED),
        ({"cancelled": True, "exitCode": None, "signal": 15}, JobStatus.CANCELLED),
        ({"timedOut": True, "exitCode": 0}, JobStatus.TIMED_OUT),
        ({"timedOut": True, "exitCode": None, "signal": 9}, JobStatus.TIMED_OUT),
        ({"exitCode": 0}, JobStatus.SUCCEEDED),
        ({"exitCode": 1}, JobStatus.FAILED),
        ({"exitCode": 127}, JobStatus.FAILED),
        ({"exitCode": -1}, JobStatus.FAILED),
        ({"exitCode": None, "signal": 9}, JobStatus.FAILED),
    ],
)
def test_the_status_is_cancelled_then_timed_out_then_succeeded_for_exit_0_then_failed(
    world: World, fields: Message, status: JobStatus
) -> None:
    w1 = world.worker()
    job = world.job()
    w1.say(world.finished(job, **fields))
    assert world.recorder.status(job) is status
    assert world.recorder.jobs[job].exit_code == fields["exitCode"]
    assert world.recorder.jobs[job].signal == fields.get("signal")


def test_a_finished_with_both_timedout_and_cancelled_true_is_an_error(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    before = (world.recorder.snapshot(), world.active(job))
    replies = w1.say(world.finished(job, timedOut=True, cancelled=True))
    assert types(replies) == ["error"]
    assert "'timedOut'" in replies[0]["reason"] or "'cancelled'" in replies[0]["reason"]
    assert (world.recorder.snapshot(), world.active(job)) == before


def test_a_jobs_finished_is_recorded_exactly_once(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.say(world.finished(job))
    replies = w1.say(world.finished(job, exit_code=1))
    assert types(replies) == ["drop"]
    assert len(world.recorder.final_puts(job)) == 1
    assert world.recorder.status(job) is JobStatus.SUCCEEDED


# == hello reconciliation ============================================================


def test_a_job_running_on_this_name_that_the_hello_lists_keeps_running_and_is_resumed(world: World) -> None:
    old = world.worker()
    job = world.job()
    old.say(output(job, 1, "a"))
    old.say(output(job, 2, "b"))
    old.drop()
    new = world.connect()
    (welcome,) = new.hello(jobs=[running(job, 4)])
    assert welcome["resume"] == {str(job): 2}
    assert welcome["drop"] == []
    assert world.active(job).status is JobStatus.RUNNING
    new.say(output(job, 3, "c"))
    new.say(output(job, 4, "d"))
    new.say(world.finished(job, seq=4))
    assert world.recorder.output(job) == "abcd"
    assert world.recorder.jobs[job].reason is None


def test_the_hellos_state_and_seq_do_not_decide(world: World) -> None:
    """A job the hello says is finished is still resumed if the scheduler has it running."""
    old = world.worker()
    job = world.job()
    old.drop()
    (welcome,) = world.connect().hello(jobs=[{"job": job, "state": "finished", "seq": 0}])
    assert welcome["resume"] == {str(job): 0}
    assert world.active(job).status is JobStatus.RUNNING


def test_resume_is_the_seq_up_to_which_the_scheduler_has_every_chunk(world: World) -> None:
    old = world.worker()
    job = world.job()
    old.say(output(job, 1, "a"))
    old.say(output(job, 3, "c"))
    old.drop()
    (welcome,) = world.connect().hello(jobs=[running(job, 3)])
    assert welcome["resume"] == {str(job): 1}


def test_a_job_running_on_this_name_that_the_hello_does_not_list_is_lost_at_once(world: World) -> None:
    old = world.worker()
    job = world.job()
    old.drop()
    world.worker(instance="restarted-agent")
    assert world.jobs.get(job) is None
    assert world.recorder.status(job) is JobStatus.LOST


def test_a_job_the_hello_lists_that_runs_elsewhere_is_dropped(world: World) -> None:
    world.worker("w2")
    job = world.job("worker:w2")
    (welcome,) = world.connect().hello("w1", jobs=[running(job, 0)])
    assert welcome["drop"] == [job] and welcome["resume"] == {}
    assert world.active(job).worker == "w2"


def test_a_job_the_hello_lists_that_has_ended_is_dropped(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.say(world.finished(job))
    w1.drop()
    (welcome,) = world.connect().hello(jobs=[{"job": job, "state": "finished", "seq": 0}])
    assert welcome["drop"] == [job] and welcome["resume"] == {}
    assert len(world.recorder.final_puts(job)) == 1


def test_every_job_of_the_hello_is_in_exactly_one_of_resume_and_drop(world: World) -> None:
    world.worker("w2")
    elsewhere = world.job("worker:w2")
    old = world.worker()
    here, ended = world.job(), world.job()
    old.say(world.finished(ended))
    old.drop()
    listed = [here, elsewhere, ended, 9999]
    (welcome,) = world.connect().hello(
        jobs=[running(here), running(elsewhere), {"job": ended, "state": "finished", "seq": 0}, running(9999)]
    )
    resumed = {int(job) for job in welcome["resume"]}
    dropped = set(welcome["drop"])
    assert resumed & dropped == set()
    assert resumed | dropped == set(listed)
    assert len(welcome["drop"]) == len(dropped)
    assert resumed == {here}


def test_a_job_the_hello_lists_that_never_existed_is_dropped(world: World) -> None:
    (welcome,) = world.connect().hello(jobs=[running(777, 5)])
    assert welcome["drop"] == [777] and welcome["resume"] == {}


# == Delivery across a disconnect ====================================================


def test_jobs_of_a_dropped_connection_stay_running_for_lost_after(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.drop()
    world.clock.advance(world.dispatcher.lost_after - 0.5)
    assert world.active(job).status is JobStatus.RUNNING
    (welcome,) = world.connect().hello(jobs=[running(job)])
    assert welcome["resume"] == {str(job): 0}
    world.clock.advance(world.dispatcher.lost_after * 2)
    assert world.active(job).status is JobStatus.RUNNING


def test_jobs_of_a_worker_that_does_not_come_back_within_lost_after_are_lost() -> None:
    world = World(lost_after=30)
    w1 = world.worker()
    job = world.job()
    w1.drop()
    world.clock.advance(29.9)
    assert world.active(job).status is JobStatus.RUNNING
    world.clock.advance(0.1)
    assert world.recorder.status(job) is JobStatus.LOST


@pytest.mark.parametrize("how", ["its worker came back without it", "its worker did not come back in time"])
def test_a_lost_job_is_retried_where_the_task_allows(world: World, how: str) -> None:
    task = world.retried_task()
    w1 = world.worker()
    job = world.job(task_id=task)
    w1.drop()
    if how == "its worker came back without it":
        world.worker(instance="restarted")
    else:
        world.clock.advance(world.dispatcher.lost_after)
    assert world.recorder.status(job) is JobStatus.LOST
    world.clock.advance(1)
    assert [(retry.attempt, retry.id != job) for retry in world.attempts(task)] == [(2, True)]


def test_a_job_cancelled_while_its_worker_was_away_is_not_retried(world: World) -> None:
    task = world.retried_task()
    w1 = world.worker()
    job = world.job(task_id=task)
    w1.drop()
    world.dispatcher.cancel(job)
    world.worker(instance="restarted")
    assert world.recorder.status(job) is JobStatus.CANCELLED
    world.clock.advance(60)
    assert world.attempts(task) == []


# == cancel ==========================================================================


def test_a_cancel_for_a_connected_worker_is_sent_and_the_job_ends_with_its_finished(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.dispatcher.cancel(job)
    world.clock.advance(0)
    assert w1.of_type("cancel") == [{"type": "cancel", "job": job}]
    assert world.active(job).status is JobStatus.RUNNING
    w1.say(world.finished(job, exit_code=None, signal=15, cancelled=True))
    assert world.recorder.status(job) is JobStatus.CANCELLED


def test_a_cancel_while_disconnected_is_kept_and_sent_in_the_welcomes_frame(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.drop()
    world.dispatcher.cancel(job)  # the API answers 202: no error
    world.clock.advance(0)
    assert world.active(job).status is JobStatus.RUNNING
    back = world.connect()
    back.hello(jobs=[running(job)])
    assert back.types()[:2] == ["welcome", "cancel"]
    assert back.messages[1] == {"type": "cancel", "job": job}
    assert back.frames[0]["type"] == "batch", back.frames  # one frame
    back.say(world.finished(job, exit_code=None, signal=15, cancelled=True))
    assert world.recorder.status(job) is JobStatus.CANCELLED
    assert back.of_type("ack") == [{"type": "ack", "jobs": [job]}]


def test_after_the_welcome_come_the_kept_cancels_then_runs_for_queued_work(world: World) -> None:
    w1 = world.worker(slots=1)
    job = world.job()
    queued = world.job()
    w1.drop()
    world.dispatcher.cancel(job)
    world.clock.advance(0)
    back = world.connect()
    back.hello(slots=2, jobs=[running(job)])
    world.clock.advance(0)
    assert [(m["type"], m.get("job")) for m in back.messages] == [
        ("welcome", None),
        ("cancel", job),
        ("run", queued),
    ]


def test_a_kept_cancel_for_a_worker_that_comes_back_without_the_job_ends_it_cancelled(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.drop()
    world.dispatcher.cancel(job)
    world.worker(instance="restarted")
    assert world.recorder.status(job) is JobStatus.CANCELLED


def test_a_kept_cancel_for_a_worker_that_never_comes_back_ends_it_cancelled_after_lost_after() -> None:
    world = World(lost_after=30)
    w1 = world.worker()
    job = world.job()
    w1.drop()
    world.clock.advance(10)
    world.dispatcher.cancel(job)
    world.clock.advance(19.9)
    assert world.active(job).status is JobStatus.RUNNING
    world.clock.advance(0.1)
    assert world.recorder.status(job) is JobStatus.CANCELLED


def test_a_kept_cancel_does_not_override_a_result_the_hello_says_is_finished(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    w1.drop()
    world.dispatcher.cancel(job)
    back = world.connect()
    (welcome, *_rest) = back.hello(jobs=[{"job": job, "state": "finished", "seq": 1}])
    assert welcome["resume"] == {str(job): 0}
    back.say(output(job, 1, "done\n"))
    back.say(world.finished(job, seq=1))
    assert world.recorder.status(job) is JobStatus.SUCCEEDED
    assert world.recorder.output(job) == "done\n"


# == ack ==============================================================================


def test_the_ack_is_sent_only_once_the_record_is_on_disk(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.recorder.hold = True
    assert w1.say(world.finished(job)) == []
    world.clock.advance(1)
    assert w1.of_type("ack") == []
    world.recorder.release()
    world.clock.advance(0)
    assert w1.of_type("ack") == [{"type": "ack", "jobs": [job]}]


def test_no_ack_for_a_result_whose_record_did_not_reach_the_disk(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    world.recorder.hold = True
    w1.say(world.finished(job))
    world.recorder.fail()
    world.clock.advance(1)
    assert w1.of_type("ack") == []
    assert w1.closes == []


def test_a_result_whose_record_failed_is_recorded_again_and_then_acknowledged(world: World) -> None:
    # The job database away for a moment: the end is tried again, doubling
    # the wait, until it is on disk; only then does the worker hear the ack.
    w1 = world.worker()
    job = world.job()
    world.recorder.hold = True
    w1.say(world.finished(job))
    world.recorder.fail()
    assert len(world.recorder.final_puts(job)) == 1
    world.clock.advance(Dispatcher.END_RETRY_FIRST)
    assert len(world.recorder.final_puts(job)) == 2  # tried again
    world.recorder.fail()
    world.clock.advance(Dispatcher.END_RETRY_FIRST)
    assert len(world.recorder.final_puts(job)) == 2  # the wait doubled
    world.clock.advance(Dispatcher.END_RETRY_FIRST)
    assert len(world.recorder.final_puts(job)) == 3
    assert w1.of_type("ack") == []
    world.recorder.release()
    world.clock.advance(0)
    assert w1.of_type("ack") == [{"type": "ack", "jobs": [job]}]
    assert world.recorder.status(job) is JobStatus.SUCCEEDED


def test_one_ack_covers_every_result_recorded_since_the_previous_one(world: World) -> None:
    w1 = world.worker()
    jobs = [world.job() for _ in range(3)]
    world.recorder.hold = True
    for job in jobs:
        w1.say(world.finished(job))
    world.recorder.release()
    world.clock.advance(0)
    acks = w1.of_type("ack")
    assert len(acks) == 1, acks
    assert sorted(acks[0]["jobs"]) == jobs
    # A later record gets an ack of its own, naming only itself.
    later = world.job()
    w1.say(world.finished(later))
    world.recorder.release()
    world.clock.advance(0)
    assert w1.of_type("ack")[1:] == [{"type": "ack", "jobs": [later]}]


def test_two_results_in_one_batch_get_one_ack(world: World) -> None:
    w1 = world.worker()
    first, second = world.job(), world.job()
    replies = w1.batch(
        world.finished(first, seq=1, output=[{"stream": "stdout", "seq": 1, "data": "18\n"}]),
        world.finished(second, seq=1, output=[{"stream": "stdout", "seq": 1, "data": "19\n"}]),
    )
    assert types(replies) == ["ack"]
    assert sorted(replies[0]["jobs"]) == [first, second]
    assert world.recorder.output(first) == "18\n" and world.recorder.output(second) == "19\n"


def test_an_ack_carries_jobs_not_job(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    (ack,) = w1.say(world.finished(job))
    assert ack == {"type": "ack", "jobs": [job]}


# == rejected =========================================================================


def test_a_rejected_job_is_queued_again_and_this_worker_tried_no_sooner_than_1s_later(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    assert w1.runs() == [job]
    assert w1.say(rejected(job)) == []
    assert world.active(job).status is JobStatus.QUEUED
    assert world.recorder.status(job) is JobStatus.QUEUED
    world.clock.advance(0.99)
    assert w1.runs() == [job]
    world.clock.advance(1.01)
    assert w1.runs() == [job, job]
    assert world.active(job).status is JobStatus.RUNNING


@pytest.mark.parametrize(
    "trigger", ["another job of the worker ends", "a new job is submitted", "a worker says hello"]
)
def test_a_rejected_job_is_not_sent_to_that_worker_again_within_1s_whatever_else_happens(
    world: World, trigger: str
) -> None:
    w1 = world.worker()
    job, other = world.job(), world.job()
    assert w1.runs() == [job, other]
    w1.say(rejected(job))
    world.clock.advance(0.2)
    if trigger == "another job of the worker ends":
        w1.say(world.finished(other))
    elif trigger == "a new job is submitted":
        world.job()
    else:
        world.worker("w2")
    world.clock.advance(0.5)
    assert w1.runs().count(job) == 1, w1.runs()
    world.clock.advance(0.3)
    assert w1.runs().count(job) == 2


def test_a_rejected_reason_over_200_characters_is_accepted(world: World) -> None:
    w1 = world.worker()
    job = world.job()
    assert w1.say(rejected(job, "r" * 5000)) == []
    assert world.active(job).status is JobStatus.QUEUED


# == One connection per name =========================================================


def test_the_same_instance_takes_its_name_over_at_once(world: World) -> None:
    old = world.worker(instance="agent-a")
    job = world.job()
    new = world.connect()
    (welcome,) = new.hello(instance="agent-a", jobs=[running(job)])
    assert welcome["type"] == "welcome" and welcome["resume"] == {str(job): 0}
    assert old.pings == 0
    assert old.closes
    assert world.workers.get("w1") is not None and world.workers.get("w1").link is new.protocol  # type: ignore[union-attr]


def test_another_instance_waits_while_the_holder_is_pinged_and_is_refused_if_it_answers(world: World) -> None:
    holder = world.worker(instance="agent-a")
    job = world.job()
    newcomer = world.connect()
    assert newcomer.hello(instance="agent-b", jobs=[running(job)]) == []
    assert holder.pings == 1
    world.clock.advance(4.9)
    assert newcomer.frames == []
    holder.protocol.onPong(b"")
    world.clock.advance(0)
    assert newcomer.messages == [{"type": "refused", "reason": IN_USE}]
    assert newcomer.closes and newcomer.late == []
    assert holder.closes == []
    assert world.workers.get("w1").link is holder.protocol  # type: ignore[union-attr]
    assert world.active(job).status is JobStatus.RUNNING
    newcomer.closed()
    world.clock.advance(world.dispatcher.lost_after * 2)
    assert world.active(job).status is JobStatus.RUNNING


def test_the_newcomer_is_sent_only_errors_while_the_holder_is_pinged(world: World) -> None:
    """Nothing meanwhile, "but `error` for anything it sends before its welcome"."""
    world.worker(instance="agent-a")
    job = world.job()
    newcomer = world.connect()
    assert newcomer.hello(instance="agent-b", jobs=[running(job)]) == []
    assert types(newcomer.say(output(job, 1, "early"))) == ["error"]
    assert types(newcomer.say({"type": "reticulate"})) == ["error"]
    world.clock.advance(4.9)
    assert newcomer.types() == ["error", "error"]
    assert world.recorder.seqs(job) == []
    world.clock.advance(0.1)
    assert newcomer.types() == ["error", "error", "welcome"]


def test_refusing_a_second_live_worker_logs_both_addresses(
    world: World, logged: list[tuple[LogLevel, str]]
) -> None:
    holder = world.connect("tcp:10.1.1.1:5000")
    holder.hello(instance="agent-a")
    newcomer = world.connect("tcp:10.2.2.2:6000")
    newcomer.hello(instance="agent-b")
    holder.protocol.onPong(b"")
    world.clock.advance(0)
    assert newcomer.types() == ["refused"]
    assert [line for _, line in logged if "10.1.1.1:5000" in line and "10.2.2.2:6000" in line], logged


def test_any_message_from_the_holder_counts_as_its_answer(world: World) -> None:
    holder = world.worker(instance="agent-a")
    newcomer = world.connect()
    newcomer.hello(instance="agent-b")
    holder.say({"type": "reticulate"})
    assert newcomer.messages == [{"type": "refused", "reason": IN_USE}]


def test_another_instance_takes_over_a_holder_that_does_not_answer_within_5s(world: World) -> None:
    holder = world.worker(instance="agent-a")
    job = world.job()
    newcomer = world.connect()
    newcomer.hello(instance="agent-b", jobs=[running(job)])
    world.clock.advance(4.99)
    assert newcomer.frames == []
    world.clock.advance(0.01)
    assert newcomer.types() == ["welcome"]
    assert newcomer.messages[0]["resume"] == {str(job): 0}
    assert holder.closes
    assert world.workers.get("w1").link is newcomer.protocol  # type: ignore[union-attr]
    holder.closed()
    assert world.active(job).status is JobStatus.RUNNING
    assert types(newcomer.say(world.finished(job))) == ["ack"]


def test_a_holder_that_closes_while_pinged_lets_the_newcomer_in(world: World) -> None:
    holder = world.worker(instance="agent-a")
    newcomer = world.connect()
    newcomer.hello(instance="agent-b")
    holder.drop()
    assert newcomer.types() == ["welcome"]


def test_taking_a_name_over_reconciles_its_jobs_with_the_new_hello(world: World) -> None:
    holder = world.worker(instance="agent-a")
    kept, gone = world.job(), world.job()
    newcomer = world.connect()
    newcomer.hello(instance="agent-b", jobs=[running(kept)])
    world.clock.advance(5)
    assert newcomer.messages[0]["resume"] == {str(kept): 0}
    assert world.active(kept).status is JobStatus.RUNNING
    assert world.recorder.status(gone) is JobStatus.LOST
    assert holder.closes


def test_the_hello_time_offset_is_measured_when_the_hello_arrives_even_if_welcomed_later(
    world: World,
) -> None:
    world.worker(instance="agent-a")
    newcomer = world.connect()
    newcomer.hello(instance="agent-b", time=world.now - 2)
    world.clock.advance(5)
    assert newcomer.messages[0]["clockOffset"] == near(2.0)


# == What the scheduler sends ========================================================


def test_a_run_carries_job_and_command_and_its_optional_fields(world: World) -> None:
    w1 = world.worker()
    (job,) = world.dispatcher.run_now(
        "echo hello", target="worker:w1", timeout=30.0, env={"A": "1"}, cwd="sub"
    )
    world.clock.advance(0)
    (run,) = w1.of_type("run")
    assert run["job"] == job.id and run["command"] == "echo hello"
    assert run.get("env") == {"A": "1"} and run.get("cwd") == "sub" and run.get("timeout") == 30.0
    assert run.get("delay") is None  # only a cron fire sent ahead of its second waits


def test_a_cron_fires_run_sent_ahead_of_its_second_carries_the_delay_to_wait(world: World) -> None:
    w1 = world.worker()
    task = Task(2, "on-the-second", cron.parse("* * * * *", UTC), "date", TaskOptions(target="worker:w1"))
    world.tasks[task.id] = task
    (job,) = world.dispatcher.fire(task, T0 + 0.042)
    world.clock.advance(0)
    (run,) = w1.of_type("run")
    assert run["job"] == job.id
    assert run["delay"] == near(0.042)
    assert 0 < run["delay"] <= 5


def test_the_scheduler_sends_batches_of_at_most_1000_messages_and_frames_of_at_most_2_mib(
    world: World,
) -> None:
    w1 = world.worker(slots=10_000)
    frames_before = len(w1.frames)
    jobs = [job.id for _ in range(2500) for job in world.dispatcher.run_now("x" * 500, target="worker:w1")]
    world.clock.advance(0)
    assert w1.runs() == jobs
    for frame, payload in zip(w1.frames[frames_before:], w1.raw[frames_before:], strict=True):
        assert len(payload) <= 2 * 1024 * 1024
        if frame["type"] == "batch":
            assert 1 <= len(frame["messages"]) <= 1000
            assert "batch" not in {message["type"] for message in frame["messages"]}


def test_a_hello_entry_with_a_seq_below_the_chunks_held_is_logged(
    world: World, logged: list[tuple[LogLevel, str]]
) -> None:
    old = world.worker()
    job = world.job()
    for seq in (1, 2, 3):
        old.say(output(job, seq))
    old.drop()
    before = len(logged)
    (welcome,) = world.connect().hello(jobs=[running(job, 3)])
    assert welcome["resume"] == {str(job): 3}
    assert [line for level, line in logged[before:] if level is LogLevel.warn] == []
    before = len(logged)
    world.connect().hello(jobs=[running(job, 1)])  # the same instance, having lost chunks 2 and 3
    warnings = [line for level, line in logged[before:] if level is LogLevel.warn]
    assert [line for line in warnings if "w1" in line and f"job {job}" in line], warnings


def test_after_a_restart_the_hello_reconciles_the_restored_jobs() -> None:
    world = World(lost_after=30)
    kept = Job(
        id=7, command="sleep 9", created_at=T0 - 60, target="worker:w1", status=JobStatus.RUNNING, worker="w1"
    )
    gone = Job(
        id=8, command="sleep 9", created_at=T0 - 60, target="worker:w1", status=JobStatus.RUNNING, worker="w1"
    )
    world.jobs.restore([kept, gone], [], 8, keys_since=T0 - 3600)
    world.dispatcher.restore([(kept, 2), (gone, 0)])
    w1 = world.connect()
    (welcome,) = w1.hello(jobs=[running(7, 5), running(99, 0)])
    assert welcome["resume"] == {"7": 2}
    assert welcome["drop"] == [99]
    assert world.recorder.status(8) is JobStatus.LOST
    w1.say(output(7, 3, "c"))
    assert types(w1.say(world.finished(7, seq=5))) == ["ack"]
    assert world.recorder.jobs[7].reason == "output incomplete: chunks 4-5 of 5 never arrived"
