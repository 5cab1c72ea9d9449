"""ConnectionLimits' bound on what a peer leaves unread, in memory.

``StuckTransport`` is a transport whose peer never reads: like a TCP
transport, it pauses its producer once its buffer passes 64 KiB, and it
never drains.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientCreator, Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import provider

from scheduler.dispatch import Dispatcher, NoRecorder
from scheduler.job_book import JobBook
from scheduler.limits import SEND_BACKLOG, ConnectionLimits
from scheduler.worker_protocol import WorkerServerFactory
from scheduler.worker_registry import WorkerRegistry

TRANSPORT_BUFFER = 64 * 1024  # what a TCP transport holds before it pauses its producer


class StuckTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.9", 4000))
        self.aborted = False
        self.buffered = 0

    def write(self, data: bytes) -> None:
        if self.aborted:
            raise AssertionError("written after the abort")
        super().write(data)
        self.buffered += len(data)
        if self.buffered > TRANSPORT_BUFFER and self.producer is not None and self.streaming:
            if not getattr(self, "_paused_producer", False):
                self._paused_producer = True
                self.producer.pauseProducing()

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


class Complainer(LineReceiver):
    """Answers every line with an error, as the command port does to junk."""

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(b"ERR unknown command; send HELP for the list of commands")


def test_a_peer_that_never_reads_is_dropped_at_the_bound(warnings: list[str]) -> None:
    limits = ConnectionLimits(Factory.forProtocol(Complainer), total=10, per_peer=10, send_backlog=100_000)
    transport = StuckTransport()
    protocol = limits.buildProtocol(transport.getPeer())
    assert protocol is not None
    protocol.makeConnection(transport)
    for _ in range(100_000):
        if transport.aborted:
            break
        protocol.dataReceived(b"junk\r\n" * 10)
    assert transport.aborted
    # Memory held for the peer: its transport's buffer, the bound, one answer more.
    assert transport.buffered <= TRANSPORT_BUFFER + 100_000 + 60 * 10
    assert limits.dropped == 1
    assert any("dropping the connection from 10.0.0.9" in line and "100000 bytes unread" in line for line in warnings)


def test_a_peer_that_reads_again_is_not_dropped() -> None:
    limits = ConnectionLimits(Factory.forProtocol(Complainer), total=10, per_peer=10, send_backlog=50_000)
    transport = StuckTransport()
    protocol = limits.buildProtocol(transport.getPeer())
    assert protocol is not None
    protocol.makeConnection(transport)
    for _ in range(10):
        protocol.dataReceived(b"x\r\n" * 1500)  # ~90 KB of answers: paused, and 25 KB behind
        assert not transport.aborted
        # The peer reads everything: the transport drains and resumes its producer.
        transport.clear()
        transport.buffered = 0
        transport._paused_producer = False
        transport.producer.resumeProducing()  # type: ignore[union-attr]
    assert limits.dropped == 0


def test_the_default_bound_is_above_the_largest_message() -> None:
    assert SEND_BACKLOG > 2 * 1024 * 1024  # --ws-max-message's default
    limits = ConnectionLimits(Factory.forProtocol(Complainer), total=1, per_peer=1)
    assert limits.send_backlog == SEND_BACKLOG


def test_http_keeps_its_own_flow_control_under_the_wrapper() -> None:
    """twisted.web's HTTPChannel registers itself as its transport's producer.

    The wrapper registers first, so it must pass pause and resume on: the
    channel stops reading further requests while its answers wait.
    """
    root = Resource()
    big = Resource()
    big.render_GET = lambda request: b"x" * 50_000  # type: ignore[method-assign]
    root.putChild(b"big", big)
    limits = ConnectionLimits(Site(root), total=10, per_peer=10, send_backlog=10_000_000)
    transport = StuckTransport()
    protocol = limits.buildProtocol(transport.getPeer())
    assert protocol is not None
    protocol.makeConnection(transport)
    channel = protocol.wrappedProtocol._channel  # Site wraps HTTPChannel for HTTP/2 negotiation
    protocol.dataReceived(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    assert channel._waitingForTransport  # told that its answers wait
    assert not transport.aborted
    transport.clear()
    transport.buffered = 0
    transport._paused_producer = False
    transport.producer.resumeProducing()  # type: ignore[union-attr]
    assert not channel._waitingForTransport
    protocol.connectionLost(None)  # type: ignore[arg-type]


def _frame(payload: bytes) -> bytes:
    """A masked client text frame (mask key 0: the payload as it is)."""
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        header += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    else:
        header += bytes([0x80 | 127]) + len(payload).to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


def test_a_worker_socket_flooding_invalid_messages_is_dropped(warnings: list[str]) -> None:
    """Issue 20, item 3: 1.5 MB invalid messages, never reading, grew the scheduler by 436 MB."""
    clock = Clock()
    dispatcher = Dispatcher(clock, JobBook(clock), WorkerRegistry(), NoRecorder(), lambda task_id: None)
    factory = WorkerServerFactory(dispatcher, clock)
    factory.reactor = clock
    limits = ConnectionLimits(factory, total=10, per_peer=10, send_backlog=16 * 1024)
    transport = StuckTransport()
    protocol = limits.buildProtocol(transport.getPeer())
    assert protocol is not None
    protocol.makeConnection(transport)
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    protocol.dataReceived(
        b"GET /ws/worker HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 101")
    junk = _frame(json.dumps({"type": "started", "job": "x", "pad": "A" * 100_000}).encode())
    received = 0
    while not transport.aborted and received < 2000:
        protocol.dataReceived(junk)
        clock.advance(0)  # the turn ends: the replies go out
        received += 1
    assert transport.aborted, transport.buffered
    # Each error echoes the type and job only, and the peer is dropped at the bound.
    assert transport.buffered <= TRANSPORT_BUFFER + 16 * 1024 + 1000
    assert received * len(junk) > 10 * transport.buffered
    assert any("dropping the connection" in line for line in warnings)
    for call in clock.getDelayedCalls():
        call.cancel()



class _Burst(Protocol):
    """Writes more than a socket buffer holds, then hangs up."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"x" * 8_000_000)
        self.transport.loseConnection()
        self.factory.hung_up.callback(None)  # type: ignore[attr-defined]


class _SlowReader(Protocol):
    def __init__(self) -> None:
        self.received = 0
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # reads nothing until told

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_while_its_peer_lags_still_closes(reactor: Any) -> None:
    """The wrapper's producer must not hold a hung-up connection open.

    A transport whose buffer drains resumes a paused producer *instead of*
    finishing a pending close; so the wrapper lets go of the transport when
    the protocol hangs up.
    """
    server = Factory.forProtocol(_Burst)
    server.hung_up = Deferred()  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, ConnectionLimits(server, total=10, per_peer=10), interface="127.0.0.1")
    try:
        reader = _SlowReader()
        client = await ClientCreator(reactor, lambda: reader).connectTCP("127.0.0.1", port.getHost().port)
        await server.hung_up
        client.transport.resumeProducing()
        await reader.lost.addTimeout(20, reactor)
        assert reader.received == 8_000_000
    finally:
        await port.stopListening()


class BigAnswer(LineReceiver):
    """Answers each line with one reply larger than the bound, as LIST of many tasks does."""

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(b"x" * 300_000)


def test_one_answer_larger_than_the_bound_is_sent_whole() -> None:
    # The write that makes the transport pause is an answer the peer asked
    # for: LIST of 100,000 tasks (about 10 MB) was cut off at the 8 MiB bound.
    limits = ConnectionLimits(Factory.forProtocol(BigAnswer), total=10, per_peer=10, send_backlog=100_000)
    transport = StuckTransport()
    protocol = limits.buildProtocol(transport.getPeer())
    assert protocol is not None
    protocol.makeConnection(transport)
    protocol.dataReceived(b"LIST\r\n")
    assert not transport.aborted and limits.dropped == 0
    assert len(transport.value()) == 300_002
    # A second one while the first is still unread is a backlog.
    protocol.dataReceived(b"LIST\r\n")
    assert transport.aborted and limits.dropped == 1
