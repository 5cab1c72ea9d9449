"""The scheduler's end of the worker WebSocket (see docs/protocol.md).

Thin by design: decode, check the fields, call the dispatcher, encode.
Nothing a worker sends may raise out of here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from scheduler.cron import iso
from scheduler.dispatch import PROTOCOL_VERSION, Dispatcher, JobNotFound
from scheduler.workers import Worker

# Autobahn owns self.log on protocols.
_log = Logger()

MAX_NAME = 100

# Seconds the connection holding a worker name has to answer a ping when a
# new connection asks for the name (a live one keeps it).  A worker's
# reactor answers pings at once, so a few seconds are plenty.
PROBE_TIMEOUT = 5.0


class BadMessage(ValueError):
    pass


# Ids and sequence numbers stay exact in JSON and fit SQLite's integers.
MAX_INT = 2**53
# Unix times up to the year 9999: anything else is a unit mistake.
MAX_TIME = 253402300799.0


def _int(message: dict[str, Any], name: str, *, low: int = 0, high: int = MAX_INT) -> int:
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadMessage(f"field '{name}' must be an integer from {low} to {high}")
    return value


def _number(message: dict[str, Any], name: str, *, optional: bool = False) -> float | None:
    """A Unix time in seconds."""
    value = message.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_TIME:
        raise BadMessage(f"field '{name}' must be a Unix time in seconds")
    return float(value)


def _str(message: dict[str, Any], name: str, *, limit: int = MAX_NAME) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadMessage(f"field '{name}' must be a non-empty string of at most {limit} characters")
    return value


def _bool(message: dict[str, Any], name: str) -> bool:
    value = message.get(name, False)
    if not isinstance(value, bool):
        raise BadMessage(f"field '{name}' must be true or false")
    return value


def _echo(message: object) -> dict[str, Any] | None:
    """What an ``error`` repeats of a bad message: its ``type`` and ``job``.

    Never the whole message: a peer that sends megabytes of junk and reads
    nothing would have every byte of it queued back to it.
    """
    if not isinstance(message, dict):
        return None
    echo: dict[str, Any] = {}
    kind = message.get("type")
    if isinstance(kind, str):
        echo["type"] = kind[:MAX_NAME]
    job = message.get("job")
    if isinstance(job, int) and not isinstance(job, bool) and abs(job) <= MAX_INT:
        echo["job"] = job
    return echo


@dataclass(frozen=True)
class Hello:
    name: str
    labels: frozenset[str]
    slots: int
    # job id -> (state, last seq) for the jobs the worker still holds.
    jobs: dict[int, tuple[str, int]]
    # The agent process's id; optional (protocol-1 workers may not send it).
    instance: str | None


def parse_hello(message: dict[str, Any]) -> Hello:
    name = _str(message, "name")
    if any(ch.isspace() or ch in ",:" for ch in name):
        raise BadMessage("field 'name' must not contain spaces, commas or colons")
    labels = message.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) and 0 < len(label) <= MAX_NAME for label in labels):
        raise BadMessage("field 'labels' must be a list of short strings")
    slots = _int(message, "slots", low=1, high=10_000)
    jobs = message.get("jobs", [])
    if not isinstance(jobs, list):
        raise BadMessage("field 'jobs' must be a list")
    reported: dict[int, tuple[str, int]] = {}
    for entry in jobs:
        if not isinstance(entry, dict):
            raise BadMessage("each entry of 'jobs' must be an object")
        state = entry.get("state")
        if state not in ("running", "finished"):
            raise BadMessage("a job's 'state' must be 'running' or 'finished'")
        reported[_int(entry, "job", low=1)] = (state, _int(entry, "seq"))
    instance = None if message.get("instance") is None else _str(message, "instance")
    return Hello(name, frozenset(labels), slots, reported, instance)


class WorkerServerProtocol(WebSocketServerProtocol):
    factory: WorkerServerFactory

    def __init__(self) -> None:
        super().__init__()
        self.worker: Worker | None = None
        self._hello_timer: IDelayedCall | None = None
        # Set by a per-worker token: the only name this connection may use.
        self._allowed_name: str | None = None
        # A hello waiting to learn whether the connection holding its name
        # is alive (see _claim).
        self._claiming = False
        # Liveness probes of this connection by newer ones: fired True by
        # any pong or message, False on close or timeout.
        self._probes: list[Deferred[bool]] = []
        # Unknown message types: the first is logged, the rest counted.
        self._unknown = 0

    @property
    def token_name(self) -> str | None:
        """The worker name a per-worker token bound this connection to."""
        return self._allowed_name

    # -- the link the dispatcher sends through ------------------------

    def send(self, type: str, **fields: Any) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(json.dumps({"type": type, **fields}).encode("utf-8"), isBinary=False)

    def close(self, reason: str) -> None:
        self.sendClose(code=1000, reason=reason[:100])

    def alive(self, timeout: float) -> Deferred[bool]:
        """Does the worker at the other end still answer?

        A WebSocket ping (unless one is already out), then True at the
        first pong or message, False if none comes within *timeout* or the
        connection closes.
        """
        if self.state != self.STATE_OPEN:
            return succeed(False)
        probe: Deferred[bool] = Deferred()
        self._probes.append(probe)
        if not getattr(self, "autoPingPending", None):
            # Autobahn logs a pong it did not ask for, so piggyback on its
            # own ping when one is out rather than send a second.
            self.sendPing(os.urandom(8))
        timer = self.factory.clock.callLater(timeout, self._answer_probes, False, only=probe)

        def answered(result: bool) -> bool:
            if timer.active():
                timer.cancel()
            return result

        return probe.addCallback(answered)

    def _answer_probes(self, alive: bool, only: Deferred[bool] | None = None) -> None:
        if only is not None:
            if only in self._probes:
                self._probes.remove(only)
                only.callback(alive)
            return
        probes, self._probes = self._probes, []
        for probe in probes:
            probe.callback(alive)

    def onPong(self, payload: bytes) -> None:
        if self._probes:
            self._answer_probes(True)

    # -- Autobahn callbacks --------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        # Autobahn would swallow anything but ConnectionDeny silently.
        try:
            self._allowed_name = self.factory.check_handshake(request)
        except ConnectionDeny:
            raise
        except Exception:
            _log.failure("worker handshake check failed")
            raise ConnectionDeny(500, "internal error") from None

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn tries to set TCP_NODELAY before it has copied its options
        # onto the protocol, so it never does; without it a small frame sent
        # right after another waits for the worker's delayed ACK (40 ms).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass  # not a TCP socket

    def onOpen(self) -> None:
        try:
            self._hello_timer = self.factory.clock.callLater(
                self.factory.hello_timeout, self._no_hello
            )
        except Exception:
            _log.failure("worker connection setup failed")

    def _no_hello(self) -> None:
        self._hello_timer = None
        self.send("refused", reason=f"no hello within {self.factory.hello_timeout:g}s")
        self.close("no hello")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._probes:
            self._answer_probes(True)
        message: Any = None
        try:
            if isBinary:
                raise BadMessage("messages must be JSON text frames")
            try:
                message = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise BadMessage("not valid JSON") from None
            if not isinstance(message, dict):
                raise BadMessage("a message must be a JSON object")
            kind = message.get("type")
            if not isinstance(kind, str):
                raise BadMessage("field 'type' must be a string")
            self._handle(kind, message)
        except (BadMessage, JobNotFound) as error:
            reply: dict[str, Any] = {"reason": str(error.args[0])}
            echo = _echo(message)
            if echo is not None:
                reply["message"] = echo
            self.send("error", **reply)
        except Exception:
            _log.failure("worker message handling failed")
            self.send("error", reason="internal error on the scheduler (logged)")

    def _handle(self, kind: str, message: dict[str, Any]) -> None:
        if self.worker is None:
            if self._claiming:
                raise BadMessage("nothing but the hello may come before the welcome")
            if kind != "hello":
                raise BadMessage("the first message must be 'hello'")
            self._hello(message)
            return
        worker = self.worker
        dispatcher = self.factory.dispatcher
        if kind == "started":
            dispatcher.started(worker, _int(message, "job", low=1), _number(message, "at") or 0.0)
        elif kind == "output":
            stream = message.get("stream")
            if stream not in ("stdout", "stderr"):
                raise BadMessage("field 'stream' must be 'stdout' or 'stderr'")
            data = message.get("data")
            if not isinstance(data, str):
                raise BadMessage("field 'data' must be a string")
            dispatcher.output(worker, _int(message, "job", low=1), _int(message, "seq", low=1), stream, data)
        elif kind == "finished":
            exit_code = message.get("exitCode")
            signal = message.get("signal")
            for name, value in (("exitCode", exit_code), ("signal", signal)):
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31
                ):
                    raise BadMessage(f"field '{name}' must be a 32-bit integer or null")
            dispatcher.finished(
                worker,
                _int(message, "job", low=1),
                exit_code=exit_code,
                signal=signal,
                timed_out=_bool(message, "timedOut"),
                cancelled=_bool(message, "cancelled"),
                started_at=_number(message, "startedAt", optional=True),
                finished_at=_number(message, "finishedAt", optional=True),
            )
        elif kind == "rejected":
            reason = message.get("reason", "")
            dispatcher.rejected(worker, _int(message, "job", low=1), str(reason)[:200])
        elif kind == "hello":
            raise BadMessage("hello was already received on this connection")
        else:
            # Logged once per connection (a flood of them must not flood the
            # log); onClose says how many there were.
            self._unknown += 1
            if self._unknown == 1:
                _log.info(
                    "ignoring a '{kind}' message from worker {name} (further unknown types on this "
                    "connection are counted, not logged)",
                    kind=kind[:40],
                    name=worker.name,
                )

    def _hello(self, message: dict[str, Any]) -> None:
        protocol = message.get("protocol")
        if isinstance(protocol, bool) or protocol != PROTOCOL_VERSION:
            self._refuse(
                f"protocol {protocol!r} is not supported (this scheduler speaks {PROTOCOL_VERSION})",
                "unsupported protocol",
            )
            return
        hello = parse_hello(message)
        name = hello.name
        if self._allowed_name is not None and name != self._allowed_name:
            _log.warn(
                "refused worker {name} from {peer}: its token belongs to another worker",
                name=name,
                peer=self.peer,
            )
            self._refuse(f"this token is not valid for the worker name '{name}'")
            return
        if self._allowed_name is None and self.factory.reserved(name):
            # The shared token may use any name but those bound to a token
            # of their own: otherwise it could pose as them.
            _log.warn(
                "refused worker {name} from {peer}: that name has its own token in the worker "
                "tokens file, and this connection did not use it",
                name=name,
                peer=self.peer,
            )
            self._refuse(
                f"the worker name '{name}' has its own token in the scheduler's worker tokens file; "
                "connect with that token"
            )
            return
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None
        holder = self.factory.dispatcher.workers.get(name)
        if holder is None or (hello.instance is not None and hello.instance == holder.instance):
            # A free name, or the same agent process coming back (it has one
            # connection at a time, so its old one is dead).
            self._welcome(hello)
            return
        self._claim(hello, holder)

    def _claim(self, hello: Hello, holder: Worker) -> None:
        """A live-looking connection holds the name: take over only if it is dead.

        A worker whose old connection died half-open, or that restarted
        since, must get its name back; a second worker started under the
        same name by mistake must not take it (the two would take it from
        each other at every reconnect, and lose each other's jobs).  So
        the holder is pinged; only if it does not answer in time does the
        new connection get the name.
        """
        self._claiming = True
        probe = getattr(holder.link, "alive", None)
        answered = probe(self.factory.probe_timeout) if probe is not None else succeed(False)
        answered.addCallback(self._claimed, hello, holder).addErrback(
            lambda failure: _log.failure("deciding who holds worker name {name}", failure, name=hello.name)
        )

    def _claimed(self, alive: bool, hello: Hello, holder: Worker) -> None:
        self._claiming = False
        if self.state != self.STATE_OPEN:
            return  # gone while we waited; the holder keeps its name
        current = self.factory.dispatcher.workers.get(hello.name)
        old_peer = getattr(holder.link, "peer", "?")
        if current is not None and (current is not holder or alive):
            _log.warn(
                "refused worker {name} from {peer}: the name is held by a live connection from "
                "{old_peer} (connected {since}); are two workers running with the same --name?",
                name=hello.name,
                peer=self.peer,
                old_peer=old_peer,
                since=iso(holder.connected_at, UTC),
            )
            self.factory.dispatcher.workers.clashed(current)
            self._refuse(
                f"the worker name '{hello.name}' is in use by another live connection: is a second "
                "worker running with the same --name? Give each worker a name of its own"
            )
            return
        if current is holder:
            _log.warn(
                "worker {name}: its connection from {old_peer} did not answer a ping within {timeout:g}s; "
                "the new connection from {peer} takes the name over",
                name=hello.name,
                old_peer=old_peer,
                timeout=self.factory.probe_timeout,
                peer=self.peer,
            )
        self._welcome(hello)

    def _welcome(self, hello: Hello) -> None:
        worker = Worker(
            hello.name, hello.labels, hello.slots, self, self.factory.clock.seconds(), instance=hello.instance
        )
        welcome = self.factory.dispatcher.hello(worker, hello.jobs)
        self.worker = worker
        _log.info(
            "worker {name} connected from {peer} ({slots} slots, labels {labels})",
            name=hello.name,
            peer=self.peer,
            slots=hello.slots,
            labels=",".join(sorted(hello.labels)) or "-",
        )
        self.send("welcome", **welcome)

    def _refuse(self, reason: str, close: str = "refused") -> None:
        self.send("refused", reason=reason)
        self.close(close)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._answer_probes(False)
        if self._unknown > 1:
            _log.info(
                "worker {name} sent {count} messages of unknown types on this connection",
                name=self.worker.name if self.worker is not None else "?",
                count=self._unknown,
            )
        if self.worker is not None:
            _log.info("worker {name} disconnected ({reason})", name=self.worker.name, reason=reason or code)
            self.factory.dispatcher.disconnected(self.worker)
            self.worker = None


class WorkerServerFactory(WebSocketServerFactory):
    protocol = WorkerServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        *,
        check_handshake: Callable[[ConnectionRequest], str | None] = lambda request: None,
        reserved: Callable[[str], bool] = lambda name: False,
        hello_timeout: float = 10.0,
        probe_timeout: float = PROBE_TIMEOUT,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        max_message: int = 2 * 1024 * 1024,
        handshake_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.clock = clock
        # Raises ConnectionDeny to refuse; may return the one name allowed.
        self.check_handshake = check_handshake
        # Names bound to a token of their own: not for the shared token.
        self.reserved = reserved
        self.hello_timeout = hello_timeout
        self.probe_timeout = probe_timeout
        self.setProtocolOptions(
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            maxMessagePayloadSize=max_message,
            maxFramePayloadSize=max_message,
            openHandshakeTimeout=handshake_timeout,
            closeHandshakeTimeout=5,
        )
