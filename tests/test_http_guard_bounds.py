"""HTTP bounds: a deadline for each whole request, and caps that fit the file limit.

The deadline is driven by a ``Clock`` given to the real service's ``Site``
as its reactor; the connections are ``StringTransport``s, so a slowloris
is a few calls to ``dataReceived`` between ``clock.advance`` steps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from scheduler.http_guard import Guard, deadline_channels
from scheduler.settings import FD_HEADROOM, Settings, fit_connection_caps
from scheduler.tap import Options
from tests.test_http_api import Api, close_api, make_api

DEADLINE = 30.0  # Settings.http_request_timeout, as the service uses it


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor)
    yield made
    await close_api(made)


class Connection:
    """One client connection to the service's whole HTTP stack (limits, Site)."""

    def __init__(self, factory: Any) -> None:
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 3000))
        self.transport.protocol = self.protocol  # type: ignore[attr-defined]  # as a TCP transport has
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def drop(self) -> None:
        if not self.closed:
            self.protocol.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def clock(api: Api) -> Iterator[Clock]:
    """The service's Site on a Clock (its channels take callLater from it)."""
    clock = Clock()
    site = api.service.http_limits.wrappedFactory
    real = site.reactor
    site.reactor = clock
    yield clock
    site.reactor = real


def test_a_slowloris_is_cut_off_at_the_deadline(api: Api, clock: Clock) -> None:
    loris = Connection(api.service.http_limits)
    loris.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
    # A header line every 5 s: each byte used to restart Twisted's timeout.
    for second in range(5, 65, 5):
        clock.advance(5)
        if loris.closed:
            break
        loris.send(b"X-Trickle: %d\r\n" % second)
    assert loris.closed and clock.seconds() == DEADLINE
    assert loris.transport.value().startswith(b"HTTP/1.1 408 ")
    assert b"did not arrive whole within 30 s" in loris.transport.value()


def test_a_slow_body_is_cut_off_too(api: Api, clock: Clock) -> None:
    slow = Connection(api.service.http_limits)
    slow.send(b"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    clock.advance(DEADLINE - 1)
    slow.send(b" ")
    assert not slow.closed
    clock.advance(1)
    assert slow.closed and b" 408 " in slow.transport.value()
    assert len(api.service.jobs) == 0


def test_a_kept_alive_connection_gets_a_new_deadline_after_each_answer(api: Api, clock: Clock) -> None:
    client = Connection(api.service.http_limits)
    clock.advance(DEADLINE - 1)
    client.send(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"200 OK" in client.transport.value()
    clock.advance(DEADLINE - 1)  # the clock restarted at the answer
    assert not client.closed
    client.send(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert client.transport.value().count(b"200 OK") == 2
    clock.advance(DEADLINE)  # idle after its answer: closed
    assert client.closed


def test_a_worker_websocket_is_not_cut_off(api: Api, clock: Clock) -> None:
    worker = Connection(api.service.http_limits)
    worker.send(
        b"GET /ws/worker HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    try:
        assert worker.transport.value().startswith(b"HTTP/1.1 101 ")
        clock.advance(DEADLINE * 10)
        assert not worker.closed and b"408" not in worker.transport.value()
    finally:
        worker.drop()


class Slow(Resource):
    """Answers only when told to, as the live feed does."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def render_GET(self, request: Request) -> int:
        self.waiting.append(request)
        return NOT_DONE_YET


def test_an_answer_in_progress_is_not_cut_off() -> None:
    clock = Clock()
    slow = Slow()
    site = Site(Guard(slow, allowed_hosts={"localhost"}, api_token=None, max_body=1024), reactor=clock)
    site.protocol = deadline_channels(DEADLINE)  # type: ignore[method-assign, assignment]
    client = Connection(site)
    client.send(b"GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
    clock.advance(DEADLINE * 10)
    assert not client.closed
    slow.waiting[0].write(b"late")
    slow.waiting[0].finish()
    assert b"late" in client.transport.value()
    clock.advance(DEADLINE)
    assert client.closed


# -- connection caps and the file limit -------------------------------------------


def test_caps_fit_the_file_limit() -> None:
    assert fit_connection_caps(64, 20000, 1024) == (64, 1024 - FD_HEADROOM - 64)
    assert fit_connection_caps(64, 100, 1024) == (64, 100)
    tcp, http = fit_connection_caps(64, 20000, 100)
    assert tcp + http + FD_HEADROOM <= 100 and tcp >= 1 and http >= 1
    import resource

    assert fit_connection_caps(64, 20000, resource.RLIM_INFINITY) == (64, 20000)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_settings_clamp_the_caps_and_say_so_once(warnings: list[str]) -> None:
    options = Options()
    options.parseOptions(["--http-max-connections", "20000", "--tcp-max-connections", "64"])
    settings = Settings.from_options(options, env={}, file_limit=1024)
    assert settings.tcp_max_connections == 64
    assert settings.http_max_connections == 1024 - FD_HEADROOM - 64
    (line,) = [w for w in warnings if "ulimit -n" in w]
    assert "1024" in line and "20000" in line and str(settings.http_max_connections) in line
    warnings.clear()
    roomy = Settings.from_options(options, env={}, file_limit=1_000_000)
    assert roomy.http_max_connections == 20000 and not [w for w in warnings if "ulimit" in w]


def test_the_request_deadline_is_an_option() -> None:
    options = Options()
    options.parseOptions([])
    assert Settings.from_options(options, env={}).http_request_timeout == Settings.http_request_timeout == DEADLINE
    options.parseOptions(["--http-request-timeout", "2.5"])
    assert Settings.from_options(options, env={}).http_request_timeout == 2.5


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET /api/health HTTP/1.0\r\nHost: localhost\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nBad header line\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0", "bad-request"],
)
def test_a_connection_closing_slowly_is_left_to_close(api: Api, clock: Clock, request_bytes: bytes) -> None:
    # The answer is written and the close begun; the peer is slow to take
    # it.  The deadline must not close the connection a second time.
    client = Connection(api.service.http_limits)
    client.send(request_bytes)
    assert client.closed
    clock.advance(DEADLINE * 2)
    assert b" 408 " not in client.transport.value()
    client.drop()
