"""Connection bounds for a listener: in total, per peer address, and unread output."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProducer,
    IProtocolFactory,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

# Bytes queued for a peer that does not read, beyond what its transport
# holds before it asks to pause (64 KiB for TCP), before it is dropped.
# Above the largest single message (a worker message, an HTTP body, a job's
# kept output), twice the live feed's own backlog bound.
SEND_BACKLOG = 8 * 1024 * 1024


def _peer(address: IAddress) -> str:
    return str(getattr(address, "host", "local"))


@implementer(IPushProducer)
class _Backlog:
    """The producer a connection's transport sees: it says when the peer lags.

    The transport pauses its producer when its write buffer passes its own
    size and resumes it when the buffer has drained: from the pause on,
    every byte written waits for a peer that is not reading.  The inner
    protocol's own producer (twisted.web's HTTPChannel registers itself, and
    stops reading requests while paused) is kept here and told the same.
    """

    def __init__(self) -> None:
        self.paused = False
        self.behind = 0  # bytes written since the pause
        self.inner: IProducer | None = None
        self.inner_streaming = True

    def pauseProducing(self) -> None:
        self.paused = True
        if self.inner is not None and self.inner_streaming:
            IPushProducer(self.inner).pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.behind = 0
        if self.inner is not None:
            # A pull producer is asked for more whenever the buffer drains.
            self.inner.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        if self.inner is not None:
            self.inner.stopProducing()


@implementer(IHalfCloseableProtocol)
class _Counted(ProtocolWrapper):
    """Counts a connection; passes half-closes on (the command port needs them).

    And drops a peer that leaves more than the factory's ``send_backlog``
    bytes unread: otherwise one that sends requests and never reads the
    answers makes the process buffer them without end.
    """

    factory: ConnectionLimits

    def __init__(self, factory: ConnectionLimits, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._backlog = _Backlog()
        self._dropped = False

    def makeConnection(self, transport: ITransport) -> None:
        # Before the inner protocol can: a transport takes one producer,
        # and registerProducer below keeps the inner one in _Backlog.
        transport.registerProducer(self._backlog, True)  # type: ignore[attr-defined]
        super().makeConnection(transport)

    def loseConnection(self) -> None:
        # A transport whose buffer drains resumes a paused producer instead
        # of finishing a close asked for meanwhile: let go of it first (as
        # HTTPChannel does of itself), or the connection stays open.
        if self.transport is not None and not self.disconnecting:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        super().loseConnection()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._backlog.inner is not None:
            raise RuntimeError(f"cannot register producer {producer}: {self._backlog.inner} is registered")
        self._backlog.inner = producer
        self._backlog.inner_streaming = streaming
        if not streaming:
            producer.resumeProducing()  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        self._backlog.inner = None

    def write(self, data: bytes) -> None:
        if self._dropped:
            return
        assert self.transport is not None
        lagging = self._backlog.paused
        self.transport.write(data)
        if lagging:
            self._wrote(len(data))

    def writeSequence(self, data: Iterable[bytes]) -> None:
        if self._dropped:
            return
        assert self.transport is not None
        chunks = list(data)
        lagging = self._backlog.paused
        self.transport.writeSequence(chunks)
        if lagging:
            self._wrote(sum(len(chunk) for chunk in chunks))

    def _wrote(self, size: int) -> None:
        # Only what is written while the peer already lags counts: the write
        # that made the transport pause (one large answer, a LIST of 100,000
        # tasks) is a reply the peer asked for, not a backlog.
        backlog = self._backlog
        backlog.behind += size
        if backlog.behind > self.factory.send_backlog:
            self._drop()

    def _drop(self) -> None:
        self._dropped = True
        self.factory.dropped += 1
        log.warn(
            "dropping the connection from {peer}: it left more than {limit} bytes unread",
            peer=getattr(self, "_limits_peer", None) or "?",
            limit=self.factory.send_backlog,
        )
        # Abort: a clean close would first wait for the peer to read it all.
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif self.transport is not None:
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if half is not None:
            half.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.released(self)
        super().connectionLost(reason)


class _Refuse(Protocol):
    """Says why, then hangs up: for clients over a connection limit."""

    def __init__(self, message: bytes) -> None:
        self._message = message

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self._message:
            self.transport.write(self._message)
        self.transport.loseConnection()


class ConnectionLimits(WrappingFactory[_Counted]):
    """Wraps a server factory; refuses connections beyond the limits.

    ``refusal`` is written to a refused client first (``ERR ...`` for the
    command port; nothing for HTTP, where a bare close is the norm).
    """

    protocol = _Counted

    def __init__(
        self,
        wrapped: IProtocolFactory,
        *,
        total: int,
        per_peer: int,
        refusal: bytes = b"",
        send_backlog: int = SEND_BACKLOG,
    ) -> None:
        super().__init__(wrapped)
        self.total = total
        self.per_peer = per_peer
        self.refusal = refusal
        self.send_backlog = send_backlog
        self.dropped = 0  # connections dropped for leaving too much unread
        self._peers: Counter[str] = Counter()
        self._open = 0
        self.refused = 0

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        peer = _peer(addr)
        if self._open >= self.total or self._peers[peer] >= self.per_peer:
            self.refused += 1
            if self.refused % 100 == 1:
                # One line per hundred refusals: a flood must not flood the log.
                log.warn(
                    "refusing connection from {peer}: limit of {total} in total / {per_peer} per address reached",
                    peer=peer,
                    total=self.total,
                    per_peer=self.per_peer,
                )
            return _Refuse(self.refusal)
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self._open += 1
            self._peers[peer] += 1
            protocol._limits_peer = peer  # type: ignore[attr-defined]
        return protocol

    def released(self, protocol: _Counted) -> None:
        peer = getattr(protocol, "_limits_peer", None)
        if peer is None:
            return
        protocol._limits_peer = None  # type: ignore[attr-defined]
        self._open -= 1
        self._peers[peer] -= 1
        if self._peers[peer] <= 0:
            del self._peers[peer]
