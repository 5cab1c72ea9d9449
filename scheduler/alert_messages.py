"""What each kind of channel is sent for one alert: pure functions, no network.

The payload is the alert's body as the rules built it (``event``, ``task``,
``job``, ``detail``, ``at``) plus ``url`` (the job, or else the task, in
the dashboard) and ``output`` (the job's last lines).  A webhook gets it as
JSON, signed; Slack, Discord and ntfy get a line for people with a link;
email gets a plain-text message.

The webhook signature is Stripe's and GitHub's scheme: HMAC-SHA256 with the
channel's secret over ``"<timestamp>.<raw body>"``, sent as
``X-Scheduler-Signature: sha256=<hex>`` beside ``X-Scheduler-Timestamp``
(Unix seconds), so a receiver can refuse an old request replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from scheduler import __version__
from scheduler.alert_channels import Channel

# The event a "send a test" request carries (not a rule's event).
TEST_EVENT = "test"
# What people read first, per event.
EVENT_TITLES: dict[str, str] = {
    "failure": "Failed",
    "recovery": "Recovered",
    "timeout": "Timed out",
    "lost": "Lost",
    "late": "Started late",
    "overrun": "Running too long",
    "missed": "Missed runs",
    "stale": "No recent success",
    "worker_offline": "Worker offline",
    TEST_EVENT: "Test alert",
}
# ntfy's priorities (1-5): good news is not urgent.
_NTFY_PRIORITY = {"recovery": "default", TEST_EVENT: "default"}
_NTFY_TAGS = {"recovery": "white_check_mark", TEST_EVENT: "bell"}
# Bounds of each service: Discord takes 2,000 characters, ntfy 4,096 bytes.
DISCORD_MAX = 2000
NTFY_MAX = 4000
# Output lines in a message for people (the webhook payload has all of ``output``).
SHORT_OUTPUT_LINES = 10
USER_AGENT = f"job-scheduler/{__version__}"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    url: str
    headers: dict[str, str]
    body: bytes


def payload(body: Mapping[str, Any], url: str | None, output: str | None) -> dict[str, Any]:
    """The webhook body: the alert's, with the dashboard link and the output tail."""
    return {**body, "url": url, "output": output}


def headline(data: Mapping[str, Any]) -> str:
    """``Failed: backup-db`` — the event and what it is about."""
    event = str(data.get("event", ""))
    title = EVENT_TITLES.get(event, event)
    task = data.get("task") if isinstance(data.get("task"), Mapping) else None
    subject = None
    if task is not None:
        subject = task.get("jobName") or (f"task {task['id']}" if task.get("id") is not None else None)
    elif isinstance(data.get("worker"), str):
        subject = f"worker {data['worker']}"
    return f"{title}: {subject}" if subject else title


def _detail(data: Mapping[str, Any]) -> str:
    detail = data.get("detail")
    return detail if isinstance(detail, str) else ""


def _link_text(data: Mapping[str, Any]) -> str:
    job = data.get("job")
    if isinstance(job, Mapping) and job.get("id") is not None:
        return f"job #{job['id']}"
    return "open the dashboard"


def _short_output(data: Mapping[str, Any]) -> str:
    output = data.get("output")
    if not isinstance(output, str) or not output.strip():
        return ""
    return "\n".join(output.rstrip("\n").split("\n")[-SHORT_OUTPUT_LINES:])


def signature(secret: str, timestamp: int, raw: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _headers(key: str, event: str, content_type: str) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "User-Agent": USER_AGENT,
        "Idempotency-Key": key,
        "X-Scheduler-Event": event,
    }


def http_request(channel: Channel, key: str, data: Mapping[str, Any], now: float) -> HttpRequest:
    """The request a webhook, Slack, Discord or ntfy channel is sent."""
    assert channel.url is not None
    event = str(data.get("event", ""))
    if channel.kind == "webhook":
        assert channel.secret is not None
        raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        stamp = int(now)
        headers = _headers(key, event, "application/json")
        headers["X-Scheduler-Timestamp"] = str(stamp)
        headers["X-Scheduler-Signature"] = signature(channel.secret, stamp, raw)
        return HttpRequest(channel.url, headers, raw)
    if channel.kind == "slack":
        return HttpRequest(channel.url, _headers(key, event, "application/json"), _json(slack_body(data)))
    if channel.kind == "discord":
        return HttpRequest(channel.url, _headers(key, event, "application/json"), _json(discord_body(data)))
    if channel.kind == "ntfy":
        return ntfy_request(channel, key, data)
    raise ValueError(f"a {channel.kind} channel is not sent over HTTP")


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(data: Mapping[str, Any]) -> dict[str, Any]:
    lines = [f"*{_slack_escape(headline(data))}*"]
    if _detail(data):
        lines.append(_slack_escape(_detail(data)))
    if isinstance(data.get("url"), str):
        lines.append(f"<{data['url']}|{_link_text(data)}>")
    output = _short_output(data)
    if output:
        lines.append("```" + _slack_escape(output).replace("```", "'''") + "```")
    return {"text": "\n".join(lines)}


def discord_body(data: Mapping[str, Any]) -> dict[str, Any]:
    head = [f"**{headline(data)}**"]
    if _detail(data):
        head.append(_detail(data))
    if isinstance(data.get("url"), str):
        head.append(f"[{_link_text(data)}]({data['url']})")
    text = "\n".join(head)
    output = _short_output(data).replace("```", "'''")
    room = DISCORD_MAX - len(text) - 8
    if output and room > 40:
        text += "\n```" + output[-room:] + "```"
    # Output must not ping @everyone.
    return {"content": text[:DISCORD_MAX], "allowed_mentions": {"parse": []}}


def _header_text(text: str) -> str:
    """A header value: ASCII as it is, anything else RFC 2047-encoded (ntfy decodes it)."""
    text = " ".join(text.split())
    return text if text.isascii() else Header(text, "utf-8").encode()


def ntfy_request(channel: Channel, key: str, data: Mapping[str, Any]) -> HttpRequest:
    assert channel.url is not None
    event = str(data.get("event", ""))
    text = "\n\n".join(part for part in (_detail(data), _short_output(data)) if part) or headline(data)
    body = text.encode("utf-8")
    if len(body) > NTFY_MAX:
        # Keep the end: the output's last lines are what says why.
        body = body[-NTFY_MAX:].decode("utf-8", "ignore").encode("utf-8")
    headers = _headers(key, event, "text/plain; charset=utf-8")
    headers["Title"] = _header_text(headline(data))
    headers["Priority"] = _NTFY_PRIORITY.get(event, "high")
    headers["Tags"] = _NTFY_TAGS.get(event, "warning")
    if isinstance(data.get("url"), str):
        headers["Click"] = data["url"]
    if channel.secret is not None:
        headers["Authorization"] = f"Bearer {channel.secret}"
    return HttpRequest(channel.url, headers, body)


def email_message(channel: Channel, key: str, data: Mapping[str, Any], now: float) -> bytes:
    """The message an email channel is sent; its Message-ID comes from the key, so a resent one is the same message."""
    assert channel.smtp is not None
    message = EmailMessage()
    message["Subject"] = f"[scheduler] {headline(data)}"
    message["From"] = channel.smtp.sender
    message["To"] = ", ".join(channel.smtp.to)
    message["Date"] = formatdate(now, usegmt=True)
    digest = hashlib.sha256(f"{key}\0{channel.name}".encode()).hexdigest()[:32]
    domain = channel.smtp.sender.rpartition("@")[2]
    message["Message-ID"] = f"<{digest}@{domain}>"
    message["X-Scheduler-Event"] = str(data.get("event", ""))
    message["X-Scheduler-Key"] = key
    parts = [headline(data)]
    if _detail(data):
        parts.append(_detail(data))
    if isinstance(data.get("url"), str):
        parts.append(data["url"])
    output = data.get("output")
    if isinstance(output, str) and output.strip():
        parts.append("Last lines of output:\n\n" + output.rstrip("\n"))
    message.set_content("\n\n".join(parts) + "\n")
    return message.as_bytes()
