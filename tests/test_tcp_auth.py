"""The command port with a TCP token: deadlines, places, and guessing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from scheduler.limits import ConnectionLimits
from scheduler.task_changes import TaskChanges
from scheduler.task_state import TaskState
from scheduler.tcp_auth import (
    AUTH_FREE_FAILURES,
    AUTH_LOG_INTERVAL,
    AUTH_MAX_ADDRESSES,
    AUTH_MAX_WAIT,
    OVER_CAP_GRACE,
    AuthThrottle,
)
from scheduler.tcp_commands import VERBS, TcpCommands, Verb
from scheduler.tcp_protocol import CommandFactory
from tests.helpers import make_state

TOKEN = "tcp-token-0123456789abcdef"


class ClosingTransport(StringTransport):
    """Tells its protocol the connection is lost when it is closed, as TCP does."""

    protocol: Protocol

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            self.protocol.connectionLost(Failure(ConnectionDone()))


class Peer:
    """One connection from *host*, through the factory the service uses."""

    def __init__(self, factory: Any, host: str = "10.0.0.1") -> None:
        self.transport = ClosingTransport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol = factory.buildProtocol(self.transport.getPeer())
        assert protocol is not None
        self.protocol: Protocol = protocol
        self.transport.protocol = protocol
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> list[str]:
        self.protocol.dataReceived(data)
        return self.lines()

    def lines(self) -> list[str]:
        return self.transport.value().decode().splitlines()

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def hang_up(self) -> None:
        self.transport.loseConnection()


@pytest.fixture
def state(tmp_path: Path) -> TaskState:
    return make_state(tmp_path / "tasks.db")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def factory(state: TaskState, clock: Clock, **kw: Any) -> CommandFactory:
    commands = TcpCommands(TaskChanges(state, None, Clock()), state._engine.next_run, lambda: {"tasks": len(state.book)})
    return CommandFactory(commands, clock, token=TOKEN, **kw)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "scheduler.tcp_auth":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)


# -- unauthenticated connections hold nothing for long --------------------------


@pytest.mark.parametrize("verb", VERBS.values(), ids=list(VERBS))
def test_only_the_open_verbs_run_before_auth(verb: Verb, state: TaskState, clock: Clock) -> None:
    arguments = {"ADD": " @daily true", "REMOVE": " 1", "AUTH": " wrong"}
    peer = Peer(factory(state, clock))
    reply = peer.send(f"{verb.word}{arguments.get(verb.word, '')}\n".encode())
    refused = bool(reply) and reply[0].startswith("ERR authentication required")
    assert refused != verb.open_before_auth, reply


def test_session_needs_auth_first(state: TaskState, clock: Clock) -> None:
    peer = Peer(factory(state, clock, linger=0.3))
    assert peer.send(b"SESSION\n") == ["ERR authentication required: send AUTH <token> before SESSION"]
    clock.advance(0.3)
    assert peer.closed  # one-shot: no session was started
    other = Peer(factory(state, clock, linger=0.3, idle_timeout=60))
    assert other.send(f"AUTH {TOKEN}\nSESSION\n".encode())[-1].startswith("OK session")
    clock.advance(30)
    assert not other.closed


def test_a_connection_that_does_not_auth_is_closed_at_the_deadline(state: TaskState, clock: Clock) -> None:
    tcp = factory(state, clock, auth_timeout=10, idle_timeout=300)
    silent = Peer(tcp)
    clock.advance(9.9)
    assert not silent.closed
    clock.advance(0.2)
    assert silent.closed
    assert silent.lines() == ["ERR no AUTH within 10 s; closing"]


def test_the_deadline_ends_with_auth(state: TaskState, clock: Clock) -> None:
    tcp = factory(state, clock, auth_timeout=10, idle_timeout=300)
    operator = Peer(tcp)
    operator.send(f"AUTH {TOKEN}\nSESSION\n".encode())
    clock.advance(200)
    assert not operator.closed
    assert operator.send(b"PING\n")[-1] == "PONG"


def test_no_deadline_without_a_token(state: TaskState, clock: Clock) -> None:
    commands = TcpCommands(TaskChanges(state, None, Clock()), state._engine.next_run, lambda: {})
    peer = Peer(CommandFactory(commands, clock, auth_timeout=10, idle_timeout=300))
    peer.send(b"SESSION\n")
    clock.advance(100)
    assert not peer.closed


def test_the_reported_flood_leaves_room_for_the_operator(state: TaskState, clock: Clock) -> None:
    # 500 connections sending SESSION then PING every 5 s must not hold all
    # 64 places and leave the operator with "too many".
    limits = ConnectionLimits(
        factory(state, clock, idle_timeout=300),
        total=64,
        per_peer=10_000,
        refusal=b"ERR too many connections; try again later\n",
    )
    crowd = [Peer(limits, f"10.1.{n // 200}.{n % 200}") for n in range(500)]
    for peer in crowd:
        peer.send(b"SESSION\n")
    for _ in range(3):
        clock.advance(5)
        for peer in crowd:
            if not peer.closed:
                peer.send(b"PING\n")
    operator = Peer(limits, "10.9.9.9")
    lines = operator.send(f"AUTH {TOKEN}\nSTATUS\n".encode())
    assert lines == ["OK authenticated", "OK tasks=0"]
    assert all(peer.closed for peer in crowd)


def test_over_the_cap_only_a_first_line_auth_gets_in(state: TaskState, clock: Clock) -> None:
    tcp = factory(state, clock, max_unauthenticated=2, idle_timeout=300)
    holders = [Peer(tcp), Peer(tcp)]
    assert tcp.auth is not None and tcp.auth.unauthenticated == 2
    pinger = Peer(tcp)
    assert pinger.send(b"PING\n") == [
        "ERR too many unauthenticated connections; send AUTH <token> as the first line, or try again later"
    ]
    assert pinger.closed
    silent = Peer(tcp)
    clock.advance(OVER_CAP_GRACE)
    assert silent.closed
    assert silent.lines()[0].startswith("ERR too many unauthenticated connections")
    wrong = Peer(tcp)
    assert wrong.send(b"AUTH not-the-token\n") == ["ERR wrong token"]
    assert wrong.closed
    operator = Peer(tcp)
    assert operator.send(f"AUTH {TOKEN}\nSESSION\n".encode())[0] == "OK authenticated"
    clock.advance(OVER_CAP_GRACE * 2)
    assert not operator.closed
    assert tcp.auth.unauthenticated == 2
    # Places come back when their holders authenticate or leave.
    holders[0].send(f"AUTH {TOKEN}\n".encode())
    holders[1].hang_up()
    assert tcp.auth.unauthenticated == 0
    later = Peer(tcp)
    assert later.send(b"PING\n") == ["PONG"]


# -- guesses are throttled per address ------------------------------------------


def test_throttle_backs_off_exponentially_up_to_a_bound() -> None:
    clock = Clock()
    throttle = AuthThrottle(clock)
    waits = []
    for _ in range(AUTH_FREE_FAILURES - 1):
        assert throttle.failed("10.0.0.1") == 0
    for _ in range(10):
        assert throttle.wait("10.0.0.1") == 0
        waits.append(throttle.failed("10.0.0.1"))
        clock.advance(throttle.wait("10.0.0.1"))
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert waits[-1] == AUTH_MAX_WAIT
    # Other addresses are not held up; a right token clears the count.
    assert throttle.wait("10.0.0.2") == 0
    throttle.succeeded("10.0.0.1")
    assert throttle.failed("10.0.0.1") == 0


def test_throttle_counts_an_ipv6_slash_64_as_one_address() -> None:
    clock = Clock()
    throttle = AuthThrottle(clock)
    for n in range(AUTH_FREE_FAILURES):
        throttle.failed(f"2001:db8:1:2::{n + 1:x}")
    assert throttle.wait("2001:db8:1:2:ffff::1") == 1
    assert throttle.wait("2001:db8:1:3::1") == 0


def test_throttle_forgets_quiet_addresses_and_stays_bounded() -> None:
    clock = Clock()
    throttle = AuthThrottle(clock)
    for _ in range(AUTH_FREE_FAILURES):
        throttle.failed("10.0.0.1")
    clock.advance(3600)
    assert throttle.wait("10.0.0.1") == 0
    assert throttle.failed("10.0.0.1") == 0
    for n in range(AUTH_MAX_ADDRESSES + 50):
        throttle.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(throttle._failures) == AUTH_MAX_ADDRESSES


def test_guessing_across_connections_is_refused_then_allowed_again(state: TaskState, clock: Clock) -> None:
    tcp = factory(state, clock)
    # Three tries per connection; the address's count goes across them.
    first = Peer(tcp, "10.0.0.7")
    first.send(b"AUTH guess-1\nAUTH guess-2\nAUTH guess-3\n")
    assert first.closed
    second = Peer(tcp, "10.0.0.7")
    lines = second.send(b"AUTH guess-4\nAUTH guess-5\n")
    assert lines == ["ERR wrong token", "ERR wrong token; too many from 10.0.0.7, so AUTH is refused for 1 s"]
    assert second.closed
    # While it waits, even the right token is not looked at.
    third = Peer(tcp, "10.0.0.7")
    assert third.send(f"AUTH {TOKEN}\n".encode()) == [
        "ERR too many wrong tokens from 10.0.0.7; AUTH is refused for 1 s more"
    ]
    assert third.closed
    assert Peer(tcp, "10.0.0.8").send(f"AUTH {TOKEN}\n".encode()) == ["OK authenticated"]
    clock.advance(1)
    assert Peer(tcp, "10.0.0.7").send(f"AUTH {TOKEN}\n".encode()) == ["OK authenticated"]


def test_a_flood_of_wrong_tokens_logs_a_few_lines_with_a_count(
    state: TaskState, clock: Clock, warnings: list[str]
) -> None:
    tcp = factory(state, clock, max_unauthenticated=10_000)
    for n in range(1000):
        Peer(tcp, f"10.2.{n // 250}.{n % 250}").send(b"AUTH guess\n")
    assert warnings == ["wrong TCP token from 10.2.0.0"]
    clock.advance(AUTH_LOG_INTERVAL)
    assert len(warnings) == 2
    assert warnings[1].startswith(
        "999 more wrong TCP tokens in the last 60 s from 999 address(es), the last from 10.2.3.249,"
        " and 0 AUTH refused unchecked"
    )
    clock.advance(AUTH_LOG_INTERVAL * 3)
    assert len(warnings) == 2  # quiet: nothing more to say
    Peer(tcp, "10.3.0.1").send(b"AUTH guess\n")
    assert warnings[2] == "wrong TCP token from 10.3.0.1"


def test_auth_refused_while_waiting_is_counted_in_the_summary(
    state: TaskState, clock: Clock, warnings: list[str]
) -> None:
    tcp = factory(state, clock)
    for _ in range(2):
        Peer(tcp, "10.4.0.1").send(b"AUTH a\nAUTH b\nAUTH c\n")
    for _ in range(500):
        Peer(tcp, "10.4.0.1").send(b"AUTH guess\n")
    assert warnings == ["wrong TCP token from 10.4.0.1"]
    clock.advance(AUTH_LOG_INTERVAL)
    assert warnings[1].startswith(
        "4 more wrong TCP tokens in the last 60 s from 1 address(es), the last from 10.4.0.1,"
        " and 500 AUTH refused unchecked while their address waited"
    )
