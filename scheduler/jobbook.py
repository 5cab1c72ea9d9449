"""Job records in memory: the live ones, and the idempotency keys of fires."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from twisted.internet.interfaces import IReactorTime

from scheduler.jobs import Job, JobStatus, fire_key

JobListener = Callable[[Job], None]


class JobBook:
    """Every job the scheduler knows of, by id.

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

    def fire(self, task_id: int, scheduled: float, command: str, **options: object) -> Job | None:
        """A queued job for a cron fire, or None if that fire already ran."""
        key = fire_key(task_id, scheduled)
        if key in self._keys:
            return None
        self._keys.add(key)
        return self.create(command, task_id=task_id, key=key, scheduled_at=scheduled, **options)

    def create(self, command: str, **fields: object) -> Job:
        job = Job(id=self._next_id, command=command, created_at=self._clock.seconds(), **fields)  # type: ignore[arg-type]
        self._next_id += 1
        self.put(job)
        return job

    def put(self, job: Job) -> None:
        self._jobs[job.id] = job
        for listener in self.listeners:
            listener(job)

    def update(self, job_id: int, **changes: object) -> Job:
        job = self._jobs[job_id].evolve(**changes)
        self.put(job)
        return job

    def restore(self, jobs: Mapping[int, Job], keys: set[str]) -> None:
        self._jobs.update(jobs)
        self._keys |= keys
        if jobs:
            self._next_id = max(self._next_id, max(jobs) + 1)
