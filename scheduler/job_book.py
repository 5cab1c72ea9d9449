"""The jobs still in play (queued or running), and the fires lately seen."""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from scheduler.jobs import MUTABLE_FIELDS, Job, JobStatus, fire_key, parse_fire_key

log = Logger()

JobListener = Callable[[Job], None]
#: Does the job history hold a run of (task id, scheduled time)?
FireLookup = Callable[[int, float], bool]


class FiredTimes:
    """The (task, scheduled time) pairs handled within the last *horizon* seconds.

    The cron engine hands out each time once; what can bring a time back is
    the missed-run policy at start-up and a clock set back far enough for
    the engine to restart its schedules.  Both bring old times, which
    *recorded* (the job history) answers for; the horizon covers the fires
    whose records may still be on their way to the database, and those
    skipped by ``overlap: skip``, which leave no record.  So memory is flat
    in the number of fires: a horizon's worth at most, one int per fire in
    a set per scheduled time.
    """

    def __init__(self, clock: IReactorTime, horizon: float, recorded: FireLookup | None = None) -> None:
        self._clock = clock
        self.horizon = horizon
        self._recorded = recorded
        self._tasks_at: dict[float, set[int]] = {}
        # The keys of _tasks_at, oldest first.
        self._times: list[float] = []
        # Times before this may have been forgotten: ask the job history.
        self._forgotten_before = -math.inf

    def __len__(self) -> int:
        return sum(len(tasks) for tasks in self._tasks_at.values())

    def seen(self, task_id: int, scheduled: float) -> bool:
        tasks = self._tasks_at.get(scheduled)
        if tasks is not None and task_id in tasks:
            return True
        if scheduled < self._forgotten_before and self._recorded is not None:
            return self._recorded(task_id, scheduled)
        return False

    def add(self, task_id: int, scheduled: float) -> None:
        self._forget_old()
        tasks = self._tasks_at.get(scheduled)
        if tasks is None:
            tasks = self._tasks_at[scheduled] = set()
            heapq.heappush(self._times, scheduled)
        tasks.add(task_id)

    def forget_before(self, cutoff: float) -> None:
        """Keep nothing older than *cutoff* (the job history still answers)."""
        times = self._times
        while times and times[0] < cutoff:
            del self._tasks_at[heapq.heappop(times)]
        self._forgotten_before = max(self._forgotten_before, cutoff)

    def _forget_old(self) -> None:
        # Amortised O(1): one comparison unless a second has aged out.
        times = self._times
        if times and times[0] < self._clock.seconds() - self.horizon:
            self.forget_before(self._clock.seconds() - self.horizon)


class JobBook:
    """Active jobs by id (and by task), plus the fires lately handled.

    Finished jobs leave the book once recorded (the job store keeps them);
    ``fire`` refuses a second job for a (task, scheduled time) it has seen,
    which is what makes each scheduled time run at most once.  Everything
    asked per fire or per dispatch (is this task active? running?) is an
    index lookup, so a tick costs what is due, not what waits.
    """

    #: Seconds of fires kept in memory: the engine's 60 s catch-up window
    #: with room to spare for a slow tick and records still being written.
    FIRED_HORIZON = 120.0
    #: How far a restored job's version jumps (``restore``).
    RESTORED_VERSION_STEP = 1000

    def __init__(
        self,
        clock: IReactorTime,
        next_id: int = 1,
        *,
        recorded: FireLookup | None = None,
        horizon: float = FIRED_HORIZON,
    ) -> None:
        self._clock = clock
        self._jobs: dict[int, Job] = {}
        self._by_task: dict[int, set[int]] = {}
        self._running_by_task: Counter[int] = Counter()
        self._by_worker: dict[str, set[int]] = {}
        self._by_status: Counter[JobStatus] = Counter()
        # With --db: jobs of tasks this node let go to another node
        # (``release``), until it hears they ended; by job id, their task.
        # They count as a run still going, for the task's overlap policy.
        self._elsewhere: dict[int, int] = {}
        self._elsewhere_by_task: Counter[int] = Counter()
        self.fired = FiredTimes(clock, horizon, recorded)
        self._next_id = next_id
        # Where new job ids come from when a database hands them out (with
        # --db, several nodes share it); None: counted here, from next_id.
        self.id_source: Callable[[], int] | None = None
        self.listeners: list[JobListener] = []

    def __iter__(self) -> Iterator[Job]:
        return iter(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def count(self, status: JobStatus) -> int:
        return self._by_status[status]

    def active_for(self, task_id: int) -> bool:
        """Has *task_id* a job queued or running (here, or let go to another node)?"""
        return task_id in self._by_task or task_id in self._elsewhere_by_task

    def running_for(self, task_id: int) -> bool:
        """Has *task_id* a job running (placed on a worker, or let go to another node)?"""
        return self._running_by_task[task_id] > 0 or task_id in self._elsewhere_by_task

    @property
    def elsewhere(self) -> list[int]:
        """The jobs let go to another node not yet known to have ended."""
        return list(self._elsewhere)

    def on_worker(self, name: str) -> list[Job]:
        """The active jobs placed on the worker called *name*."""
        return [self._jobs[job_id] for job_id in self._by_worker.get(name, ())]

    def seen(self, task_id: int, scheduled: float) -> bool:
        return self.fired.seen(task_id, scheduled)

    def mark_fired(self, task_id: int, scheduled: float) -> None:
        """Record that a fire was handled without a job (e.g. skipped)."""
        self.fired.add(task_id, scheduled)

    def fire(self, task_id: int, scheduled: float, command: str, **fields: object) -> Job | None:
        """A queued job for a cron fire, or None if that fire already ran."""
        if self.fired.seen(task_id, scheduled):
            return None
        self.fired.add(task_id, scheduled)
        return self.create(command, task_id=task_id, key=fire_key(task_id, scheduled), scheduled_at=scheduled, **fields)

    def create(self, command: str, **fields: object) -> Job:
        job_id = self._next_id if self.id_source is None else self.id_source()
        job = Job(id=job_id, command=command, created_at=self._clock.seconds(), **fields)  # type: ignore[arg-type]
        self._next_id = max(self._next_id, job_id + 1)
        self.put(job)
        return job

    def put(self, job: Job) -> None:
        """Record a new state of *job*; a final one leaves the book."""
        if self._elsewhere:
            self.ended_elsewhere((job.id,))  # taken back from the cluster
        self._unindex(self._jobs.get(job.id))
        if job.status.final:
            self._jobs.pop(job.id, None)
        else:
            self._jobs[job.id] = job
            self._index(job)
        for listener in self.listeners:
            # A failing observer (feed, metrics) must not stop a job's record.
            try:
                listener(job)
            except Exception:
                log.failure("job listener {listener!r} failed", listener=listener)

    def release(self, job_id: int, *, watch: bool = True) -> Job | None:
        """Let *job_id* go without ending it: with ``--db``, another node
        manages it now (``scheduler.job_claims``).  Its fire stays seen; the
        listeners hear nothing, since the job itself did not change.  A
        task's job counts as going on until ``ended_elsewhere`` (*watch*;
        not a duplicate fire, which never runs)."""
        job = self._jobs.pop(job_id, None)
        self._unindex(job)
        if watch and job is not None and job.task_id is not None:
            self._elsewhere[job_id] = job.task_id
            self._elsewhere_by_task[job.task_id] += 1
        return job

    def ended_elsewhere(self, job_ids: Iterable[int]) -> set[int]:
        """Jobs let go have ended (or come back): the tasks they were of."""
        tasks = set()
        for job_id in job_ids:
            task_id = self._elsewhere.pop(job_id, None)
            if task_id is None:
                continue
            tasks.add(task_id)
            self._elsewhere_by_task[task_id] -= 1
            if self._elsewhere_by_task[task_id] <= 0:
                del self._elsewhere_by_task[task_id]
        return tasks

    def update(self, job: Job, **changes: object) -> Job:
        fixed = changes.keys() - MUTABLE_FIELDS
        if fixed:
            raise ValueError(f"job {job.id}: {', '.join(sorted(fixed))} cannot change once a job exists")
        changed = job.evolve(**changes, version=job.version + 1)
        self.put(changed)
        return changed

    def adopt(self, job: Job) -> Job:
        """Take up an active job another node managed (from the job history)."""
        # Past any version that node may have shown, as restore does.
        adopted = job.evolve(version=job.version + self.RESTORED_VERSION_STEP)
        self.put(adopted)
        return adopted

    def restore(self, jobs: Iterable[Job], keys: Iterable[str], max_id: int, *, keys_since: float) -> None:
        """Pick up where the last run of the scheduler left off.

        *keys* are the fire keys recorded since *keys_since*; for older
        times the job history answers.
        """
        for job in jobs:
            # The feed and the API show a change before it commits, and a
            # hard crash loses the last batch: jump past any version that
            # may have been shown (a job changes a few times per batch).
            job = job.evolve(version=job.version + self.RESTORED_VERSION_STEP)
            self._unindex(self._jobs.get(job.id))
            self._jobs[job.id] = job
            self._index(job)
        for key in keys:
            fire = parse_fire_key(key)
            if fire is not None:
                self.fired.add(*fire)
        self.fired.forget_before(keys_since)
        self._next_id = max(self._next_id, max_id + 1)

    def _index(self, job: Job) -> None:
        self._by_status[job.status] += 1
        if job.worker is not None:
            self._by_worker.setdefault(job.worker, set()).add(job.id)
        if job.task_id is None:
            return
        self._by_task.setdefault(job.task_id, set()).add(job.id)
        if job.status is JobStatus.RUNNING:
            self._running_by_task[job.task_id] += 1

    def _unindex(self, job: Job | None) -> None:
        if job is None:
            return
        self._by_status[job.status] -= 1
        if job.worker is not None:
            placed = self._by_worker[job.worker]
            placed.discard(job.id)
            if not placed:
                del self._by_worker[job.worker]
        if job.task_id is None:
            return
        ids = self._by_task.get(job.task_id)
        if ids is not None:
            ids.discard(job.id)
            if not ids:
                del self._by_task[job.task_id]
        if job.status is JobStatus.RUNNING:
            self._running_by_task[job.task_id] -= 1
            if self._running_by_task[job.task_id] <= 0:
                del self._running_by_task[job.task_id]

