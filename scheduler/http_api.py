"""The HTTP side on port 3000: REST API, dashboard and the workers' WebSocket."""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from scheduler import __version__
from scheduler.state import TaskState


def _json(request: IRequest, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode("utf-8")


class SchedulerHTTP:
    app = Klein()

    def __init__(self, state: TaskState) -> None:
        self._state = state

    @app.route("/api/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        return _json(
            request,
            200,
            {"status": "ok", "version": __version__, "tasks": len(self._state.book)},
        )
