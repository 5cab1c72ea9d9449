"""Caps on how many jobs run at once: per task, per named pool, per label.

A task's ``maxConcurrent`` caps its own runs; tasks naming the same
``pool`` share the pool's size (``--pools backups=2``), so a hundred tasks
that hit one database run at most that many at once; ``--label-caps
gpu=4`` caps the jobs aimed at ``label:gpu`` across the fleet.  The
dispatcher asks :meth:`RunCaps.blocked` before placing a job, charges the
job's keys when it starts and frees them when it stops running; a job
held by a cap waits aside, by the key that held it, until a job with
that key stops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from scheduler.jobs import Job
from scheduler.tasks import POOL_NAME, Task, TaskError

# A key names one cap: "task:<id>", "pool:<name>" or "label:<label>".
CapKey = str


def parse_sizes(text: str | None, what: str) -> dict[str, int]:
    """``name=size,name=size`` (the --pools and --label-caps options)."""
    sizes: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, equals, size = part.strip().partition("=")
        if not equals or not POOL_NAME.match(name.strip()) or not size.strip().isdigit() or int(size) < 1:
            raise TaskError(f"{what} must be name=size pairs separated by commas, e.g. backups=2,db=4 (got {part.strip()!r})")
        sizes[name.strip()] = int(size)
    return sizes


class RunCaps:
    def __init__(self, pools: Mapping[str, int] | None = None, labels: Mapping[str, int] | None = None) -> None:
        self.pools = dict(pools or {})
        self.labels = dict(labels or {})
        self._running: Counter[CapKey] = Counter()
        # The keys each running job was charged to.
        self._charged: dict[int, tuple[CapKey, ...]] = {}

    def _caps(self, job: Job, task: Task | None) -> list[tuple[CapKey, int, str]]:
        """(key, cap, what to call it) for every cap that applies to *job*."""
        caps: list[tuple[CapKey, int, str]] = []
        if task is not None:
            if task.options.maxConcurrent is not None:
                caps.append((f"task:{task.id}", task.options.maxConcurrent, f"{task.job_name}'s maxConcurrent"))
            pool = task.options.pool
            if pool is not None and pool in self.pools:
                caps.append((f"pool:{pool}", self.pools[pool], f"pool {pool}"))
        if job.target.startswith("label:"):
            label = job.target[6:]
            if label in self.labels:
                caps.append((f"label:{label}", self.labels[label], f"the cap on label {label}"))
        return caps

    def blocked(self, job: Job, task: Task | None) -> tuple[CapKey, str] | None:
        """The first cap *job* would go over, and why in words; None if it may start."""
        for key, cap, what in self._caps(job, task):
            running = self._running[key]
            if running >= cap:
                return key, f"{what} is full ({running} of {cap} running)"
        return None

    def start(self, job: Job, task: Task | None) -> None:
        keys = tuple(key for key, _, _ in self._caps(job, task))
        if keys:
            self._charged[job.id] = keys
            self._running.update(keys)

    def stop(self, job_id: int) -> tuple[CapKey, ...]:
        """*job_id* no longer runs: the keys it frees (the held jobs to look at again)."""
        keys = self._charged.pop(job_id, ())
        for key in keys:
            self._running[key] -= 1
            if self._running[key] <= 0:
                del self._running[key]
        return keys

    def running(self, key: CapKey) -> int:
        return self._running[key]

    def unknown_pool(self, task: Task) -> bool:
        """Does *task* name a pool this scheduler has no size for (so no cap)?"""
        return task.options.pool is not None and task.options.pool not in self.pools
