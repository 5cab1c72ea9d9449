"""The reactor lag probe: how late the reactor runs a timer.

Everything the scheduler does runs on one thread, so a turn that takes
long (a big JSON dump, a slow listener, a burst of requests) delays every
other timer and message by as much.  The probe asks for a call every
INTERVAL seconds and reports how late each one came: that lateness is
the longest turn the reactor took meanwhile, give or take one interval.
It is exported in /metrics as ``scheduler_reactor_lag_seconds`` (a
histogram, scheduler/metrics.py), which the benchmarks read too.

A chain of ``callLater`` rather than a LoopingCall: a LoopingCall keeps
to a fixed grid and skips the slots it missed, so the time each call was
due is not at hand; here every call knows its own.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

# Often enough to catch a 20 ms stall with little error, rarely enough to
# cost nothing that shows (about 20 µs of CPU per call).
INTERVAL = 0.05


class ReactorLag(Service):
    """Calls *observe* with the lateness (seconds, never negative) of a
    timer due every *interval* seconds on *clock*, while running."""

    def __init__(self, clock: IReactorTime, observe: Callable[[float], None], interval: float = INTERVAL) -> None:
        self._clock = clock
        self._observe = observe
        self._interval = interval
        self._call: IDelayedCall | None = None
        self._due = 0.0

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._measure)

    def _measure(self) -> None:
        lag = max(0.0, self._clock.seconds() - self._due)
        # Scheduled first: an observer that raises must not end the probe.
        self._schedule()
        try:
            self._observe(lag)
        except Exception:
            log.failure("the reactor lag probe's observer failed")
