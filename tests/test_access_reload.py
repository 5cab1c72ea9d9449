"""The tokens file read again: a removed line is refused at once and its live feeds are closed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from scheduler.access_tokens import Access, TokenBook, token_hash
from scheduler.task_changes import TaskChanges
from scheduler.tcp_commands import TcpCommands
from scheduler.tcp_protocol import CommandFactory
from tests.helpers import make_state, settled
from tests.test_http_api import Api, close_api, make_api
from tests.test_tcp_auth import Peer

VIEWER = "viewer-token-0123456789abcdef"
OTHER = "other-token-0123456789abcdef"


def bearer(token: str) -> dict[bytes, list[bytes]]:
    return {b"Authorization": [f"Bearer {token}".encode()]}


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    path = tmp_path / "tokens"
    path.write_text(f"viewer read {token_hash(VIEWER)}\nother read {token_hash(OTHER)}\n")
    book = TokenBook(str(path))
    book.load()
    made = await make_api(tmp_path, reactor, tokens=book)
    yield made
    await close_api(made)


@pytest_twisted.ensureDeferred
async def test_a_removed_line_is_refused_and_its_live_feed_closed(api: Api, tmp_path: Path) -> None:
    # Checked every 5 s while the service runs.
    watch = api.service.access_watch
    assert watch.step == 5 and watch.call[0] == api.service._reload_access

    treq = api.treq
    viewer_feed = await settled(treq, treq.get("http://localhost/api/events", headers=bearer(VIEWER)))
    other_feed = await settled(treq, treq.get("http://localhost/api/events", headers=bearer(OTHER)))
    assert viewer_feed.code == other_feed.code == 200
    viewer_closed: Deferred[bytes] = treq.content(viewer_feed)
    other_closed: Deferred[bytes] = treq.content(other_feed)
    assert len(api.service.feed) == 2

    path = tmp_path / "tokens"
    path.write_text(f"other read {token_hash(OTHER)}\n")
    os.utime(path, ns=(7, 7))
    api.service._reload_access()

    assert len(api.service.feed) == 1  # closed at once, not left to the client
    assert (await settled(treq, viewer_closed)).startswith(b": connected")
    assert not other_closed.called
    code, _ = await api.call("GET", "/api/tasks", headers=bearer(VIEWER))
    assert code == 401
    code, _ = await api.call("GET", "/api/tasks", headers=bearer(OTHER))
    assert code == 200
    code, entries = await api.call("GET", "/api/audit?action=tokens.change", headers=bearer(OTHER))
    assert entries[0]["detail"] == {"names": ["other"], "revoked": ["viewer"]}

    # A bad line keeps the tokens read before.
    path.write_text(f"other read {token_hash(OTHER)}\nthis is not a line\n")
    os.utime(path, ns=(8, 8))
    api.service._reload_access()
    code, _ = await api.call("GET", "/api/tasks", headers=bearer(OTHER))
    assert code == 200
    api.service.feed.stop()


def test_a_session_on_port_5050_closes_at_its_next_line_once_its_token_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"viewer read {token_hash(VIEWER)}\n")
    book = TokenBook(str(path))
    book.load()
    state = make_state(tmp_path / "tasks.db")
    commands = TcpCommands(TaskChanges(state, None, Clock()), state._engine.next_run, lambda: {"tasks": 0})
    peer = Peer(CommandFactory(commands, Clock(), access=Access(book)))
    assert peer.send(f"AUTH {VIEWER}\nSESSION\nSTATUS\n".encode())[-1] == "OK tasks=0"
    path.write_text("")
    os.utime(path, ns=(9, 9))
    book.load()
    assert peer.send(b"STATUS\n")[-1] == "ERR the token 'viewer' was revoked or changed; closing"
    assert peer.closed
