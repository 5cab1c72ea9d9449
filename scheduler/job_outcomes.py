"""What the job history says of each task's runs, read once at start-up: for health and alerts.

Per task: when a run last succeeded, when it last had a job (a ping check's
last ping), and the runs that ended badly since that success.  The alert
watch (``scheduler.alert_watch``) rebuilds its streaks and timers from it,
as the retries are re-armed from ``JobHistory.unretried``; the job history
reads it (``JobHistory.outcomes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler.jobs import JobStatus

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
