"""Connection bounds for a listener: in total, and per peer address."""

from __future__ import annotations

from collections import Counter

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()


def _peer(address: IAddress) -> str:
    return str(getattr(address, "host", "local"))


@implementer(IHalfCloseableProtocol)
class _Counted(ProtocolWrapper):
    """Counts a connection; passes half-closes on (the command port needs them)."""

    factory: ConnectionLimits

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


class ConnectionLimits(WrappingFactory):
    """Wraps a server factory; refuses connections beyond the limits.

    ``refusal`` is written to a refused client first (``ERR ...`` for the
    command port; nothing for HTTP, where a bare close is the norm).
    """

    protocol = _Counted

    def __init__(
        self, wrapped: IProtocolFactory, *, total: int, per_peer: int, refusal: bytes = b""
    ) -> None:
        super().__init__(wrapped)
        self.total = total
        self.per_peer = per_peer
        self.refusal = refusal
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
