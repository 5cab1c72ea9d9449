"""Group commit: a job history's database work, batched onto one thread.

Everything put or appended during one reactor turn goes to the database in
one transaction, and while that transaction runs new writes pile up for the
next one: a busy scheduler pays for one commit per batch, not per line of
output.  Reads queue behind the writes asked for before them, so a caller
always reads what it wrote.

Once the reactor runs, only this one thread uses the database, so
statements run in the order they were asked for.  Nothing here knows SQL:
the backend's ``write_batch`` executes each batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from scheduler.job_history.database import (
    AlertAttempt,
    AlertsQueued,
    ChannelChange,
    Chunk,
    JobStoreClosed,
    JobStoreError,
    NewAlerts,
    NewAuditEntry,
    NewRevision,
    Outcome,
    Put,
    Write,
)

log = Logger()

_T = TypeVar("_T")

# Waiters told per reactor turn once their batch has committed.  Each may
# go on to do real work (a `run` sent for every job recorded as placed):
# a burst of ten thousand jobs committed at once held the reactor for
# 16 ms per thousand waiters, so the rest wait for the next turns, in order.
SETTLE_PER_TURN = 500


class BatchWriter(Protocol):
    """What the thread runs: a backend's batch write and its close (see ``Database``)."""

    def write_batch(self, writes: Sequence[Write]) -> list[Outcome]: ...

    def close(self) -> None: ...


def superseded(writes: Sequence[Write]) -> dict[int, int]:
    """Puts a later put of the same job in the batch replaces: index -> that put's index.

    A job is usually put two to four times within one batch when jobs are
    short (queued, sent, started, ended), and every put writes the whole
    row, so only the last needs writing.  A put is still written if an
    output chunk of its job comes between it and the later put: the chunk's
    accounting reads the stored row.
    """
    last: dict[int, int] = {}  # job id -> index of the put that is written
    replaced: dict[int, int] = {}
    for index in range(len(writes) - 1, -1, -1):
        write = writes[index]
        if not isinstance(write, Put | Chunk):
            continue
        if isinstance(write, Chunk):
            last.pop(write.job_id, None)
        elif write.job_id in last:
            replaced[index] = last[write.job_id]
        else:
            last[write.job_id] = index
    return replaced


class GroupCommitter:
    """One thread for a backend: writes batched per transaction, reads behind them, a clean close."""

    def __init__(self, backend: BatchWriter, reactor: Any, *, name: str, thread_name: str) -> None:
        self._backend = backend
        self._reactor = reactor
        # What error messages call the database.
        self.name = name
        self._thread_name = thread_name
        # Committed write batches; tests use it to see how writes were grouped.
        self.transactions = 0
        self._pool: ThreadPool | None = None
        # Writes not yet handed to the thread, the Deferreds of the puts and
        # new revisions among them, and reads that must run after them.
        self._writes: list[Write] = []
        self._waiters: list[Deferred[Any]] = []
        self._after_writes: list[Callable[[], None]] = []
        self._busy = False
        self._flush_call: IDelayedCall | None = None
        # Committed waiters not yet told, oldest first, and the call that tells the next ones.
        self._settling: deque[tuple[Deferred[Any], Outcome]] = deque()
        self._settle_call: IDelayedCall | None = None
        self._idle: list[Deferred[None]] = []
        self._closing = False
        self._closed: list[Deferred[None]] = []
        self._shutdown_trigger: Any = None

    @property
    def started(self) -> bool:
        """Started, and not (yet) closed."""
        return self._pool is not None

    @property
    def closing(self) -> bool:
        """Closing or closed: a started committer never starts again."""
        return self._closing

    @property
    def accepting(self) -> bool:
        return self._pool is not None and not self._closing

    def start(self) -> None:
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=self._thread_name)
        self._pool.start()
        # A non-daemon thread left running would keep the process alive, and
        # queued writes would be lost: close at shutdown if nobody did.  In
        # the "during" phase, after every "before" trigger -- the services'
        # stopService among them -- has finished: a service still stopping
        # (telling its workers, recording what they report meanwhile) must
        # find the store open.
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self._close_at_shutdown
        )

    # -- writes ---------------------------------------------------------------

    def put(self, put: Put) -> Deferred[None]:
        """Queue a record; fires once its transaction has committed."""
        return self._acknowledged(put)

    def add_revision(self, revision: NewRevision) -> Deferred[int]:
        """Queue a task revision; fires with its id once its transaction has committed."""
        return self._acknowledged(revision)

    def add_audit(self, entry: NewAuditEntry) -> Deferred[int]:
        """Queue an audit log entry; fires with its id once its transaction has committed."""
        return self._acknowledged(entry)

    def add_alerts(self, alerts: NewAlerts) -> Deferred[AlertsQueued]:
        """Queue alerts for the outbox; fires with what became of them once committed."""
        return self._acknowledged(alerts)

    def record_attempt(self, attempt: AlertAttempt) -> Deferred[None]:
        """Queue what a delivery attempt came to; fires once committed."""
        return self._acknowledged(attempt)

    def change_channel(self, change: ChannelChange) -> Deferred[None]:
        """Queue a channel's addition or removal; fires once committed (or with the refusal)."""
        return self._acknowledged(change)

    def _acknowledged(
        self, write: Put | NewRevision | NewAlerts | AlertAttempt | ChannelChange | NewAuditEntry
    ) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self._writes.append(write)
        self._waiters.append(done)
        self._schedule_flush()
        return done

    def append(self, chunk: Chunk) -> None:
        self._writes.append(chunk)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # While a batch is on the thread, its completion starts the next one.
        if self._busy or self._flush_call is not None:
            return
        self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._busy or not self._writes:
            return
        assert self._pool is not None
        writes, self._writes = self._writes, []
        waiters, self._waiters = self._waiters, []
        after, self._after_writes = self._after_writes, []
        self._busy = True
        written = deferToThreadPool(self._reactor, self._pool, self._write, writes)
        written.addBoth(self._written, writes, waiters)
        # Queued behind the batch on the single thread, so they see it.
        for submit in after:
            submit()

    def _write(self, writes: list[Write]) -> list[Outcome]:
        """On the thread: the batch without superseded puts; per put and new revision, its outcome."""
        replaced_by = superseded(writes)
        kept = [index for index in range(len(writes)) if index not in replaced_by]
        outcomes = self._backend.write_batch([writes[index] for index in kept])
        written = dict(
            zip((index for index in kept if not isinstance(writes[index], Chunk)), outcomes, strict=True)
        )
        return [
            written[replaced_by.get(index, index)]
            for index, write in enumerate(writes)
            if not isinstance(write, Chunk)
        ]

    def _written(
        self,
        result: list[Outcome] | Failure,
        writes: list[Write],
        waiters: list[Deferred[Any]],
    ) -> None:
        self._busy = False
        if isinstance(result, Failure):
            chunks = sum(1 for write in writes if isinstance(write, Chunk))
            revisions = sum(1 for write in writes if isinstance(write, NewRevision))
            puts = sum(1 for write in writes if isinstance(write, Put))
            log.failure(
                "job store transaction failed; {puts} job writes, {chunks} output chunks, "
                "{revisions} task revisions and {alerts} alert writes lost",
                failure=result,
                puts=puts,
                chunks=chunks,
                revisions=revisions,
                alerts=len(waiters) - puts - revisions,
            )
            outcomes: list[Outcome] = [
                result.value if isinstance(result.value, Exception) else JobStoreError(str(result.value))
            ] * len(waiters)
        else:
            self.transactions += 1
            outcomes = result
        if self._writes:
            self._flush()
        self._settling.extend(zip(waiters, outcomes, strict=True))
        if self._settle_call is None:
            self._settle()

    def _settle(self) -> None:
        """Tell up to SETTLE_PER_TURN committed waiters; the rest on the next turn."""
        self._settle_call = None
        for _ in range(min(SETTLE_PER_TURN, len(self._settling))):
            done, outcome = self._settling.popleft()
            if isinstance(outcome, Exception):
                done.errback(outcome)
            else:
                done.callback(outcome)
        if self._settling:
            self._settle_call = self._reactor.callLater(0, self._settle)
            return
        if not self._busy and not self._writes:
            idle, self._idle = self._idle, []
            for waiting in idle:
                waiting.callback(None)

    # -- reads ----------------------------------------------------------------

    def read(self, work: Callable[[], _T]) -> Deferred[_T]:
        """Run *work* on the thread after every write queued so far."""
        if not self.accepting:
            return fail(JobStoreClosed(f"{self.name}: job store is closed"))
        assert self._pool is not None
        pool = self._pool
        if not self._writes:
            # Anything running or queued on the thread was asked for earlier.
            return deferToThreadPool(self._reactor, pool, work)
        result: Deferred[_T] = Deferred()

        def submit() -> None:
            deferToThreadPool(self._reactor, pool, work).chainDeferred(result)

        self._after_writes.append(submit)
        self._schedule_flush()
        return result

    # -- closing --------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Write what is queued, then close the backend on the thread and stop the thread."""
        if self._pool is None:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._closed.append(closed)
        if self._closing:
            return closed
        self._closing = True
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        self._flush()
        self._when_idle().addCallback(self._close_backend).addBoth(self._finish_close)
        return closed

    def _close_at_shutdown(self) -> Deferred[None]:
        self._shutdown_trigger = None
        return self.close()

    def _when_idle(self) -> Deferred[None]:
        if not self._busy and not self._writes and not self._settling:
            return succeed(None)
        idle: Deferred[None] = Deferred()
        self._idle.append(idle)
        return idle

    def _close_backend(self, _: None) -> Deferred[None]:
        assert self._pool is not None
        # Queued after every read already handed to the thread.
        return deferToThreadPool(self._reactor, self._pool, self._backend.close)

    def _finish_close(self, result: Failure | None) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        closed, self._closed = self._closed, []
        for waiting in closed:
            if isinstance(result, Failure):
                waiting.errback(result)
            else:
                waiting.callback(None)

