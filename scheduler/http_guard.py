"""The checks every HTTP request passes before it reaches a route.

- Host must be in the allowlist (a DNS-rebinding page has a foreign Host).
- A browser's Origin, when sent on a request that changes state, must be
  one of ours.
- POST needs ``Content-Type: application/json``: a cross-site form can
  only send simple content types, so this plus the bearer token (never a
  cookie) leaves no room for CSRF.
- With an API token, ``/api/*`` and ``/metrics`` need ``Authorization:
  Bearer <token>``; ``/api/health`` without it answers only ``{"status":
  "ok"}``, for load balancers.
- Bodies are cut off at the limit while they arrive (413), not after.

``/ws/worker`` is exempt from the Host check: workers dial the scheduler by
whatever name reaches it, and the handshake has its own checks (worker
token, and no browser Origin).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from scheduler.access import bearer, host_allowed, same

log = Logger()

STATE_CHANGING = {b"POST", b"PUT", b"PATCH", b"DELETE"}


class LimitedRequest(Request):
    """A request that stops keeping its body past ``max_body`` bytes."""

    max_body = 1024 * 1024

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.body_too_large = False
        self._received = 0

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


def _reply(request: Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps({"error": message}).encode("utf-8")


class Guard(Resource):
    isLeaf = True

    def __init__(self, inner: IResource, *, allowed_hosts: set[str], api_token: str | None, max_body: int) -> None:
        super().__init__()
        self._inner = inner
        self.allowed_hosts = allowed_hosts
        self._token = api_token
        self.max_body = max_body

    def render(self, request: Request) -> Any:
        problem = self._check(request)
        if problem is not None:
            status, message = problem
            return _reply(request, status, message)
        if request.path == b"/api/health" and self._token is not None and not self._authorised(request):
            return _reply_ok(request)
        return self._inner.render(request)

    def _check(self, request: Request) -> tuple[int, str] | None:
        path = request.path
        if path == b"/ws/worker":
            return None
        host = request.getHeader(b"host")
        if not host_allowed(host, self.allowed_hosts):
            shown = (host or b"").decode("latin-1")[:100]
            log.warn("refused a request with Host {host!r} (not in --allowed-hosts)", host=shown)
            return 403, f"Host '{shown}' is not allowed here; start the scheduler with --allowed-hosts {shown.rsplit(':', 1)[0] or '<name>'}"
        if getattr(request, "body_too_large", False):
            return 413, f"request body is larger than {self.max_body} bytes"
        if request.method in STATE_CHANGING:
            origin = request.getHeader(b"origin")
            if origin is not None and not host_allowed(urlsplit(origin.decode("latin-1")).netloc, self.allowed_hosts):
                return 403, "cross-origin requests that change state are not allowed"
            if request.method == b"POST":
                kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
                if kind != b"application/json":
                    return 415, "send Content-Type: application/json (an empty body is fine where none is needed)"
        needs_token = (path.startswith(b"/api/") and path != b"/api/health") or path == b"/metrics"
        if needs_token and self._token is not None and not self._authorised(request):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="scheduler"')
            return 401, "missing or wrong API token: send Authorization: Bearer <token>"
        return None

    def _authorised(self, request: Request) -> bool:
        token = bearer(request.getHeader(b"authorization"))
        return token is not None and self._token is not None and same(token, self._token)


def _reply_ok(request: Request) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    return b'{"status": "ok"}'
