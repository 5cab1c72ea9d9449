"""Timers by key: at most one pending call per key, all cancelled at once on stop."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class KeyedTimers:
    """Pending calls by key (a job id, say), on an injectable clock."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._calls: dict[int, IDelayedCall] = {}

    def __contains__(self, key: int) -> bool:
        return key in self._calls

    def start(self, key: int, delay: float, call: Callable[..., object], *args: object) -> None:
        """Call ``call(*args)`` after *delay*, unless *key* already has a call pending."""
        if key in self._calls:
            return

        def run() -> None:
            del self._calls[key]
            call(*args)

        self._calls[key] = self._clock.callLater(delay, run)

    def cancel(self, key: int) -> None:
        pending = self._calls.pop(key, None)
        if pending is not None and pending.active():
            pending.cancel()

    def stop(self) -> None:
        for pending in self._calls.values():
            if pending.active():
                pending.cancel()
        self._calls.clear()
