"""The dashboard's live feed: Server-Sent Events of tasks, jobs and workers.

Served as ``text/event-stream`` on ``GET /api/events``.  The dashboard reads
it with ``fetch`` rather than ``EventSource`` so that it can send the API
token in the Authorization header.  Output chunks go only to clients that
asked for that job (``?job=<id>``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Request

log = Logger()

# A client this far behind is dropped rather than buffered without end.
MAX_BACKLOG = 4 * 1024 * 1024


@dataclass(eq=False)
class _Subscriber:
    request: Request
    job: int | None
    # The tokens-file line it subscribed with, if any: closed when that line is revoked.
    owner: object | None = None


class EventHub:
    def __init__(self, clock: IReactorTime, keepalive: float = 15.0, limit: int = 100) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._limit = limit
        self._keepalive = LoopingCall(self._ping)
        self._keepalive.clock = clock
        self._interval = keepalive

    def start(self) -> None:
        self._keepalive.start(self._interval, now=False)

    def stop(self) -> None:
        if self._keepalive.running:
            self._keepalive.stop()
        for subscriber in list(self._subscribers):
            subscriber.request.finish()
        self._subscribers.clear()

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, request: Request, job: int | None, owner: object | None = None) -> bool:
        if len(self._subscribers) >= self._limit:
            return False
        subscriber = _Subscriber(request, job, owner)
        self._subscribers.add(subscriber)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.write(b": connected\n\n")
        request.notifyFinish().addBoth(lambda _: self._subscribers.discard(subscriber))
        return True

    def watched_jobs(self) -> set[int]:
        """The jobs whose output some subscriber asked for (``?job=``)."""
        return {each.job for each in self._subscribers if each.job is not None}

    def close_where(self, revoked: Callable[[object], bool]) -> int:
        """Finish the streams whose owner *revoked* says is no longer valid; how many."""
        closing = [each for each in self._subscribers if each.owner is not None and revoked(each.owner)]
        for subscriber in closing:
            self._subscribers.discard(subscriber)
            subscriber.request.finish()
        return len(closing)

    def publish(self, event: str, data: dict[str, Any], *, job: int | None = None) -> None:
        if not self._subscribers:
            return
        frame = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
        for subscriber in list(self._subscribers):
            if job is not None and subscriber.job != job:
                continue
            self._write(subscriber, frame)

    def _ping(self) -> None:
        for subscriber in list(self._subscribers):
            self._write(subscriber, b": keepalive\n\n")

    def _write(self, subscriber: _Subscriber, frame: bytes) -> None:
        transport = subscriber.request.channel.transport if subscriber.request.channel else None
        backlog = len(getattr(transport, "dataBuffer", b"")) + getattr(transport, "_tempDataLen", 0)
        if backlog > MAX_BACKLOG:
            log.warn("dropping a live-feed client that fell {size} bytes behind", size=backlog)
            self._subscribers.discard(subscriber)
            subscriber.request.finish()
            return
        try:
            subscriber.request.write(frame)
        except Exception:
            self._subscribers.discard(subscriber)
