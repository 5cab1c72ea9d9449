"""worker.backoff: the reconnect policy, alone and under a ClientService."""

from __future__ import annotations

import random
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from worker.backoff import Backoff


def test_backoff_ceiling_doubles_to_the_cap_with_full_jitter() -> None:
    calls: list[tuple[float, float]] = []

    def highest(a: float, b: float) -> float:
        calls.append((a, b))
        return b

    backoff = Backoff(base=1.0, cap=60.0, uniform=highest)
    delays = [backoff(1) for _ in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert all(a == 0.0 for a, _ in calls)


def test_backoff_delays_stay_within_bounds() -> None:
    backoff = Backoff(uniform=random.Random(1234).uniform)
    for attempt in range(200):
        delay = backoff(attempt)
        assert 0.0 <= delay <= min(60.0, 2.0**attempt)
    # Very long outages must not overflow the arithmetic.
    for _ in range(2000):
        assert 0.0 <= backoff(0) <= 60.0


def test_backoff_reset_starts_again_from_base() -> None:
    backoff = Backoff(uniform=lambda a, b: b)
    for _ in range(5):
        backoff(1)
    assert backoff.attempt == 5
    backoff.reset()
    assert backoff(1) == 1.0


def test_backoff_with_client_service_resets_on_welcome_not_on_tcp_connect() -> None:
    clock = Clock()
    backoff = Backoff(uniform=lambda a, b: b)
    outcomes: list[bool] = []
    protocols: list[Any] = []

    class Endpoint:
        def connect(self, factory: Any) -> Deferred[Any]:
            if not outcomes.pop(0):
                return fail(ConnectionRefusedError())
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport())
            protocols.append(proto)
            return succeed(proto)

    service = ClientService(Endpoint(), Factory.forProtocol(Protocol), retryPolicy=backoff, clock=clock)  # type: ignore[arg-type]

    def next_delay() -> float:
        (call,) = clock.getDelayedCalls()
        return call.getTime() - clock.seconds()

    def drop_connection() -> None:
        protocols[-1].connectionLost(Failure(ConnectionDone()))

    outcomes.extend([False, True, True, False])
    service.startService()
    assert next_delay() == 1  # refused
    clock.advance(1)
    # TCP connected, then dropped before any welcome (say, HTTP 401): stock
    # ClientService would start again from its initial delay here.
    drop_connection()
    assert next_delay() == 2
    clock.advance(2)
    drop_connection()
    assert next_delay() == 4
    clock.advance(4)
    assert next_delay() == 8  # refused again

    # A welcomed session resets the count: the next drop retries quickly.
    outcomes.append(True)
    clock.advance(8)
    backoff.reset()  # what WorkerAgent's on_welcome does
    drop_connection()
    assert next_delay() == 1
    service.stopService()


def test_backoff_after_a_restart_dials_now_then_about_every_base_then_backs_off() -> None:
    backoff = Backoff(base=1.0, cap=60.0, uniform=lambda a, b: b)
    assert [backoff(1) for _ in range(4)] == [1, 2, 4, 8]
    backoff.at_once()  # the scheduler said "going away"
    delays = [backoff(1) for _ in range(1 + Backoff.RESTART_TRIES + 3)]
    assert delays[0] == 0.0
    assert delays[1 : 1 + Backoff.RESTART_TRIES] == [1.5] * Backoff.RESTART_TRIES
    assert delays[1 + Backoff.RESTART_TRIES :] == [1, 2, 4]


def test_a_welcome_ends_the_quick_tries_after_a_restart() -> None:
    backoff = Backoff(base=1.0, cap=60.0, uniform=lambda a, b: b)
    backoff.at_once()
    assert backoff(1) == 0.0
    backoff.reset()  # welcomed
    assert [backoff(1) for _ in range(3)] == [1, 2, 4]
