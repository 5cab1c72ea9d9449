"""The cron tick: once a second, on the second, hand due fires onwards."""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from scheduler.engine import CronEngine, Fire

log = Logger()


class CronTicker(Service):
    """Calls ``on_fires`` with what the engine says is due, every second.

    The first tick is delayed to the next whole second so that every tick
    lands just after a scheduled second turns; ``lag`` records how late the
    last tick ran, for the metrics.
    """

    def __init__(
        self,
        clock: IReactorTime,
        engine: CronEngine,
        on_fires: Callable[[list[Fire]], None],
        interval: float = 1.0,
    ) -> None:
        self._clock = clock
        self._engine = engine
        self._on_fires = on_fires
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._start_call: IDelayedCall | None = None
        self.lag = 0.0
        self.ticks = 0

    def startService(self) -> None:
        super().startService()
        now = self._clock.seconds()
        delay = math.floor(now) + 1 - now
        self._start_call = self._clock.callLater(delay, self._begin)

    def _begin(self) -> None:
        self._start_call = None
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        if self._start_call is not None and self._start_call.active():
            self._start_call.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        super().stopService()

    def tick(self) -> None:
        # Nothing may escape: an exception would stop the LoopingCall for good.
        try:
            now = self._clock.seconds()
            self.lag = max(0.0, now - math.floor(now))
            self.ticks += 1
            skipped_before = self._engine.skipped
            fires = self._engine.due(now)
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
