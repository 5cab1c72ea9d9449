"""The checks every HTTP request passes before it reaches a route.

- The path is decided as the router sees it: Twisted percent-decodes each
  ``/``-separated segment into ``request.postpath`` and Klein matches their
  join, so ``/%61pi/tasks`` *is* ``/api/tasks``.  Spellings that could be
  read two ways are refused with 400: empty segments (``//api``), encoded
  slashes (``%2F``), dot segments, control characters (``%00``), bytes
  that are not UTF-8, and a target that is not a path.
- Method names are case-sensitive (``post`` is not ``POST``, though the
  router would treat it as one): anything but upper case is refused.
- One ``Host``, ``Origin``, ``Authorization`` and ``Content-Type`` each: a
  repeated one is refused, since each reader may pick another copy.
- Host must be in the allowlist (a DNS-rebinding page has a foreign Host).
- A browser's Origin, when sent on a request that changes state, must be
  this server: the scheme, host and port the request was sent to.
- POST needs ``Content-Type: application/json``: a cross-site form can
  only send simple content types, so this plus the bearer token (never a
  cookie) leaves no room for CSRF.  An empty body needs no Content-Type
  (``curl -X POST .../cancel`` sends none): a form always sends one, and a
  cross-site ``fetch`` sends an Origin, which is checked first.
- With an API token, every path needs ``Authorization: Bearer <token>``
  except the public ones (``PUBLIC_PATHS``, ``PUBLIC_PREFIXES``): the
  dashboard's page and files, ``/api/health`` (without the token it
  answers only ``{"status": "ok"}``, for load balancers), and
  ``/ws/worker`` (its handshake checks the worker token).  A token in the
  query string is never read.
- Bodies are cut off at the limit while they arrive (413), not after, and
  a request must arrive whole within a deadline (``DeadlineChannel``).
- Every answer carries ``SECURITY_HEADERS`` (no framing, a CSP the
  dashboard passes) and no ``Server`` header naming Twisted's version.

``/ws/worker`` is exempt from the Host check: workers dial the scheduler by
whatever name reaches it, and the handshake has its own checks (worker
token, and no browser Origin).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from scheduler.access import bearer, host_allowed
from scheduler.access_scopes import Need, scope_of
from scheduler.access_tokens import Access, Caller, refusal_text
from scheduler.http_log import redact
from scheduler.settings import Settings

log = Logger()

# Reachable without the API token.  Everything else needs it, including
# paths no route answers (they get 401, not 404, without the token).
WORKER_PATH = "/ws/worker"
HEALTH_PATH = "/api/health"
PUBLIC_PATHS = frozenset({"/", HEALTH_PATH, WORKER_PATH})
# Ping checks: the uuid in the path is the secret (SECURITY.md, "Ping checks").
PUBLIC_PREFIXES = ("/static/", "/api/ping/")

SAFE_METHODS = {b"GET", b"HEAD", b"OPTIONS"}
# Headers a request may carry once only.
SINGLE_HEADERS = (b"host", b"origin", b"authorization", b"content-type")

# On every answer.  The dashboard loads its script and style sheet from
# /static/ and sets styles from script only (element.style, which CSP
# allows), so no 'unsafe-inline' is needed; data: is for its empty icon.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY.encode("ascii"),
    b"X-Frame-Options": b"DENY",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
}

DEFAULT_PORTS = {"http": 80, "https": 443}


class BadPath(ValueError):
    """A request path that could be read in more than one way."""


def route_path(request: Request) -> str:
    """The path the router will match, or BadPath saying what is ambiguous.

    The Guard is the site's root and a leaf, so ``request.postpath`` is the
    whole path as Twisted decoded it, and what Klein joins and matches.
    """
    if not request.path.startswith(b"/"):
        raise BadPath("the request target must be a path starting with '/'")
    segments: list[bytes] = request.postpath  # type: ignore[assignment]
    for number, segment in enumerate(segments, start=1):
        if b"/" in segment:
            raise BadPath("the path has an encoded slash (%2F)")
        if segment == b"" and number < len(segments):
            raise BadPath("the path has an empty segment (//)")
        if segment in (b".", b".."):
            raise BadPath("the path has a '.' or '..' segment")
        if b"\\" in segment or any(byte < 0x20 or byte == 0x7F for byte in segment):
            raise BadPath("the path has a backslash or a control character (such as %00)")
    try:
        return "/" + "/".join(segment.decode("utf-8") for segment in segments)
    except UnicodeDecodeError:
        raise BadPath("the path is not UTF-8 once percent-decoded") from None


def is_public(path: str) -> bool:
    """May *path* (as ``route_path`` gives it) be asked for without the API token?"""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def same_origin(origin: bytes, host: bytes | None, secure: bool) -> bool:
    """Is *origin* the scheme, host and port this request was sent to?

    The port absent from either side is the origin's scheme's default; on
    a plain connection an https origin is accepted too, for a TLS proxy in
    front that passes the Host through.
    """
    if host is None:
        return False
    try:
        theirs = urlsplit(origin.decode("ascii"))
        ours = urlsplit("//" + host.decode("ascii"))
        their_port, our_port = theirs.port, ours.port
    except (UnicodeDecodeError, ValueError):
        return False
    if theirs.scheme not in DEFAULT_PORTS or (secure and theirs.scheme != "https"):
        return False
    if theirs.hostname is None or theirs.path or theirs.query or theirs.username is not None:
        return False
    default = DEFAULT_PORTS[theirs.scheme]
    return theirs.hostname == ours.hostname and (their_port or default) == (our_port or default)


class LimitedRequest(Request):
    """A request that stops keeping its body past ``max_body`` bytes.

    Its repr, which Twisted's own log lines quote, has token-like query
    parameters redacted as in the access log.
    """

    max_body = Settings.http_max_body

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.body_too_large = False
        self._received = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} method={self.method.decode('latin-1')} uri={redact(self.uri).decode('latin-1')}>"

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.body_too_large = True
        super().gotLength(length if not self.body_too_large else 0)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body:
            self.body_too_large = True
        if self.body_too_large:
            return  # keep reading, keep nothing
        super().handleContentChunk(data)


def limited_requests(max_body: int) -> type[Request]:
    """A request class for Site.requestFactory with this body limit."""
    return type("LimitedRequest", (LimitedRequest,), {"max_body": max_body})


class DeadlineChannel(HTTPChannel):  # type: ignore[misc]
    """An HTTP connection on which each request must arrive whole in time.

    Twisted's own timeout restarts at every byte received, so a client
    trickling a header line every few seconds (slowloris) kept its
    connection forever.  Here the headers and body of a request must all
    arrive within ``deadline`` seconds of the connection opening, or of
    the previous answer on a kept-alive connection; if not, 408 and close.
    The clock is stopped while a request is answered, so a live feed, or a
    WebSocket (which takes the connection over), runs as long as it needs.
    """

    deadline = 30.0
    _deadline_call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_deadline()

    def allContentReceived(self) -> None:
        self._stop_deadline()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        # Started first: the base class may go straight on to a pipelined
        # request already buffered, whose allContentReceived stops it again.
        self._start_deadline()
        super().requestDone(request)

    def loseConnection(self) -> None:
        # Closing already (Connection: close, a 400, an idle timeout): the
        # peer may take its time to read the answer, the deadline is over.
        self._stop_deadline()
        super().loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._deadline_call = self.callLater(self.deadline, self._deadline_passed)

    def _stop_deadline(self) -> None:
        if self._deadline_call is not None:
            if self._deadline_call.active():
                self._deadline_call.cancel()
            self._deadline_call = None

    def _deadline_passed(self) -> None:
        self._deadline_call = None
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return  # taken over (a WebSocket) or closed by someone else
        body = json.dumps({"error": f"the request did not arrive whole within {self.deadline:g} s"}).encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        # As Twisted's own timeout does: close, and abort a peer that does
        # not even read the answer.
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()


def deadline_channels(deadline: float) -> type[HTTPChannel]:
    """A channel class for Site.protocol with this request deadline."""
    return type("DeadlineChannel", (DeadlineChannel,), {"deadline": deadline})


def _reply(request: Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return _body(request, json.dumps({"error": message}).encode("utf-8"))


def _body(request: Request, body: bytes) -> bytes:
    """*body*, or for HEAD its length only: Twisted logs a HEAD answer's
    body as a warning quoting the request, query string and all."""
    if request.method == b"HEAD":
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return b""
    return body


def json_or_bodiless(request: Request) -> bool:
    """Does *request* say its body is JSON, or have no body and no Content-Type?

    The one place the rule lives: an action route (``/run``, ``/cancel``)
    needs no body, so a bodiless POST without a Content-Type is taken, as
    ``curl -X POST`` sends it.  Any body, and any Content-Type sent, must
    be JSON: an empty body labelled as a form is still what a cross-site
    form sends.
    """
    kind = request.getHeader(b"content-type")
    if kind is None:
        return _body_length(request) == 0
    return kind.split(b";")[0].strip().lower() == b"application/json"


def _body_length(request: Request) -> int:
    """How many body bytes arrived (the whole body: the Guard runs after it)."""
    content = request.content
    if content is None:
        return 0
    where = content.tell()
    size: int = content.seek(0, 2)
    content.seek(where)
    return size


#: Set on a request that carried the right API token (read by the routes
#: that show more to token holders, e.g. the version in /api/health).
TOKEN_CHECKED = "scheduler_token_checked"
#: The request's Caller (access_tokens), once the Guard has let it through.
CALLER = "scheduler_caller"


def token_checked(request: Any) -> bool:
    return bool(getattr(request, TOKEN_CHECKED, False))


def caller_of(request: Any) -> Caller | None:
    """Who sent *request*, as the Guard found (None only for requests that did not pass it, in tests)."""
    caller: Caller | None = getattr(request, CALLER, None)
    return caller


def _address(request: Request) -> str | None:
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return str(host) if host is not None else None


class Guard(Resource):
    isLeaf = True

    def __init__(
        self,
        inner: IResource,
        *,
        allowed_hosts: set[str],
        api_token: str | None,
        max_body: int,
        access: Access | None = None,
        need: Callable[[str, str], Need] | None = None,
        wrong_token: Callable[[str | None], None] | None = None,
    ) -> None:
        super().__init__()
        self._inner = inner
        self.allowed_hosts = allowed_hosts
        # Who may do what (access_tokens); the single API token alone without it.
        self.access = access if access is not None else Access(api_token=api_token)
        # The scope a (method, path) needs (access_scopes.route_need); without it, any credential will do.
        self._need = need
        # Told of each wrong token (the audit log coalesces them).
        self._wrong_token = wrong_token
        self.max_body = max_body

    def render(self, request: Request) -> Any:
        request.responseHeaders.removeHeader(b"server")  # names Twisted and its version
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        try:
            path = route_path(request)
        except BadPath as error:
            return _reply(request, 400, f"{error}: send the canonical path")
        # /ws/worker's Authorization carries the worker token, which its
        # handshake checks: not an API token, right or wrong.
        caller = None if path == WORKER_PATH else self._caller(request)
        authorised = caller is not None and caller.name is not None
        setattr(request, TOKEN_CHECKED, authorised)
        setattr(request, CALLER, caller)
        problem = self._check(request, path, caller)
        if problem is not None:
            status, message = problem
            return _reply(request, status, message)
        if path == HEALTH_PATH and self.access.http_required and not authorised and request.method in SAFE_METHODS:
            return _reply_ok(request)
        return self._inner.render(request)

    def _check(self, request: Request, path: str, caller: Caller | None) -> tuple[int, str] | None:
        method = request.method
        if method != method.upper():
            shown = method.decode("ascii", "replace")[:20]
            return 400, f"method names are case-sensitive: send {shown.upper()}, not {shown}"
        for name in SINGLE_HEADERS:
            values = request.requestHeaders.getRawHeaders(name) or []
            if len(values) > 1:
                return 400, f"send one {name.decode().title()} header, not {len(values)}"
        host = request.getHeader(b"host")
        if path != WORKER_PATH and not host_allowed(host, self.allowed_hosts):
            shown = (host or b"").decode("latin-1")[:100]
            log.warn("refused a request with Host {host!r} (not in --allowed-hosts)", host=shown)
            return 403, f"Host '{shown}' is not allowed here; start the scheduler with --allowed-hosts {shown.rsplit(':', 1)[0] or '<name>'}"
        if getattr(request, "body_too_large", False):
            return 413, f"request body is larger than {self.max_body} bytes"
        if method not in SAFE_METHODS:
            origin = request.getHeader(b"origin")
            if origin is not None and not same_origin(origin, host, request.isSecure()):
                return 403, "cross-origin requests that change state are not allowed"
            if method == b"POST" and not json_or_bodiless(request):  # what a cross-site form can send
                return 415, "send Content-Type: application/json (an empty body is fine where none is needed)"
        if is_public(path):
            return None
        if caller is None:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="scheduler"')
            return 401, "missing or wrong API token: send Authorization: Bearer <token>"
        scope = scope_of(self._need(method.decode("ascii"), path)) if self._need is not None else None
        if scope is not None and not caller.allows(scope):
            return 403, refusal_text(caller, scope)
        return None

    def _caller(self, request: Request) -> Caller | None:
        address = _address(request)
        token = bearer(request.getHeader(b"authorization"))
        person = None
        header = self.access.proxy_header
        if header is not None:
            raw = request.getHeader(header.encode("latin-1"))
            person = raw.decode("utf-8", "replace").strip() or None if raw is not None else None
        caller = self.access.http_caller(token, address, person)
        if caller is None and token is not None and self._wrong_token is not None:
            self._wrong_token(address)
        return caller


def _reply_ok(request: Request) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return _body(request, b'{"status": "ok"}')
