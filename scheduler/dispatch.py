"""Dispatch: jobs from fires and requests, onto workers, to a recorded end.

The :class:`Dispatcher` is the domain of the worker side.  The WebSocket
protocol calls it with what workers say; it decides placement, queueing,
retries and "lost", keeps the live job records in the :class:`JobBook` and
writes every change to the job store.  A job is recorded before it is sent
to a worker, so a scheduler that dies right after dispatching still knows
the job when the worker reports on it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from scheduler.cron import iso
from scheduler.job_book import JobBook
from scheduler.job_caps import RunCaps
from scheduler.job_history.database import Fenced, FireTaken
from scheduler.job_jitter import JitterHold, start_of
from scheduler.job_output import OutputTails
from scheduler.job_queue import JobQueue
from scheduler.job_retry import Retries
from scheduler.job_secrets import SecretBook, SecretError
from scheduler.job_store import Disowned, JobRecorder, JobStoreClosed
from scheduler.jobs import Job, JobStatus
from scheduler.settings import Settings
from scheduler.tasks import Task
from scheduler.timers import KeyedTimers
from scheduler.triggers import MISSED, SCHEDULE, TriggeredBy
from scheduler.worker_messages import MAX_START_DELAY, PROTOCOL_VERSION, Finished, mask_text
from scheduler.worker_registry import Worker, WorkerRegistry

log = Logger()


class JobNotFound(LookupError):
    pass


class NotCurrent(JobNotFound):
    """A report from a connection that no longer holds its worker's name."""


class NotRunningHere(Exception):
    """A report on a job that is not running on the reporting worker: the
    answer is ``drop`` (docs/protocol.md, "Whose jobs")."""

    def __init__(self, job_id: int, reason: str) -> None:
        super().__init__(reason)
        self.job_id = job_id


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class RunNow:
    """One command to run now, as POST /api/jobs takes it (one item of a batch)."""

    command: str
    target: str = "any"
    timeout: float | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    task_id: int | None = None


class NoRecorder:
    """Keeps nothing: for tests and for running without a job database."""

    def put(self, job: Job) -> Deferred[None]:
        return succeed(None)

    def append_output(self, job_id: int, seq: int, stream: str, data: str) -> None:
        pass


OutputListener = Callable[[int, int, str, str], None]
# With --db: make this node the manager of those of the jobs (ids) still
# running on the worker (name), from the job history: each job with its last
# output seq and the node that managed it (None: this one; see
# ``PostgresJobStore.take_over``).
TakeOver = Callable[[str, list[int]], Deferred[list[tuple[Job, int, str | None]]]]


class Dispatcher:
    def __init__(
        self,
        clock: IReactorTime,
        jobs: JobBook,
        workers: WorkerRegistry,
        recorder: JobRecorder,
        tasks: Callable[[int], Task | None],
        *,
        lost_after: float = Settings.lost_after,
        queue_limit: int = Settings.queue_limit,
        output_cap: int = Settings.output_cap,
        caps: RunCaps | None = None,
        secrets: SecretBook | None = None,
        leading: Callable[[], bool] = lambda: True,
        take_over: TakeOver | None = None,
    ) -> None:
        self._clock = clock
        # With several nodes: a worker's hello takes its jobs over from the
        # node that managed them, and this node's records of a job another
        # node took over are refused (Disowned).
        self._take_over = take_over
        # Jobs taken over at hellos, and let go because another node had
        # (both for the metrics).
        self.taken_over = 0
        self.let_go = 0
        # Resolved into each run message only (scheduler.job_secrets).
        self._secrets = secrets
        # The secret values to mask in each active job's output, once known.
        self._masks: dict[int, tuple[str, ...]] = {}
        self.jobs = jobs
        self.workers = workers
        self._recorder = recorder
        self._task = tasks
        self.lost_after = lost_after
        self.queue_limit = queue_limit
        # Queued jobs by target, oldest first; a job that ends while queued
        # (cancelled, say) leaves the queue and its count at once.
        self._queue = JobQueue()
        # Jobs set aside until something ends, by what holds them: a task's
        # running job (overlap=queue, key "overlap:<task>") or a full cap
        # (scheduler.job_caps key); with the reason, for the API.
        self._held: dict[str, list[int]] = {}
        self._held_reason: dict[int, tuple[str, str]] = {}
        self._caps = caps if caps is not None else RunCaps()
        # Runs skipped (overlap=skip) by scheduled time, until logged.
        self._skipped_at: dict[float, int] = {}
        # Jobs of a worker that went away, waiting lost_after for it.
        self._lost_timers = KeyedTimers(clock)
        # Cron jobs whose jitter starts them beyond a run's delay, until then.
        self._jitter = JitterHold(clock, self._jitter_due)
        self._tails = OutputTails(output_cap)
        self._retries = Retries(clock, jobs, tasks, self._submit, leading=leading)
        # Placed on a worker, waiting for the record to commit before `run`.
        self._unsent: set[int] = set()
        # Running jobs someone asked to cancel: sent again after their
        # worker's next welcome, and ended as cancelled (not lost) if it
        # comes back without them or not at all.
        self._cancels: set[int] = set()
        # Jobs a worker rejected: (its name, until when it is not asked again).
        self._rejected: dict[int, tuple[str, float]] = {}
        self.output_listeners: list[OutputListener] = []
        # Feeds the metrics: how late jobs start, and how they end.
        self.started_listeners: list[Callable[[Job, float], None]] = []
        # Told of each job's end right after its record is queued for the
        # job store, in the same reactor turn: what they queue (alerts)
        # is committed with it.
        self.ended_listeners: list[Callable[[Job], None]] = []
        # With --db: where a queued job goes that no worker of this node can
        # take now (``JobClaims.offer``), for any node to claim; None (the
        # embedded mode): it waits here for a worker.
        self.offers: Callable[[Job], None] | None = None
        # With --db: how many offered jobs wait in the cluster (about:
        # ``JobClaims.offered_waiting``); the queue limit bounds them too.
        self.offered: Callable[[], int] = lambda: 0
        # With --db: may another node's worker run what waits here?  If
        # not, what a worker here can run waits here, however many.
        self.others_have_workers: Callable[[], bool] = lambda: True
        # The names of the workers connected to the other nodes (--db):
        # target "all" makes a job for each of them too.
        self.workers_elsewhere: Callable[[], Iterable[str]] = tuple

    # -- submitting ----------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._held_reason) + len(self._jitter)

    def _dequeue(self, job: Job) -> None:
        self._queue.remove(job.id)
        held = self._held_reason.pop(job.id, None)
        if held is not None:
            key = held[0]
            self._held[key].remove(job.id)
            if not self._held[key]:
                del self._held[key]

    def fire(self, task: Task, scheduled: float, *, triggered_by: TriggeredBy = SCHEDULE) -> list[Job]:
        """Jobs for one cron fire of *task* (none if paused, skipped or already run).

        *triggered_by* is the schedule, or ``MISSED`` for a time caught up after a restart.
        """
        if self.jobs.seen(task.id, scheduled):
            return []
        options = task.options
        if options.paused and (options.pausedUntil is None or scheduled < options.pausedUntil):
            return []
        if options.overlap == "skip" and self.jobs.active_for(task.id):
            self.jobs.mark_fired(task.id, scheduled)
            self._log_skip(task, scheduled)
            return []
        fields: dict[str, Any] = {
            "timeout": options.timeout,
            "env": dict(options.env),
            "cwd": options.cwd,
            "triggered_by": triggered_by,
        }
        targets = self._targets(task.options.target)
        first = self.jobs.fire(task.id, scheduled, task.command, target=targets[0], **fields)
        if first is None:
            return []
        created = [first] + [
            self.jobs.create(
                task.command,
                task_id=task.id,
                key=f"{first.key}/{target.split(':', 1)[1]}",
                scheduled_at=scheduled,
                target=target,
                **fields,
            )
            for target in targets[1:]
        ]
        return [self._submit(job) for job in created]

    # A second with more skipped runs than this logs the rest as one line:
    # 2,000 every-second tasks skipping would write 2,000 lines a second.
    LOG_SKIPS_PER_SECOND = 10

    def _log_skip(self, task: Task, scheduled: float) -> None:
        count = self._skipped_at.get(scheduled, 0) + 1
        self._skipped_at[scheduled] = count
        if count == 1:
            # Once this tick's fires are all handed on.
            self._clock.callLater(0, self._end_skips, scheduled, task.schedule.tz)
        if count <= self.LOG_SKIPS_PER_SECOND:
            log.info(
                "{job_name}: previous run still going, skipping the run due at {when}",
                job_name=task.job_name,
                when=iso(scheduled, task.schedule.tz),
            )

    def _end_skips(self, scheduled: float, tz: tzinfo) -> None:
        more = self._skipped_at.pop(scheduled, 0) - self.LOG_SKIPS_PER_SECOND
        if more > 0:
            log.info(
                "{count} more runs due at {when} skipped: their previous run is still going",
                count=more,
                when=iso(scheduled, tz),
            )

    def run_now(
        self,
        command: str,
        *,
        target: str = "any",
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        task_id: int | None = None,
        triggered_by: TriggeredBy | None = None,
    ) -> list[Job]:
        """Jobs to run *command* now (one per worker for target ``all``), started by *triggered_by*."""
        return self.run_batch([RunNow(command, target, timeout, env, cwd, task_id)], triggered_by)[0]

    def run_batch(self, runs: Sequence[RunNow], triggered_by: TriggeredBy | None = None) -> list[list[Job]]:
        """The jobs of each run in *runs* (several for target ``all``), or none (QueueFull).

        The queue limit is checked once for the whole batch, before any job
        is made, so a batch is never cut short part way.
        """
        targets = [self._targets(run.target) for run in runs]
        count = sum(len(each) for each in targets)
        if self.queued + self.offered() + count > self.queue_limit:
            raise QueueFull(
                f"the job queue is full ({self._queue_text()}, limit {self.queue_limit}"
                + (f", {count} asked for" if count > 1 else "")
                + "); try again later"
            )
        batch = [
            [
                self._submit(
                    self.jobs.create(
                        run.command,
                        target=each,
                        timeout=run.timeout,
                        env=dict(run.env or {}),
                        cwd=run.cwd,
                        task_id=run.task_id,
                        triggered_by=triggered_by,
                    )
                )
                for each in run_targets
            ]
            for run, run_targets in zip(runs, targets, strict=True)
        ]
        # No log line here: every run on request is in the audit log, which
        # writes its own line with who asked (a second line cost as much).
        return batch

    def _queue_text(self) -> str:
        offered = self.offered()
        return f"{self.queued} queued" + (f" here and {offered} offered to the other nodes" if offered else "")

    def _targets(self, target: str) -> list[str]:
        """One target per job: ``all`` is one job per connected worker, on
        every node (or one job for ``any`` when none is), anything else is itself."""
        if target != "all":
            return [target]
        here = [worker.name for worker in self.workers.eligible("all")]
        # With --db, also the workers of the other nodes, as last read
        # (their jobs are offered, and claimed by the node a worker is on).
        elsewhere = [name for name in self.workers_elsewhere() if name not in set(here)]
        return [f"worker:{name}" for name in (*here, *elsewhere)] or ["any"]

    def _submit(self, job: Job) -> Job:
        if self.queued + self.offered() >= self.queue_limit:
            # Never drop what is queued; the new job is refused, on the record.
            return self._finish(job, JobStatus.FAILED, reason="the job queue is full")
        self._tails.open(job.id)
        # Queued at once: _dispatch sends `run` only after a later write has
        # committed, and the job store commits in order, so this record is
        # on disk before any worker hears of the job.
        self._recorder.put(job).addErrback(lambda failure: self._not_recorded(job.id, failure))
        if self._jitter.hold(job.id, self._start_of(job)):
            return job
        self._queue.push(job.id, job.target)
        # Only this job's target: nothing else changed since the last pump.
        self.pump(job.target)
        return job

    def _start_of(self, job: Job) -> float | None:
        """When a cron job of a task with jitter starts (None: at its time)."""
        return start_of(job, self._task(job.task_id)) if job.task_id is not None else None

    def _jitter_due(self, job_id: int) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.status is JobStatus.QUEUED:
            self._queue.push(job_id, job.target)
            self.pump(job.target)

    def _not_recorded(self, job_id: int, failure: Any) -> None:
        if failure.check(FireTaken):
            self._fire_taken(job_id)
            return
        if failure.check(Disowned):
            self._disowned(job_id)
            return
        log.error("could not record job {job_id}: {error}", job_id=job_id, error=failure.getErrorMessage())
        current = self.jobs.get(job_id)
        if current is None:
            return
        self._unsent.discard(job_id)
        worker = self.workers.get(current.worker or "")
        if worker is not None:
            worker.running.discard(job_id)
        self._finish(current, JobStatus.FAILED, reason="could not be recorded in the job database")

    # -- placing -------------------------------------------------------

    def pump(self, target: str | None = None) -> None:
        """Send queued jobs, oldest first, to workers with room.

        Looks at the oldest job of each target (of *target* alone, if
        given), so a pass costs what it places plus one look per target,
        however many jobs wait behind a head that cannot be placed.
        """
        queue = self._queue
        if not queue:
            return
        if target is None:
            heads = queue.heads()
            heapq.heapify(heads)
        else:
            head = queue.head(target)
            heads = [] if head is None else [(head, target)]
        while heads:
            job_id, target = heapq.heappop(heads)
            job = self.jobs.get(job_id)
            if job is None or job.status is not JobStatus.QUEUED:
                queue.remove(job_id)  # defensive: every end dequeues
                worker = None
            elif (hold := self._must_wait(job)) is not None:
                queue.remove(job_id)
                self._held.setdefault(hold[0], []).append(job_id)
                self._held_reason[job_id] = hold
                worker = None
            else:
                worker = self._place(target, self._rejected_by(job_id))
                if worker is None and self.offers is None:
                    # No has_free_slot() up front: it scans the workers, and
                    # most passes place something.  This target is full.
                    if not self.workers.has_free_slot():
                        return
                    continue
                if worker is None:
                    keeps = self._keeps(job)
                    if keeps:
                        continue  # this target is full; others may have jobs to offer
                    if keeps is None:
                        # Too many wait here: the newest goes, so the older
                        # keep their turn (the head comes round again).
                        job = self._newest(target, job)
                        job_id = job.id
                queue.remove(job_id)
                if worker is None:
                    # Only once it may start (holds are looked at first):
                    # another node does not know what holds it here.
                    self._offer(job)
                else:
                    self._dispatch(job, worker)
            following = queue.head(target)
            if following is not None:
                heapq.heappush(heads, (following, target))

    # -- the cluster (with --db; scheduler.job_claims) ---------------------

    def _keeps(self, job: Job) -> bool | None:
        """Does *job*, which no worker here can take now, wait here rather than be offered?

        Up to one job per slot of this node's workers waits here, if one of
        them may run it: a slot that frees takes its next job at once, not
        after a claim's round trip to the database.  With no other node's
        worker to run it, all that one of them may run waits here (a claim
        could only bring it back, a write per job).  None: it may, but too
        many wait.
        """
        target = job.target
        if target.startswith("worker:"):
            if self.workers.get(target[7:]) is None:
                return False
        elif not any(worker.accepts(target) for worker in self.workers):
            return False
        if not self.others_have_workers() or len(self._queue) <= sum(worker.slots for worker in self.workers):
            return True
        return None

    def _newest(self, target: str, head: Job) -> Job:
        """The newest queued job of *target*, unless something holds it here (then it is held)."""
        newest = self._queue.newest(target)
        job = self.jobs.get(newest) if newest is not None else None
        if job is None or job.status is not JobStatus.QUEUED:
            return head
        hold = self._must_wait(job)
        if hold is not None:
            self._queue.remove(job.id)
            self._held.setdefault(hold[0], []).append(job.id)
            self._held_reason[job.id] = hold
            return head if self._queue.newest(target) is None else self._newest(target, head)
        return job

    def _offer(self, job: Job) -> None:
        """No worker here can take *job* now: let it go, for any node to claim."""
        assert self.offers is not None
        self._let_go(job)
        self.offers(job)

    def _let_go(self, job: Job, *, watch: bool = True) -> None:
        """Forget *job* here without ending it: another node has it, or will
        (*watch*: count it as its task's run going on, ``JobBook.release``)."""
        self._forget(job)
        self._tails.close(job.id)
        self._masks.pop(job.id, None)
        self.jobs.release(job.id, watch=watch)

    def _forget(self, job: Job) -> None:
        """Drop what this node keeps for an active job (its timers, its place in
        the queue, its marks): it ends here, or leaves this node."""
        self._lost_timers.cancel(job.id)
        self._jitter.cancel(job.id)
        self._unsent.discard(job.id)
        self._cancels.discard(job.id)
        self._rejected.pop(job.id, None)
        self._dequeue(job)

    def _fire_taken(self, job_id: int) -> None:
        """Another node recorded this fire first (an old leader's, or a new
        one's catching up): that job is the run, so this one is no failure,
        only a duplicate to drop before it reaches a worker."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        log.info(
            "job {job_id}: its fire {key} is already recorded by another job; dropped here, not run twice",
            job_id=job_id,
            key=job.key,
        )
        self._let_go(job, watch=False)
        worker = self.workers.get(job.worker or "")
        if job.status is JobStatus.RUNNING:
            # Placed, never sent (``run`` waits for the record): its slot is free again.
            if worker is not None:
                worker.running.discard(job_id)
                self.workers.changed(worker)
            self._stopped_running(job)
            self._clock.callLater(0, self.pump)

    def hand_over(self) -> int:
        """Offer every job queued here (held ones included): this node is
        stopping, and another may run them meanwhile.  How many were offered."""
        if self.offers is None:
            return 0
        queued = [job for job in self.jobs if job.status is JobStatus.QUEUED]
        for job in queued:
            self._offer(job)
        return len(queued)

    def claimable(self) -> tuple[list[str], int, int]:
        """What this node may claim now: the targets its workers serve, how
        many jobs at most (their free slots, and the room left of the one
        job per slot that may wait here: ``_keeps``), and their slots."""
        targets: set[str] = set()
        free = slots = 0
        for worker in self.workers:
            slots += worker.slots
            free += max(0, worker.free)
            targets.add(f"worker:{worker.name}")
            targets.update(f"label:{label}" for label in worker.labels)
        if slots:
            targets.add("any")
        return sorted(targets), free + max(0, slots - len(self._queue)), slots

    def ended_elsewhere(self, job_ids: Iterable[int]) -> None:
        """Jobs this node let go have ended on another node (or came back):
        their tasks' next runs held for ``overlap: queue`` may start."""
        tasks = self.jobs.ended_elsewhere(job_ids)
        self._release_held([f"overlap:{task_id}" for task_id in tasks if not self.jobs.running_for(task_id)])

    def take(self, jobs: Iterable[Job]) -> None:
        """Take up queued jobs claimed from the cluster, as ``restore`` does, and place them."""
        for job in sorted(jobs, key=lambda job: job.id):
            if job.status is not JobStatus.QUEUED or self.jobs.get(job.id) is not None:
                continue
            self.jobs.put(job)
            self._tails.open(job.id)
            if not self._jitter.hold(job.id, self._start_of(job)):
                self._queue.push(job.id, job.target)
        self.pump()

    def _stopped_running(self, job: Job) -> None:
        """*job* left a worker (ended, rejected or lost): look again at what it held up."""
        keys = list(self._caps.stop(job.id))
        if job.task_id is not None and not self.jobs.running_for(job.task_id):
            keys.append(f"overlap:{job.task_id}")
        self._release_held(keys)

    def _release_held(self, keys: list[str]) -> None:
        released = False
        for key in keys:
            for job_id in self._held.pop(key, ()):
                self._held_reason.pop(job_id, None)
                held = self.jobs.get(job_id)
                if held is not None and held.status is JobStatus.QUEUED:
                    # Back in its place by id: ahead of every newer job.
                    self._queue.push(job_id, held.target)
                    released = True
        if released:
            self._clock.callLater(0, self.pump)

    def _place(self, target: str, avoid: str | None = None) -> Worker | None:
        if target.startswith("worker:"):
            worker = self.workers.get(target[7:])
            ok = worker is not None and worker.free > 0 and worker.name != avoid
            return worker if ok else None
        return self.workers.place(target, avoid)

    def _rejected_by(self, job_id: int) -> str | None:
        """The worker that rejected *job_id* less than REJECTED_REST ago, if any."""
        if not self._rejected:
            return None
        rejected = self._rejected.get(job_id)
        if rejected is None:
            return None
        if rejected[1] <= self._clock.seconds():
            del self._rejected[job_id]
            return None
        return rejected[0]

    def _must_wait(self, job: Job) -> tuple[str, str] | None:
        """What holds *job* back now (a key and why), or None if it may start."""
        task = self._task(job.task_id) if job.task_id is not None else None
        if task is not None and task.options.overlap == "queue" and self.jobs.running_for(task.id):
            return f"overlap:{task.id}", "its previous run is still going (overlap: queue)"
        return self._caps.blocked(job, task)

    @property
    def caps(self) -> RunCaps:
        return self._caps

    def waiting(self, job_id: int) -> str | None:
        """Why a queued job is not running yet, in words; None if it is not waiting."""
        job = self.jobs.get(job_id)
        if job is None or job.status is not JobStatus.QUEUED:
            return None
        held = self._held_reason.get(job_id)
        if held is not None:
            return held[1]
        if job_id in self._jitter:
            return "its jitter starts it a little after its time"
        target = job.target
        eligible = [worker for worker in self.workers if worker.accepts(target)]
        if not eligible:
            if target.startswith("worker:"):
                return f"worker {target[7:]} is not connected"
            if target.startswith("label:"):
                return f"no worker with label {target[6:]} is connected"
            return "no worker is connected"
        rejected = self._rejected_by(job_id)
        if rejected is not None:
            return f"worker {rejected} had no room for it; it is tried again in a moment"
        if all(worker.free <= 0 for worker in eligible):
            return "every slot of the workers it may run on is busy"
        return "waiting its turn behind older jobs"

    def _dispatch(self, job: Job, worker: Worker) -> None:
        command, env = job.command, dict(job.env)
        if self._secrets is not None:
            try:
                resolved = self._secrets.resolve(command, env, worker.name, worker.labels)
            except SecretError as error:
                # Before anything is sent or started: the job fails, saying why.
                log.warn("job {job_id} not sent to {worker}: {reason}", job_id=job.id, worker=worker.name, reason=str(error))
                self._finish(job, JobStatus.FAILED, reason=str(error))
                return
            command, env = resolved.command, resolved.env
            if resolved.mask:
                self._masks[job.id] = resolved.mask
        self._caps.start(job, self._task(job.task_id) if job.task_id is not None else None)
        worker.running.add(job.id)
        job = self.jobs.update(job, status=JobStatus.RUNNING, worker=worker.name)
        self.workers.changed(worker)
        self._unsent.add(job.id)

        def send(_: object) -> None:
            # After the commit: a scheduler that dies now still knows the job.
            if job.id not in self._unsent:
                return  # cancelled, lost or failed in the meantime
            self._unsent.discard(job.id)
            fields: dict[str, Any] = {
                "job": job.id,
                "command": command,
                "env": env,
                "cwd": job.cwd,
                "timeout": job.timeout,
            }
            if job.id in self._masks:
                fields["mask"] = list(self._masks[job.id])
            start = self._start_of(job) or job.scheduled_at or 0.0
            early = min(start - self._clock.seconds(), MAX_START_DELAY)
            if early > 0:
                # Fired ahead of its second (see CronTicker's lead), or of its
                # jittered start (held until within reach): the worker waits
                # this long, so the job starts on time, not before, and the
                # transit to the worker is off the critical path.
                fields["delay"] = round(early, 6)
            worker.link.send("run", **fields)

        self._recorder.put(job).addCallbacks(send, lambda failure: self._not_recorded(job.id, failure))

    # -- what workers say ----------------------------------------------

    def take_over(self, name: str, reported: Mapping[int, tuple[str, int]]) -> Deferred[None] | None:
        """With several nodes: before worker *name*'s welcome, make this node the
        manager of the jobs its hello reports, in the job history.

        They may have been another node's (dead, or cut off from the
        worker).  Those still running on the worker there are taken up
        (book, output tail, caps, a pending cancel); the others are let go
        (the hello then drops them).  Returns None when there is nothing to
        ask (one node, or no jobs), so the welcome need not wait; else a
        Deferred that fires once it is done, or fails if the job history
        could not be asked (the worker is then refused, and dials again).
        """
        if self._take_over is None or not reported:
            return None
        asked = sorted(reported)
        return self._take_over(name, asked).addCallback(self._took_over, name, asked)

    def _took_over(self, taken: list[tuple[Job, int, str | None]], name: str, asked: list[int]) -> None:
        mine = set()
        for stored, last_seq, was in taken:
            mine.add(stored.id)
            known = self.jobs.get(stored.id)
            if known is not None and known.worker != name:
                self._disowned(known.id)
                known = None
            # The database's record, even of a job in the book: the take-over
            # read came after every write of this node's, and another node
            # may have had the job since this one loaded it at its start.
            job = self.jobs.adopt(stored)
            if job.id in self._tails:
                last_seq = max(last_seq, self._tails.last_seq(job.id))
            self._tails.open(job.id, last_seq)
            if known is None:
                self._caps.start(job, self._task(job.task_id) if job.task_id is not None else None)
            if was is not None:
                self.taken_over += 1
                log.info(
                    "job {job_id} on worker {name}: taken over from node {was}", job_id=job.id, name=name, was=was or "-"
                )
            # As for a restored job: the hello that follows cancels it.
            self._lost_timers.start(job.id, self.lost_after, self._lost_timeout, job.id, name)
            if job.cancel_requested_at is not None:
                self._cancels.add(job.id)
        for job_id in asked:
            if job_id not in mine and self.jobs.get(job_id) is not None:
                self._disowned(job_id)

    def _disowned(self, job_id: int) -> None:
        """Another node manages *job_id* now: forget it here, recording nothing.

        Its end is that node's to record (and to alert on, and to retry):
        this node's view of the job is stale, and ending it here would give
        it a second result.
        """
        job = self.jobs.get(job_id)
        if job is None:
            return
        self.let_go += 1
        log.info("job {job_id}: another node manages it now; letting it go", job_id=job_id)
        self._let_go(job)
        worker = self.workers.get(job.worker or "")
        if worker is not None and job_id in worker.running:
            worker.running.discard(job_id)
            self.workers.changed(worker)
        self._stopped_running(job)

    def _record(self, job: Job) -> None:
        """Write a change of an active job whose failure to record is only logged."""
        self._recorder.put(job).addErrback(self._unrecorded_change, job.id)

    def _unrecorded_change(self, failure: Any, job_id: int) -> None:
        if failure.check(Disowned):
            self._disowned(job_id)
        else:
            log.error("could not record job {job_id}: {error}", job_id=job_id, error=failure.getErrorMessage())

    def hello(self, worker: Worker, reported: Mapping[int, tuple[str, int]]) -> dict[str, Any]:
        """Reconcile a (re)connecting worker; returns the welcome's fields.

        *reported* maps job id to (state, last seq) from the worker's hello.
        The cancels that waited for the worker, then its work, follow in the
        next turn: after the welcome the caller sends now.
        """
        stale = self.workers.add(worker)
        if stale is not None and stale.link is not worker.link:
            stale.link.close("replaced by a new connection from the same worker")
        resume: dict[str, int] = {}
        drop: list[int] = []
        cancels: list[int] = []
        for job_id, (state, seq) in reported.items():
            job = self.jobs.get(job_id)
            if job is None or job.worker != worker.name or job.status.final:
                drop.append(job_id)
                worker.running.discard(job_id)
                continue
            self._lost_timers.cancel(job_id)
            worker.running.add(job_id)
            self._tails.open(job_id)
            resume[str(job_id)] = self._tails.last_seq(job_id)
            if seq < self._tails.highest(job_id):
                log.warn(
                    "worker {name} reports job {job_id} at output chunk {seq}, but chunks up to {kept} "
                    "had arrived: the worker lost output",
                    name=worker.name,
                    job_id=job_id,
                    seq=seq,
                    kept=self._tails.highest(job_id),
                )
            if job_id in self._cancels and state == "running":
                cancels.append(job_id)
        # Jobs placed on this worker that it does not know of died with it
        # (the worker restarted, or the run never reached it).
        for job in self.jobs.on_worker(worker.name):
            if job.status is JobStatus.RUNNING and job.id not in reported:
                worker.running.discard(job.id)
                self._lose_if_mine(job, worker.name, f"worker {worker.name} reconnected without it")
        self.workers.changed(worker)
        self._clock.callLater(0, self._welcomed, worker, cancels)
        return {
            "protocol": PROTOCOL_VERSION,
            "name": worker.name,
            "resume": resume,
            "drop": drop,
            "clockOffset": round(worker.clock_offset, 6),
        }

    def _welcomed(self, worker: Worker, cancels: list[int]) -> None:
        if not self.workers.holds(worker):
            return  # gone already: its next hello starts over
        for job_id in cancels:
            if job_id in self._cancels:
                log.info("delivering the cancel of job {job_id} to worker {name}", job_id=job_id, name=worker.name)
                worker.link.send("cancel", job=job_id)
        self.pump()

    def disconnected(self, worker: Worker) -> None:
        if not self.workers.remove(worker):
            return  # already replaced by a newer connection
        for job_id in worker.running:
            self._lost_timers.start(job_id, self.lost_after, self._lost_timeout, job_id, worker.name)

    def _lost_timeout(self, job_id: int, name: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.worker != name or job.status.final:
            return
        current = self.workers.get(name)
        if current is not None:
            current.running.discard(job_id)
        self._lose_if_mine(job, name, f"worker {name} went away and did not come back within {self.lost_after:g}s")

    def _lose_if_mine(self, job: Job, name: str, reason: str) -> None:
        """End *job* lost, which this node decided from its own view of it.

        With several nodes that view may be stale: another node may have
        taken the job over (its worker went there), or ended it (a job
        loaded at this node's start).  So the end is recorded first, and
        only if the record is still this node's does the job end here,
        with its alerts and retry; else it is let go.
        """
        if self._take_over is None:
            self._lose(job, reason)
            return
        ended = job.evolve(status=JobStatus.LOST, finished_at=self._clock.seconds(), reason=reason, version=job.version + 1)
        self._recorder.put(ended).addCallbacks(
            self._lost_recorded, self._unrecorded_change, callbackArgs=(job.id, name, reason), errbackArgs=(job.id,)
        )

    def _lost_recorded(self, _: object, job_id: int, name: str, reason: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.status.final:
            return
        current = self.workers.get(name)
        if current is not None:
            if job_id in current.running:
                # Back in the meantime: its report overwrites the record.
                return
            current.running.discard(job_id)
        self._lose(job, reason)

    def _lose(self, job: Job, reason: str) -> None:
        if job.id in self._cancels:
            # What was asked for happened, if not by the worker's hand.
            log.info("job {job_id} cancelled: {reason}", job_id=job.id, reason=reason)
            self._finish(job, JobStatus.CANCELLED, reason=f"cancelled while its worker was away; {reason}")
            return
        log.warn("job {job_id} lost: {reason}", job_id=job.id, reason=reason)
        self._finish(job, JobStatus.LOST, reason=reason)

    def _current(self, worker: Worker) -> None:
        # The jobs belong to the name; only the connection holding it now
        # may report on them, not one it replaced.
        if not self.workers.holds(worker):
            raise NotCurrent(
                f"this connection no longer holds the worker name {worker.name}: "
                "a newer connection replaced it, so its reports are ignored"
            )

    def _assigned(self, worker: Worker, job_id: int) -> Job:
        self._current(worker)
        job = self.jobs.get(job_id)
        if job is None or job.worker != worker.name or job_id not in worker.running:
            raise NotRunningHere(job_id, f"job {job_id} is not running on worker {worker.name}")
        return job

    def _worker_time(self, worker: Worker, at: float, not_before: float) -> float:
        """A time a worker reported, on our clock and within what we saw."""
        return min(max(at + worker.clock_offset, not_before), self._clock.seconds())

    def started(self, worker: Worker, job_id: int, at: float) -> None:
        self._started(self._assigned(worker, job_id), worker, at)

    def _started(self, job: Job, worker: Worker, at: float) -> Job:
        if job.started_at is not None:
            return job
        job = self.jobs.update(job, started_at=self._worker_time(worker, at, job.created_at))
        self._record(job)
        self._tell_started(job)
        return job

    def _tell_started(self, job: Job) -> None:
        assert job.started_at is not None
        due = self._start_of(job) or (job.scheduled_at if job.scheduled_at is not None else job.created_at)
        for listener in self.started_listeners:
            listener(job, max(0.0, job.started_at - due))

    def output(self, worker: Worker, job_id: int, seq: int, stream: str, data: str) -> None:
        self._assigned(worker, job_id)
        self._output(job_id, seq, stream, data)

    def _output(self, job_id: int, seq: int, stream: str, data: str) -> None:
        if self._secrets is not None:
            # Again, after the worker: whatever is kept or shown is masked.
            data = mask_text(data, self._mask_of(job_id))
        if not self._tails.add(job_id, seq, stream, data):
            return  # a resend of what we have
        self._recorder.append_output(job_id, seq, stream, data)
        for listener in self.output_listeners:
            listener(job_id, seq, stream, data)

    def _mask_of(self, job_id: int) -> tuple[str, ...]:
        """The secret values of an active job (found again for a job sent before a restart)."""
        mask = self._masks.get(job_id)
        if mask is None:
            job = self.jobs.get(job_id)
            if job is None or self._secrets is None:
                return ()
            mask = self._masks[job_id] = tuple(self._secrets.values_for(job.command, job.env))
        return mask

    def finished(self, worker: Worker, report: Finished) -> None:
        job = self._assigned(worker, report.job)
        for stream, seq, data in report.output:
            self._output(job.id, seq, stream, data)
        # A job that ended before the worker said it started (protocol 2
        # holds `started` back 50 ms) goes from placed to ended in one
        # change and one record, which carry started_at: a record of it
        # running would be replaced within the same transaction anyway.
        unreported = job.started_at is None
        started_at = self._worker_time(worker, report.started_at, job.created_at) if unreported else job.started_at
        assert started_at is not None
        if report.cancelled:
            status = JobStatus.CANCELLED
        elif report.timed_out:
            status = JobStatus.TIMED_OUT
        elif report.exit_code == 0:
            status = JobStatus.SUCCEEDED
        else:
            status = JobStatus.FAILED
        changes: dict[str, Any] = {}
        reason = self._missing_output(job.id, report.seq)
        if reason is not None:
            changes["reason"] = reason
        worker.running.discard(job.id)
        done = self._finish(
            job,
            status,
            on_recorded=lambda: worker.link.send("ack", jobs=[job.id]),
            exit_code=report.exit_code,
            signal=report.signal,
            started_at=started_at,
            finished_at=self._worker_time(worker, report.finished_at, started_at),
            **changes,
        )
        if unreported:
            self._tell_started(done)
        self.workers.changed(worker)
        self.pump()

    def _missing_output(self, job_id: int, last: int) -> str | None:
        """Say so, in the output and as the reason, if the chunks do not match *last*."""
        problems = []
        gaps = self._tails.missing(job_id, last)
        if gaps:
            runs = ", ".join(str(first) if first == end else f"{first}-{end}" for first, end in gaps)
            plural = "s" if len(gaps) > 1 or gaps[0][0] != gaps[0][1] else ""
            problems.append(f"output incomplete: chunk{plural} {runs} of {last} never arrived")
        highest = self._tails.highest(job_id)
        if highest > last:
            problems.append(f"output inconsistent: chunks up to {highest} arrived, but finished says {last}")
        if not problems:
            return None
        reason = "; ".join(problems)
        log.warn("job {job_id}: {reason}", job_id=job_id, reason=reason)
        # After every chunk that came, so it reads last.
        self._output(job_id, max(last, highest) + 1, "stderr", f"[scheduler: {reason}]\n")
        return reason

    # Seconds before a job goes back to the worker that rejected it: a full
    # worker answers at once, and would otherwise be asked again at once.
    REJECTED_REST = 1.0

    def rejected(self, worker: Worker, job_id: int, reason: str) -> None:
        job = self._assigned(worker, job_id)
        worker.running.discard(job_id)
        if job_id in self._cancels:
            self._finish(job, JobStatus.CANCELLED, reason="cancelled before it started")
            self.workers.changed(worker)
            return
        job = self.jobs.update(job, status=JobStatus.QUEUED, worker=None)
        self._record(job)
        log.info("worker {name} rejected job {job_id}: {reason}", name=worker.name, job_id=job_id, reason=reason)
        self._rejected[job_id] = (worker.name, self._clock.seconds() + self.REJECTED_REST)
        self._queue.push(job_id, job.target)
        self._stopped_running(job)
        # Another worker may take it now; this one in a second.
        self.pump(job.target)
        self._clock.callLater(self.REJECTED_REST, self.pump)

    # -- ending --------------------------------------------------------

    def cancel(self, job_id: int) -> Job:
        """Cancel *job_id*: at once if queued, else by asking its worker.

        The ask is kept until the job ends: a worker that is away gets it
        after its next welcome (docs/protocol.md, ``cancel``).
        """
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no active job {job_id}")
        if job.status is JobStatus.QUEUED or job.id in self._unsent:
            self._unsent.discard(job.id)
            worker = self.workers.get(job.worker or "")
            if worker is not None:
                worker.running.discard(job.id)
            return self._finish(job, JobStatus.CANCELLED, reason="cancelled before it started")
        self._cancels.add(job.id)
        if job.cancel_requested_at is None:
            # Kept with the job, so a restart still owes the cancel (restore).
            job = self.jobs.update(job, cancel_requested_at=self._clock.seconds())
            self._recorder.put(job)
        worker = self.workers.get(job.worker or "")
        if worker is None:
            log.info(
                "job {job_id}: its worker {name} is away; the cancel waits for it to come back",
                job_id=job_id,
                name=job.worker,
            )
        else:
            worker.link.send("cancel", job=job_id)
        return job

    def _finish(
        self, job: Job, status: JobStatus, *, on_recorded: Callable[[], None] | None = None, **changes: Any
    ) -> Job:
        """Record *job*'s end; ``on_recorded`` runs once that is on disk.

        The worker's ``ack`` waits for that: a worker forgets a result only
        when a crash can no longer lose it.
        """
        self._forget(job)
        if "finished_at" not in changes:
            changes["finished_at"] = self._clock.seconds()
        done = self.jobs.update(job, status=status, **changes)
        recorded = self._recorder.put(done)
        self._ended(done)
        self._when_recorded(recorded, done, on_recorded)
        self._tails.close(job.id)
        self._masks.pop(job.id, None)
        self._stopped_running(job)
        self._retries.after(done)
        return done

    # A job's end that could not be recorded (the job database away for a
    # moment) is tried again after this long, doubling up to END_RETRY_MOST,
    # for as long as the store is open: its worker keeps the result until
    # the ack, which only a recorded end sends.  Given up, the end was
    # never written: the job's row stayed as it was before it ran.
    END_RETRY_FIRST = 1.0
    END_RETRY_MOST = 30.0

    def _when_recorded(
        self,
        recorded: Deferred[None],
        done: Job,
        on_recorded: Callable[[], None] | None,
        wait: float | None = None,
    ) -> None:
        """``on_recorded`` once *recorded* (the put of *done*) fires; tried again if it fails."""

        def written(_: object) -> None:
            if wait is not None:
                log.info("recorded the end of job {job_id} after all", job_id=done.id)
            if on_recorded is not None:
                on_recorded()

        recorded.addCallbacks(written, self._end_not_recorded, errbackArgs=(done, on_recorded, wait))

    def _record_end_again(self, done: Job, on_recorded: Callable[[], None] | None, wait: float) -> None:
        self._when_recorded(self._recorder.put(done), done, on_recorded, wait)

    def _end_not_recorded(self, failure: Any, done: Job, on_recorded: Callable[[], None] | None, wait: float | None) -> None:
        if failure.check(Disowned):
            # Another node took the job over and records its end.
            log.info("job {job_id}: its end is another node's to record", job_id=done.id)
            return
        if failure.check(JobStoreClosed, Fenced):
            log.error("could not record the end of job {job_id}: {error}", job_id=done.id, error=failure.getErrorMessage())
            return
        following = self.END_RETRY_FIRST if wait is None else min(2 * wait, self.END_RETRY_MOST)
        if wait is None:
            log.warn(
                "could not record the end of job {job_id}: {error}; trying again until it is",
                job_id=done.id,
                error=failure.getErrorMessage(),
            )
        self._clock.callLater(following, self._record_end_again, done, on_recorded, following)

    def _ended(self, job: Job) -> None:
        for listener in self.ended_listeners:
            try:
                listener(job)
            except Exception:
                log.failure("job end listener {listener!r} failed", listener=listener)

    def miss(self, task: Task, scheduled: float, reason: str) -> Job | None:
        """Record a fire of *task* that will not run (missed in downtime); None if that time was handled."""
        job = self.jobs.fire(task.id, scheduled, task.command, target=task.options.target, triggered_by=MISSED)
        if job is None:
            return None
        done = self.jobs.update(job, status=JobStatus.MISSED, finished_at=self._clock.seconds(), reason=reason)
        self._recorder.put(done).addErrback(
            lambda failure: log.error(
                "could not record missed run {job_id}: {error}", job_id=job.id, error=failure.getErrorMessage()
            )
        )
        self._ended(done)
        return done

    def restore(self, jobs: list[tuple[Job, int]]) -> None:
        """Take up the active jobs of the previous run (with their last seq).

        Queued jobs queue again in their order; running ones wait for their
        worker to say hello, and are lost if it does not within lost_after.
        A running job whose cancel was asked for keeps that cancel: it is
        sent after its worker's welcome, or the job ends cancelled.
        """
        for job, last_seq in sorted(jobs, key=lambda pair: pair[0].id):
            self._tails.open(job.id, last_seq)
            if job.status is JobStatus.QUEUED:
                if not self._jitter.hold(job.id, self._start_of(job)):
                    self._queue.push(job.id, job.target)
            elif job.worker is not None:
                self._caps.start(job, self._task(job.task_id) if job.task_id is not None else None)
                self._lost_timers.start(job.id, self.lost_after, self._lost_timeout, job.id, job.worker)
                if job.cancel_requested_at is not None:
                    self._cancels.add(job.id)

    def resume_retries(self, ended: list[Job]) -> None:
        """Arm the retries owed (``Retries.resume``): at start, when this node
        starts leading, and for jobs the leader's sweep finds ended elsewhere."""
        self._retries.resume(ended)

    def stop_retries(self) -> None:
        """This node no longer leads: the new leader arms the retries owed."""
        self._retries.stop()

    def swept_lost(self, job: Job) -> None:
        """*job* was ended by the leader's sweep (its node went silent): alerts and
        a retry follow, as for an end here."""
        self._disowned(job.id)
        self._ended(job)
        self._retries.after(job)

    def live_output(self, job_id: int) -> str | None:
        """Kept output of an active job, or None if it is not active."""
        if self.jobs.get(job_id) is None:
            return None
        return self._tails.text(job_id)

    def last_seq(self, job_id: int) -> int:
        return self._tails.last_seq(job_id)

    def stop(self) -> None:
        self._lost_timers.stop()
        self._jitter.stop()
        self._retries.stop()


