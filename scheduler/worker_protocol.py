"""The scheduler's end of the worker WebSocket (see docs/protocol.md).

Thin by design: decode, check the fields, call the dispatcher, encode.
Nothing a worker sends may raise out of here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from scheduler.dispatch import PROTOCOL_VERSION, Dispatcher, JobNotFound
from scheduler.workers import Worker

# Autobahn owns self.log on protocols.
_log = Logger()

MAX_NAME = 100


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


def parse_hello(message: dict[str, Any]) -> tuple[str, frozenset[str], int, dict[int, tuple[str, int]]]:
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
    return name, frozenset(labels), slots, reported


class WorkerServerProtocol(WebSocketServerProtocol):
    factory: WorkerServerFactory

    def __init__(self) -> None:
        super().__init__()
        self.worker: Worker | None = None
        self._hello_timer: IDelayedCall | None = None
        # Set by a per-worker token: the only name this connection may use.
        self._allowed_name: str | None = None

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
            if isinstance(message, dict):
                reply["message"] = message
            self.send("error", **reply)
        except Exception:
            _log.failure("worker message handling failed")
            self.send("error", reason="internal error on the scheduler (logged)")

    def _handle(self, kind: str, message: dict[str, Any]) -> None:
        if self.worker is None:
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
            _log.info("ignoring a '{kind}' message from worker {name}", kind=kind[:40], name=worker.name)

    def _hello(self, message: dict[str, Any]) -> None:
        protocol = message.get("protocol")
        if isinstance(protocol, bool) or protocol != PROTOCOL_VERSION:
            self.send(
                "refused",
                reason=f"protocol {protocol!r} is not supported (this scheduler speaks {PROTOCOL_VERSION})",
            )
            self.close("unsupported protocol")
            return
        name, labels, slots, reported = parse_hello(message)
        if self._allowed_name is not None and name != self._allowed_name:
            _log.warn(
                "refused worker {name} from {peer}: its token belongs to another worker",
                name=name,
                peer=self.peer,
            )
            self.send("refused", reason=f"this token is not valid for the worker name '{name}'")
            self.close("refused")
            return
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None
        worker = Worker(name, labels, slots, self, self.factory.clock.seconds())
        welcome = self.factory.dispatcher.hello(worker, reported)
        self.worker = worker
        _log.info(
            "worker {name} connected from {peer} ({slots} slots, labels {labels})",
            name=name,
            peer=self.peer,
            slots=slots,
            labels=",".join(sorted(labels)) or "-",
        )
        self.send("welcome", **welcome)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
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
        hello_timeout: float = 10.0,
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
        self.hello_timeout = hello_timeout
        self.setProtocolOptions(
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            maxMessagePayloadSize=max_message,
            maxFramePayloadSize=max_message,
            openHandshakeTimeout=handshake_timeout,
            closeHandshakeTimeout=5,
        )
