"""Every alert event reaches every kind of channel: the real Deliverer, a real
HTTP receiver on loopback (webhook, Slack, Discord, ntfy) and a real SMTP
server with STARTTLS and AUTH (email).

The bodies are shaped as the alert watch builds them (``AlertWatch._emit``:
event, task or null, job or null, detail, at, and the worker's name for
worker_offline); tests/test_alert_watch.py shows when each event is raised.
"""

from __future__ import annotations

import email
import email.policy
import json
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort

from scheduler.alert_channels import Channel, parse_channel
from scheduler.alert_delivery import Deliverer
from scheduler.alert_messages import EVENT_TITLES, payload
from scheduler.alerts import ALERT_EVENTS, CHANNEL_KINDS, alert_key
from tests.test_alert_email import PASSWORD, USER, SmtpServer
from tests.test_alert_email import smtp_server as smtp_server
from tests.test_alert_webhooks import SECRET, Receiver, check_signed
from tests.test_alert_webhooks import receiver as receiver

HTTP_KINDS = [kind for kind in CHANNEL_KINDS if kind != "email"]


def body(event: str) -> dict[str, Any]:
    if event == "worker_offline":
        return {"event": event, "task": None, "job": None, "worker": "w7",
                "detail": "worker w7 has been away for 300s", "at": "2026-12-01T10:05:00+00:00"}
    job = None if event in ("stale", "missed") else {"id": 41, "taskId": 3, "status": "failed", "exitCode": 2}
    return {
        "event": event,
        "task": {"id": 3, "jobName": "nightly-backup", "schedule": "0 2 * * *"},
        "job": job,
        "detail": f"what happened ({event})",
        "at": "2026-12-01T02:00:05+00:00",
    }


def channel(kind: str, port: int) -> Channel:
    fields: dict[str, Any] = {"name": f"to-{kind}", "kind": kind, "url": f"http://127.0.0.1:{port}/{kind}"}
    if kind == "webhook":
        fields["secret"] = SECRET
    return parse_channel(fields)


@pytest.mark.parametrize("kind", HTTP_KINDS)
@pytest_twisted.ensureDeferred
async def test_every_event_reaches_an_http_channel(kind: str, receiver: tuple[Receiver, IListeningPort]) -> None:
    resource, port = receiver
    deliverer = Deliverer(reactor, timeout=10.0)
    target = channel(kind, port.getHost().port)
    for number, event in enumerate(ALERT_EVENTS, start=1):
        data = payload(body(event), "http://127.0.0.1:3000/#/jobs/41", "last line\n")
        key = alert_key("3", 1_764_554_400, event)
        reply = await deliverer.deliver(target, key, data)
        assert reply.outcome == "sent", (kind, event, reply)
        request = resource.requests[number - 1]
        assert request["path"] == f"/{kind}"
        headers = request["headers"]
        if kind == "webhook":
            sent = check_signed(request)
            assert sent["event"] == event and headers["idempotency-key"] == key
            assert sent["output"] == "last line\n" and sent["url"].endswith("/#/jobs/41")
        elif kind == "ntfy":
            # Plain text, with the event's title in the Title header.
            assert EVENT_TITLES[event] in headers["title"], (event, headers)
            assert request["raw"].decode().strip()
        else:
            text = json.loads(request["raw"])["text" if kind == "slack" else "content"]
            assert EVENT_TITLES[event] in text, (kind, event, text)
            subject = "worker w7" if event == "worker_offline" else "nightly-backup"
            assert subject in text, (kind, event, text)
    assert len(resource.requests) == len(ALERT_EVENTS)


@pytest_twisted.ensureDeferred
async def test_every_event_reaches_an_email_channel(smtp_server: SmtpServer) -> None:
    deliverer = Deliverer(reactor, timeout=10.0, trust_root=smtp_server.trust)
    target = parse_channel(
        {"name": "mail", "kind": "email", "host": "localhost", "port": smtp_server.port, "username": USER,
         "password": PASSWORD, "from": "scheduler@example.com", "to": "ops@example.com"}
    )
    for event in ALERT_EVENTS:
        data = payload(body(event), "http://127.0.0.1:3000/#/jobs/41", "last line\n")
        reply = await deliverer.deliver(target, alert_key("3", 1_764_554_400, event), data)
        assert reply.outcome == "sent", (event, reply)
    subjects = [
        str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])
        for _, _, raw in smtp_server.inbox.messages
    ]
    assert len(subjects) == len(ALERT_EVENTS)
    for event, subject in zip(ALERT_EVENTS, subjects, strict=True):
        assert EVENT_TITLES[event] in subject, (event, subject)


def test_the_matrix_covers_every_event_and_kind() -> None:
    # The tests above loop over these tuples; a new event or kind joins them.
    assert set(EVENT_TITLES) >= set(ALERT_EVENTS)
    assert set(HTTP_KINDS) | {"email"} == set(CHANNEL_KINDS)
