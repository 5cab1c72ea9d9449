"""The Guard in front of every route, spoken to in raw HTTP bytes.

Each request goes through the real Twisted parser and ``Site`` over a
``StringTransport``, so the path reaches the Guard exactly as a client
wrote it: ``/%61pi/tasks`` and ``//api/tasks`` stay as they are (an HTTP
client library would tidy them first).  The service is the real one, with
an API token, as in ``tests.test_http_api``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from klein._resource import extractURLparts
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException

from scheduler.http_api import SchedulerHTTP
from scheduler.http_guard import CONTENT_SECURITY_POLICY, PUBLIC_PATHS, Guard, is_public
from tests.test_http_api import TOKEN, Api, close_api, make_api

AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()
JSON = b"Content-Type: application/json\r\n"


@dataclass
class Answer:
    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes
    closed: bool = False
    raw: bytes = b""

    @property
    def whole(self) -> bool:
        if self.header(b"transfer-encoding") == b"chunked":
            return self.raw.endswith(b"\r\n0\r\n\r\n")
        return len(self.body) == int(self.header(b"content-length") or b"0")

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None


def parse(raw: bytes) -> Answer | None:
    """The first answer in *raw* (None before its head has arrived)."""
    head, found, rest = raw.partition(b"\r\n\r\n")
    if not found:
        return None
    status_line, *lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    body = rest
    if headers.get(b"transfer-encoding") == [b"chunked"]:
        body, data = b"", rest
        while data:
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body, data = body + data[:size], data[size + 2 :]
    elif b"content-length" in headers:
        body = rest[: int(headers[b"content-length"][0])]
    return Answer(int(status_line.split(b" ")[1]), headers, body, raw=raw)


def send(site: Site, data: bytes) -> tuple[Any, StringTransport]:
    """Open a connection to *site* in memory and send *data* on it."""
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 3000))
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    return protocol, transport


def exchange(site: Site, method: str, target: bytes, headers: bytes = b"", body: bytes = b"") -> Answer:
    request = (
        method.encode() + b" " + target + b" HTTP/1.1\r\nHost: localhost:3000\r\n" + headers
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    _protocol, transport = send(site, request)
    answer = parse(transport.value())
    assert answer is not None, f"no answer to {method} {target!r}: {transport.value()!r}"
    return answer


async def exchange_later(site: Site, method: str, target: bytes, headers: bytes = b"") -> Answer:
    """``exchange`` for answers written after a turn of the reactor or a read on the job store's thread."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    request = method.encode() + b" " + target + b" HTTP/1.1\r\nHost: localhost:3000\r\n" + headers + b"\r\n"
    _protocol, transport = send(site, request)
    for _ in range(1000):
        answer = parse(transport.value())
        if answer is not None and (answer.whole or method == "HEAD"):
            return answer
        # A millisecond, not zero, as in tests.helpers.settled: a spinning
        # reactor holds the GIL the job store's thread needs.
        await deferLater(reactor, 0.001, lambda: None)
    raise AssertionError(f"no whole answer to {method} {target!r}: {transport.value()!r}")


@pytest_twisted.async_yield_fixture
async def locked(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor, api_token=TOKEN)
    yield made
    await close_api(made)


@pytest_twisted.async_yield_fixture
async def open_api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor)
    yield made
    await close_api(made)


def site_of(api: Api) -> Site:
    site: Site = api.service.http_limits.wrappedFactory
    return site


# -- issue 20, item 1: the spellings that reached a route without the token ----


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", b"/%61pi/tasks", 401),
        ("GET", b"//api/tasks", 400),
        ("GET", b"/%6detrics", 401),
        ("GET", b"//metrics", 400),
        ("GET", b"/%61pi/events", 401),
        ("POST", b"/%61pi/jobs", 401),
        ("POST", b"//api/tasks", 400),
        ("DELETE", b"//api/tasks/1", 400),
        ("DELETE", b"/%61pi/tasks/1", 401),
        ("GET", b"/api/%74asks", 401),
        ("GET", b"/API/tasks", 401),  # no route, but not public either
        ("GET", b"/api%2ftasks", 400),
        ("GET", b"/api%2Ftasks", 400),
        ("GET", b"/%2fapi/tasks", 400),
        ("GET", b"/api/tasks/", 401),
        ("GET", b"/nothing", 401),
        ("GET", b"/static/../api/tasks", 400),
        ("GET", b"/static/%2e%2e/api/tasks", 400),
        ("GET", b"/./api/tasks", 400),
        ("GET", b"/api/./tasks", 400),
        ("GET", b"api/tasks", 400),
        ("GET", b"xapi/tasks", 400),
        ("GET", b"http://localhost:3000/api/tasks", 400),
        ("GET", b"/api/health/", 401),
        ("GET", b"/%61pi/health", 200),  # the same public health as /api/health
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_spelling_of_a_route_needs_the_token(locked: Api, method: str, target: bytes, status: int) -> None:
    await locked.service.state.edit(lambda book: book.add("@daily", "echo keep me"))
    # A body the route would accept, so that only the Guard stands in the way.
    wanted = {"command": "touch pwned"} if b"jobs" in target else {"schedule": "@daily", "command": "touch pwned"}
    answer = exchange(site_of(locked), method, target, JSON, json.dumps(wanted).encode())
    assert answer.status == status, answer.raw
    if status == 200:
        assert answer.json() == {"status": "ok"}
    else:
        assert "error" in answer.json()
    assert len(locked.service.state.book) == 1
    assert len(locked.service.jobs) == 0


@pytest_twisted.ensureDeferred
async def test_post_api_jobs_spelled_otherwise_runs_nothing(locked: Api) -> None:
    _worker, link = locked.connect_worker()
    body = json.dumps({"command": "touch pwned"}).encode()
    for target in (b"/%61pi/jobs", b"//api/jobs", b"/api/%6aobs", b"/%61%70%69/%6a%6f%62%73"):
        answer = exchange(site_of(locked), "POST", target, JSON, body)
        assert answer.status in (400, 401), (target, answer.raw)
    assert len(locked.service.jobs) == 0
    assert [m for m in link.sent if m["type"] == "run"] == []


@pytest_twisted.ensureDeferred
async def test_with_the_token_a_decoded_spelling_is_the_route_it_names(locked: Api) -> None:
    # The Guard decides on the path the router sees: same path, same answer.
    answer = await exchange_later(site_of(locked), "GET", b"/%61pi/tasks", AUTH)  # it reads the job store
    assert answer.status == 200 and answer.json() == []
    answer = exchange(site_of(locked), "POST", b"/%61pi/jobs", AUTH + JSON, b'{"command": "true"}')
    assert answer.status == 202 and answer.json()["command"] == "true"


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (b"//api/tasks", "empty segment"),
        (b"/api//tasks", "empty segment"),
        (b"/api/tasks%2F1", "encoded slash"),
        (b"/static/%00", "control character"),
        (b"/static/app.js%00.png", "control character"),
        (b"/static/%0a", "control character"),
        (b"/static/a%5cb", "backslash"),
        (b"/static/..", "'.' or '..'"),
        (b"/static/%ff", "not UTF-8"),
        (b"x", "starting with '/'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_ambiguous_paths_are_refused_with_the_reason(open_api: Api, target: bytes, reason: str) -> None:
    answer = exchange(site_of(open_api), "GET", target)
    assert answer.status == 400, answer.raw
    assert reason in answer.json()["error"]
    assert answer.header(b"content-type") == b"application/json"


@pytest_twisted.ensureDeferred
async def test_static_nul_is_a_400_not_a_traceback(open_api: Api) -> None:
    failures: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        answer = exchange(site_of(open_api), "GET", b"/static/%00")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert answer.status == 400 and b"Traceback" not in answer.body
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_the_public_paths_and_nothing_else(locked: Api) -> None:
    site = site_of(locked)
    assert (await exchange_later(site, "GET", b"/")).status == 200
    assert (await exchange_later(site, "GET", b"/static/style.css")).status == 200
    health = exchange(site, "GET", b"/api/health")
    assert health.status == 200 and health.json() == {"status": "ok"}
    assert exchange(site, "GET", b"/api/openapi.json").status == 401
    assert exchange(site, "GET", b"/favicon.ico").status == 401
    assert PUBLIC_PATHS == {"/", "/api/health", "/ws/worker"}
    assert is_public("/static/app.js") and not is_public("/static") and not is_public("/api/tasks")


@pytest_twisted.ensureDeferred
async def test_the_version_only_to_token_holders(locked: Api, open_api: Api) -> None:
    full = exchange(site_of(locked), "GET", b"/api/health", AUTH).json()
    assert full["status"] == "ok" and "version" in full and "tasks" in full
    bare = exchange(site_of(locked), "GET", b"/api/health").json()
    assert bare == {"status": "ok"}
    trusted = exchange(site_of(open_api), "GET", b"/api/health").json()
    assert "tasks" in trusted and "version" not in trusted


@pytest_twisted.ensureDeferred
async def test_a_token_in_the_query_string_is_not_accepted(locked: Api) -> None:
    for name in (b"token", b"access_token", b"api_token"):
        answer = exchange(site_of(locked), "GET", b"/api/tasks?" + name + b"=" + TOKEN.encode())
        assert answer.status == 401


# -- the "Info" items: methods, Origin, Host, Server ------------------------------


@pytest.mark.parametrize("method", ["post", "Post", "pOST"])
@pytest_twisted.ensureDeferred
async def test_a_lower_case_method_is_refused_not_routed(open_api: Api, method: str) -> None:
    # Klein routes "post" as POST; the checks for POST must not be skipped.
    evil = b"Origin: http://evil.example\r\nContent-Type: text/plain\r\n"
    answer = exchange(site_of(open_api), method, b"/api/jobs", evil, b'{"command": "touch pwned"}')
    assert answer.status == 400 and "case-sensitive" in answer.json()["error"]
    assert len(open_api.service.jobs) == 0


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (b"http://localhost:3000", 202),
        (b"https://localhost:3000", 202),  # a TLS proxy in front passing Host through
        (b"http://LOCALHOST:3000", 202),
        (b"http://localhost:8080", 403),
        (b"http://localhost", 403),
        (b"http://127.0.0.1:3000", 403),  # allowed name, but not the one asked
        (b"http://evil.example:3000", 403),
        (b"null", 403),
        (b"ftp://localhost:3000", 403),
        (b"http://localhost:3000/path", 403),
        (b"http://localhost:99999", 403),
    ],
)
@pytest_twisted.ensureDeferred
async def test_origin_must_be_this_scheme_host_and_port(open_api: Api, origin: bytes, status: int) -> None:
    headers = JSON + b"Origin: " + origin + b"\r\n"
    answer = exchange(site_of(open_api), "POST", b"/api/jobs", headers, b'{"command": "true"}')
    assert answer.status == status, answer.raw
    assert len(open_api.service.jobs) == (1 if status == 202 else 0)


@pytest_twisted.ensureDeferred
async def test_origin_any_port_was_enough_even_with_every_host_allowed(tmp_path: Path, reactor: Any) -> None:
    api = await make_api(tmp_path, reactor, allowed_hosts={"*"})
    try:
        headers = JSON + b"Origin: http://evil.example\r\n"
        answer = exchange(site_of(api), "POST", b"/api/jobs", headers, b'{"command": "true"}')
        assert answer.status == 403
    finally:
        await close_api(api)


@pytest.mark.parametrize("header", [b"Host: evil.example", b"Host: localhost:3000", b"Authorization: Bearer x"])
@pytest_twisted.ensureDeferred
async def test_a_repeated_host_or_authorization_is_refused(locked: Api, header: bytes) -> None:
    answer = exchange(site_of(locked), "GET", b"/api/tasks", AUTH + header + b"\r\n")
    assert answer.status == 400 and "send one" in answer.json()["error"]


@pytest.mark.parametrize(
    ("target", "auth"), [(b"/", b""), (b"/static/app.js", b""), (b"/api/tasks", b""), (b"/api/tasks", AUTH), (b"//x", b"")]
)
@pytest_twisted.ensureDeferred
async def test_every_answer_forbids_framing_and_names_no_server(locked: Api, target: bytes, auth: bytes) -> None:
    answer = await exchange_later(site_of(locked), "GET", target, auth)
    assert answer.header(b"x-frame-options") == b"DENY"
    assert answer.header(b"content-security-policy") == CONTENT_SECURITY_POLICY.encode()
    assert b"frame-ancestors 'none'" in CONTENT_SECURITY_POLICY.encode()
    assert answer.header(b"x-content-type-options") == b"nosniff"
    assert answer.header(b"server") is None
    assert b"Twisted" not in answer.raw


# -- the property: no spelling reaches a non-public route without the token -----


class Router(Resource):
    """Stands in for the Klein app: records what its router would match."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.reached: list[tuple[bytes, str, str | None]] = []

    def render(self, request: Request) -> bytes:
        # What KleinResource.render does before it calls a route.
        scheme, server, _port, path_info, script = extractURLparts(request)
        adapter = SchedulerHTTP.app.url_map.bind(
            server, script, path_info=path_info, default_method=request.method.decode(), url_scheme=scheme
        )
        try:
            rule, _ = adapter.match(return_rule=True)
            endpoint: str | None = rule.endpoint
        except HTTPException:
            endpoint = None
        self.reached.append((request.method, path_info, endpoint))
        return b"reached"


PUBLIC_ROUTES = {"dashboard", "static", "static_versioned", "health", "worker_socket"}


def test_the_router_stand_in_sees_what_passes(guarded: tuple[Site, Router]) -> None:
    site, router = guarded
    for target, extra in [(b"/", b""), (b"/static/app.js", b""), (b"/%61pi/tasks", AUTH), (b"/api/tasks", b"")]:
        send(site, b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n" + extra + b"\r\n")
    assert router.reached == [
        (b"GET", "/", "dashboard"),
        (b"GET", "/static/app.js", "static"),
        (b"GET", "/api/tasks", "list_tasks"),
    ]


@pytest.fixture
def guarded() -> Iterator[tuple[Site, Router]]:
    router = Router()
    yield Site(Guard(router, allowed_hosts={"localhost"}, api_token=TOKEN, max_body=1024)), router


ROUTE_WORDS = ["api", "tasks", "jobs", "events", "metrics", "ws", "worker", "static", "health", "openapi.json",
               "workers", "schedules", "check", "run", "cancel", "log", "1", "", ".", ".."]


def _spell(text: str, encode: list[bool]) -> str:
    """*text* with the chosen characters percent-encoded (either case)."""
    return "".join(
        f"%{ord(ch):02x}" if flag and i % 2 else f"%{ord(ch):02X}" if flag else ch
        for i, (ch, flag) in enumerate(zip(text, encode + [False] * len(text), strict=False))
    )


segments = st.one_of(
    st.sampled_from(ROUTE_WORDS),
    st.sampled_from(["%2f", "%2F", "%00", "%2e", "%2e%2e", "%5c", "%25", "%252f", ";", "%3b", "%ff", "%c0%af", "~"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=6),
)


@st.composite
def targets(draw: st.DrawFn) -> bytes:
    words = draw(st.lists(segments, min_size=1, max_size=5))
    path = "/".join(words)
    path = _spell(path, draw(st.lists(st.booleans(), max_size=len(path))))
    prefix = draw(st.sampled_from(["/", "//", "///", "", "/./", "http://localhost", "*"]))
    query = draw(st.sampled_from(["", "?token=" + TOKEN, "?x=1", "?"]))
    return (prefix + path + query).encode()


methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "get", "post", "Post", "delete"]),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_!", min_size=1, max_size=8),
)


WRONG_TOKENS = [TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "", " ", TOKEN.encode().hex()]
header_lines = st.one_of(
    st.sampled_from([f"Authorization: {scheme} {TOKEN}" for scheme in ("Basic", "Token", "Bearer:", "Bearer\t")]),
    st.sampled_from([f"Authorization: Bearer {wrong}" for wrong in WRONG_TOKENS]),
    st.sampled_from([f"X-Api-Token: {TOKEN}", f"Cookie: token={TOKEN}", "X-Original-URL: /api/tasks",
                     "X-Forwarded-Prefix: /api", "X-Rewrite-URL: /api/jobs", "Host: localhost", "Host: evil.example",
                     "Origin: http://localhost", "Content-Type: application/json", "Content-Type: text/plain",
                     "Transfer-Encoding: chunked", "Expect: 100-continue", "Connection: Upgrade", "Upgrade: websocket"]),
)
extras = st.lists(header_lines, max_size=4).map(lambda lines: "".join(line + "\r\n" for line in lines).encode())


@settings(deadline=None, derandomize=True, database=None, max_examples=600,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=methods, target=targets(), extra=st.one_of(st.just(JSON), extras))
@example(method="GET", target=b"/%61pi/tasks", extra=b"")
@example(method="GET", target=b"//api/tasks", extra=b"")
@example(method="POST", target=b"/%61pi/jobs", extra=JSON)
@example(method="DELETE", target=b"//api/tasks/1", extra=b"")
@example(method="GET", target=b"/%6detrics", extra=b"")
@example(method="post", target=b"/api/jobs", extra=JSON)
def test_no_path_reaches_a_private_route_without_the_token(
    guarded: tuple[Site, Router], method: str, target: bytes, extra: bytes
) -> None:
    site, router = guarded
    router.reached.clear()
    request = method.encode() + b" " + target + b" HTTP/1.1\r\nHost: localhost\r\n" + extra + b"Content-Length: 2\r\n\r\n{}"
    send(site, request)
    for _method, path_info, endpoint in router.reached:
        assert endpoint is None or endpoint in PUBLIC_ROUTES, (method, target, endpoint)
        assert is_public(path_info), (method, target, path_info)


@pytest.mark.parametrize("target", [b"/api/tasks", b"/api/health", b"//x", b"/"])
@pytest_twisted.ensureDeferred
async def test_no_log_line_quotes_a_token_from_the_query(locked: Api, target: bytes) -> None:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for method in ("HEAD", "GET"):
            answer = await exchange_later(site_of(locked), method, target + b"?access_token=" + TOKEN.encode())
            assert answer.status in (200, 400, 401)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(event) or "" for event in events]
    assert lines and not [line for line in lines if TOKEN in line]
