"""Who may fire cron: the leader lease with an epoch, and the one-node case.

Several scheduler nodes on one PostgreSQL elect a leader through one lease
row (``job_history/postgres.py`` stores it).  Every ``renew_every`` seconds
a node asks the store to renew the lease it holds, or to take it: the store
hands it over (epoch + 1) only when the lease has expired by the
*database's* clock, or at once when its holder's database session is gone
(a crashed node's session ends with it).  A node leads from the reply that
names it until its own deadline: the moment it asked plus what the lease
had left then, measured on this node's monotonic clock, so that a node
whose renewals stop (a frozen process, a lost database) stops firing before
the lease can pass to another.  Nothing here knows SQL or threads: the
store is a protocol, and time comes from the injected clock.

In embedded mode (SQLite, one process) the one node always leads, in epoch
``EMBEDDED_EPOCH``: :class:`SoleLeader`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

# The epoch of a node that never needs an election (embedded mode): it took
# the lease once, at start.
EMBEDDED_EPOCH = 1

# Defaults: a lease of a few seconds, renewed about every second.
LEASE_SECONDS = 5.0
RENEW_EVERY = 1.0


@dataclass(frozen=True, slots=True)
class LeaseState:
    """The lease row after a step: its holder (None: nobody yet), its epoch,
    the seconds it had left by the database's clock, and since when (Unix
    time) its holder has held it."""

    holder: str | None
    epoch: int
    left: float
    since: float | None = None


class LeaseStore(Protocol):
    """Where the lease row lives (``PostgresLeaseStore``)."""

    def attempt(self, node: str, epoch: int | None, lease: float) -> Deferred[LeaseState]:
        """Renew the lease if *node* holds it in *epoch*; else take it (epoch + 1) if it
        has expired or its holder's session is gone; else leave it.  Either way, the row after."""


class LeaseCounts:
    """What the lease has done on this node, for /metrics."""

    def __init__(self) -> None:
        self.steps = 0  # statements sent to the lease store (what leadership costs the database)
        self.elections = 0  # leases taken (each a new epoch)
        self.renewals = 0
        self.lost = 0  # leases this node held and lost (deadline passed, or another took it)
        self.failures = 0  # steps the store could not do


class Leadership(Protocol):
    """What the service asks of whichever decides who fires."""

    node: str
    listeners: list[Callable[[bool], None]]
    counts: LeaseCounts

    def leading(self) -> bool: ...

    @property
    def epoch(self) -> int: ...

    @property
    def leader(self) -> str | None: ...

    @property
    def since(self) -> float | None:
        """Since when (Unix time) the leader has led; None while unknown."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class SoleLeader:
    """Embedded mode: the one node leads from its start, in ``EMBEDDED_EPOCH``."""

    def __init__(self, node: str, clock: IReactorTime | None = None) -> None:
        self.node = node
        self.listeners: list[Callable[[bool], None]] = []
        self.counts = LeaseCounts()
        self._started = False
        self._clock = clock
        self._since: float | None = None

    def leading(self) -> bool:
        return True

    @property
    def epoch(self) -> int:
        return EMBEDDED_EPOCH

    @property
    def leader(self) -> str | None:
        return self.node

    @property
    def since(self) -> float | None:
        return self._since

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._since = self._clock.seconds() if self._clock is not None else None
            self.counts.elections = 1
            for listener in list(self.listeners):
                listener(True)

    def stop(self) -> None:
        pass


class LeaderLease:
    """This node's view of the lease, renewed on a loop (a ``Leadership``).

    *clock* schedules the steps; *monotonic* (default: the clock) measures
    the deadline.  ``listeners`` hear ``True`` when this node starts leading
    and ``False`` when it stops.
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: LeaseStore,
        node: str,
        *,
        lease: float = LEASE_SECONDS,
        renew_every: float = RENEW_EVERY,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        if renew_every >= lease:
            raise ValueError(f"the lease ({lease} s) must be longer than the renewal period ({renew_every} s)")
        self._clock = clock
        self._store = store
        self.node = node
        self.lease = lease
        self.renew_every = renew_every
        self._monotonic = monotonic or clock.seconds
        self.listeners: list[Callable[[bool], None]] = []
        self.counts = LeaseCounts()
        # The epoch this node holds, and until when (monotonic); None: not leading.
        self._held: int | None = None
        self._deadline = 0.0
        self._expiry: IDelayedCall | None = None
        self._asking = False
        self._loop: LoopingCall | None = None
        # The lease row as last seen, whoever holds it.
        self.last_seen: LeaseState | None = None

    # -- what the rest asks ---------------------------------------------------

    def leading(self) -> bool:
        """Does this node lead now?  False from its deadline on, renewed or not."""
        return self._held is not None and self._monotonic() < self._deadline

    @property
    def epoch(self) -> int:
        """The epoch this node holds, else the last one seen (0: none seen)."""
        if self._held is not None:
            return self._held
        return self.last_seen.epoch if self.last_seen is not None else 0

    @property
    def leader(self) -> str | None:
        """Who leads, as far as this node knows."""
        if self.leading():
            return self.node
        seen = self.last_seen
        if seen is None or seen.holder == self.node:
            return None
        return seen.holder

    @property
    def since(self) -> float | None:
        seen = self.last_seen
        return seen.since if seen is not None and seen.holder == self.leader else None

    # -- the loop -------------------------------------------------------------

    def start(self) -> None:
        self._loop = LoopingCall(self.step)
        self._loop.clock = self._clock
        self._loop.start(self.renew_every, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._lose("the node is stopping", quiet=True)

    def step(self) -> None:
        """Ask the store once (never twice at a time: a slow database skips steps)."""
        if self._asking:
            return
        self._asking = True
        asked_at = self._monotonic()
        held = self._held if self.leading() else None
        self.counts.steps += 1
        try:
            answer = self._store.attempt(self.node, held, self.lease)
        except Exception as error:
            self._asking = False
            self._failed(error)
            return
        answer.addCallbacks(self._answered, self._failed_step, callbackArgs=(asked_at, held))

    def _failed_step(self, failure: Any) -> None:
        self._asking = False
        self._failed(failure.value)

    def _failed(self, error: BaseException) -> None:
        # The deadline does the rest: no renewal, no leading past it.
        self.counts.failures += 1
        log.warn("leader lease: could not reach the lease: {error}", error=str(error))

    def _answered(self, state: LeaseState, asked_at: float, held: int | None) -> None:
        self._asking = False
        self.last_seen = state
        if state.holder != self.node:
            if self._held is not None:
                self._lose(f"{state.holder} took it in epoch {state.epoch}")
            return
        # Measured from when this node asked: the database counted the lease
        # from a moment after that, so this deadline comes first.
        deadline = asked_at + state.left
        if held is not None and state.epoch == held:
            self.counts.renewals += 1
        else:
            if self._held is not None:
                self._lose(f"epoch {self._held} was replaced by {state.epoch}")
            self.counts.elections += 1
            log.info("leader lease: {node} leads in epoch {epoch}", node=self.node, epoch=state.epoch)
        if deadline <= self._monotonic():
            # An answer that came back too late to lead on.
            if self._held is not None:
                self._lose("the renewal came back after the deadline")
            return
        starting = self._held is None
        self._held = state.epoch
        self._deadline = deadline
        self._arm_expiry()
        if starting:
            self._tell(True)

    def _arm_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = self._clock.callLater(max(0.0, self._deadline - self._monotonic()), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        if self._held is not None and not self.leading():
            self._lose("its deadline passed without a renewal")
        elif self._held is not None:
            # The monotonic clock runs behind the scheduling clock: look again.
            self._arm_expiry()

    def _lose(self, why: str, *, quiet: bool = False) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        if self._held is None:
            return
        (log.info if quiet else log.warn)(
            "leader lease: {node} no longer leads epoch {epoch}: {why}", node=self.node, epoch=self._held, why=why
        )
        self._held = None
        if not quiet:
            self.counts.lost += 1
        self._tell(False)

    def _tell(self, leading: bool) -> None:
        for listener in list(self.listeners):
            try:
                listener(leading)
            except Exception:
                log.failure("a leader lease listener failed")
