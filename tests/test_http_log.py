"""scheduler.http_log: the access log in the main log, a file, or nowhere.

A real LoggingSite on loopback, asked by treq: the log line is written
when Twisted finishes a real request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
import treq
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Request

from scheduler.http_log import LoggingSite, check_target, redact
from scheduler.tap import Options


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"hello"


Serve = Callable[..., Any]


@pytest_twisted.async_yield_fixture
async def serve(reactor: Any) -> AsyncIterator[Serve]:
    ports: list[Any] = []

    async def get(target: str, query: str = "x=1", headers: dict[str, str] | None = None) -> None:
        site = LoggingSite(Hello(), target=target)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        ports.append(port)
        response = await treq.get(
            f"http://127.0.0.1:{port.getHost().port}/hello?{query}", headers={"User-Agent": "probe", **(headers or {})}
        )
        assert await response.content() == b"hello"
        await port.stopListening()  # stops the factory: a file is closed

    yield get
    for port in ports:
        if port.connected:
            await port.stopListening()


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def access_lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events if event.get("log_namespace") == "scheduler.http"]


@pytest_twisted.ensureDeferred
async def test_main_log_gets_one_event_per_request(serve: Serve, logged: list[LogEvent]) -> None:
    await serve("-")
    (line,) = access_lines(logged)
    assert line.startswith('"127.0.0.1" - - [')
    assert '"GET /hello?x=1 HTTP/1.1" 200 5 "-" "probe"' in line
    # Not also through the legacy file object, with a second timestamp.
    assert not [event for event in logged if "log_io" in event and "/hello" in formatEvent(event)]


@pytest_twisted.ensureDeferred
async def test_a_file_of_its_own(serve: Serve, logged: list[LogEvent], tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    await serve(str(path))
    assert access_lines(logged) == []
    (line,) = path.read_text().splitlines()
    assert '"GET /hello?x=1 HTTP/1.1" 200 5 "-" "probe"' in line


@pytest_twisted.ensureDeferred
async def test_none_logs_nothing(serve: Serve, logged: list[LogEvent]) -> None:
    await serve("none")
    assert access_lines(logged) == []
    assert not [event for event in logged if "/hello" in (formatEvent(event) or "")]


def test_a_file_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    assert check_target("-") == "-"
    assert check_target(str(tmp_path / "access.log")) == str(tmp_path / "access.log")
    with pytest.raises(ValueError, match="does not exist"):
        check_target(str(tmp_path / "nowhere" / "access.log"))


def test_the_option_says_what_is_wrong(tmp_path: Path) -> None:
    options = Options()
    with pytest.raises(usage.UsageError, match=r"nowhere.*does not exist"):
        options.parseOptions(["--access-log", str(tmp_path / "nowhere" / "access.log")])


SECRET = "s3cret-token-0123456789abcdef"


@pytest_twisted.ensureDeferred
async def test_tokens_in_urls_are_not_logged(serve: Serve, logged: list[LogEvent], tmp_path: Path) -> None:
    query = f"token={SECRET}&access_token={SECRET}&api_token={SECRET}&job=7"
    referer = {"Referer": f"http://localhost:3000/?apiKey={SECRET}"}
    await serve("-", query, referer)
    path = tmp_path / "access.log"
    await serve(str(path), query, referer)
    (main,) = access_lines(logged)
    (own,) = path.read_text().splitlines()
    for line in (main, own):
        assert SECRET not in line
        assert "token=REDACTED&access_token=REDACTED&api_token=REDACTED&job=7" in line
        assert "apiKey=REDACTED" in line


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (b"/api/jobs?status=failed&limit=5", b"/api/jobs?status=failed&limit=5"),
        (b"/x?Token=a&PASSWORD=b&session_id=c&sig=d", b"/x?Token=REDACTED&PASSWORD=REDACTED&session_id=REDACTED&sig=REDACTED"),
        (b"/x?%74oken=a", b"/x?%74oken=REDACTED"),
        (b"/x?" + SECRET.encode(), b"/x?REDACTED"),
        (b"/x?short", b"/x?short"),
        (b"/x", b"/x"),
    ],
)
def test_redact(uri: bytes, shown: bytes) -> None:
    assert redact(uri) == shown
