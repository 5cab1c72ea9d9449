"""Tokens, protected-by-default, the Host allowlist, limits, and TCP AUTH."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from scheduler.access import (
    ANY_NAME,
    AccessError,
    WorkerTokens,
    bearer,
    check_protected,
    host_allowed,
    is_loopback,
    listen_interface,
    read_token,
)
from scheduler.limits import ConnectionLimits
from scheduler.task_changes import TaskChanges
from scheduler.tcp_commands import TcpCommands
from scheduler.tcp_protocol import CommandFactory
from tests.fakes import FakeLink
from tests.helpers import make_state

TOKEN = "0123456789abcdef-token"


def test_tokens_come_from_files_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text(TOKEN + "\n")
    assert read_token(str(path), {}, "X", "API token") == TOKEN
    assert read_token(None, {"X": TOKEN}, "X", "API token") == TOKEN
    assert read_token(None, {}, "X", "API token") is None
    with pytest.raises(AccessError, match="cannot read the API token file"):
        read_token(str(tmp_path / "missing"), {}, "X", "API token")
    path.write_text("short")
    with pytest.raises(AccessError, match="too short") as caught:
        read_token(str(path), {}, "X", "API token")
    assert "short" not in str(caught.value).replace("too short", "")


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp:5050:interface=127.0.0.1", True),
        ("tcp:5050:interface=localhost", True),
        (r"tcp6:5050:interface=\:\:1", True),
        ("tcp:5050", False),
        ("tcp:5050:interface=0.0.0.0", False),
        ("tcp:5050:interface=192.168.1.5", False),
        ("ssl:3000:privateKey=k.pem:interface=10.0.0.1", False),
        ("unix:/run/scheduler.sock", True),
        # Read as Twisted reads them: a positional interface, escapes, tcp6's default.
        ("tcp:5050:127.0.0.1", True),
        ("tcp:5050:0.0.0.0", False),
        (r"tcp:5050:interface=127.0.0.\1", True),
        ("tcp6:5050", False),
        ("tcp6:5050:interface=\\:\\:", False),
    ],
)
def test_loopback_detection(endpoint: str, loopback: bool) -> None:
    assert is_loopback(endpoint) is loopback


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp:3000:interface=127.0.0.1:interface=127.0.0.2",
        "tcp:3000:interface=127.0.0.1:interface=0.0.0.0",
        "tcp:3000:backlog=5:interface=127.0.0.1:backlog=6",
    ],
)
def test_a_key_given_twice_is_refused(endpoint: str) -> None:
    # Twisted listens on the last interface=; the check used to read the first.
    with pytest.raises(AccessError, match="more than once"):
        is_loopback(endpoint)
    with pytest.raises(AccessError, match="more than once"):
        check_protected(tcp="tcp:5050:interface=127.0.0.1", http=endpoint, tcp_token=None, api_token=None,
                        workers=WorkerTokens())


@pytest.mark.parametrize(
    "endpoint",
    ["tcp:3000", "tcp:3000:interface=127.0.0.1", "tcp:3000:10.1.2.3", r"tcp:3000:interface=127.0.0.\1",
     "tcp:3000:backlog=5:interface=127.0.0.1", "tcp6:3000", "tcp6:3000:interface=\\:\\:1", "tcp6:3000:backlog=3"],
)
def test_the_interface_is_the_one_twisted_listens_on(endpoint: str) -> None:
    built = serverFromString(Clock(), endpoint)
    assert listen_interface(endpoint) == built._interface  # type: ignore[attr-defined]


def test_an_endpoint_twisted_cannot_read_is_refused() -> None:
    with pytest.raises(AccessError, match="cannot read the endpoint"):
        is_loopback("tcp:3000:interfaces=127.0.0.1")


def test_open_listeners_need_tokens() -> None:
    with pytest.raises(AccessError) as caught:
        check_protected(tcp="tcp:5050", http="tcp:3000", tcp_token=None, api_token=None, workers=WorkerTokens())
    message = str(caught.value)
    for hint in ("--tcp-token-file", "--api-token-file", "SCHEDULER_WORKER_TOKEN", "openssl rand"):
        assert hint in message
    check_protected(
        tcp="tcp:5050", http="tcp:3000", tcp_token=TOKEN, api_token=TOKEN, workers=WorkerTokens(shared=TOKEN)
    )
    check_protected(
        tcp="tcp:5050:interface=127.0.0.1",
        http="tcp:3000:interface=127.0.0.1",
        tcp_token=None,
        api_token=None,
        workers=WorkerTokens(),
    )


def test_worker_tokens_shared_and_per_worker(tmp_path: Path) -> None:
    path = tmp_path / "workers"
    path.write_text("# name token\nbuild-1 aaaaaaaaaaaaaaaaaaaa\nbuild-2 bbbbbbbbbbbbbbbbbbbb\n")
    tokens = WorkerTokens(shared=TOKEN, path=str(path))
    assert tokens.load()
    assert tokens.identify("aaaaaaaaaaaaaaaaaaaa") == "build-1"
    assert tokens.identify(TOKEN) == ANY_NAME
    assert tokens.identify("nope-nope-nope-nope") is None
    assert tokens.identify(None) is None
    assert not tokens.load()  # unchanged file, nothing to do
    path.write_text("build-2 bbbbbbbbbbbbbbbbbbbb\nbuild-3 cccccccccccccccccccc\n")
    os.utime(path, (1, 1))
    assert tokens.load()
    assert not tokens.still_valid("build-1")  # removed
    assert tokens.still_valid("build-2")
    path.write_text("build-2 dddddddddddddddddddd\nbuild-3 cccccccccccccccccccc\n")
    os.utime(path, (2, 2))
    assert tokens.load()
    assert not tokens.still_valid("build-2")  # its token changed
    assert tokens.still_valid("build-3")
    path.write_text("just-one-word\n")
    os.utime(path, (3, 3))
    with pytest.raises(AccessError, match="line 1"):
        tokens.load()


A1 = "aaaaaaaaaaaaaaaaaaaa"


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda path: path.unlink(), "cannot read the worker tokens file"),
        (lambda path: path.write_text("build-1\n"), "line 1"),
        (lambda path: path.write_bytes(b"build-1 \xff" + b"a" * 20 + b"\n"), "not UTF-8"),
        (lambda path: (path.unlink(), path.mkdir()), "cannot read the worker tokens file"),
    ],
    ids=["deleted", "corrupt", "not-utf8", "unreadable"],
)
def test_a_deleted_or_broken_tokens_file_fails_closed(tmp_path: Path, spoil: Any, reason: str) -> None:
    path = tmp_path / "workers"
    path.write_text(f"build-1 {A1}\n")
    tokens = WorkerTokens(path=str(path))
    assert tokens.load() and tokens.identify(A1) == "build-1"
    spoil(path)
    with pytest.raises(AccessError, match=reason):
        tokens.load()
    # Not the old tokens: none.
    assert tokens.identify(A1) is None
    assert not tokens.still_valid("build-1")
    with pytest.raises(AccessError, match=reason):
        tokens.load()  # read again each time, and still failing
    if path.is_dir():
        path.rmdir()
    path.write_text(f"build-1 {A1}\n")
    assert tokens.load() and tokens.identify(A1) == "build-1" and tokens.still_valid("build-1")


def test_a_rewrite_that_keeps_the_mtime_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "workers"
    path.write_text(f"build-1 {A1}\n")
    os.utime(path, (5, 5))
    tokens = WorkerTokens(path=str(path))
    assert tokens.load()
    path.write_text(f"build-2 {A1}\n# and a comment\n")
    os.utime(path, (5, 5))
    assert tokens.load() and tokens.identify(A1) == "build-2"


def test_bearer_header() -> None:
    assert bearer(b"Bearer abc") == "abc"
    assert bearer("bearer   abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer(None) is None
    assert bearer("Bearer ") is None


@pytest.mark.parametrize(
    ("host", "ok"),
    [(b"localhost:3000", True), (b"127.0.0.1", True), (b"[::1]:3000", True), (b"evil.example", False), (None, False)],
)
def test_host_allowlist(host: bytes | None, ok: bool) -> None:
    assert host_allowed(host, {"localhost", "127.0.0.1", "::1"}) is ok
    assert host_allowed(host, {"*"})


def test_connection_limits_total_and_per_peer() -> None:
    limits = ConnectionLimits(Factory.forProtocol(Protocol), total=3, per_peer=2, refusal=b"ERR too many\n")
    opened = []
    for port in range(3):
        protocol = limits.buildProtocol(IPv4Address("TCP", "10.0.0.1", port))
        transport = StringTransport()
        assert protocol is not None
        protocol.makeConnection(transport)
        opened.append((protocol, transport))
    # The third from one address was refused with a reason.
    assert opened[2][1].value() == b"ERR too many\n" and opened[2][1].disconnecting
    other = limits.buildProtocol(IPv4Address("TCP", "10.0.0.2", 1))
    assert other is not None and not isinstance(other, type(opened[2][0]))
    refused = limits.buildProtocol(IPv4Address("TCP", "10.0.0.3", 1))
    transport = StringTransport()
    assert refused is not None
    refused.makeConnection(transport)
    assert transport.disconnecting  # total reached
    opened[0][0].connectionLost(None)  # type: ignore[arg-type]
    again = limits.buildProtocol(IPv4Address("TCP", "10.0.0.3", 2))
    transport = StringTransport()
    assert again is not None
    again.makeConnection(transport)
    assert not transport.disconnecting


def tcp_client(tmp_path: Path, token: str | None) -> tuple[Protocol, StringTransport]:
    state = make_state(tmp_path / "tasks.db")
    commands = TcpCommands(TaskChanges(state, None, Clock()), state._engine.next_run, lambda: {"tasks": len(state.book)})
    protocol = CommandFactory(commands, Clock(), token=token).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_tcp_auth_is_required_when_a_token_is_set(tmp_path: Path) -> None:
    protocol, transport = tcp_client(tmp_path, TOKEN)
    protocol.dataReceived(b"PING\nADD * * * * * touch x\nLIST\nAUTH wrong\nAUTH " + TOKEN.encode() + b"\nLIST\n")
    assert transport.value().decode().splitlines() == [
        "PONG",
        "ERR authentication required: send AUTH <token> first",
        "ERR authentication required: send AUTH <token> first",
        "ERR wrong token",
        "OK authenticated",
        "OK 0 tasks",
    ]


def test_tcp_three_wrong_tokens_close(tmp_path: Path) -> None:
    protocol, transport = tcp_client(tmp_path, TOKEN)
    protocol.dataReceived(b"AUTH a\nAUTH b\nAUTH c\nAUTH " + TOKEN.encode() + b"\n")
    assert transport.value().decode().splitlines()[-1] == "ERR wrong token; closing after 3 attempts"
    assert transport.disconnecting


def test_tcp_without_token_needs_no_auth(tmp_path: Path) -> None:
    protocol, transport = tcp_client(tmp_path, None)
    protocol.dataReceived(b"AUTH anything\nLIST\n")
    assert transport.value().decode().splitlines() == ["OK no token is needed here", "OK 0 tasks"]


class BoundLink(FakeLink):
    """A worker connection made with *token_name*'s token."""

    def __init__(self, token_name: str) -> None:
        super().__init__()
        self.token_name = token_name


@pytest_twisted.ensureDeferred
async def test_the_service_disconnects_and_says_so_when_the_tokens_file_breaks(tmp_path: Path, reactor: Any) -> None:
    from scheduler.worker_registry import Worker
    from tests.test_http_api import close_api, make_api

    path = tmp_path / "workers"
    path.write_text(f"build-1 {A1}\n")
    tokens = WorkerTokens(path=str(path))
    tokens.load()
    api = await make_api(tmp_path, reactor, worker_tokens=tokens)
    errors: list[str] = []

    def observe(event: LogEvent) -> None:
        if event["log_level"] == LogLevel.error:
            errors.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        link = BoundLink("build-1")
        api.service.dispatcher.hello(Worker("build-1", frozenset(), 1, link, 0.0), {})
        path.unlink()
        api.service._reload_worker_tokens()
        assert link.closes == ["token revoked"]
        api.service._reload_worker_tokens()  # the same failure, seconds later: not logged again
        (line,) = errors
        assert "cannot read the worker tokens file" in line and "no per-worker token is valid" in line
        path.write_text("build-1\n")
        api.service._reload_worker_tokens()  # another reason: logged
        assert len(errors) == 2 and "line 1" in errors[1]
        assert A1 not in " ".join(errors)
    finally:
        globalLogPublisher.removeObserver(observe)
        await close_api(api)
