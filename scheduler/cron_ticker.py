"""The cron tick: once a second, on the second, hand due fires onwards."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice

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

    A second with many fires (the top of the hour) gets a longer lead:
    ``lead_per_fire`` seconds more for each fire due then, up to
    ``max_lead``, so that recording, placing and sending all of them ends
    before the second rather than seconds after it (docs/performance.md,
    "The top-of-the-hour herd").  What a tick hands on goes to ``on_fires``
    ``fires_per_turn`` at a time, one reactor turn each, in order, so a herd
    neither holds the reactor for seconds nor keeps its first ``run``
    messages back until its last job is recorded.

    Each tick also compares how far the wall clock moved since the last one
    with how far *monotonic* did.  A stall (a blocked reactor) moves both,
    and its late tick hands on what it owes.  A step forward (the clock set,
    a suspended VM waking) moves only the wall clock: the times it skipped
    are downtime, handed to ``on_downtime(since, now)`` (each task's missed
    policy) rather than fired in a burst.  A step back needs nothing: the
    engine hands out no time twice, and the next tick comes when the wall
    clock passes the second it is aimed at.  Either is logged once, with its
    size, and told to ``step_listeners`` (the metrics).  Without
    *monotonic* (tests on ``task.Clock``) the clock is its own reference and
    no step is ever seen.
    """

    #: Seconds a wall clock step must exceed to be one.  A step of a second
    #: or two (chrony's default ``makestep`` threshold is 1 s) still fires
    #: the second or two it passes, as a late tick does, rather than lose a
    #: run to a routine time correction; anything larger is a clock set or a
    #: suspend, and handled like downtime.  Lateness alone never counts: the
    #: comparison is against the monotonic clock, so a tick 0.5 s or 30 s
    #: late from a busy reactor still fires what it owes.
    STEP = 2.0

    def __init__(
        self,
        clock: IReactorTime,
        engine: CronEngine,
        on_fires: Callable[[list[Fire]], None],
        interval: float = 1.0,
        lead: float = 0.0,
        *,
        monotonic: Callable[[], float] | None = None,
        on_downtime: Callable[[float, float], None] = lambda since, now: None,
        lead_per_fire: float = 0.0,
        max_lead: float = 0.0,
        fires_per_turn: int | None = None,
    ) -> None:
        if not 0 <= lead < interval:
            raise ValueError(f"lead must be at least 0 and less than the interval, got {lead}")
        self._lead_per_fire = lead_per_fire
        self._max_lead = max(max_lead, lead)
        self._fires_per_turn = fires_per_turn
        # Each tick's fires not yet passed to on_fires (fires_per_turn).
        self._pending: deque[Iterator[Fire]] = deque()
        self._draining: IDelayedCall | None = None
        # When the next tick was planned to run (for lag).
        self._planned = 0.0
        self._clock = clock
        self._engine = engine
        self._on_fires = on_fires
        self._interval = interval
        self._lead = lead
        self._call: IDelayedCall | None = None
        self._second = 0.0  # the second the next tick serves
        self.lag = 0.0
        self.ticks = 0
        self._monotonic = monotonic if monotonic is not None else clock.seconds
        self._on_downtime = on_downtime
        # (wall, monotonic) at the last tick (or the start).
        self._reference = (0.0, 0.0)
        self.step_listeners: list[Callable[[str, float], None]] = []
        #: The last step seen: its direction, size in seconds and wall time.
        self.last_step: tuple[str, float, float] | None = None

    def startService(self) -> None:
        super().startService()
        self._reference = (self._clock.seconds(), self._monotonic())
        self._schedule(self._clock.seconds())

    def stopService(self) -> None:
        for call in (self._call, self._draining):
            if call is not None and call.active():
                call.cancel()
        self._call = self._draining = None
        super().stopService()

    def _schedule(self, now: float) -> None:
        # The second after the one just served, or, after a stall (a blocked
        # reactor, a suspended VM), the first one still ahead: the late tick
        # has handed on every time missed, so no burst of ticks follows.
        second = self._second + self._interval
        if second - self._lead <= now:
            second = (math.floor((now + self._lead) / self._interval) + 1) * self._interval
        at = second - self._lead
        herd = self._herd()
        if herd is not None and herd[1] < at:
            # A herd's tick comes first: it hands on everything due up to
            # its second (nothing is due before it), early.
            second, at = herd[0], max(now, herd[1])
        self._second = second
        self._planned = at
        self._call = self._clock.callLater(at - now, self._run)

    def _herd(self) -> tuple[float, float] | None:
        """The next second anything is due at, and when its tick should run, if its lead is longer than usual."""
        if not self._lead_per_fire:
            return None
        upcoming = self._engine.next_due()
        if upcoming is None:
            return None
        lead = min(self._max_lead, self._lead + self._engine.count_due(upcoming) * self._lead_per_fire)
        return (upcoming, upcoming - lead) if lead > self._lead else None

    def _run(self) -> None:
        self._call = None
        now = self._clock.seconds()
        self.lag = max(0.0, now - self._planned)
        step = self._step(now)
        if step > self.STEP:
            self._skip(now - step, now)
        else:
            # Late past the second itself (a stall), everything due by now.
            self.tick(max(self._second, now))
        if self.running:
            # From the time the tick's work ended, not began: callLater
            # counts from now, and a tick of thousands of fires takes a while.
            self._schedule(self._clock.seconds())

    def _step(self, now: float) -> float:
        """How far the wall clock moved since the last tick beyond the monotonic clock; logs a step."""
        wall, steady = self._reference
        mono = self._monotonic()
        self._reference = (now, mono)
        step = (now - wall) - (mono - steady)
        if abs(step) <= self.STEP:
            return step
        direction = "forward" if step > 0 else "back"
        self.last_step = (direction, abs(step), now)
        if step > 0:
            log.warn(
                "the clock stepped forward {size:.1f}s: the fire times it skipped count as downtime "
                "(each task's missed policy)",
                size=step,
            )
        else:
            log.warn(
                "the clock stepped back {size:.1f}s: no scheduled time runs twice; "
                "firing resumes as the clock passes the last second fired",
                size=-step,
            )
        for listener in self.step_listeners:
            try:
                listener(direction, abs(step))
            except Exception:
                log.failure("clock step listener {listener!r} failed", listener=listener)
        return step

    def _skip(self, owed: float, now: float) -> None:
        """What was due by *owed* (the wall time had the clock not stepped) fires; (owed, now] is downtime."""
        try:
            if owed > self._engine.last_tick:
                self.tick(owed)
            since = max(owed, self._engine.last_tick)
            self._engine.skip_to(now)
            self._on_downtime(since, now)
        except Exception:
            log.failure("cron tick failed; ticking on")

    def tick(self, second: float) -> None:
        """Hand on what is due up to *second*.  Never raises, so ticking goes on."""
        try:
            self.ticks += 1
            skipped_before = self._engine.skipped
            if self._fires_per_turn is None:
                fires = self._engine.due(second)
            else:
                # Made as they are handed on, a batch per turn.
                self._pending.append(self._engine.due_lazily(second))
            if self._engine.skipped != skipped_before:
                log.warn(
                    "clock jumped: skipped {count} fire times older than {window}s",
                    count=self._engine.skipped - skipped_before,
                    window=self._engine.max_catch_up,
                )
            if self._fires_per_turn is None:
                if fires:
                    self._on_fires(fires)
            elif self._draining is None:
                self._drain()
        except Exception:
            log.failure("cron tick failed; ticking on")

    def _drain(self) -> None:
        """Hand on the next batch of the pending fires, in order; book a later turn for the rest."""
        self._draining = None
        assert self._fires_per_turn is not None
        pending = self._pending
        batch: list[Fire] = []
        while pending and len(batch) < self._fires_per_turn:
            taken = list(islice(pending[0], self._fires_per_turn - len(batch)))
            if len(taken) < self._fires_per_turn - len(batch):
                pending.popleft()  # that tick's fires are all out
            batch.extend(taken)
        if pending:
            self._draining = self._clock.callLater(0, self._drain)
        if not batch:
            return
        try:
            self._on_fires(batch)
        except Exception:
            log.failure("cron tick failed; ticking on")
