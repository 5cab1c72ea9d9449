"""The worker's WebSocket to the scheduler: Autobahn frames in and out, nothing more.

``WorkerProtocol`` hands each frame to the agent and sends what the agent
says; ``WorkerClientFactory`` carries the URL, the bearer token and the
WebSocket settings.  ``worker/tap.py`` puts the factory in a
``ClientService`` that redials with ``worker.backoff.Backoff``, through a
``Rotation`` of the scheduler URLs (``--url`` takes several): each dial
goes to the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from scheduler.worker_messages import GOING_AWAY, Link, Outbox, no_delay, websocket_options

__all__ = ["MAX_MESSAGE_SIZE", "Rotation", "Session", "WorkerClientFactory", "WorkerProtocol"]

# Autobahn owns ``self.log`` on protocols; this one is ours.
_log = Logger(namespace="worker.connection")

# Scheduler-to-worker messages are small (a command line and its env), so a
# few MiB is generous; the limit only stops a broken peer from making us
# buffer without bound.
MAX_MESSAGE_SIZE = 4 * 1024 * 1024


class Session(Protocol):
    """What the connection needs of the agent (``worker.agent.WorkerAgent``)."""

    @property
    def welcomed(self) -> bool: ...

    def connected(self, link: Link) -> None: ...

    def receive(self, payload: str | bytes, *, binary: bool = False) -> None: ...

    def disconnected(self, link: Link) -> None: ...


class WorkerProtocol(WebSocketClientProtocol):
    """Frames in and out; everything else is the agent's business.

    What the agent says within one reactor turn goes out as one frame (see
    ``scheduler.worker_messages.Outbox``).
    """

    _outbox: Outbox | None = None

    def _agent(self) -> Session:
        agent: Session = self.factory.agent
        return agent

    def connectionMade(self) -> None:
        super().connectionMade()
        no_delay(self.transport)

    def onOpen(self) -> None:
        # Autobahn swallows exceptions raised here, so log them ourselves and
        # drop the connection rather than sit on a half-started session.
        try:
            self._agent().connected(self)
        except Exception:
            _log.failure("starting the session with the scheduler failed")
            self.dropConnection(abort=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            self._agent().receive(payload, binary=isBinary)
        except Exception:
            _log.failure("handling a message from the scheduler failed")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
            agent = self._agent()
            if code == GOING_AWAY:
                _log.info("the scheduler is restarting ({code}: {reason}); reconnecting at once", code=code, reason=reason)
                self.factory.on_going_away()
            else:
                # Before the welcome, a close usually means the scheduler
                # would not have us (bad token, wrong URL): worth more than info.
                level = _log.info if agent.welcomed else _log.warn
                level("connection to the scheduler closed ({code}: {reason})", code=code, reason=reason)
            if self._outbox is not None:
                self._outbox.discard()
            agent.disconnected(self)
        except Exception:
            _log.failure("handling the end of the connection failed")

    def send(self, type: str, /, **fields: object) -> None:
        # Anything unsent is in the job buffers already; the next welcome
        # asks for it again.
        if self.state != WebSocketClientProtocol.STATE_OPEN:
            return
        if self._outbox is None:
            self._outbox = Outbox(self.factory.reactor, self._write)
        self._outbox.send(type, **fields)

    def _write(self, frame: bytes) -> None:
        if self.state == WebSocketClientProtocol.STATE_OPEN:
            self.sendMessage(frame, isBinary=False)

    def close(self, reason: str) -> None:
        if self.state == WebSocketClientProtocol.STATE_OPEN:
            if self._outbox is not None:
                self._outbox.flush()
            self.sendClose(code=1000, reason=reason)


class WorkerClientFactory(WebSocketClientFactory):
    protocol = WorkerProtocol
    # ClientService reconnects through the same factory; its own retry
    # lines say enough without a start/stop pair per attempt.
    noisy = False

    def __init__(
        self,
        agent: Session,
        url: str,
        *,
        token: str | None = None,
        reactor: Any = None,
        on_going_away: Callable[[], object] = lambda: None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        super().__init__(url, headers=headers, reactor=reactor)
        self.agent = agent
        # Called when the scheduler closes with "going away" (a restart).
        self.on_going_away = on_going_away
        self.setProtocolOptions(**websocket_options(max_message=MAX_MESSAGE_SIZE, handshake_timeout=30))

    def aim(self, url: str) -> None:
        """Make the next handshake ask for *url* (its Host and path), keeping the token."""
        self.setSessionParameters(url, self.origin, self.protocols, self.useragent, self.headers, self.proxy)


# Seconds a dial may take, from resolving the scheduler's name to the TCP
# connection (the WebSocket handshake has its own timeout).
DIAL_TIMEOUT = 10.0


@implementer(IStreamClientEndpoint)
class Rotation:
    """Several schedulers' URLs as one endpoint: each dial goes to the next.

    ClientService dials again through the same endpoint after every failed
    attempt or lost connection, with the worker's backoff between dials,
    so a worker whose scheduler node died reaches another node at its next
    dial.  In turn, rather than from the first URL each time: a dead node
    costs one dial per round, not one before every attempt.
    """

    def __init__(
        self,
        factory: WorkerClientFactory,
        targets: Sequence[tuple[str, IStreamClientEndpoint]],
        *,
        clock: IReactorTime | None = None,
        timeout: float = DIAL_TIMEOUT,
    ) -> None:
        if not targets:
            raise ValueError("a rotation needs at least one URL")
        self._factory = factory
        self._targets = list(targets)
        self._next = 0
        self._clock = clock
        self._timeout = timeout

    @property
    def url(self) -> str:
        """The URL the next dial goes to."""
        return self._targets[self._next][0]

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        url, endpoint = self._targets[self._next]
        self._next = (self._next + 1) % len(self._targets)
        if len(self._targets) > 1:
            _log.info("dialling the scheduler at {url}", url=url)
        self._factory.aim(url)
        dialled: Deferred[Any] = endpoint.connect(protocolFactory)
        if self._clock is not None:
            # The whole dial, the name's resolution included: a name server
            # that does not answer (a restarting container network's) would
            # otherwise hold the dial, and the next one, for the resolver's
            # own timeouts (40 s seen).
            dialled.addTimeout(self._timeout, self._clock)
        return dialled
