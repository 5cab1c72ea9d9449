"""The JSON shapes of tasks, jobs and workers, for the REST routes and the live feed.

Both answer the dashboard, so a field added here shows up in ``GET
/api/jobs`` and in the feed's ``job`` events alike; the OpenAPI schemas
for them are in scheduler/http_openapi.py.  Times are ISO 8601 in the
scheduler's time zone, to the millisecond.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

from scheduler import cron
from scheduler.alert_deliveries import Delivery
from scheduler.audit import AuditEntry
from scheduler.jobs import Job
from scheduler.tasks import Task
from scheduler.triggers import Revision
from scheduler.worker_registry import Worker


def iso(timestamp: float | None, tz: tzinfo) -> str | None:
    return cron.iso(timestamp, tz, "milliseconds")


def task_json(task: Task, next_run: float | None, tz: tzinfo, health: str = "up") -> dict[str, Any]:
    """A task; *health* is what the alert watch says of it (scheduler.alert_watch)."""
    return {
        "id": task.id,
        "jobName": task.job_name,
        "schedule": task.schedule.expression,
        "description": cron.describe(task.schedule),
        "command": task.command,
        "nextRun": iso(next_run, tz),
        **task.options.as_dict(),
        "pausedUntil": iso(task.options.pausedUntil, tz),
        "health": health,
    }


def job_json(job: Job, tz: tzinfo, waiting: str | None = None) -> dict[str, Any]:
    """A job; *waiting* is why a queued one has not started (the dispatcher knows)."""
    duration = None
    if job.started_at is not None and job.finished_at is not None:
        duration = round(job.finished_at - job.started_at, 3)
    return {
        "id": job.id,
        "taskId": job.task_id,
        "command": job.command,
        "status": job.status.value,
        "worker": job.worker,
        "exitCode": job.exit_code,
        "signal": job.signal,
        "target": job.target,
        "timeout": job.timeout,
        "cwd": job.cwd,
        "attempt": job.attempt,
        "triggeredBy": job.triggered_by.as_json() if job.triggered_by is not None else None,
        "waiting": waiting,
        "reason": job.reason,
        "createdAt": iso(job.created_at, tz),
        "scheduledAt": iso(job.scheduled_at, tz),
        "startedAt": iso(job.started_at, tz),
        "finishedAt": iso(job.finished_at, tz),
        "cancelRequestedAt": iso(job.cancel_requested_at, tz),
        "duration": duration,
        "version": job.version,
    }


def revision_json(revision: Revision, tz: tzinfo) -> dict[str, Any]:
    return {
        "id": revision.id,
        "taskId": revision.task_id,
        "at": iso(revision.at, tz),
        "action": revision.action,
        "by": revision.by.as_json(),
        "before": revision.before,
        "after": revision.after,
    }


def audit_json(entry: AuditEntry, tz: tzinfo) -> dict[str, Any]:
    """One audit log entry (scheduler/audit.py)."""
    return {
        "id": entry.id,
        "at": iso(entry.at, tz),
        "action": entry.action,
        "who": entry.who,
        "address": entry.address,
        "taskId": entry.task_id,
        "jobId": entry.job_id,
        "detail": entry.detail,
    }


def worker_json(worker: Worker, tz: tzinfo) -> dict[str, Any]:
    described = worker.describe()
    described["connectedAt"] = iso(worker.connected_at, tz)
    return described


def delivery_json(delivery: Delivery, tz: tzinfo) -> dict[str, Any]:
    """An alert in the outbox: what was sent, when, and the receiver's reply."""
    detail = delivery.body.get("detail")
    return {
        "id": delivery.id,
        "key": delivery.key,
        "channel": delivery.channel,
        "event": delivery.event,
        "taskId": delivery.task_id,
        "jobId": delivery.job_id,
        "detail": detail if isinstance(detail, str) else None,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "createdAt": iso(delivery.created_at, tz),
        "lastAttemptAt": iso(delivery.last_attempt_at, tz),
        "nextAttemptAt": iso(delivery.next_attempt_at, tz) if delivery.state == "pending" else None,
        "sentAt": iso(delivery.sent_at, tz),
        "reply": delivery.reply,
    }


# -- the live feed's events (scheduler/feed.py sends them as SSE) -------------


def task_event(change: str, task: Task, next_run: float | None, tz: tzinfo, health: str = "up") -> dict[str, Any]:
    return {"change": change, "task": task_json(task, next_run, tz, health)}


def worker_event(change: str, worker: Worker) -> dict[str, Any]:
    # Only enough for the page to know the list changed: it reloads /api/workers.
    return {"change": change, "name": worker.name, "running": len(worker.running)}


def output_event(job_id: int, seq: int, stream: str, data: str) -> dict[str, Any]:
    return {"job": job_id, "seq": seq, "stream": stream, "data": data}
