"""Email alerts to a real SMTP server on loopback (aiosmtpd, in a thread) with STARTTLS and AUTH.

The server's certificate is made by the test (self-signed, for localhost)
and handed to the sender as its only trusted root.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.ssl import Certificate, trustRootFromCertificates

from scheduler.alert_channels import Channel, ChannelError, parse_channel
from scheduler.alert_delivery import Deliverer

aiosmtpd = pytest.importorskip("aiosmtpd")
from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

USER, PASSWORD = "alerts", "correct horse battery"


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp.crt", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        self.arrived.set()
        return "250 OK queued"


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == USER.encode() and data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


class SmtpServer:
    def __init__(self, controller: Controller, inbox: Inbox, cert: Path) -> None:
        self.controller = controller
        self.inbox = inbox
        self.port: int = controller.port
        self.trust = trustRootFromCertificates([Certificate.loadPEM(cert.read_bytes())])


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpServer]:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    inbox = Inbox()
    with socket.socket() as probe:  # aiosmtpd's readiness check cannot take port 0
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free,
        server_hostname="localhost",
        tls_context=context,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
        ready_timeout=10,
    )
    controller.start()
    try:
        yield SmtpServer(controller, inbox, cert)
    finally:
        controller.stop()


def mail_channel(port: int, **changes: Any) -> Channel:
    fields = {
        "name": "mail",
        "kind": "email",
        "host": "localhost",
        "port": port,
        "username": USER,
        "password": PASSWORD,
        "from": "scheduler@example.com",
        "to": ["ops@example.com", "oncall@example.com"],
        **changes,
    }
    return parse_channel({key: value for key, value in fields.items() if value is not None})


DATA = {
    "event": "failure",
    "task": {"id": 3, "jobName": "backup", "schedule": "@daily"},
    "job": {"id": 5},
    "detail": "job 5 of backup failed with exit code 3",
    "url": "http://127.0.0.1:3000/#/jobs/5",
    "output": "copying\nno space left on device\n",
}


@pytest_twisted.ensureDeferred
async def test_an_alert_arrives_by_mail_over_starttls_with_auth(smtp_server: SmtpServer) -> None:
    deliverer = Deliverer(reactor, timeout=10.0, trust_root=smtp_server.trust)
    reply = await deliverer.deliver(mail_channel(smtp_server.port), "3@1000:failure", DATA)
    assert reply.outcome == "sent", reply
    ((sender, recipients, raw),) = smtp_server.inbox.messages
    assert sender == "scheduler@example.com" and recipients == ["ops@example.com", "oncall@example.com"]
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == "[scheduler] Failed: backup"
    assert message["X-Scheduler-Key"] == "3@1000:failure"
    text = message.get_body().get_content()  # type: ignore[union-attr]
    assert "exit code 3" in text and "http://127.0.0.1:3000/#/jobs/5" in text and "no space left" in text
    # The same alert sent again is the same message: mail clients drop the copy.
    await deliverer.deliver(mail_channel(smtp_server.port), "3@1000:failure", DATA)
    first, second = (email.message_from_bytes(raw) for *_, raw in smtp_server.inbox.messages)
    assert first["Message-ID"] == second["Message-ID"]


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_fails_for_good(smtp_server: SmtpServer) -> None:
    deliverer = Deliverer(reactor, timeout=10.0, trust_root=smtp_server.trust)
    reply = await deliverer.deliver(mail_channel(smtp_server.port, password="wrong password"), "k", DATA)
    assert reply.outcome == "failed" and "535" in reply.text, reply
    assert smtp_server.inbox.messages == []


@pytest_twisted.ensureDeferred
async def test_a_certificate_that_is_not_trusted_is_not_sent_the_password(smtp_server: SmtpServer) -> None:
    deliverer = Deliverer(reactor, timeout=10.0)  # the platform's roots: the test's certificate is not among them
    reply = await deliverer.deliver(mail_channel(smtp_server.port), "k", DATA)
    assert reply.outcome == "retry" and smtp_server.inbox.messages == []


@pytest_twisted.ensureDeferred
async def test_nobody_listening_is_worth_a_retry() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    reply = await Deliverer(reactor, timeout=10.0).deliver(mail_channel(closed), "k", DATA)
    assert reply.outcome == "retry" and "refused" in reply.text.lower(), reply


@pytest.mark.parametrize("host", ["[98", "a..b", "-mail", "mail-", "smtp_example.com", "x" * 254])
def test_a_host_neither_dns_nor_tls_could_use_is_refused(host: str) -> None:
    with pytest.raises(ChannelError, match="field 'host'"):
        mail_channel(587, host=host)


@pytest_twisted.ensureDeferred
async def test_a_kept_channel_whose_host_tls_refuses_answers_a_reply_not_an_error() -> None:
    # As a channel stored by an older, looser release would come back.
    channel = mail_channel(587)
    assert channel.smtp is not None
    odd = replace(channel, smtp=replace(channel.smtp, host="[98"))
    reply = await Deliverer(reactor, timeout=10.0).deliver(odd, "k", DATA)
    assert reply.outcome == "retry" and reply.text, reply
