"""Every scope against every REST route and every command-port verb.

The tables are scheduler/access_scopes.py's.  A route of the Klein app or a
verb of tcp_commands.VERBS without an entry there fails the first two
tests: a new route needs a decision about who may call it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.task import Clock

from scheduler.access_scopes import ROUTE_NEEDS, VERB_NEEDS, app_routes
from scheduler.access_tokens import SCOPES, Access, TokenBook, token_hash
from scheduler.http_api import SchedulerHTTP
from scheduler.http_guard import is_public
from scheduler.task_changes import TaskChanges
from scheduler.tcp_commands import VERBS, TcpCommands
from scheduler.tcp_protocol import CommandFactory
from tests.helpers import make_state
from tests.test_http_api import Api, close_api, make_api
from tests.test_tcp_auth import Peer

# One token per scope, holding that scope alone.
TOKENS = {scope: f"{scope}-only-token-0123456789" for scope in SCOPES}


def write_tokens(path: Path) -> TokenBook:
    path.write_text("".join(f"{scope}-bot {scope} {token_hash(token)}\n" for scope, token in TOKENS.items()))
    book = TokenBook(str(path))
    book.load()
    return book


def test_every_route_of_the_app_has_a_need_and_every_need_a_route() -> None:
    routes = app_routes(SchedulerHTTP.app.url_map)
    missing = sorted(routes - set(ROUTE_NEEDS))
    assert not missing, f"routes without a scope in scheduler/access_scopes.py ROUTE_NEEDS: {missing}"
    stale = sorted(set(ROUTE_NEEDS) - routes)
    assert not stale, f"ROUTE_NEEDS names routes the app does not have: {stale}"


def test_nothing_that_changes_state_is_open_to_read_alone() -> None:
    for (method, rule), need in ROUTE_NEEDS.items():
        if rule.startswith("/api/ping/"):
            # The one exception: a ping check's uuid is its credential
            # (SECURITY.md), and a ping records one run of that check only.
            assert need == "public", (method, rule, need)
        elif method != "GET":
            assert need in ("run", "write", "admin"), (method, rule, need)
    for word, need in VERB_NEEDS.items():
        if VERBS[word].queues:  # the verbs that change tasks or tasks.db
            assert need == "write", (word, need)


def test_every_verb_has_a_need() -> None:
    missing = sorted(set(VERBS) - set(VERB_NEEDS))
    assert not missing, f"verbs without a scope in scheduler/access_scopes.py VERB_NEEDS: {missing}"
    assert not set(VERB_NEEDS) - set(VERBS)
    # The verbs open before AUTH are exactly the public ones.
    assert {word for word, verb in VERBS.items() if verb.open_before_auth} == {
        word for word, need in VERB_NEEDS.items() if need == "public"
    }


def test_the_public_routes_are_the_guards_public_paths() -> None:
    for (method, rule), need in ROUTE_NEEDS.items():
        path = re.sub(r"<[^>]+>", "x", rule)
        assert is_public(path) == (need == "public"), (method, rule)


@pytest_twisted.async_yield_fixture
async def scoped(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor, tokens=write_tokens(tmp_path / "tokens"))
    yield made
    await close_api(made)


def _concrete(rule: str) -> str:
    return re.sub(r"<[^>]+>", "1", rule)


@pytest_twisted.ensureDeferred
async def test_every_scope_against_every_route(scoped: Api) -> None:
    checked = 0
    for (method, rule), need in sorted(ROUTE_NEEDS.items()):
        if need not in SCOPES:
            continue
        for scope, token in TOKENS.items():
            allowed = scope == need or scope == "admin"
            if allowed and rule == "/api/events":
                continue  # a live feed never ends; its 403 side is still checked
            body = {} if method in ("POST", "PATCH") else None
            code, answer = await scoped.call(
                method, _concrete(rule), body, headers={b"Authorization": [f"Bearer {token}".encode()]}
            )
            if allowed:
                assert code not in (401, 403), (method, rule, scope, code, answer)
            else:
                assert code == 403, (method, rule, scope, code, answer)
                assert f"lacks the '{need}' scope" in answer["error"] and f"{scope}-bot" in answer["error"]
            checked += 1
    assert checked > 100


@pytest_twisted.ensureDeferred
async def test_a_wrong_token_is_401_and_me_says_who_and_what(scoped: Api) -> None:
    code, _ = await scoped.call("GET", "/api/tasks", headers={b"Authorization": [b"Bearer not-a-token-0123456789"]})
    assert code == 401
    code, me = await scoped.call("GET", "/api/me", headers={b"Authorization": [f"Bearer {TOKENS['run']}".encode()]})
    assert code == 200
    assert me == {"name": "run-bot", "person": False, "scopes": ["run"], "tasks": None, "labels": None}


def test_every_scope_against_every_verb(tmp_path: Path) -> None:
    state = make_state(tmp_path / "tasks.db")
    access = Access(write_tokens(tmp_path / "tokens"))
    commands = TcpCommands(TaskChanges(state, None, Clock()), state._engine.next_run, lambda: {"tasks": len(state.book)})
    factory = CommandFactory(commands, Clock(), access=access)
    checked = 0
    for word, need in sorted(VERB_NEEDS.items()):
        if word in ("AUTH", "QUIT"):
            continue
        for scope, token in TOKENS.items():
            peer = Peer(factory)
            assert peer.send(f"AUTH {token}\n".encode()) == [f"OK authenticated as {scope}-bot"]
            reply = peer.send(f"{word}\n".encode())[1:]
            refused = [line for line in reply if "lacks the" in line]
            if need in SCOPES and scope != need and scope != "admin":
                assert refused == [f"ERR {word} refused: token '{scope}-bot' lacks the '{need}' scope this needs"], (word, scope)
            else:
                assert not refused, (word, scope, reply)
            peer.hang_up()
            checked += 1
    assert checked == (len(VERB_NEEDS) - 2) * len(SCOPES)


def test_the_command_port_needs_auth_once_a_tokens_file_is_set(tmp_path: Path) -> None:
    state = make_state(tmp_path / "tasks.db")
    commands = TcpCommands(TaskChanges(state, None, Clock()), state._engine.next_run, lambda: {"tasks": 0})
    factory = CommandFactory(commands, Clock(), access=Access(write_tokens(tmp_path / "tokens")))
    peer = Peer(factory)
    assert peer.send(b"LIST\n") == ["ERR authentication required: send AUTH <token> first"]
    assert peer.send(b"PING\n")[-1] == "PONG"


def test_security_md_has_the_same_table() -> None:
    text = (Path(__file__).resolve().parent.parent / "SECURITY.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")}
    for (method, rule), need in ROUTE_NEEDS.items():
        shown = re.sub(r"<([^>]+)>", r"{\1}", rule)
        assert f"`{method} {shown}`" in rows[need], (method, rule, need)
    for word, need in VERB_NEEDS.items():
        assert f"`{word}`" in rows[need], (word, need)
