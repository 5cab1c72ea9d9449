"""The alert routes in memory (StubTreq through the Guard): channels, the test button, deliveries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.web.server import Site

from scheduler.alerts import Alert
from tests.test_alert_webhooks import Receiver, check_signed
from tests.test_http_api import Api, close_api, make_api

WEBHOOK = {"name": "ops", "kind": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "whsec-0123456789abcdef"}
SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX"


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor)
    yield made
    await close_api(made)


@pytest_twisted.ensureDeferred
async def test_a_channel_is_created_listed_without_its_secret_and_deleted(api: Api) -> None:
    code, body = await api.call("POST", "/api/channels", WEBHOOK)
    assert code == 201, body
    assert body == {"name": "ops", "kind": "webhook", "url": "http://127.0.0.1:9/hook", "secretSet": True}
    code, body = await api.call("POST", "/api/channels", {**WEBHOOK, "secret": "another-secret-0123"})
    assert code == 409 and "exists" in body["error"]
    await api.call("POST", "/api/channels", {"name": "chat", "kind": "slack", "url": SLACK_URL})
    code, listed = await api.call("GET", "/api/channels")
    assert code == 200 and [channel["name"] for channel in listed] == ["chat", "ops"]
    assert listed[0]["url"] == "https://hooks.slack.com/…"
    assert WEBHOOK["secret"] not in json.dumps(listed) and "XXXXXXXX" not in json.dumps(listed)
    assert "ops" in api.service.channels
    assert (await api.call("DELETE", "/api/channels/ops"))[0] == 204
    assert "ops" not in api.service.channels
    code, body = await api.call("DELETE", "/api/channels/ops")
    assert code == 404 and "ops" in body["error"]


@pytest_twisted.ensureDeferred
async def test_an_email_channel_shows_its_settings_but_not_its_password(api: Api) -> None:
    code, body = await api.call(
        "POST",
        "/api/channels",
        {"name": "mail", "kind": "email", "host": "smtp.example.com", "username": "u", "password": "p4ss word",
         "from": "sched@example.com", "to": "ops@example.com"},
    )
    assert code == 201, body
    assert body == {
        "name": "mail", "kind": "email", "host": "smtp.example.com", "port": 587, "starttls": True, "username": "u",
        "passwordSet": True, "from": "sched@example.com", "to": ["ops@example.com"],
    }


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"kind": "webhook", "url": "http://x/", "secret": "s" * 16}, "'name'"),
        ({"name": "has space", "kind": "slack", "url": "http://x/"}, "'name'"),
        ({"name": "a", "kind": "pager", "url": "http://x/"}, "'kind'"),
        ({"name": "a", "kind": "webhook", "url": "http://x/"}, "'secret'"),
        ({"name": "a", "kind": "webhook", "url": "http://x/", "secret": "short"}, "'secret'"),
        ({"name": "a", "kind": "slack", "url": "http://x/", "secret": "s" * 16}, "secret"),
        ({"name": "a", "kind": "slack", "url": "ftp://x/"}, "'url'"),
        ({"name": "a", "kind": "slack", "url": "http://user:pw@x/"}, "'url'"),
        ({"name": "a", "kind": "slack", "url": "http://x:99999/"}, "'url'"),
        ({"name": "a", "kind": "slack"}, "'url'"),
        ({"name": "a", "kind": "email", "host": "h", "from": "a@b", "to": []}, "'to'"),
        ({"name": "a", "kind": "email", "host": "h", "from": "nobody", "to": "a@b"}, "'from'"),
        ({"name": "a", "kind": "email", "from": "a@b", "to": "a@b"}, "'host'"),
        ({"name": "a", "kind": "email", "host": "h", "from": "a@b", "to": "a@b", "username": "u"}, "'password'"),
        (
            {"name": "a", "kind": "email", "host": "h", "from": "a@b", "to": "a@b", "username": "u", "password": "p",
             "starttls": False},
            "'starttls'",
        ),
        ({"name": "a", "kind": "email", "host": "h", "from": "a@b", "to": "a@b", "port": 0}, "'port'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_channel_is_refused_naming_the_field(api: Api, body: dict[str, Any], names: str) -> None:
    code, answer = await api.call("POST", "/api/channels", body)
    assert code == 400 and names in answer["error"], answer
    assert (await api.call("GET", "/api/channels"))[1] == []


@pytest_twisted.ensureDeferred
async def test_channels_are_kept_across_a_restart(tmp_path: Path, reactor: Any) -> None:
    first = await make_api(tmp_path, reactor)
    await first.call("POST", "/api/channels", WEBHOOK)
    await first.call("POST", "/api/channels", {"name": "mail", "kind": "email", "host": "h", "from": "a@b", "to": "c@d"})
    await close_api(first)
    again = await make_api(tmp_path, reactor)
    try:
        code, listed = await again.call("GET", "/api/channels")
        assert code == 200
        assert [channel["name"] for channel in listed] == ["mail", "ops"]
        channel = again.service.channels.get("ops")
        assert channel is not None and channel.secret == WEBHOOK["secret"]
    finally:
        await close_api(again)


@pytest_twisted.ensureDeferred
async def test_the_test_button_sends_now_and_answers_with_the_reply(api: Api, reactor: Any) -> None:
    site = Receiver()
    port = reactor.listenTCP(0, Site(site), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/hook"
        await api.call("POST", "/api/channels", {**WEBHOOK, "url": url})
        code, body = await api.call("POST", "/api/channels/ops/test")
        assert code == 200 and body["outcome"] == "sent" and body["status"] == 200, body
        assert body["reply"].startswith("200 OK")
        (request,) = site.requests
        sent = check_signed(request)
        assert sent["event"] == "test" and request["headers"]["idempotency-key"].startswith("test:")
        site.answer = lambda request, number: 410
        code, body = await api.call("POST", "/api/channels/ops/test")
        assert (code, body["outcome"], body["status"]) == (200, "failed", 410)
    finally:
        await port.stopListening()
    closed = reactor.listenTCP(0, Site(site), interface="127.0.0.1")
    nobody = closed.getHost().port
    await closed.stopListening()
    await api.call("POST", "/api/channels", {**WEBHOOK, "name": "down", "url": f"http://127.0.0.1:{nobody}/"})
    code, body = await api.call("POST", "/api/channels/down/test")
    assert code == 200 and body["outcome"] == "retry" and "refused" in body["reply"].lower(), body
    code, body = await api.call("POST", "/api/channels/nope/test")
    assert code == 404


def alert(task_id: int, moment: float, channel: str = "ops") -> Alert:
    return Alert(
        key=f"{task_id}@{moment:.0f}:failure", event="failure", channel=channel, created_at=moment,
        task_id=task_id, job_id=None, body={"event": "failure", "detail": f"run at {moment:.0f} failed"},
    )


@pytest_twisted.ensureDeferred
async def test_a_tasks_alerts_newest_first_with_paging_and_after_it_is_removed(api: Api) -> None:
    code, task = await api.call("POST", "/api/tasks", {"schedule": "@daily", "command": "false"})
    assert code == 201
    number = task["id"]
    await api.service.job_store.record_alerts([alert(number, 1000.0 + n) for n in range(3)])
    code, rows = await api.call("GET", f"/api/tasks/{number}/alerts")
    assert code == 200 and [row["detail"] for row in rows] == [f"run at {1002 - n} failed" for n in range(3)]
    first = rows[0]
    assert first["state"] == "pending" and first["attempts"] == 0 and first["key"] == f"{number}@1002:failure"
    assert first["nextAttemptAt"] is not None and first["sentAt"] is None and first["reply"] is None
    code, page = await api.call("GET", f"/api/tasks/{number}/alerts?limit=1&before={rows[0]['id']}")
    assert [row["id"] for row in page] == [rows[1]["id"]]
    assert (await api.call("GET", "/api/tasks/999/alerts"))[0] == 404
    # A task that never had alerts has an empty log; a removed one keeps its log.
    code, other = await api.call("POST", "/api/tasks", {"schedule": "@daily", "command": "true"})
    assert await api.call("GET", f"/api/tasks/{other['id']}/alerts") == (200, [])
    assert (await api.call("DELETE", f"/api/tasks/{number}"))[0] == 204
    code, kept = await api.call("GET", f"/api/tasks/{number}/alerts")
    assert code == 200 and len(kept) == 3
    code, pending = await api.call("GET", "/api/alerts?state=pending&channel=ops")
    assert code == 200 and len(pending) == 3
    assert (await api.call("GET", "/api/alerts?state=sent"))[1] == []
    assert (await api.call("GET", "/api/alerts?state=bogus"))[0] == 400


@pytest_twisted.ensureDeferred
async def test_metrics_show_the_outbox(api: Api) -> None:
    code, text = await api.call("GET", "/metrics")
    assert code == 200
    assert "scheduler_alerts_pending 0.0" in text and "scheduler_alerts_outbox_full 0.0" in text
