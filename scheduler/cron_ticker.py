"""The cron tick: once a second, on the second, hand due fires onwards."""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from scheduler.cron_engine import CronEngine, Fire

log = Logger()


class CronTicker(Service):
    """Calls ``on_fires`` with what the engine says is due, every second.

    Each tick is aimed at a whole second (a multiple of ``interval``) on its
    own, so one late tick does not make the next late, and runs ``lead``
    seconds ahead of it, handing on what is due *at* that second.  The lead
    hides the time a burst of fires takes to record, place and send, and the
    reactor's wake-up latency: each ``run`` carries the delay left until its
    second, which the worker waits, so nothing starts early and a burst's
    jobs start on the second rather than some milliseconds after it.
    ``lag`` records how late the last tick ran after its planned time, for
    the metrics.
    """

    def __init__(
        self,
        clock: IReactorTime,
        engine: CronEngine,
        on_fires: Callable[[list[Fire]], None],
        interval: float = 1.0,
        lead: float = 0.0,
    ) -> None:
        if not 0 <= lead < interval:
            raise ValueError(f"lead must be at least 0 and less than the interval, got {lead}")
        self._clock = clock
        self._engine = engine
        self._on_fires = on_fires
        self._interval = interval
        self._lead = lead
        self._call: IDelayedCall | None = None
        self._second = 0.0  # the second the next tick serves
        self.lag = 0.0
        self.ticks = 0

    def startService(self) -> None:
        super().startService()
        self._schedule(self._clock.seconds())

    def stopService(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        super().stopService()

    def _schedule(self, now: float) -> None:
        # The second after the one just served, or, after a stall (a blocked
        # reactor, a suspended VM), the first one still ahead: the late tick
        # has handed on every time missed, so no burst of ticks follows.
        second = self._second + self._interval
        if second - self._lead <= now:
            second = (math.floor((now + self._lead) / self._interval) + 1) * self._interval
        self._second = second
        self._call = self._clock.callLater(second - self._lead - now, self._run)

    def _run(self) -> None:
        self._call = None
        now = self._clock.seconds()
        self.lag = max(0.0, now - (self._second - self._lead))
        # Late past the second itself (a stall), everything due by now.
        self.tick(max(self._second, now))
        if self.running:
            # From the time the tick's work ended, not began: callLater
            # counts from now, and a tick of thousands of fires takes a while.
            self._schedule(self._clock.seconds())

    def tick(self, second: float) -> None:
        """Hand on what is due up to *second*.  Never raises, so ticking goes on."""
        try:
            self.ticks += 1
            skipped_before = self._engine.skipped
            fires = self._engine.due(second)
            if self._engine.skipped != skipped_before:
                log.warn(
                    "clock jumped: skipped {count} fire times older than {window}s",
                    count=self._engine.skipped - skipped_before,
                    window=self._engine.max_catch_up,
                )
            if fires:
                self._on_fires(fires)
        except Exception:
            log.failure("cron tick failed; ticking on")
