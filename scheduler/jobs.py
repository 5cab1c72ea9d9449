"""Jobs: one run of a command, from a cron fire or a request to run now."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from scheduler.triggers import TriggeredBy


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"
    # A scheduled time that passed while the scheduler was down and that
    # its task's missed policy does not run: recorded, never run.
    MISSED = "missed"

    @property
    def final(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


# What may change once a job exists; everything else is fixed when it is
# created.  The job store rewrites only these columns (and only the indexes
# over them) when a job's state changes.
MUTABLE_FIELDS = frozenset(
    {"status", "worker", "exit_code", "signal", "started_at", "finished_at", "reason", "cancel_requested_at", "version"}
)


@dataclass(frozen=True)
class Job:
    id: int
    command: str
    created_at: float
    task_id: int | None = None
    # Fires carry "<task id>@<scheduled time>": one run per scheduled time.
    key: str | None = None
    scheduled_at: float | None = None
    target: str = "any"
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    attempt: int = 1
    # What created the job; None in records written before it was kept.
    triggered_by: TriggeredBy | None = None
    status: JobStatus = JobStatus.QUEUED
    worker: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    reason: str | None = None
    # When a cancel was asked for while the job ran (None if never): kept
    # until the job ends, across a restart, for a worker that is away.
    cancel_requested_at: float | None = None
    # One more with every change of the record (JobBook.update), stored
    # with it: a reader holding two copies keeps the higher, whatever order
    # they arrived in.  A status cannot give that order, since a rejected
    # job goes from running back to queued.
    version: int = 1

    def evolve(self, **changes: Any) -> Job:
        """A copy with *changes*.

        Not dataclasses.replace: that calls __init__ with every field by
        name, several µs a call, and a job is evolved a few times in its
        life on the reactor thread.  Job has no __post_init__ to skip.
        """
        unknown = changes.keys() - _JOB_FIELDS
        if unknown:
            raise TypeError(f"Job has no field(s) {', '.join(sorted(unknown))}")
        copy = object.__new__(Job)
        values = copy.__dict__
        values.update(self.__dict__)
        values.update(changes)
        return copy


_JOB_FIELDS = frozenset(each.name for each in fields(Job))


def fire_key(task_id: int, scheduled: float) -> str:
    return f"{task_id}@{scheduled:.0f}" if scheduled == int(scheduled) else f"{task_id}@{scheduled}"


# A fire key, then "/<worker>" for the other jobs of a target=all fire and
# "#<attempt>" for retries: each names the fire it came from.
_FIRE_KEY = re.compile(r"([0-9]+)@([0-9]+(?:\.[0-9]+)?)(?:[/#].*)?", re.DOTALL)


def parse_fire_key(key: str) -> tuple[int, float] | None:
    """The (task id, scheduled time) a job's key names, or None."""
    match = _FIRE_KEY.fullmatch(key)
    if match is None:
        return None
    return int(match[1]), float(match[2])
