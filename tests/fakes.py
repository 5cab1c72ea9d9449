"""Test doubles for the worker protocol's two ends."""

from __future__ import annotations

from typing import Any, cast

from scheduler.worker_messages import decode, encode


class FakeLink:
    """A worker connection in memory (``scheduler.worker_messages.Link``).

    Either end can use it: the dispatcher's link to a worker, or the agent's
    link to the scheduler.  Messages go through the wire's own encoding, so
    tests see exactly what a peer would receive.
    """

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closes: list[str] = []

    def send(self, type: str, /, **fields: Any) -> None:
        self.sent.append(cast(dict[str, Any], decode(encode(type, **fields))))

    def close(self, reason: str) -> None:
        self.closes.append(reason)

    @property
    def closed(self) -> str | None:
        """The reason of the last close asked for, or None."""
        return self.closes[-1] if self.closes else None

    def take(self) -> list[dict[str, Any]]:
        """What was sent since the last take."""
        sent, self.sent = self.sent, []
        return sent

    def types(self) -> list[str]:
        return [message["type"] for message in self.sent]

    def runs(self) -> list[int]:
        """The jobs sent in ``run`` messages, in order."""
        return [message["job"] for message in self.sent if message["type"] == "run"]
