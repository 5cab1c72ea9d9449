"""Dispatch on every node (``--db``): queued jobs offered to the cluster and claimed.

A node places a queued job on its own workers when one of them can take
it.  When none can (no eligible worker with a free slot, and no room to
wait here: below), the dispatcher lets the job go and :class:`JobClaims`
offers it: its record is written
with no managing node (``node`` NULL) and a "jobs" notification is sent in
the same transaction (``scheduler.cluster_events``).  Any node with free
slots claims offered jobs it can run, oldest first, with ``FOR UPDATE SKIP
LOCKED``, so two nodes claiming at once never take the same job; the
offering node may claim its own job back.  A claimed job joins the
claimer's job book and queue as a restored one does, and is placed.

A node keeps up to one job per slot of its own workers waiting for them
(``Dispatcher._keeps``): a slot that frees takes its next job at once, not
after a round trip to the database; only the rest is offered, and nothing
its workers can run while no other live node has a worker (the nodes'
heartbeats, read every ``PEERS_EVERY``).  It claims as much: free slots,
and the room left in that backlog.

When a node claims: on a "jobs" notification; after each (re)connection
of its listener (a notification is not durable); when a worker connects,
or a slot frees while offers may be left; and on a slow sweep, which asks
the database only when this node has room.

A cancel for a job this node does not manage goes through the database
(:meth:`JobClaims.cancel`): an offered job is cancelled there directly; a
job another node manages gets its ``cancel_requested_at`` and a "cancels"
notification naming that node, whose listener cancels it as if asked
through its own API.

What holds a job back (a cap, ``overlap: queue``, jitter) is decided
here: a held job stays here until it may start, then is placed or
offered.  For ``overlap``, a job of a task this node let go counts as the
task's run going on until this node hears it ended: the claiming node
tells ("jobs", ``ended``) once the end is committed, and the sweep asks
the database about the rest.  Caps count one node's jobs, not the
cluster's (ARCHITECTURE.md, "Dispatch on every node").  The queue limit
counts this node's queue and the offered jobs waiting in the cluster
(``offered_waiting``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from scheduler.dispatch import JobNotFound
from scheduler.job_book import JobBook
from scheduler.job_history.database import Fenced, FireTaken
from scheduler.jobs import Job
from scheduler.worker_registry import Worker

log = Logger()

#: What a cancel of a job managed elsewhere came to: cancelled in the
#: database (it was offered), asked of its node, or the job had finished.
CancelOutcome = Literal["cancelled", "asked", "finished"]


class ClaimStore(Protocol):
    """The cluster's side of the job history (``PostgresJobStore``)."""

    def offer(self, job: Job) -> Deferred[None]:
        """Record queued *job* as managed by no node and notify "jobs", in one transaction."""

    def claim(self, targets: Sequence[str], limit: int) -> Deferred[list[Job]]:
        """Take for this node up to *limit* offered jobs of *targets*, oldest first."""

    def cancel_elsewhere(self, job_id: int, at: float, reason: str) -> Deferred[tuple[str, str | None]]:
        """Cancel an offered job, or ask its managing node (notify "cancels"): what was done, and whom."""

    def cancels_owed(self) -> Deferred[list[int]]:
        """The active jobs this node manages whose cancel was asked for."""

    def still_active(self, job_ids: Sequence[int]) -> Deferred[list[int]]:
        """Which of *job_ids* are queued or running."""

    def offered_count(self) -> Deferred[int]:
        """How many offered jobs wait for a node to claim them."""

    def notify_ended(self, job_ids: Sequence[int]) -> Deferred[None]:
        """Tell the other nodes ("jobs", ``ended``) that these jobs ended (once their ends are committed)."""


#: Every node's name, address, workers and last heartbeat (``PostgresLeaseStore.nodes``).
NodeRows = list[tuple[str, str, int, float]]


class Claimant(Protocol):
    """What the claims ask of this node's dispatcher (``Dispatcher``)."""

    jobs: JobBook

    def claimable(self) -> tuple[list[str], int, int]: ...

    def pump(self) -> None: ...

    def take(self, jobs: Iterable[Job]) -> None: ...

    def ended_elsewhere(self, job_ids: Iterable[int]) -> None: ...

    def cancel(self, job_id: int) -> Job: ...


class ClaimCounts:
    """What the claims did on this node, for /metrics."""

    def __init__(self) -> None:
        self.offered = 0  # jobs offered to the cluster (committed)
        self.claimed = 0  # offered jobs this node claimed (its own back included)
        self.claim_queries = 0  # claims asked of the database
        self.cancels_relayed = 0  # cancels asked of another node


class JobClaims:
    """Offers, claims and cancels across the nodes, for one node's dispatcher."""

    #: Seconds between two sweeps (a claim, if this node has a free slot):
    #: what a lost notification or a failed offer costs at most.
    SWEEP = 1.0
    #: Seconds before a failed offer is tried again (the database is away).
    OFFER_AGAIN = 1.0
    #: Seconds a cancel heard for a job not (yet) here is kept, in case a
    #: claim of it is on its way back.
    EARLY_CANCEL_KEPT = 60.0
    #: The reason recorded on an offered job cancelled through the database.
    CANCELLED_OFFERED = "cancelled before it started"

    #: Seconds between two looks at the other nodes' heartbeats.
    PEERS_EVERY = 2.0
    #: A node whose heartbeat is this much older than the newest is gone.
    PEER_GONE_AFTER = 10.0

    def __init__(
        self,
        clock: IReactorTime,
        store: ClaimStore,
        dispatcher: Claimant,
        node: str,
        *,
        sweep: float = SWEEP,
        peers: Callable[[], Deferred[NodeRows]] | None = None,
        peer_workers: Callable[[float], Deferred[list[str]]] | None = None,
    ) -> None:
        self._clock = clock
        self._store = store
        self._dispatcher = dispatcher
        self.node = node
        self.counts = ClaimCounts()
        # May offered jobs be left that this node could claim?  Set by a
        # notification or a resync; cleared by a claim that found fewer
        # than it asked for.  Slot changes claim only while it is set: a
        # busy node would otherwise query at every job's end.
        self._more = True
        self._call: IDelayedCall | None = None
        # Is the claim asked for by _call only for a slot that freed (wake)?
        self._batched = False
        self._claiming = False
        self._again = False
        self._failing = False
        # Cancels heard for jobs not in this node's book: job id -> when.
        self._early_cancels: dict[int, float] = {}
        # Task jobs this node claimed, until they end (job_ended), and the
        # ends not told yet; a look at the jobs let go under way.
        self._claimed_here: dict[int, int] = {}
        self._ended: list[int] = []
        self._looking = False
        # The offered jobs waiting in the cluster: as last counted, and
        # this node's offers committed since (offered_waiting).
        self._offered_counted = 0
        self._offered_since = 0
        self._counting = False
        # Offers the database refused, to try again: by job id.
        self._offers_again: dict[int, IDelayedCall] = {}
        # Has another live node a worker?  If not, nothing is gained by
        # offering what a worker here can run later (peers: None, assume so).
        self._peers = peers
        self._peer_workers = peer_workers
        # The workers of the other live nodes, as last read (target "all").
        self.workers_elsewhere: tuple[str, ...] = ()
        self.others_have_workers = True
        self._peers_looked_at: float | None = None
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock
        self._sweep_every = sweep

    def start(self) -> None:
        if not self._sweeper.running:
            self._sweeper.start(self._sweep_every, now=False)

    def stop(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        for again in self._offers_again.values():
            # The job's record still names this node: its restart takes it up.
            again.cancel()
        self._offers_again.clear()

    # -- offering ----------------------------------------------------------

    def offer(self, job: Job) -> None:
        """Offer *job*, which the dispatcher has let go (``Dispatcher.offers``)."""
        self._claimed_here.pop(job.id, None)  # claimed, and offered again
        self._store.offer(job).addCallbacks(self._offered, self._not_offered, errbackArgs=(job,))

    def _offered(self, _: object) -> None:
        self.counts.offered += 1
        self._offered_since += 1

    def _not_offered(self, failure: Failure, job: Job) -> None:
        if failure.check(FireTaken, Fenced):
            # Not recorded at all: no run of it goes on anywhere.
            self._dispatcher.ended_elsewhere((job.id,))
            if failure.check(FireTaken):
                log.info(
                    "job {job_id}: its fire {key} is already recorded by another job; not offered",
                    job_id=job.id,
                    key=job.key,
                )
            else:
                log.warn("job {job_id} not offered: {error}", job_id=job.id, error=failure.getErrorMessage())
            return
        # Nobody has it now; the database will be back, or this node's
        # restart finds the job's record as its own (node still this one).
        log.error(
            "could not offer job {job_id} to the cluster ({error}); trying again in {wait:g}s",
            job_id=job.id,
            error=failure.getErrorMessage(),
            wait=self.OFFER_AGAIN,
        )
        again = self._clock.callLater(self.OFFER_AGAIN, self._offer_again, job)
        self._offers_again[job.id] = again

    def _offer_again(self, job: Job) -> None:
        del self._offers_again[job.id]
        self.offer(job)

    # -- the offered jobs waiting in the cluster (the queue limit) ---------

    @property
    def offered_waiting(self) -> int:
        """The offered jobs waiting in the cluster, as last counted, plus
        this node's offers since (``Dispatcher.offered``: the queue limit)."""
        return self._offered_counted + self._offered_since

    def _count_offered(self, *, anyway: bool = False) -> None:
        """Count the offered jobs again (each sweep while there are any; *anyway*: at a resync)."""
        if self._counting or not (anyway or self.offered_waiting):
            return
        self._counting = True
        asked = self._offered_since

        def counted(count: int) -> None:
            # Offers committed before the count are in it.
            self._offered_counted = count
            self._offered_since -= asked

        done = self._store.offered_count().addCallback(counted)
        done.addErrback(
            lambda failure: log.warn(
                "could not count the offered jobs: {error}", error=failure.getErrorMessage()
            )
        )
        done.addBoth(self._counted)

    def _counted(self, _: object) -> None:
        self._counting = False

    # -- claiming ----------------------------------------------------------

    def wake(self, *, batched: bool = False) -> None:
        """Claim soon (once per reactor turn, one claim at a time).

        *batched*: only if there is room for half this node's slots or
        more (a slot that freed: the jobs waiting here fill it meanwhile,
        and a busy node asks the database once per few jobs, not per job).
        """
        if self._claiming:
            self._again = True
        elif self._call is None:
            self._batched = batched
            self._call = self._clock.callLater(0, self._claim)
        else:
            self._batched = self._batched and batched

    def jobs_offered(self, fields: dict[str, Any]) -> None:
        """A "jobs" notification: another node offered jobs, or ended some."""
        ended = fields.get("ended")
        if isinstance(ended, list):
            self._dispatcher.ended_elsewhere(job_id for job_id in ended if isinstance(job_id, int))
        if "targets" in fields:
            self._more = True
            self.wake()

    def worker_changed(self, change: str, worker: Worker) -> None:
        """A worker connected (claim), its slots changed (claim if offers may
        be left), or it left (what waited here for it may be offered now)."""
        if change == "connected":
            self.wake()
        elif self._more and change == "changed":
            self.wake(batched=True)
        elif change == "disconnected":
            self._clock.callLater(0, self._dispatcher.pump)

    def _sweep(self) -> None:
        # Guarded: an exception escaping a LoopingCall stops it for good.
        try:
            if self._dispatcher.claimable()[1] > 0:
                self.wake()
            self._look_elsewhere()
            self._count_offered()
            last = self._peers_looked_at
            if last is None or self._clock.seconds() - last >= self.PEERS_EVERY:
                self._look_at_peers()
        except Exception:
            log.failure("the claims' sweep failed; it runs again in {every:g}s", every=self._sweep_every)

    def _claim(self) -> None:
        self._call = None
        targets, free, slots = self._dispatcher.claimable()
        if free <= 0 or (self._batched and free * 2 < slots):
            return
        self._claiming = True
        self.counts.claim_queries += 1
        claimed = self._store.claim(targets, free)
        claimed.addCallbacks(self._claimed, self._claim_failed, callbackArgs=(free,))
        claimed.addBoth(self._claim_done)

    def _claimed(self, jobs: list[Job], asked: int) -> None:
        self._failing = False
        self._more = len(jobs) >= asked
        if not jobs:
            return
        # Counted, not logged: at 50 fires a second, a line per claim is noise.
        self.counts.claimed += len(jobs)
        for job in jobs:
            if job.task_id is not None:
                self._claimed_here[job.id] = job.task_id
        # Asked to cancel before the claim came back (see cancel_heard).
        cancelled = [job.id for job in jobs if self._early_cancels.pop(job.id, None) is not None]
        self._dispatcher.take(jobs)
        for job_id in cancelled:
            log.info("job {job_id}: cancel asked through another node", job_id=job_id)
            try:
                self._dispatcher.cancel(job_id)
            except JobNotFound:
                pass

    def _claim_failed(self, failure: Failure) -> None:
        if not self._failing:
            # Once per outage: the sweep tries again every second.
            log.warn("could not claim offered jobs: {error}", error=failure.getErrorMessage())
        self._failing = True

    def _claim_done(self, _: object) -> None:
        self._claiming = False
        if self._again:
            self._again = False
            self.wake()

    # -- runs of this node's tasks on other nodes (overlap) ----------------

    def job_ended(self, job: Job) -> None:
        """A job ended here: if this node claimed it, the node that let it go
        counts it as its task's run still going (``JobBook.release``): say so."""
        if self._claimed_here.pop(job.id, None) is None or job.task_id is None:
            return
        if not self._ended:
            self._clock.callLater(0, self._tell_ended)
        self._ended.append(job.id)

    def _tell_ended(self) -> None:
        ended, self._ended = self._ended, []
        self._store.notify_ended(ended).addErrback(
            # The other nodes' sweeps find out within a second or so.
            lambda failure: log.warn(
                "could not tell the other nodes of ended jobs: {error}", error=failure.getErrorMessage()
            )
        )

    def _look_elsewhere(self) -> None:
        """Which of the jobs this node let go have ended (a notification may have been missed)."""
        watched = self._dispatcher.jobs.elsewhere
        if not watched or self._looking:
            return
        self._looking = True

        def found(active: list[int]) -> None:
            self._dispatcher.ended_elsewhere(set(watched) - set(active))

        looked = self._store.still_active(watched).addCallback(found)
        looked.addErrback(
            lambda failure: log.warn(
                "could not look at jobs on other nodes: {error}", error=failure.getErrorMessage()
            )
        )
        looked.addBoth(self._looked)

    def _looked(self, _: object) -> None:
        self._looking = False

    # -- the other nodes ---------------------------------------------------

    def _look_at_peers(self) -> None:
        if self._peers is None:
            return
        self._peers_looked_at = self._clock.seconds()
        self._peers().addCallbacks(
            self._peers_seen,
            lambda failure: log.warn(
                "could not read the other nodes: {error}", error=failure.getErrorMessage()
            ),
        )
        if self._peer_workers is not None:
            self._peer_workers(self.PEER_GONE_AFTER).addCallbacks(
                self._peer_workers_seen,
                lambda failure: log.warn(
                    "could not read the other nodes' workers: {error}", error=failure.getErrorMessage()
                ),
            )

    def _peer_workers_seen(self, names: list[str]) -> None:
        self.workers_elsewhere = tuple(names)

    def _peers_seen(self, rows: NodeRows) -> None:
        # Heartbeats are on the database's clock: measured against the newest.
        newest = max((seen for *_, seen in rows), default=0.0)
        before = self.others_have_workers
        self.others_have_workers = any(
            name != self.node and workers > 0 and seen >= newest - self.PEER_GONE_AFTER
            for name, _, workers, seen in rows
        )
        if self.others_have_workers and not before:
            # What waits here beyond a slot's worth may go to them now.
            self._dispatcher.pump()

    # -- cancels -----------------------------------------------------------

    def resync(self) -> None:
        """The listener (re)connected: claim, and take up the cancels and ends this node may have missed."""
        self._more = True
        self.wake()
        self._look_elsewhere()
        self._count_offered(anyway=True)
        self._store.cancels_owed().addCallbacks(
            self._cancel_owed,
            lambda failure: log.warn(
                "could not read the cancels owed: {error}", error=failure.getErrorMessage()
            ),
        )

    def _cancel_owed(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            self._cancel_here(job_id)

    def cancel_heard(self, fields: dict[str, Any]) -> None:
        """A "cancels" notification: a node asked for the cancel of a job, maybe one of ours."""
        job_id = fields.get("job")
        if fields.get("manager") != self.node or not isinstance(job_id, int):
            return
        if self._dispatcher.jobs.get(job_id) is None:
            # Claimed by this node, maybe, with the claim's answer still on
            # its way (the cancel waited for the claim's commit): kept a
            # while for ``_claimed``.
            now = self._clock.seconds()
            self._early_cancels = {
                early: at for early, at in self._early_cancels.items() if at > now - self.EARLY_CANCEL_KEPT
            }
            self._early_cancels[job_id] = now
            return
        self._cancel_here(job_id)

    def _cancel_here(self, job_id: int) -> None:
        job = self._dispatcher.jobs.get(job_id)
        if job is None or job.cancel_requested_at is not None:
            return  # ended meanwhile, or its cancel is under way
        log.info("job {job_id}: cancel asked through another node", job_id=job_id)
        try:
            self._dispatcher.cancel(job_id)
        except JobNotFound:
            pass

    async def cancel(self, job_id: int) -> CancelOutcome:
        """Cancel *job_id*, which this node does not manage, through the database."""
        outcome, manager = await self._store.cancel_elsewhere(
            job_id, self._clock.seconds(), self.CANCELLED_OFFERED
        )
        if outcome == "asked":
            self.counts.cancels_relayed += 1
            if manager == self.node:
                # Ours after all (taken up since the caller looked): no notification comes back.
                self._cancel_here(job_id)
            return "asked"
        if outcome == "cancelled":
            # The others hear it ended ("jobs"); this node may be the one that let it go.
            self._dispatcher.ended_elsewhere((job_id,))
            return "cancelled"
        return "finished"
