"""Tokens, protected-by-default, the Host allowlist, limits, and TCP AUTH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from scheduler.access import (
    ANY_NAME,
    AccessError,
    WorkerTokens,
    bearer,
    check_protected,
    host_allowed,
    is_loopback,
    read_token,
)
from scheduler.limits import ConnectionLimits
from scheduler.tcp_commands import CommandFactory, TcpCommands
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
    ],
)
def test_loopback_detection(endpoint: str, loopback: bool) -> None:
    assert is_loopback(endpoint) is loopback


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
    commands = TcpCommands(state, state._engine.next_run, lambda: {"tasks": len(state.book)})
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
