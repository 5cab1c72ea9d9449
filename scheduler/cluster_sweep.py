"""The leader's sweep: what becomes of the jobs of a node that went silent (``--db``).

Every node manages its own jobs (the jobs table's ``node``): it records
their ends, and its lost timers end them when their worker stays away.  A
node that dies takes those timers with it.  Its workers dial another node,
which takes their running jobs over at their hello (``Dispatcher.take_over``);
what is left is for the leader to settle, every ``SWEEP_EVERY`` seconds:

- a node whose heartbeat (``scheduler_nodes.last_seen``, written with every
  lease step) is older than ``--lost-after`` is silent;
- its running jobs end ``lost`` (their worker did not reach another node in
  that time either), each only if its row still names that node, so a job
  taken over meanwhile is left alone; alerts and retries follow as for any
  end (``ended``);
- its queued jobs go back to nobody's, and the nodes are told (NOTIFY
  ``jobs``), so that one with room claims them.

The sweep also arms the retries owed for jobs that other nodes ended
(retries are the leader's: ``scheduler.job_retry``): its first step after
this node starts leading asks for every job whose retry is owed, each later
one for the jobs that ended badly since the last, a little overlap
included, since their nodes' clocks and commits are not this node's.

The store does the deciding queries on the database's clock; this module
decides when to ask, what to tell whom, and keeps going whatever fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from scheduler.jobs import Job

log = Logger()

# Seconds between two sweeps: a second or two after --lost-after is soon
# enough, and at two queries a sweep the leader asks about one a second.
SWEEP_EVERY = 2.0
# Seconds of overlap when asking for jobs ended elsewhere since the last
# sweep: the nodes' clocks differ a little, and a record commits a little
# after its end.  Arming a retry twice is harmless (one timer per job).
ENDED_OVERLAP = 30.0


class SweepStore(Protocol):
    """What the sweep asks of the job history (``PostgresJobStore``)."""

    def silent_nodes(self, lost_after: float) -> Deferred[list[str]]:
        """Other nodes with active jobs whose heartbeat is older than *lost_after* s."""

    def release(self, node: str, now: float, reason: str) -> Deferred[tuple[list[Job], int]]:
        """End *node*'s running jobs lost and offer its queued ones: the jobs ended, and how many offered."""

    def unretried_since(self, since: float) -> Deferred[list[Job]]:
        """Each task's newest job if it ended badly at or after *since* (on its node's clock)."""


def silent_reason(node: str, lost_after: float) -> str:
    return (
        f"its node {node} went silent (no heartbeat for {lost_after:g}s) "
        "and its worker did not bring it to another node"
    )


class ClusterSweep:
    """The leader's timer over the jobs of silent nodes; idle while this node follows."""

    def __init__(
        self,
        clock: IReactorTime,
        store: SweepStore,
        *,
        leading: Callable[[], bool],
        lost_after: float,
        ended: Callable[[Job], None],
        retry: Callable[[list[Job]], None],
        every: float = SWEEP_EVERY,
    ) -> None:
        self._clock = clock
        self._store = store
        self._leading = leading
        self.lost_after = lost_after
        self._ended = ended
        self._retry = retry
        self.every = every
        self._call: IDelayedCall | None = None
        self._stopped = True
        self._running = False
        # Until when (this node's clock) jobs ended elsewhere were looked at.
        self._checked_until: float | None = None
        # For the metrics: jobs ended lost, queued jobs offered again.
        self.lost = 0
        self.offered = 0

    def start(self) -> None:
        self._stopped = False
        if self._call is None:
            self._call = self._clock.callLater(self.every, self._tick)

    def stop(self) -> None:
        self._stopped = True
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def stopped_leading(self) -> None:
        """The next time this node leads, it looks at the ends from then on."""
        self._checked_until = None

    def _tick(self) -> None:
        self._call = None
        self.step().addCallback(self._again)

    def _again(self, _: object) -> None:
        if not self._stopped and self._call is None:
            self._call = self._clock.callLater(self.every, self._tick)

    def step(self) -> Deferred[None]:
        """One sweep, if this node leads (never two at once); fires when done, never fails."""
        if self._running or not self._leading():
            return succeed(None)
        self._running = True
        return Deferred.fromCoroutine(self._sweep()).addBoth(self._swept)

    def _swept(self, result: object) -> None:
        self._running = False
        if isinstance(result, Failure):
            log.failure("the sweep of silent nodes' jobs failed; trying again in {every:g}s", result, every=self.every)

    async def _sweep(self) -> None:
        now = self._clock.seconds()
        for node in await self._store.silent_nodes(self.lost_after):
            if not self._leading():
                return
            lost, offered = await self._store.release(node, self._clock.seconds(), silent_reason(node, self.lost_after))
            self.lost += len(lost)
            self.offered += offered
            if lost or offered:
                log.warn(
                    "node {node} is silent: {lost} running job(s) of it ended lost, {offered} queued offered again",
                    node=node,
                    lost=len(lost),
                    offered=offered,
                )
            for job in lost:
                try:
                    self._ended(job)
                except Exception:
                    log.failure("settling job {job_id} of silent node {node}", job_id=job.id, node=node)
        if not self._leading():
            return
        # Since its start of leading, every end: the retries its predecessor owed.
        since = self._checked_until - ENDED_OVERLAP if self._checked_until is not None else 0.0
        ended = await self._store.unretried_since(since)
        self._checked_until = now
        if ended and self._leading():
            self._retry(ended)
