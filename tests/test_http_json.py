"""The JSON shapes the REST routes and the live feed share (scheduler/http_json.py)."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

from scheduler import cron
from scheduler.http_json import job_json, output_event, task_event, task_json, worker_event, worker_json
from scheduler.http_openapi import OPENAPI
from scheduler.jobs import Job, JobStatus
from scheduler.tasks import Task, TaskOptions
from scheduler.triggers import TRIGGER_KINDS, TriggeredBy
from scheduler.worker_registry import Worker
from tests.fakes import FakeLink

SCHEMAS = OPENAPI["components"]["schemas"]


def make_task() -> Task:
    return Task(7, "task_7", cron.parse("*/5 * * * *", UTC), "echo hi", TaskOptions(retries=2))


def test_task_json_has_the_documented_fields() -> None:
    body = task_json(make_task(), 300.0, UTC)
    assert body["id"] == 7 and body["jobName"] == "task_7" and body["retries"] == 2
    assert body["nextRun"] == "1970-01-01T00:05:00.000+00:00"
    assert body["description"] == cron.describe(make_task().schedule)
    # lastJob is added by the GET routes only (scheduler/http_api.py).
    assert set(body) | {"lastJob"} == set(SCHEMAS["Task"]["properties"])
    assert task_json(make_task(), None, UTC)["nextRun"] is None


def test_job_json_times_are_in_the_schedulers_zone_with_a_duration() -> None:
    job = Job(3, "true", created_at=0.0, status=JobStatus.SUCCEEDED, started_at=1.0, finished_at=2.5)
    body = job_json(job, timezone(timedelta(hours=2)))
    assert body["status"] == "succeeded"
    assert body["createdAt"] == "1970-01-01T02:00:00.000+02:00"
    assert body["duration"] == 1.5
    assert set(body) == set(SCHEMAS["Job"]["properties"])
    assert job_json(Job(4, "true", created_at=0.0), UTC)["duration"] is None
    assert body["version"] == 1 and job_json(job.evolve(version=9), UTC)["version"] == 9


def test_job_json_says_when_a_cancel_was_asked_for() -> None:
    asked = Job(6, "sleep 9", created_at=0.0, status=JobStatus.RUNNING, worker="w1", cancel_requested_at=1.25)
    assert job_json(asked, UTC)["cancelRequestedAt"] == "1970-01-01T00:00:01.250+00:00"
    assert job_json(Job(7, "true", created_at=0.0), UTC)["cancelRequestedAt"] is None


def test_worker_json_and_the_feeds_worker_event() -> None:
    worker = Worker("w1", frozenset({"b", "a"}), 2, FakeLink(), 60.0, running={5})
    body = worker_json(worker, UTC)
    assert body["labels"] == ["a", "b"] and body["jobs"] == [5] and body["running"] == 1
    assert body["connectedAt"] == "1970-01-01T00:01:00.000+00:00"
    assert set(body) == set(SCHEMAS["Worker"]["properties"])
    assert worker_event("added", worker) == {"change": "added", "name": "w1", "running": 1}


def test_feed_events_wrap_the_same_shapes() -> None:
    assert task_event("added", make_task(), None, UTC) == {"change": "added", "task": task_json(make_task(), None, UTC)}
    assert output_event(3, 1, "stdout", "x") == {"job": 3, "seq": 1, "stream": "stdout", "data": "x"}


def test_job_json_says_what_triggered_the_job_with_the_kinds_of_triggers_py() -> None:
    retry = Job(5, "true", created_at=0.0, attempt=2, triggered_by=TriggeredBy.retry_of(4))
    assert job_json(retry, UTC)["triggeredBy"] == {"kind": "retry", "name": None, "job": 4}
    # Records from before it was kept have none.
    assert job_json(Job(4, "true", created_at=0.0), UTC)["triggeredBy"] is None
    schema = SCHEMAS["TriggeredBy"]
    assert schema["properties"]["kind"]["enum"] == list(TRIGGER_KINDS)
    assert set(schema["required"]) == set(retry.triggered_by.as_json()) == set(schema["properties"])  # type: ignore[union-attr]
