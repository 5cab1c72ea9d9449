"""What the job history says of each task's runs, read once at start-up: for health and alerts.

Per task: when a run last succeeded, when it last had a job (a ping check's
last ping), and the runs that ended badly since that success.  The alert
watch (``scheduler.alert_watch``) rebuilds its streaks and timers from it,
as the retries are re-armed from ``JobHistory.unretried``.

This is a blocking read of ``jobs.sqlite`` made before the reactor runs,
through the SQLite backend's connection and lock; it belongs beside
``unretried`` in ``scheduler/job_history/`` (a ``JobHistory`` method) and is
kept apart only while the job store is being changed on another branch.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.alert_rules import ENDED_BADLY
from scheduler.jobs import JobStatus

_BAD_SQL = ", ".join(f"'{status.value}'" for status in sorted(ENDED_BADLY))
# At most this many bad ends per task are read: a streak longer than the
# history keeps (--keep-jobs) cannot be replayed whole anyway.
MAX_ENDS = 1000


@dataclass
class TaskOutcomes:
    last_success: float | None = None
    last_job: float | None = None
    # (status, attempt, finished at) of each run that ended badly since the
    # last success, oldest first; the alert watch decides which were final.
    bad_ends: list[tuple[JobStatus, int, float]] = field(default_factory=list)


class SqliteRows(Protocol):
    connection: sqlite3.Connection | None
    lock: threading.Lock


def read_outcomes(database: SqliteRows) -> dict[int, TaskOutcomes]:
    conn = database.connection
    if conn is None:
        return {}
    outcomes: dict[int, TaskOutcomes] = {}

    def of(task_id: int) -> TaskOutcomes:
        found = outcomes.get(task_id)
        if found is None:
            found = outcomes[task_id] = TaskOutcomes()
        return found

    with database.lock:
        # Each task's newest job, through the (task_id, id) index.
        for task_id, created in conn.execute(
            "SELECT task_id, created_at FROM jobs WHERE id IN "
            "(SELECT MAX(id) FROM jobs WHERE task_id IS NOT NULL GROUP BY task_id)"
        ):
            of(int(task_id)).last_job = float(created)
        # Each task's newest success, and the bad ends after it: the newest
        # success per task is worked out once (an aggregate, materialised),
        # not searched for again for each bad end.
        newest_ok = (
            "SELECT task_id, MAX(id) AS id FROM jobs WHERE task_id IS NOT NULL AND status = 'succeeded' GROUP BY task_id"
        )
        for task_id, finished in conn.execute(
            f"SELECT j.task_id, COALESCE(j.finished_at, j.created_at) FROM jobs AS j WHERE j.id IN (SELECT id FROM ({newest_ok}))"
        ):
            of(int(task_id)).last_success = float(finished)
        rows = conn.execute(
            f"WITH ok AS ({newest_ok}) "
            "SELECT j.task_id, j.status, j.attempt, COALESCE(j.finished_at, j.created_at) FROM jobs AS j "
            "LEFT JOIN ok ON ok.task_id = j.task_id "
            f"WHERE j.task_id IS NOT NULL AND j.status IN ({_BAD_SQL}) AND j.id > COALESCE(ok.id, 0) "
            "ORDER BY j.task_id, j.id"
        ).fetchall()
    for task_id, status, attempt, finished in rows:
        ends = of(int(task_id)).bad_ends
        ends.append((JobStatus(status), int(attempt), float(finished)))
        if len(ends) > MAX_ENDS:
            del ends[0]
    return outcomes


def last_at_work(database: SqliteRows) -> float | None:
    """The last moment the history shows the scheduler at work: the newest jobs' latest time.

    Ids grow with creation, so the newest thousand jobs hold it, read
    through the primary key without a scan.
    """
    conn = database.connection
    if conn is None:
        return None
    with database.lock:
        row = conn.execute(
            "SELECT MAX(MAX(created_at, COALESCE(started_at, 0), COALESCE(finished_at, 0))) "
            "FROM (SELECT created_at, started_at, finished_at FROM jobs ORDER BY id DESC LIMIT 1000)"
        ).fetchone()
    return None if row is None or row[0] is None else float(row[0])
