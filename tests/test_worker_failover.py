"""The worker's ``--url`` list: every URL checked at start, and each dial to the next
node, with the worker's backoff between dials (``worker.connection.Rotation``)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure

from tests.test_worker_agent import Harness, parse
from worker.backoff import Backoff
from worker.connection import DIAL_TIMEOUT, Rotation, WorkerClientFactory
from worker.tap import CONNECT_TIMEOUT, SchedulerUrl, endpoint_for, parse_urls

A = "ws://a.test:3000/ws/worker"
B = "wss://b.test/ws/worker"


class Node:
    """An endpoint that refuses, or accepts and keeps the protocol it built."""

    def __init__(self, name: str, dials: list[str], *, up: bool = False) -> None:
        self.name = name
        self.dials = dials
        self.up = up
        self.protocol: Any = None

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        self.dials.append(self.name)
        if not self.up:
            return fail(ConnectionRefusedError(self.name))
        self.protocol = factory.buildProtocol(None)
        assert self.protocol is not None
        self.protocol.makeConnection(StringTransport())
        return succeed(self.protocol)

    def crash(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def test_url_takes_a_comma_separated_list_and_names_the_bad_one() -> None:
    assert parse_urls(f" {A} ,{B}") == [
        SchedulerUrl(A, False, "a.test", 3000),
        SchedulerUrl(B, True, "b.test", 443),
    ]
    with pytest.raises(usage.UsageError, match=r"--url http://c\.test/ws: .*"):
        parse_urls(f"{A},http://c.test/ws")
    with pytest.raises(usage.UsageError, match="an empty URL in the list"):
        parse_urls(f"{A},,{B}")


def test_options_keep_every_url_and_the_first_as_before(tmp_path: Any) -> None:
    options = parse("--url", f"{A},{B}", "--workdir", str(tmp_path))
    assert [each.url for each in options["urls"]] == [A, B]
    assert (options["host"], options["port"], options["secure"]) == ("a.test", 3000, False)


def test_each_dial_goes_to_the_next_url_with_the_backoff_between() -> None:
    clock = Clock()
    dials: list[str] = []
    a, b = Node("a", dials), Node("b", dials)
    factory = WorkerClientFactory(Harness().agent, A, token="t0k", reactor=clock)
    rotation = Rotation(factory, [(A, a), (B, b)])
    # The longest delay the backoff allows: 1, 2, 4 s...
    backoff = Backoff(uniform=lambda low, high: high)
    service = ClientService(rotation, factory, retryPolicy=backoff, clock=clock)
    service.startService()
    assert dials == ["a"]
    clock.advance(0.99)
    assert dials == ["a"]
    clock.advance(0.01)
    assert dials == ["a", "b"]
    # The handshake of the next dial asks the next node, with the same token.
    assert factory.url == B and factory.host == "b.test" and factory.isSecure
    assert factory.headers == {"Authorization": "Bearer t0k"}
    clock.advance(2)
    assert dials == ["a", "b", "a"]
    assert factory.url == A and factory.host == "a.test" and not factory.isSecure
    service.stopService()


def test_a_lost_node_is_left_for_the_next_and_going_away_dials_it_at_once() -> None:
    clock = Clock()
    dials: list[str] = []
    a, b = Node("a", dials, up=True), Node("b", dials, up=True)
    factory = WorkerClientFactory(Harness().agent, A, reactor=clock)
    backoff = Backoff(uniform=lambda low, high: high)
    service = ClientService(Rotation(factory, [(A, a), (B, b)]), factory, retryPolicy=backoff, clock=clock)
    service.startService()
    assert dials == ["a"]
    # Node a is killed: its connection ends without a close frame.
    a.crash()
    clock.advance(1)
    assert dials == ["a", "b"] and factory.url == B
    # Node b restarts ("going away", which calls at_once): node a, at once.
    backoff.at_once()
    b.crash()
    clock.advance(0)
    assert dials == ["a", "b", "a"] and factory.url == A
    service.stopService()


def test_a_rotation_needs_a_url() -> None:
    with pytest.raises(ValueError, match="at least one URL"):
        Rotation(WorkerClientFactory(Harness().agent, A), [])


def test_a_dial_gives_up_on_a_silent_address_within_the_connect_timeout() -> None:
    """A node's machine or container that is gone answers nothing, not even a
    refusal: the dial must fail soon enough for the next URL to be tried."""
    reactor = MemoryReactorClock()
    endpoint_for(reactor, secure=False, host="127.0.0.1", port=3000).connect(Factory.forProtocol(Protocol))
    reactor.advance(0.1)
    ((host, port, _, timeout, _),) = reactor.tcpClients
    assert (host, port, timeout) == ("127.0.0.1", 3000, CONNECT_TIMEOUT)
    assert CONNECT_TIMEOUT <= 5.0


def test_a_dial_that_hangs_in_name_resolution_is_given_up_for_the_next() -> None:
    """A name server that does not answer (a restarting container network's)
    must not hold the worker: the whole dial is given up after DIAL_TIMEOUT."""
    clock = Clock()
    factory = WorkerClientFactory(Harness().agent, A, reactor=clock)
    hanging: list[Deferred[Any]] = []

    class Silent:
        def connect(self, protocol_factory: IProtocolFactory) -> Deferred[Any]:
            hanging.append(Deferred())
            return hanging[-1]

    rotation = Rotation(factory, [(A, Silent())], clock=clock)  # type: ignore[list-item]
    failures: list[Failure] = []
    rotation.connect(factory).addErrback(failures.append)
    clock.advance(DIAL_TIMEOUT - 0.1)
    assert not failures
    clock.advance(0.2)
    assert len(failures) == 1 and failures[0].check(TimeoutError)
