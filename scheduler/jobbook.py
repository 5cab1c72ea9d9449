"""The jobs still in play (queued or running), and the fires already seen."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from scheduler.jobs import MUTABLE_FIELDS, Job, JobStatus, fire_key

log = Logger()

JobListener = Callable[[Job], None]


class JobBook:
    """Active jobs by id, plus the idempotency keys of every recent fire.

    Finished jobs leave the book once recorded (the job store keeps them);
    ``fire`` refuses a second job for a (task, scheduled time) it has seen,
    which is what makes each scheduled time run at most once.
    """

    def __init__(self, clock: IReactorTime, next_id: int = 1) -> None:
        self._clock = clock
        self._jobs: dict[int, Job] = {}
        self._keys: set[str] = set()
        self._next_id = next_id
        self.listeners: list[JobListener] = []

    def __iter__(self) -> Iterator[Job]:
        return iter(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def count(self, status: JobStatus) -> int:
        return sum(1 for job in self._jobs.values() if job.status is status)

    def seen(self, key: str) -> bool:
        return key in self._keys

    def mark_fired(self, task_id: int, scheduled: float) -> None:
        """Record that a fire was handled without a job (e.g. skipped)."""
        self._keys.add(fire_key(task_id, scheduled))

    def fire(self, task_id: int, scheduled: float, command: str, **fields: object) -> Job | None:
        """A queued job for a cron fire, or None if that fire already ran."""
        key = fire_key(task_id, scheduled)
        if key in self._keys:
            return None
        self._keys.add(key)
        return self.create(command, task_id=task_id, key=key, scheduled_at=scheduled, **fields)

    def create(self, command: str, **fields: object) -> Job:
        job = Job(id=self._next_id, command=command, created_at=self._clock.seconds(), **fields)  # type: ignore[arg-type]
        self._next_id += 1
        self.put(job)
        return job

    def put(self, job: Job) -> None:
        """Record a new state of *job*; a final one leaves the book."""
        if job.status.final:
            self._jobs.pop(job.id, None)
        else:
            self._jobs[job.id] = job
        for listener in self.listeners:
            # A failing observer (feed, metrics) must not stop a job's record.
            try:
                listener(job)
            except Exception:
                log.failure("job listener {listener!r} failed", listener=listener)

    def update(self, job: Job, **changes: object) -> Job:
        fixed = changes.keys() - MUTABLE_FIELDS
        if fixed:
            raise ValueError(f"job {job.id}: {', '.join(sorted(fixed))} cannot change once a job exists")
        changed = job.evolve(**changes)
        self.put(changed)
        return changed

    def restore(self, jobs: Iterable[Job], keys: set[str], max_id: int) -> None:
        """Pick up where the last run of the scheduler left off."""
        for job in jobs:
            self._jobs[job.id] = job
        self._keys |= keys
        self._next_id = max(self._next_id, max_id + 1)
