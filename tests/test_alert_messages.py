"""What each channel kind is sent: the shapes, synchronously, and the presets over real HTTP on loopback."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import AsyncIterator
from email.header import decode_header, make_header
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.web.server import Site

from scheduler.alert_channels import Channel, parse_channel
from scheduler.alert_delivery import Deliverer
from scheduler.alert_messages import (
    DISCORD_MAX,
    NTFY_MAX,
    discord_body,
    email_message,
    headline,
    http_request,
    slack_body,
)
from scheduler.settings import default_public_url
from tests.test_alert_webhooks import Receiver

DATA: dict[str, Any] = {
    "event": "failure",
    "task": {"id": 3, "jobName": "backup <db>", "schedule": "@daily"},
    "job": {"id": 5, "status": "failed"},
    "detail": "job 5 of backup failed with exit code 3 & more",
    "at": "2026-12-01T12:00:00+00:00",
    "url": "http://sched:3000/#/jobs/5",
    "output": "".join(f"line {n}\n" for n in range(1, 31)) + "@everyone ```\n",
}


def test_slack_gets_an_escaped_line_a_link_and_the_last_lines() -> None:
    text = slack_body(DATA)["text"]
    assert text.startswith("*Failed: backup &lt;db&gt;*\njob 5 of backup failed with exit code 3 &amp; more\n")
    assert "<http://sched:3000/#/jobs/5|job #5>" in text
    assert "line 30" in text and "line 20\n" not in text and "```" in text and text.count("```") == 2


def test_discord_stays_under_its_limit_and_pings_nobody() -> None:
    body = discord_body({**DATA, "output": "x" * 10_000})
    assert len(body["content"]) <= DISCORD_MAX and body["allowed_mentions"] == {"parse": []}
    assert "[job #5](http://sched:3000/#/jobs/5)" in body["content"]


def test_ntfy_gets_plain_text_with_its_headers() -> None:
    channel = Channel("n", "ntfy", url="https://ntfy.example/alerts", secret="tk_0123456789abcdef")
    request = http_request(channel, "3@1:failure", {**DATA, "task": {"id": 3, "jobName": "sauvegarde-é"}}, 0)
    assert request.headers["Priority"] == "high" and request.headers["Click"] == DATA["url"]
    assert request.headers["Authorization"] == "Bearer tk_0123456789abcdef"
    assert str(make_header(decode_header(request.headers["Title"]))) == "Failed: sauvegarde-é"
    assert request.headers["Title"].isascii()
    assert request.body.decode().startswith("job 5 of backup failed")
    big = http_request(channel, "k", {**DATA, "output": "é" * 10_000}, 0)
    assert len(big.body) <= NTFY_MAX
    recovery = http_request(channel, "k", {**DATA, "event": "recovery"}, 0)
    assert recovery.headers["Priority"] == "default"


def test_a_mail_says_what_happened_and_carries_its_key() -> None:
    channel = parse_channel({"name": "m", "kind": "email", "host": "h", "from": "s@example.com", "to": ["a@example.com"]})
    message = email.message_from_bytes(email_message(channel, "3@1:failure", DATA, 0), policy=email.policy.default)
    assert message["Subject"] == "[scheduler] Failed: backup <db>"
    assert message["To"] == "a@example.com" and message["X-Scheduler-Key"] == "3@1:failure"
    assert message["Message-ID"].endswith("@example.com>")


def test_a_headline_without_a_task() -> None:
    assert headline({"event": "worker_offline", "task": None, "worker": "w1"}) == "Worker offline: worker w1"
    assert headline({"event": "test", "task": None}) == "Test alert"


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("tcp:3000:interface=127.0.0.1", "http://127.0.0.1:3000"),
        ("tcp6:8080:interface=\\:\\:1", "http://[::1]:8080"),
        ("ssl:443:privateKey=k.pem:interface=10.0.0.5", "https://10.0.0.5:443"),
        ("unix:/run/sched.sock", "http://localhost"),
    ],
)
def test_the_default_public_url_comes_from_the_http_endpoint(endpoint: str, url: str) -> None:
    assert default_public_url(endpoint) == url


@pytest_twisted.async_yield_fixture
async def receiver() -> AsyncIterator[tuple[Receiver, IListeningPort]]:
    resource = Receiver()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    yield resource, port
    await port.stopListening()


@pytest.mark.parametrize("kind", ["slack", "discord", "ntfy"])
@pytest_twisted.ensureDeferred
async def test_each_preset_posts_its_shape_to_a_real_server(kind: str, receiver: tuple[Receiver, IListeningPort]) -> None:
    site, port = receiver
    deliverer = Deliverer(reactor, timeout=5.0)
    channel = Channel("c", kind, url=f"http://127.0.0.1:{port.getHost().port}/{kind}")  # type: ignore[arg-type]
    reply = await deliverer.deliver(channel, "3@1000:failure", DATA)
    await deliverer.close()
    assert reply.outcome == "sent", reply
    (request,) = site.requests
    assert request["path"] == f"/{kind}" and request["headers"]["idempotency-key"] == "3@1000:failure"
    if kind == "ntfy":
        assert request["headers"]["title"] == "Failed: backup <db>" and request["raw"].startswith(b"job 5")
    else:
        body = json.loads(request["raw"])
        assert set(body) == ({"text"} if kind == "slack" else {"content", "allowed_mentions"})
