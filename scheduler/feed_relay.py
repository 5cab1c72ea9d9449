"""The live feed across nodes (``--db``): what other nodes' jobs do, on this node's feed.

A node's feed (scheduler/feed.py) publishes what happens on that node; a
job another node manages changes there.  So each node, per committed batch
of its job history, tells the others which jobs changed and which got new
output (the "feed" notification of scheduler/cluster_events.py: ids only,
sent by ``PostgresDatabase``).  This relay hears it and, only while this
node's feed has subscribers, reads those jobs from the job store (the ones
this node does not manage) and publishes them as ``job`` events, and reads
the output chunks after the last seq it published of the jobs that
subscribers watch (``?job=<id>``) and publishes them as ``output`` events.

One read at a time: what is heard during a read is gathered into the next
one, so a busy cluster costs a watching node at most one read per
notification, and usually fewer.  A notification that was capped
(``more``), or a resync of the cluster events (a notification is not
durable), makes the next read a reload: every active job of the other
nodes, the ones published as active since, and the output of every watched
job after its last seq.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from scheduler.jobs import Job

log = Logger()

# Seconds before a read that failed (the database away) is tried again.
RETRY_AFTER = 1.0

# Jobs of other nodes remembered as shown active, so that a reload can show
# how they ended; past this many, the oldest are forgotten.
MAX_SHOWN = 10_000


@dataclass(frozen=True)
class RelayedChunk:
    """One stored output chunk of a job another node manages."""

    job_id: int
    seq: int
    stream: str
    data: str


@dataclass
class Relayed:
    """What one read found: jobs (not managed by this node) and chunks (in seq order per job)."""

    jobs: list[Job] = field(default_factory=list)
    chunks: list[RelayedChunk] = field(default_factory=list)
    # The chunks were cut at the read's limit: more may be stored.
    more_chunks: bool = False


class RelayStore(Protocol):
    """The job store's reads the relay makes (``PostgresJobStore``)."""

    def relayed(self, job_ids: Sequence[int], after: Mapping[int, int], others_active: bool) -> Deferred[Relayed]:
        """The jobs of *job_ids* (and, *others_active*, every active job) that
        this node does not manage; and of each job in *after*, the chunks
        stored after the seq given."""

    def output_with_seq(self, job_id: int) -> Deferred[tuple[str, int] | None]:
        """A job's stored output and the last seq in it (None: no such job)."""


class FeedView(Protocol):
    """What the relay asks of the feed (``EventHub``)."""

    def __len__(self) -> int: ...

    def watched_jobs(self) -> set[int]:
        """The jobs whose output some subscriber asked for."""


@dataclass
class _Wanted:
    jobs: set[int] = field(default_factory=set)
    output: set[int] = field(default_factory=set)
    reload: bool = False

    def __bool__(self) -> bool:
        return bool(self.jobs or self.output or self.reload)


class FeedRelay:
    def __init__(
        self,
        clock: IReactorTime,
        store: RelayStore,
        feed: FeedView,
        *,
        publish_job: Callable[[Job], None],
        publish_output: Callable[[RelayedChunk], None],
    ) -> None:
        self._clock = clock
        self._store = store
        self._feed = feed
        self._publish_job = publish_job
        self._publish_output = publish_output
        self._wanted = _Wanted()
        self._reading = False
        self._stopped = False
        self._retry: IDelayedCall | None = None
        # The last output seq published (or read by a page's log) per watched job.
        self._last: dict[int, int] = {}
        # Jobs of other nodes published as active (insertion order: oldest first).
        self._shown: dict[int, None] = {}
        # Counts for /metrics and the tests: reads made, notifications ignored
        # because nobody was watching.
        self.reads = 0
        self.unwatched = 0

    # -- heard ---------------------------------------------------------------

    def heard(self, fields: dict[str, Any]) -> None:
        """A "feed" notification from another node (``jobs``, ``output``: ids; ``more``: capped)."""
        if not self._feed:
            self.unwatched += 1
            return
        self._wanted.jobs.update(_ids(fields.get("jobs")))
        watched = self._feed.watched_jobs()
        self._wanted.output.update(job_id for job_id in _ids(fields.get("output")) if job_id in watched)
        if fields.get("more"):
            self._wanted.reload = True
        self._next()

    def resync(self) -> None:
        """The cluster events (re)connected: what was told meanwhile is lost; reload."""
        if not self._feed:
            return
        self._wanted.reload = True
        self._next()

    def log_read(self, job_id: int, seq: int) -> None:
        """A page read *job_id*'s stored output up to *seq* (its log, before the
        live chunks): a job not relayed yet starts there, not at its first chunk."""
        if job_id in self._feed.watched_jobs():
            self._last.setdefault(job_id, seq)

    def published_here(self, job_id: int, seq: int) -> None:
        """This node published *job_id*'s chunk *seq* itself (it managed the job):
        should another node take the job over, the relay goes on after it."""
        if job_id in self._last or job_id in self._feed.watched_jobs():
            self._last[job_id] = max(self._last.get(job_id, 0), seq)

    def stored_log(self, job_id: int) -> Deferred[tuple[str, int] | None]:
        """A job's stored output and its last seq, for its page's log (``log_read``)."""

        def read(found: tuple[str, int] | None) -> tuple[str, int] | None:
            if found is not None:
                self.log_read(job_id, found[1])
            return found

        return self._store.output_with_seq(job_id).addCallback(read)

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    # -- the read --------------------------------------------------------------

    def _next(self) -> None:
        if self._stopped or self._reading or self._retry is not None or not self._wanted:
            return
        wanted, self._wanted = self._wanted, _Wanted()
        watched = self._feed.watched_jobs()
        # Forget the seqs of jobs nobody watches any more.
        for job_id in [job_id for job_id in self._last if job_id not in watched]:
            del self._last[job_id]
        # A watched job read for its record has its output read with it: the
        # record may be newer than the notification (ended since), and its
        # last lines must not come after its end.
        outputs = watched if wanted.reload else (wanted.output | wanted.jobs) & watched
        after = {job_id: self._last.get(job_id, 0) for job_id in sorted(outputs)}
        job_ids = set(wanted.jobs)
        if wanted.reload:
            job_ids.update(self._shown)
        self._reading = True
        self.reads += 1
        reading = self._store.relayed(sorted(job_ids), after, wanted.reload)
        reading.addCallbacks(self._read, self._failed, errbackArgs=(wanted,))

    def _read(self, found: Relayed) -> None:
        self._reading = False
        try:
            self._publish(found)
        except Exception:
            # Logged, not raised: the next read must still come.
            log.failure("live feed relay: could not publish what it read")
        self._next()

    def _publish(self, found: Relayed) -> None:
        if self._feed:
            # Output first: a job's last lines come before the event saying it ended.
            for chunk in found.chunks:
                if chunk.seq <= self._last.get(chunk.job_id, 0):
                    continue
                self._last[chunk.job_id] = chunk.seq
                self._publish_output(chunk)
            if found.more_chunks:
                self._wanted.output.update(chunk.job_id for chunk in found.chunks)
            for job in found.jobs:
                self._publish_job(job)
                if job.status.final:
                    self._shown.pop(job.id, None)
                else:
                    self._shown[job.id] = None
            while len(self._shown) > MAX_SHOWN:
                del self._shown[next(iter(self._shown))]

    def _failed(self, failure: Any, wanted: _Wanted) -> None:
        self._reading = False
        log.warn("live feed relay: could not read other nodes' jobs ({error}); trying again", error=failure.getErrorMessage())
        # Nothing heard is dropped: tried again, with what came in meanwhile.
        self._wanted.jobs |= wanted.jobs
        self._wanted.output |= wanted.output
        self._wanted.reload |= wanted.reload
        if not self._stopped:
            self._retry = self._clock.callLater(RETRY_AFTER, self._retried)

    def _retried(self) -> None:
        self._retry = None
        self._next()


def _ids(value: object) -> list[int]:
    """The job ids of a notification's field; anything else in it is ignored."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, int) and not isinstance(item, bool)]
