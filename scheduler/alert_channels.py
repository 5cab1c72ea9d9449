"""Alert channels: where alerts go, checked as they are created, kept in the job store.

A channel is a name, a kind (``CHANNEL_KINDS``) and how to reach it: a URL
for a webhook and the Slack, Discord and ntfy presets, SMTP settings for
email.  A webhook has a secret, which signs every request (HMAC-SHA256);
an ntfy channel may have one, sent as its access token.  Secrets and
passwords are stored with the channel (in ``jobs.sqlite``, mode 0600) and
never shown again: the API says only whether one is set.

Channels are created and deleted, never changed in place: a name is taken
once (409), so a script cannot replace a channel's secret by accident.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred

from scheduler.alerts import CHANNEL_KINDS, ChannelKind
from scheduler.job_history.database import NameTaken

# The checks are patterns the OpenAPI document repeats (scheduler/http_openapi.py),
# all ASCII, so a client's regex dialect reads them as Python does.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_URL = 2048
URL = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?([/?#][!-~]*)?")
SECRET_LENGTH = (16, 256)
SECRET = re.compile(r"[!-~]{16,256}")
# An SMTP login: printable ASCII, spaces included.
CREDENTIAL = re.compile(r"[ -~]{1,256}")
MAX_ADDRESS = 254
# Kinds whose URL carries the credential (Slack's and Discord's webhook URLs):
# only its scheme and host are ever shown.
URL_IS_SECRET = frozenset({"slack", "discord"})
URL_KINDS = ("webhook", "slack", "discord", "ntfy")
SMTP_PORT = 587
MAX_RECIPIENTS = 20
ADDRESS = re.compile(r"[A-Za-z0-9._%+=-]+@[A-Za-z0-9.-]+")
# An SMTP server: a DNS name (labels of letters, digits and inner hyphens)
# or an IPv4 address, as a TCP connect and a TLS server name both take it.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
MAX_HOST = 253

# The fields a request may give, per kind ("name" and "kind" always).
FIELDS: dict[str, tuple[str, ...]] = {
    "webhook": ("url", "secret"),
    "slack": ("url",),
    "discord": ("url",),
    "ntfy": ("url", "secret"),
    "email": ("host", "port", "starttls", "username", "password", "from", "to"),
}


class ChannelError(ValueError):
    """A channel that cannot be: the message names the field."""


class ChannelExists(Exception):
    pass


class NoSuchChannel(KeyError):
    pass


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    starttls: bool
    username: str | None
    password: str | None
    sender: str
    to: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    kind: ChannelKind
    url: str | None = None
    secret: str | None = None
    smtp: SmtpSettings | None = None

    def config(self) -> str:
        """Everything, secrets included, as stored in the job store."""
        data: dict[str, Any] = {"kind": self.kind}
        if self.url is not None:
            data["url"] = self.url
        if self.secret is not None:
            data["secret"] = self.secret
        if self.smtp is not None:
            smtp = asdict(self.smtp)
            smtp["from"] = smtp.pop("sender")
            smtp["to"] = list(smtp["to"])
            data.update({key: value for key, value in smtp.items() if value is not None})
        return json.dumps(data, sort_keys=True)

    def public(self) -> dict[str, Any]:
        """What the API shows: no secret, password or credential-bearing URL path."""
        shown: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.url is not None:
            shown["url"] = shown_url(self.url, self.kind)
        if self.kind in ("webhook", "ntfy"):
            shown["secretSet"] = self.secret is not None
        if self.smtp is not None:
            shown.update(
                host=self.smtp.host,
                port=self.smtp.port,
                starttls=self.smtp.starttls,
                username=self.smtp.username,
                passwordSet=self.smtp.password is not None,
                to=list(self.smtp.to),
            )
            shown["from"] = self.smtp.sender
        return shown


def shown_url(url: str, kind: str) -> str:
    """The URL without credentials: no user:password@, no query; for Slack and Discord only scheme and host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    if kind in URL_IS_SECRET:
        return f"{parts.scheme}://{netloc}/…"
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?…" if parts.query else "")


def parse_channel(data: Mapping[str, Any]) -> Channel:
    """A channel from a request's JSON object (or a stored config with its name); ChannelError names the bad field."""
    name = data.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ChannelError(
            "field 'name' is required: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    kind = data.get("kind")
    if kind not in CHANNEL_KINDS:
        raise ChannelError(f"field 'kind' is required and must be one of {', '.join(CHANNEL_KINDS)}")
    allowed = {"name", "kind", *FIELDS[kind]}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ChannelError(
            f"unknown field(s) for a {kind} channel: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    if kind == "email":
        return Channel(name, kind, smtp=_smtp(data))
    url = _url(data.get("url"))
    secret = data.get("secret")
    if "secret" in data:
        if not isinstance(secret, str) or not SECRET.fullmatch(secret):
            low, high = SECRET_LENGTH
            raise ChannelError(f"field 'secret' must be {low} to {high} printable ASCII characters, no spaces")
    elif kind == "webhook":
        raise ChannelError(f"field 'secret' is required for a webhook: it signs every request ({SECRET_LENGTH[0]}+ characters)")
    return Channel(name, kind, url=url, secret=secret)


def _url(url: object) -> str:
    if not isinstance(url, str) or len(url) > MAX_URL or not URL.fullmatch(url):
        raise ChannelError(
            f"field 'url' is required: an http:// or https:// URL with a host and no user:password@, "
            f"in printable ASCII, at most {MAX_URL} characters"
        )
    try:
        port = urlsplit(url).port
    except ValueError:
        port = 0
    if port == 0:
        raise ChannelError("field 'url' has a port outside 1 to 65535")
    return url


def _smtp(data: Mapping[str, Any]) -> SmtpSettings:
    host = data.get("host")
    if not isinstance(host, str) or len(host) > MAX_HOST or not HOST.fullmatch(host):
        raise ChannelError("field 'host' is required for email: the SMTP server's DNS name or IPv4 address")
    port = data.get("port", SMTP_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ChannelError("field 'port' must be an integer from 1 to 65535 (default 587)")
    starttls = data.get("starttls", True)
    if not isinstance(starttls, bool):
        raise ChannelError("field 'starttls' must be true or false (default true)")
    username, password = data.get("username"), data.get("password")
    for field_name, value in (("username", username), ("password", password)):
        if field_name in data and (not isinstance(value, str) or not CREDENTIAL.fullmatch(value)):
            raise ChannelError(f"field '{field_name}' must be 1 to 256 printable ASCII characters")
    if ("username" in data) != ("password" in data):
        raise ChannelError("fields 'username' and 'password' go together")
    if "password" in data and not starttls:
        raise ChannelError("field 'starttls' must be true with a password: it would cross the network in clear")
    sender = data.get("from")
    if not isinstance(sender, str) or not ADDRESS.fullmatch(sender) or len(sender) > MAX_ADDRESS:
        raise ChannelError("field 'from' is required for email: one address, like scheduler@example.com")
    to = data.get("to")
    recipients = [to] if isinstance(to, str) else to
    if (
        not isinstance(recipients, list)
        or not 1 <= len(recipients) <= MAX_RECIPIENTS
        or not all(isinstance(each, str) and ADDRESS.fullmatch(each) and len(each) <= MAX_ADDRESS for each in recipients)
    ):
        raise ChannelError(f"field 'to' is required for email: an address or a list of 1 to {MAX_RECIPIENTS}")
    return SmtpSettings(host, port, starttls, username, password, sender, tuple(recipients))


class ChannelStore(Protocol):
    """Where channels are kept: the job store."""

    def add_channel(self, name: str, config: str) -> Deferred[None]: ...

    def remove_channel(self, name: str) -> Deferred[None]: ...


class ChannelBook:
    """The channels by name, as committed to the store (a ``KnownChannels``)."""

    def __init__(self, store: ChannelStore, stored: Mapping[str, str] | None = None) -> None:
        self._store = store
        self._channels: dict[str, Channel] = {}
        for name, config in (stored or {}).items():
            self._channels[name] = parse_channel({**json.loads(config), "name": name})

    def __contains__(self, name: object) -> bool:
        return name in self._channels

    def __iter__(self) -> Iterator[Channel]:
        return iter(sorted(self._channels.values(), key=lambda channel: channel.name))

    def __len__(self) -> int:
        return len(self._channels)

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    async def add(self, channel: Channel) -> Channel:
        """Store a new channel, then know it; ChannelExists if the name is taken."""
        if channel.name in self._channels:
            raise ChannelExists(f"a channel named '{channel.name}' exists; delete it first to replace it")
        try:
            await self._store.add_channel(channel.name, channel.config())
        except NameTaken:
            raise ChannelExists(f"a channel named '{channel.name}' exists; delete it first to replace it") from None
        self._channels[channel.name] = channel
        return channel

    async def remove(self, name: str) -> None:
        """Forget a channel once the store has; NoSuchChannel if there is none by that name."""
        if name not in self._channels:
            raise NoSuchChannel(name)
        await self._store.remove_channel(name)
        self._channels.pop(name, None)
