"""The worker WebSocket in memory: decoding and checking messages, dispatching
them by type, who may hold a worker name, and who may report.

``WorkerServerProtocol`` objects are driven by calling ``onMessage`` (and
``onPong``, ``onClose``) directly, with ``sendMessage``, ``sendClose`` and
``sendPing`` captured, over a real ``Dispatcher`` on ``task.Clock``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import provider

from scheduler.access import WorkerTokens
from scheduler.dispatch import Dispatcher, NoRecorder
from scheduler.job_book import JobBook
from scheduler.jobs import JobStatus
from scheduler.service import SchedulerService
from scheduler.settings import Settings
from scheduler.worker_protocol import PROBE_TIMEOUT, WorkerServerFactory, WorkerServerProtocol
from scheduler.worker_registry import WorkerRegistry
from tests.helpers import UTC

SHARED = "shared-token-0123456789"
_instances = itertools.count(1)
W1_TOKEN = "w1-own-token-0123456789"


class Connection:
    """One WorkerServerProtocol in memory."""

    def __init__(self, factory: WorkerServerFactory, peer: str = "tcp:127.0.0.1:40000") -> None:
        protocol = WorkerServerProtocol()
        protocol.factory = factory
        protocol.state = protocol.STATE_OPEN
        protocol.peer = peer
        protocol.sendMessage = self._sent  # type: ignore[method-assign]
        protocol.sendClose = self._closed  # type: ignore[method-assign]
        protocol.sendPing = self._pinged  # type: ignore[method-assign]
        self.protocol = protocol
        self._sent_messages: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []
        self.closes: list[str | None] = []
        self.instance = f"instance-{next(_instances)}"
        self.pings = 0

    def _sent(self, payload: bytes, isBinary: bool = False) -> None:
        frame = json.loads(payload)
        self.frames.append(frame)
        self._sent_messages.extend(frame["messages"] if frame["type"] == "batch" else [frame])

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Every message the scheduler sent, batches unpacked (the current turn ended first)."""
        self.flush()
        return self._sent_messages

    def _closed(self, code: int | None = None, reason: str | None = None) -> None:
        self.closes.append(reason)

    def _pinged(self, payload: bytes | None = None) -> None:
        self.pings += 1

    def say(self, **message: Any) -> list[dict[str, Any]]:
        before = len(self.sent)
        self.protocol.onMessage(json.dumps(message).encode(), False)
        self.flush()
        return self.sent[before:]

    def flush(self) -> None:
        """Let the turn end: what the scheduler sends goes out then, in one frame."""
        clock = self.protocol.factory.clock
        if isinstance(clock, Clock):
            clock.advance(0)
        elif self.protocol._outbox is not None:
            self.protocol._outbox.flush()

    def hello(self, name: str = "w1", **fields: Any) -> list[dict[str, Any]]:
        clock = self.protocol.factory.clock
        hello = {"protocol": 2, "name": name, "slots": 2, "instance": self.instance, "time": clock.seconds()}
        return self.say(type="hello", **{**hello, **fields})

    def types(self) -> list[str]:
        return [message["type"] for message in self.sent]

    def runs(self) -> list[int]:
        return [message["job"] for message in self.sent if message["type"] == "run"]

    def drop(self) -> None:
        """The TCP connection ends (as Autobahn reports it)."""
        self.protocol.state = self.protocol.STATE_CLOSED
        self.protocol.onClose(False, 1006, "connection lost")


class World:
    def __init__(self, reserved: frozenset[str] = frozenset()) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.jobs = JobBook(self.clock)
        self.workers = WorkerRegistry()
        self.events: list[tuple[str, str]] = []
        self.workers.listeners.append(lambda event, worker: self.events.append((event, worker.name)))
        self.dispatcher = Dispatcher(self.clock, self.jobs, self.workers, NoRecorder(), lambda task_id: None)
        self.factory = WorkerServerFactory(self.dispatcher, self.clock, reserved=reserved.__contains__)

    def connect(self, token_name: str | None = None, peer: str = "tcp:127.0.0.1:40000") -> Connection:
        connection = Connection(self.factory, peer)
        # What the handshake check sets for a per-worker token.
        connection.protocol._allowed_name = token_name
        return connection

    def job(self, target: str = "worker:w1") -> int:
        (job,) = self.dispatcher.run_now("sleep 9", target=target)
        self.clock.advance(0)
        return job.id


def finished(job: int, exit_code: int = 0, seq: int = 0) -> dict[str, Any]:
    return {
        "type": "finished", "job": job, "exitCode": exit_code, "signal": None, "timedOut": False,
        "cancelled": False, "seq": seq, "startedAt": 1_000_000.0, "finishedAt": 1_000_000.0,
    }


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.warn, LogLevel.info, LogLevel.error):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# -- issue 20, item 2: a name bound to its own token --------------------------------


def test_the_shared_token_cannot_take_a_name_that_has_its_own_token(logged: list[str]) -> None:
    world = World(reserved=frozenset({"w1"}))
    intruder = world.connect(token_name=None)  # the shared token
    replies = intruder.hello("w1")
    assert [reply["type"] for reply in replies] == ["refused"]
    assert "has its own token" in replies[0]["reason"]
    assert intruder.closes == ["refused"]
    assert world.workers.get("w1") is None
    assert any("refused worker w1" in line and "own token" in line for line in logged)
    # The real w1, with its own token, is welcome; the shared token may use other names.
    assert world.connect(token_name="w1").hello("w1")[0]["type"] == "welcome"
    assert world.connect(token_name=None).hello("w2")[0]["type"] == "welcome"


def test_the_shared_token_cannot_claim_w1s_jobs_or_forge_their_results() -> None:
    world = World(reserved=frozenset({"w1"}))
    real = world.connect(token_name="w1")
    real.hello("w1", instance="aaaa")
    job = world.job()
    assert real.runs() == [job]
    intruder = world.connect(token_name=None)
    intruder.hello("w1", instance="aaaa", jobs=[{"job": job, "state": "running", "seq": 0}])
    assert intruder.types() == ["refused"]
    assert intruder.say(**finished(job))[0]["type"] == "error"
    assert world.jobs.get(job).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert world.workers.get("w1").link is real.protocol  # type: ignore[union-attr]


def _service(tmp_path: Path) -> SchedulerService:
    from twisted.internet import reactor

    tokens_file = tmp_path / "workers.tokens"
    tokens_file.write_text(f"w1 {W1_TOKEN}\n")
    tokens = WorkerTokens(shared=SHARED, path=str(tokens_file))
    tokens.load()
    settings = Settings(
        tasks_file=str(tmp_path / "tasks.db"),
        tcp="tcp:0:interface=127.0.0.1",
        http="tcp:0:interface=127.0.0.1",
        tz=UTC,
        worker_tokens=tokens,
    )
    return SchedulerService(reactor, settings)


def _handshake(service: SchedulerService, token: str) -> Connection:
    connection = Connection(service.worker_factory)
    request = SimpleNamespace(peer="tcp:127.0.0.1:40001", headers={"authorization": f"Bearer {token}"})
    connection.protocol.onConnect(request)  # type: ignore[arg-type]
    return connection


@pytest_twisted.ensureDeferred
async def test_the_service_binds_per_worker_names_against_the_shared_token(tmp_path: Path) -> None:
    service = _service(tmp_path)
    try:
        assert _handshake(service, SHARED).hello("w1")[0]["type"] == "refused"
        assert _handshake(service, W1_TOKEN).hello("w1")[0]["type"] == "welcome"
        assert _handshake(service, SHARED).hello("w2")[0]["type"] == "welcome"
        with pytest.raises(ConnectionDeny):
            _handshake(service, "wrong-token-0123456789")
    finally:
        service.dispatcher.stop()
        await service.job_store.close()


@pytest_twisted.ensureDeferred
async def test_a_name_that_gets_its_own_token_drops_its_shared_token_connection(tmp_path: Path) -> None:
    service = _service(tmp_path)
    try:
        w2 = _handshake(service, SHARED)
        assert w2.hello("w2")[0]["type"] == "welcome"
        tokens_file = tmp_path / "workers.tokens"
        tokens_file.write_text(f"w1 {W1_TOKEN}\nw2 w2-own-token-0123456789\n")
        os.utime(tokens_file, (1, 1))
        service._reload_worker_tokens()
        assert w2.closes == ["name bound to its own token"]
    finally:
        service.dispatcher.stop()
        await service.job_store.close()


# -- issue 20, item 2: reports only from the connection holding the name ------------


def test_a_replaced_connection_cannot_report_on_its_jobs() -> None:
    world = World()
    old = world.connect()
    old.hello("w1", instance="aaaa")
    job = world.job()
    old.say(type="started", job=job, pid=1, at=1.0)
    # The same agent comes back on a new connection (its old one is dead to it).
    new = world.connect()
    new.hello("w1", instance="aaaa", jobs=[{"job": job, "state": "running", "seq": 0}])
    assert new.types() == ["welcome"] and new.sent[0]["resume"] == {str(job): 0}
    assert old.closes  # told to go
    for report in (
        {"type": "output", "job": job, "stream": "stdout", "seq": 1, "data": "forged"},
        finished(job),
        {"type": "rejected", "job": job, "reason": "no"},
        {"type": "started", "job": job, "pid": 2, "at": 2.0},
        finished(10**6),  # not even an ack for an unknown job
    ):
        replies = old.say(**report)
        assert [reply["type"] for reply in replies] == ["error"], replies
        assert "no longer holds the worker name w1" in replies[0]["reason"]
    assert world.dispatcher.live_output(job) == ""
    assert world.jobs.get(job).status is JobStatus.RUNNING  # type: ignore[union-attr]
    new.say(type="output", job=job, stream="stdout", seq=1, data="real")
    new.say(**finished(job, seq=1))
    assert world.jobs.get(job) is None  # recorded
    assert new.types()[-1] == "ack"


# -- issue 20, item 11: one live connection per name ---------------------------------


def test_a_second_live_worker_under_one_name_is_refused(logged: list[str]) -> None:
    world = World()
    first = world.connect(peer="tcp:10.0.0.1:5000")
    first.hello("w1", instance="aaaa")
    job = world.job()
    second = world.connect(peer="tcp:10.0.0.2:6000")
    assert second.hello("w1", instance="bbbb") == []  # waiting for the probe
    assert first.pings == 1
    first.protocol.onPong(b"whatever")  # the first one is alive
    assert second.types() == ["refused"]
    assert "in use by another live connection" in second.sent[0]["reason"]
    assert second.closes == ["refused"]
    # The first keeps its name, its connection and its job.
    assert world.workers.get("w1").link is first.protocol  # type: ignore[union-attr]
    assert not first.closes
    assert world.jobs.get(job).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert ("clash", "w1") in world.events
    assert any(
        "refused worker w1 from tcp:10.0.0.2:6000" in line and "tcp:10.0.0.1:5000" in line and "--name" in line
        for line in logged
    ), logged
    # Nothing lost, and the refused one's close changes nothing.
    second.drop()
    world.clock.advance(3600)
    assert world.jobs.get(job).status is JobStatus.RUNNING  # type: ignore[union-attr]


def test_two_workers_under_one_name_do_not_take_it_from_each_other() -> None:
    """Each reconnect of the second is refused while the first answers pings."""
    world = World()
    first = world.connect()
    first.hello("w1", instance="aaaa")
    jobs = [world.job() for _ in range(2)]
    for _ in range(45):
        again = world.connect()
        again.hello("w1", instance="bbbb")
        first.protocol.onPong(b"")
        assert again.types() == ["refused"]
        again.drop()
    assert world.workers.get("w1").link is first.protocol  # type: ignore[union-attr]
    for job in jobs:
        first.say(**finished(job))
    assert [job for job in jobs if world.jobs.get(job) is not None] == []
    assert "lost" not in {event for event, _ in world.events}


def test_any_message_from_the_holder_counts_as_an_answer() -> None:
    world = World()
    first = world.connect()
    first.hello("w1")
    second = world.connect()
    second.hello("w1")
    first.say(type="reticulate")
    assert second.types() == ["refused"]


def test_a_half_open_holder_that_does_not_answer_is_replaced(logged: list[str]) -> None:
    world = World()
    dead = world.connect(peer="tcp:10.0.0.1:5000")
    dead.hello("w1")  # a protocol-1 worker without an instance id
    job = world.job()
    back = world.connect(peer="tcp:10.0.0.1:5001")
    back.hello("w1", jobs=[{"job": job, "state": "running", "seq": 0}])
    world.clock.advance(PROBE_TIMEOUT - 0.1)
    assert back.sent == []
    world.clock.advance(0.1)
    assert back.types() == ["welcome"]
    assert back.sent[0]["resume"] == {str(job): 0}
    assert world.workers.get("w1").link is back.protocol  # type: ignore[union-attr]
    assert dead.closes == ["replaced by a new connection from the same worker"]
    assert any("did not answer a ping" in line for line in logged)
    back.say(**finished(job))
    assert world.jobs.get(job) is None


def test_the_same_agent_instance_takes_its_name_back_at_once() -> None:
    world = World()
    old = world.connect()
    old.hello("w1", instance="aaaa")
    new = world.connect()
    assert [reply["type"] for reply in new.hello("w1", instance="aaaa")] == ["welcome"]
    assert old.pings == 0
    assert world.workers.get("w1").link is new.protocol  # type: ignore[union-attr]


def test_a_closed_holder_is_replaced_without_waiting() -> None:
    world = World()
    old = world.connect()
    old.hello("w1", instance="aaaa")
    old.protocol.state = old.protocol.STATE_CLOSING
    new = world.connect()
    assert [reply["type"] for reply in new.hello("w1", instance="bbbb")] == ["welcome"]


def test_the_holder_closing_during_the_probe_lets_the_newcomer_in() -> None:
    world = World()
    old = world.connect()
    old.hello("w1", instance="aaaa")
    new = world.connect()
    new.hello("w1", instance="bbbb")
    old.drop()
    assert new.types() == ["welcome"]


def test_a_newcomer_that_leaves_during_the_probe_changes_nothing() -> None:
    world = World()
    old = world.connect()
    old.hello("w1", instance="aaaa")
    new = world.connect()
    new.hello("w1", instance="bbbb")
    new.drop()
    world.clock.advance(PROBE_TIMEOUT)
    assert new.sent == []
    assert world.workers.get("w1").link is old.protocol  # type: ignore[union-attr]
    assert not old.closes


def test_nothing_but_waiting_before_the_welcome() -> None:
    world = World()
    world.connect().hello("w1", instance="aaaa")
    new = world.connect()
    new.hello("w1", instance="bbbb")
    replies = new.say(type="hello", protocol=1, name="w1", slots=1)
    assert [reply["type"] for reply in replies] == ["error"]
    assert "before the welcome" in replies[0]["reason"]


def test_an_instance_must_be_a_short_string() -> None:
    world = World()
    replies = world.connect().hello("w1", instance=7)
    assert [reply["type"] for reply in replies] == ["error"]
    assert "'instance'" in replies[0]["reason"]
    replies = world.connect().hello("w1", instance=None)  # protocol 2 requires it
    assert [reply["type"] for reply in replies] == ["error"]


# -- issue 20, item 3 and an info item: what bad messages cost -----------------------


def test_an_error_echoes_only_type_and_job() -> None:
    world = World()
    connection = world.connect()
    connection.hello("w1")
    replies = connection.say(type="output", job=5, stream="stdout", seq="x", data="A" * 1_500_000)
    assert replies == [{"type": "error", "reason": replies[0]["reason"], "message": {"type": "output", "job": 5}}]
    replies = connection.say(type=["t"] * 100_000, job="j" * 100_000)
    assert replies[0]["message"] == {}
    replies = connection.say(type="x" * 100_000)
    assert replies == []  # an unknown type is ignored


def test_unknown_types_are_logged_once_per_connection_with_a_count(logged: list[str]) -> None:
    world = World()
    connection = world.connect()
    connection.hello("w1")
    for _ in range(10_000):
        connection.say(type="reticulate")
    assert sum("reticulate" in line for line in logged) == 1
    connection.drop()
    assert any("10000 messages of unknown types" in line for line in logged), logged[-3:]


# -- decoding, checking and dispatching by type ---------------------------------------


def _raw(connection: Connection, payload: bytes, binary: bool = False) -> list[dict[str, Any]]:
    before = len(connection.sent)
    connection.protocol.onMessage(payload, binary)
    return connection.sent[before:]  # (sent ends the turn)


@pytest.mark.parametrize(
    ("payload", "binary", "reply"),
    [
        (b'{"type": "hello"}', True, {"reason": "messages must be JSON text frames"}),
        (b"\xff", False, {"reason": "not valid JSON"}),
        (b"{", False, {"reason": "not valid JSON"}),
        (b"[" * 100_000, False, {"reason": "not valid JSON"}),
        (b"[1]", False, {"reason": "a message must be a JSON object"}),
        (b'{"job": 4}', False, {"reason": "field 'type' must be a string", "message": {"job": 4}}),
        (b'{"type": "started", "job": 4}', False, {"reason": "the first message must be 'hello'", "message": {"type": "started", "job": 4}}),
    ],
)
def test_frames_that_are_not_a_hello_are_answered_with_error(payload: bytes, binary: bool, reply: dict[str, Any]) -> None:
    connection = World().connect()
    assert _raw(connection, payload, binary) == [{"type": "error", **reply}]
    assert connection.closes == []
    # The connection still takes its hello.
    assert connection.hello("w1")[0]["type"] == "welcome"


def test_a_hello_in_another_protocol_is_refused_before_its_fields_are_checked() -> None:
    connection = World().connect()
    replies = connection.say(type="hello", protocol=1, name="no good name", slots=0)
    assert replies == [
        {
            "type": "refused",
            "reason": "protocol 1 is not supported: this scheduler speaks protocol 2; upgrade the worker "
            "to the scheduler's release",
        }
    ]
    assert connection.closes == ["unsupported protocol"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"name": "a b"}, "field 'name' must be a string of 1 to 100 characters without spaces, commas or colons"),
        ({"slots": 0}, "field 'slots' must be an integer from 1 to 10000"),
        ({"labels": "gpu"}, "field 'labels' must be a list of strings of 1 to 100 characters without spaces, "
                            "commas or colons"),
        ({"time": 1.8e12}, "field 'time' must be a Unix time in seconds"),
        ({"jobs": [{"job": 1, "state": "lost", "seq": 0}]}, "a job's 'state' must be 'running' or 'finished'"),
    ],
)
def test_a_malformed_hello_is_answered_with_error(fields: dict[str, Any], reason: str) -> None:
    connection = World().connect()
    message = {"type": "hello", "protocol": 2, "name": "w1", "slots": 2, "instance": "i", "time": 1.0, **fields}
    assert connection.say(**message) == [{"type": "error", "reason": reason, "message": {"type": "hello"}}]
    assert connection.protocol.worker is None


def test_each_report_type_reaches_the_dispatcher() -> None:
    world = World()
    connection = world.connect()
    connection.hello("w1")
    first, second = world.job(), world.job()
    assert connection.runs() == [first, second]
    world.clock.advance(1)
    assert connection.say(type="started", job=first, pid=7, at=1_000_000.5) == []
    assert world.jobs.get(first).started_at == 1_000_000.5  # type: ignore[union-attr]
    assert connection.say(type="output", job=first, stream="stdout", seq=1, data="hi\n") == []
    assert world.dispatcher.live_output(first) == "hi\n"
    assert world.dispatcher.last_seq(first) == 1
    connection.say(type="rejected", job=second, reason="no free slot")
    assert world.jobs.get(second).status is JobStatus.QUEUED  # type: ignore[union-attr]
    connection.say(**finished(first, exit_code=3))
    world.clock.advance(0)
    assert world.jobs.get(first) is None  # recorded
    assert {"type": "ack", "jobs": [first]} in connection.sent


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "started", "job": 0, "at": 1.0, "pid": 1}, "field 'job' must be an integer from 1 to 9007199254740992"),
        ({"type": "started", "job": 1, "at": 1.8e12, "pid": 1}, "field 'at' must be a Unix time in seconds"),
        ({"type": "started", "job": 1, "at": 1.0}, "field 'pid' must be an integer from 1 to 2147483647"),
        ({"type": "output", "job": 1, "stream": "tty", "seq": 1, "data": ""}, "field 'stream' must be 'stdout' or 'stderr'"),
        ({"type": "output", "job": 1, "stream": "stdout", "seq": 1, "data": 5}, "field 'data' must be a string"),
        ({"type": "output", "job": 1, "stream": "stdout", "seq": 0, "data": ""}, "field 'seq' must be an integer from 1 to 9007199254740992"),
        ({**finished(1), "exitCode": "0"}, "field 'exitCode' must be a 32-bit integer or null"),
        ({**finished(1), "cancelled": "no"}, "field 'cancelled' must be true or false"),
        ({**finished(1), "startedAt": -1}, "field 'startedAt' must be a Unix time in seconds"),
        ({"type": "finished", "job": 1}, "field 'exitCode' is required"),
        ({**finished(1), "seq": None}, "field 'seq' must be an integer from 0 to 9007199254740992"),
        ({"type": "rejected", "job": "1"}, "field 'job' must be an integer from 1 to 9007199254740992"),
        ({"type": "hello", "protocol": 2, "name": "w1", "slots": 1}, "hello was already received on this connection"),
    ],
)
def test_a_malformed_report_is_answered_with_error_and_changes_nothing(message: dict[str, Any], reason: str) -> None:
    world = World()
    connection = world.connect()
    connection.hello("w1")
    job = world.job()
    replies = connection.say(**message)
    echo = {"type": message["type"]}
    if isinstance(message.get("job"), int):
        echo["job"] = message["job"]
    assert replies == [{"type": "error", "reason": reason, "message": echo}]
    assert world.jobs.get(job).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert world.jobs.get(job).started_at is None  # type: ignore[union-attr]
    assert connection.closes == []


def test_a_workers_error_is_ignored_like_an_unknown_type(logged: list[str]) -> None:
    world = World()
    connection = world.connect()
    connection.hello("w1")
    assert connection.say(type="error", reason="field 'job' must be an integer", message={"type": "run"}) == []
    assert any("ignoring a 'error' message from worker w1" in line for line in logged)
