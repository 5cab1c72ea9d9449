"""The scheduler's end of the worker WebSocket (see docs/protocol.md).

Thin by design: decode, check the fields (``scheduler.worker_messages``),
call the dispatcher, encode.  Nothing a worker sends may raise out of here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from scheduler.cron import iso
from scheduler.dispatch import Dispatcher, JobNotFound, NotRunningHere
from scheduler.settings import Settings
from scheduler.worker_messages import (
    GOING_AWAY,
    GOING_AWAY_REASON,
    PING_INTERVAL,
    PING_TIMEOUT,
    BadMessage,
    Hello,
    Outbox,
    as_entry,
    as_message,
    decode,
    error_fields,
    no_delay,
    parse_finished,
    parse_hello,
    parse_output,
    parse_rejected,
    parse_started,
    unbatch,
    unsupported_protocol,
    websocket_options,
)
from scheduler.worker_registry import Worker

# Autobahn owns self.log on protocols.
_log = Logger()

# Seconds the connection holding a worker name has to answer a ping when a
# new connection asks for the name (a live one keeps it).  A worker's
# reactor answers pings at once, so a few seconds are plenty.
PROBE_TIMEOUT = 5.0
# A worker clock further off than this is logged: its times are corrected,
# but its jobs' own logs and files carry the wrong time.
CLOCK_WARNING = 1.0


def _started(dispatcher: Dispatcher, worker: Worker, message: Mapping[str, Any]) -> None:
    started = parse_started(message)
    dispatcher.started(worker, started.job, started.at)


def _output(dispatcher: Dispatcher, worker: Worker, message: Mapping[str, Any]) -> None:
    output = parse_output(message)
    dispatcher.output(worker, output.job, output.seq, output.stream, output.data)


def _finished(dispatcher: Dispatcher, worker: Worker, message: Mapping[str, Any]) -> None:
    dispatcher.finished(worker, parse_finished(message))


def _rejected(dispatcher: Dispatcher, worker: Worker, message: Mapping[str, Any]) -> None:
    rejected = parse_rejected(message)
    dispatcher.rejected(worker, rejected.job, rejected.reason)


# What a welcomed worker may report, by message type.  The hello is handled
# by the protocol itself (it decides who holds a name); a worker's ``error``
# is treated as an unknown type, so a peer cannot flood the log with them.
REPORTS: Mapping[str, Callable[[Dispatcher, Worker, Mapping[str, Any]], None]] = {
    "started": _started,
    "output": _output,
    "finished": _finished,
    "rejected": _rejected,
}


class WorkerServerProtocol(WebSocketServerProtocol):
    factory: WorkerServerFactory

    def __init__(self) -> None:
        super().__init__()
        self.worker: Worker | None = None
        self._hello_timer: IDelayedCall | None = None
        # Set by a per-worker token: the only name this connection may use.
        self._allowed_name: str | None = None
        # A hello waiting to learn whether the connection holding its name
        # is alive (see _claim), or for its jobs to be taken over from
        # another node (see _welcome).
        self._claiming = False
        # Liveness probes of this connection by newer ones: fired True by
        # any pong or message, False on close or timeout.
        self._probes: list[Deferred[bool]] = []
        # Unknown message types: the first is logged, the rest counted.
        self._unknown = 0
        self._outbox: Outbox | None = None
        self._clock_offset = 0.0
        self._closed_waiters: list[Deferred[None]] = []

    @property
    def token_name(self) -> str | None:
        """The worker name a per-worker token bound this connection to."""
        return self._allowed_name

    # -- the link the dispatcher sends through ------------------------

    def send(self, type: str, /, **fields: Any) -> None:
        if self.state != self.STATE_OPEN:
            return
        if self._outbox is None:
            self._outbox = Outbox(self.factory.clock, self._write)
        self._outbox.send(type, **fields)

    def _write(self, frame: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(frame, isBinary=False)

    def close(self, reason: str) -> None:
        if self._outbox is not None:
            self._outbox.flush()  # a refused's reason goes before the close
        self.sendClose(code=1000, reason=reason[:100])

    def go_away(self) -> Deferred[None]:
        """Close with "going away"; fires once the connection is closed."""
        closed: Deferred[None] = Deferred()
        self._closed_waiters.append(closed)
        if self._outbox is not None:
            self._outbox.flush()
        # sendClose() allows applications 1000 and 3000-4999 only; 1001 is
        # the protocol's own code for this, sent through the frame-level call.
        self.sendCloseFrame(code=GOING_AWAY, reasonUtf8=GOING_AWAY_REASON.encode("utf-8"), isReply=False)
        return closed

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
        if self.factory.leaving:
            # A worker told "going away" dials again at once; this process
            # is not the one to welcome it.
            raise ConnectionDeny(503, "the scheduler is shutting down")
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
        no_delay(self.transport)

    def onOpen(self) -> None:
        self.factory.connections.add(self)
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
        received: object = None
        try:
            received = decode(payload, binary=isBinary)
            message = as_message(received)
            if message["type"] == "batch" and self.worker is None:
                raise BadMessage("the hello travels alone, not in a batch")
            entries = unbatch(message)
        except BadMessage as error:
            self.send("error", **error_fields(str(error.args[0]), received))
            return
        for entry in entries:
            self._receive(entry)

    def _receive(self, received: object) -> None:
        """One message, alone or from a batch: whatever goes wrong is answered, never raised."""
        try:
            message = as_entry(received)
            self._handle(message["type"], message)
        except NotRunningHere as error:
            self.send("drop", jobs=[error.job_id], reason=str(error))
        except (BadMessage, JobNotFound) as error:
            self.send("error", **error_fields(str(error.args[0]), received))
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
        if kind == "hello":
            raise BadMessage("hello was already received on this connection")
        report = REPORTS.get(kind)
        if report is not None:
            report(self.factory.dispatcher, self.worker, message)
        else:
            # Logged once per connection (a flood of them must not flood the
            # log); onClose says how many there were.
            self._unknown += 1
            if self._unknown == 1:
                _log.info(
                    "ignoring a '{kind}' message from worker {name} (further unknown types on this "
                    "connection are counted, not logged)",
                    kind=kind[:40],
                    name=self.worker.name,
                )

    def _hello(self, message: dict[str, Any]) -> None:
        unsupported = unsupported_protocol(message)
        if unsupported is not None:
            self._refuse(unsupported, "unsupported protocol")
            return
        hello = parse_hello(message)
        # Measured on arrival: a claim may keep the welcome waiting.
        self._clock_offset = self.factory.clock.seconds() - hello.time
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
        if holder is None or hello.instance == holder.instance:
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
        """Welcome the worker, once its jobs are this node's (with several nodes,
        they may have been another's: taking them over waits for the database)."""
        taking = self.factory.dispatcher.take_over(hello.name, hello.jobs)
        if taking is None:
            self._welcomed(hello)
            return
        self._claiming = True
        # A database that does not answer must not keep the worker waiting
        # for ever: it is refused (and dials again), while the takeover, if
        # it ever commits, leaves the jobs waiting lost_after for it.
        self._hello_timer = self.factory.clock.callLater(self.factory.hello_timeout, self._takeover_too_slow, hello)
        taking.addCallbacks(self._taken_over, self._not_taken_over, callbackArgs=(hello,), errbackArgs=(hello,))
        taking.addErrback(lambda failure: _log.failure("welcoming worker {name}", failure, name=hello.name))

    def _takeover_too_slow(self, hello: Hello) -> None:
        self._hello_timer = None
        _log.error(
            "taking over the jobs of worker {name} took more than {timeout:g}s; refusing it for now",
            name=hello.name,
            timeout=self.factory.hello_timeout,
        )
        self._refuse("the scheduler's database did not answer in time to take over this worker's jobs; try again")

    def _taken_over(self, _: object, hello: Hello) -> None:
        if not self._end_takeover():
            return  # gone meanwhile (or refused): the jobs taken wait for it (lost_after)
        self._welcomed(hello)

    def _end_takeover(self) -> bool:
        """The takeover answered: whether the worker is still here to hear of it."""
        self._claiming = False
        if self._hello_timer is None or not self._hello_timer.active():
            return False
        self._hello_timer.cancel()
        self._hello_timer = None
        return self.state == self.STATE_OPEN

    def _not_taken_over(self, failure: Any, hello: Hello) -> None:
        if not self._end_takeover():
            return
        _log.error(
            "could not take over the jobs of worker {name} from the job database: {error}",
            name=hello.name,
            error=failure.getErrorMessage(),
        )
        # It dials again (its next URL, if it has several).
        self._refuse("the scheduler could not take over this worker's jobs from its database; try again")

    def _welcomed(self, hello: Hello) -> None:
        now = self.factory.clock.seconds()
        worker = Worker(hello.name, hello.labels, hello.slots, self, now, instance=hello.instance)
        # Transit time counts as clock offset; on a network where that
        # matters at all, it is milliseconds.
        worker.clock_offset = self._clock_offset
        welcome = self.factory.dispatcher.hello(worker, hello.jobs)
        self.worker = worker
        _log.info(
            "worker {name} connected from {peer} ({slots} slots, labels {labels})",
            name=hello.name,
            peer=self.peer,
            slots=hello.slots,
            labels=",".join(sorted(hello.labels)) or "-",
        )
        if abs(worker.clock_offset) > CLOCK_WARNING:
            _log.warn(
                "worker {name}'s clock is {seconds:.3f} s {direction} the scheduler's: the times it "
                "reports are corrected, but check its time synchronisation",
                name=hello.name,
                seconds=abs(worker.clock_offset),
                direction="behind" if worker.clock_offset > 0 else "ahead of",
            )
        self.send("welcome", **welcome)

    def _refuse(self, reason: str, close: str = "refused") -> None:
        self.send("refused", reason=reason)
        self.close(close)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.connections.discard(self)
        for waiter in self._closed_waiters:
            waiter.callback(None)
        self._closed_waiters.clear()
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        if self._outbox is not None:
            self._outbox.discard()
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
        hello_timeout: float = Settings.handshake_timeout,
        probe_timeout: float = PROBE_TIMEOUT,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
        max_message: int = Settings.ws_max_message,
        handshake_timeout: float = Settings.handshake_timeout,
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
        # The open connections, for going_away().
        self.connections: set[WorkerServerProtocol] = set()
        self.leaving = False
        self.setProtocolOptions(
            **websocket_options(
                max_message=max_message,
                handshake_timeout=handshake_timeout,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
            )
        )

    def going_away(self, timeout: float) -> Deferred[None]:
        """Refuse new workers and close every open connection with "going away".

        Fires when every worker has answered the close, or after *timeout*
        (a worker that does not answer is dropped with the process, as
        before).
        """
        self.leaving = True
        if not self.connections:
            return succeed(None)
        _log.info("telling {count} worker(s) the scheduler is going away", count=len(self.connections))
        told: list[Deferred[None]] = []
        for connection in list(self.connections):
            # A stop must go on whatever one connection does.
            try:
                told.append(connection.go_away())
            except Exception:
                _log.failure("telling a worker the scheduler is going away failed")
        closed = DeferredList(told, consumeErrors=True)
        closed.addTimeout(timeout, self.clock)
        done: Deferred[None] = Deferred()
        closed.addBoth(lambda _: done.callback(None))
        return done
