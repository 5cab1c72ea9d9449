"""Sending one alert to one channel, and what the receiver's answer means.

Every attempt ends in a :class:`Reply`: ``sent``, ``retry`` (worth trying
again later: the receiver was down, slow, overloaded or said 408/429/5xx)
or ``failed`` (trying again cannot help: a 4xx refusal, a redirect, a
rejected login).  Its text is what the delivery log shows: the status and
the first bytes of the answer, or the error.

HTTP goes through Twisted's own ``Agent`` (treq is a test-only dependency
here, and the Agent does all that is needed); mail through twisted.mail's
``ESMTPSenderFactory``, with STARTTLS and AUTH.  Both run on the reactor,
with a deadline on every attempt, so nothing here blocks or waits forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Literal

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.mail import smtp
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from scheduler.alert_channels import Channel
from scheduler.alert_messages import email_message, http_request

Outcome = Literal["sent", "retry", "failed"]
# Bytes of a receiver's answer kept in the delivery log.
REPLY_BYTES = 512
# Seconds to connect, and for a whole attempt (connect, send, answer).
CONNECT_TIMEOUT = 10.0
ATTEMPT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Reply:
    outcome: Outcome
    text: str
    status: int | None = None


def judge_status(code: int) -> Outcome:
    """2xx is delivered; 408, 429 and 5xx are worth another try; any other answer will not change."""
    if 200 <= code < 300:
        return "sent"
    if code in (408, 429) or code >= 500:
        return "retry"
    return "failed"


class _FirstBytes(Protocol):
    """Reads the first *limit* bytes of a response body and drops the rest."""

    def __init__(self, limit: int, done: Deferred[bytes]) -> None:
        self._limit = limit
        self._done = done
        self._data = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self._data += data
        if len(self._data) >= self._limit and self.transport is not None:
            # A receiver that answers with gigabytes gets its connection cut.
            self.transport.stopProducing()  # type: ignore[attr-defined]  # an IPushProducer here

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        if not self._done.called:
            self._done.callback(bytes(self._data[: self._limit]))


def _reply_text(code: int, phrase: bytes, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    head = f"{code} {phrase.decode('latin-1', 'replace')}".strip()
    return f"{head}: {text}" if text else head


def _error_text(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, TimeoutError | CancelledError):
        return f"no answer within {ATTEMPT_TIMEOUT:g} s"
    reasons = getattr(error, "reasons", None)  # ResponseFailed and friends wrap the real ones
    if reasons:
        return "; ".join(_error_text(reason) for reason in reasons)
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text


class Deliverer:
    """Sends an alert's payload to a channel of any kind."""

    def __init__(
        self,
        reactor: Any,
        *,
        timeout: float = ATTEMPT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        trust_root: Any = None,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        # Tests pass a root of their own (a self-signed SMTP or HTTPS receiver).
        self._trust_root = trust_root
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        pool.cachedConnectionTimeout = 30
        pool.retryAutomatically = False  # a POST is not safe to repeat behind our back
        self._pool = pool
        self._agent = Agent(
            reactor,
            contextFactory=BrowserLikePolicyForHTTPS(trust_root),
            connectTimeout=connect_timeout,
            pool=pool,
        )

    def close(self) -> Deferred[None]:
        """Close the kept-alive connections."""
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    def deliver(self, channel: Channel, key: str, data: Mapping[str, Any]) -> Deferred[Reply]:
        """One attempt; never fails (an error is a Reply), and answers within the timeout."""
        if channel.kind == "email":
            # maybeDeferred: a channel kept from an older release with a host
            # the TLS layer refuses must answer a Reply, not raise.
            attempt = maybeDeferred(self._mail, channel, key, data)
        else:
            attempt = Deferred.fromCoroutine(self._post(channel, key, data))
        attempt.addTimeout(self._timeout, self._reactor)
        return attempt.addErrback(lambda failure: Reply("retry", _error_text(failure)))

    async def _post(self, channel: Channel, key: str, data: Mapping[str, Any]) -> Reply:
        request = http_request(channel, key, data, self._reactor.seconds())
        headers = Headers({name.encode("latin-1"): [value.encode("latin-1")] for name, value in request.headers.items()})
        response: IResponse = await self._agent.request(
            b"POST", request.url.encode("ascii"), headers, FileBodyProducer(BytesIO(request.body))
        )
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_FirstBytes(REPLY_BYTES, done))
        body = await done
        outcome = judge_status(response.code)
        text = _reply_text(response.code, response.phrase, body)
        if 300 <= response.code < 400:
            text += " (redirects are not followed: give the channel the final URL)"
        return Reply(outcome, text, response.code)

    def _mail(self, channel: Channel, key: str, data: Mapping[str, Any]) -> Deferred[Reply]:
        settings = channel.smtp
        assert settings is not None
        message = email_message(channel, key, data, self._reactor.seconds())
        sent: Deferred[Any] = Deferred()
        context = optionsForClientTLS(settings.host, trustRoot=self._trust_root) if settings.starttls else None
        factory = smtp.ESMTPSenderFactory(
            settings.username.encode("utf-8") if settings.username is not None else None,
            settings.password.encode("utf-8") if settings.password is not None else None,
            settings.sender,
            list(settings.to),
            BytesIO(message),
            sent,
            retries=0,
            timeout=self._timeout,
            contextFactory=context,
            requireAuthentication=settings.username is not None,
            requireTransportSecurity=settings.starttls,
            hostname=settings.host if settings.starttls else None,
        )
        factory.noisy = False
        connector = self._reactor.connectTCP(settings.host, settings.port, factory, timeout=self._connect_timeout)

        def cancel(_: Deferred[Reply]) -> None:
            connector.disconnect()

        result: Deferred[Reply] = Deferred(cancel)
        sent.addCallbacks(
            lambda accepted: result.callback(Reply("sent", f"accepted for {accepted[0]} of {len(settings.to)} recipients")),
            lambda failure: result.callback(_smtp_reply(failure)) if not result.called else None,
        )
        return result


def _smtp_reply(failure: Failure) -> Reply:
    error = failure.value
    if isinstance(error, smtp.TLSRequiredError):
        return Reply("failed", "the SMTP server offers no STARTTLS (set starttls to false only for a local relay)")
    if isinstance(error, smtp.AUTHDeclinedError | smtp.AuthenticationError | smtp.AUTHRequiredError):
        return Reply("failed", f"the SMTP server refused the login: {_smtp_text(error)}")
    if isinstance(error, smtp.SMTPClientError) and error.code >= 100:
        # 4xx is the server's "try again later"; 5xx is a refusal.
        return Reply("retry" if error.code < 500 else "failed", _smtp_text(error))
    return Reply("retry", _error_text(failure))


def _smtp_text(error: smtp.SMTPClientError) -> str:
    response = error.resp.decode("utf-8", "replace") if isinstance(error.resp, bytes) else str(error.resp)
    return f"{error.code} {response}".strip()
