"""Alerts through the real service: task fields, /api/alerts/defaults, ping checks, health in the
API, LIST and /metrics, and a restart on the same files (issue 14, the rules half).

The outbox is the job store's; a spy on the service's job store records
every alert queued (duplicates included, which the store itself ignores),
and the channels "ops" and "pager" are real webhook channels kept in
jobs.sqlite, pointing at a port nobody listens on (their deliveries only
retry).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from scheduler.alert_channels import parse_channel
from scheduler.alerts import Alert
from scheduler.job_history.database import ChannelChange
from scheduler.job_history.sqlite import SqliteDatabase
from scheduler.jobs import Job, JobStatus, fire_key
from scheduler.service import SchedulerService
from scheduler.settings import Settings
from scheduler.worker_messages import Finished
from scheduler.worker_registry import Worker
from tests.helpers import UTC
from tests.test_http_api import Api, Link
from tests.test_http_task_changes import call

TOKEN = "s3cret-api-token-0123456789"


class Outbox:
    """What the rules queued: every call, and one alert per (key, channel) as the job store keeps them."""

    def __init__(self) -> None:
        self.calls: list[Alert] = []
        self.kept: dict[tuple[str, str], Alert] = {}

    def record(self, alerts: list[Alert]) -> None:
        self.calls.extend(alerts)
        for alert in alerts:
            self.kept.setdefault((alert.key, alert.channel), alert)

    def events(self) -> list[str]:
        return [alert.event for alert in self.kept.values()]


CHANNELS = ("ops", "pager")


def keep_channels(tmp_path: Path) -> None:
    """Webhook channels in jobs.sqlite, as a scheduler that made them leaves them."""
    database = SqliteDatabase(
        str(tmp_path / "jobs.sqlite"), output_cap=1 << 20, keep_per_task=100, keep_seconds=7 * 86400,
        connect=sqlite3.connect,
    )
    database.open()
    try:
        taken = set(database.channels())
        changes = [
            ChannelChange(name, parse_channel({"name": name, "kind": "webhook", "url": "http://127.0.0.1:9/hook",
                                               "secret": "0123456789abcdef"}).config())
            for name in CHANNELS
            if name not in taken
        ]
        database.write_batch(changes)
    finally:
        database.close()


def build(tmp_path: Path, reactor: Any, outbox: Outbox, **settings: Any) -> Api:
    chosen = Settings(
        tasks_file=str(tmp_path / "tasks.db"),
        tcp="tcp:0:interface=127.0.0.1",
        http="tcp:0:interface=127.0.0.1",
        tz=UTC,
        **settings,
    )
    keep_channels(tmp_path)
    service = SchedulerService(reactor, chosen)
    store = service.job_store
    queue = store.record_alerts

    def spied(alerts: list[Alert]) -> Deferred[None]:
        outbox.record(alerts)
        return queue(alerts)

    store.record_alerts = spied  # type: ignore[method-assign]
    made = Api(service)
    made.outbox = outbox  # type: ignore[attr-defined]
    return made


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = build(tmp_path, reactor, Outbox(), api_token=TOKEN)
    made.service.startService()
    yield made
    await made.service.stopService()


AUTH = {b"Authorization": [f"Bearer {TOKEN}".encode()]}


async def wait_for(what: Callable[[], bool], message: str) -> None:
    from twisted.internet import reactor

    for _ in range(1000):
        if what():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{message} did not happen within 10 s")


def outbox_of(api: Api) -> Outbox:
    outbox = api.outbox  # type: ignore[attr-defined]
    assert isinstance(outbox, Outbox)
    return outbox


def fail(api: Api, worker: Worker, job_id: int, exit_code: int = 1) -> None:
    now = api.service.reactor.seconds()
    api.service.dispatcher.finished(
        worker,
        Finished(job_id, exit_code=exit_code, signal=None, timed_out=False, cancelled=False, seq=0,
                 started_at=now, finished_at=now, output=()),
    )


# -- task fields ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_alert_fields_are_checked_kept_in_tasks_db_shown_and_editable(api: Api, tmp_path: Path) -> None:
    task = {"schedule": "*/5 * * * *", "command": "backup.sh"}
    code, body, _ = await call(api, "POST", "/api/tasks", {**task, "alerts": [{"on": "failure", "channel": "nope"}]}, headers=AUTH)
    assert code == 400 and "nope" in body["error"] and "alerts[0].channel" in body["error"]
    code, body, _ = await call(api, "POST", "/api/tasks", {**task, "alerts": [{"on": "late", "channel": "ops", "after": 2}]}, headers=AUTH)
    assert code == 400 and "alerts[0].after" in body["error"]
    code, body, _ = await call(api, "POST", "/api/tasks", {**task, "alerts": [{"on": "worker_offline", "channel": "ops"}]}, headers=AUTH)
    assert code == 400 and "/api/alerts/defaults" in body["error"]
    code, body, _ = await call(api, "POST", "/api/tasks", {**task, "freshness": 0}, headers=AUTH)
    assert code == 400 and "freshness" in body["error"]

    rules = [{"on": "failure", "channel": "ops", "after": 3, "every": 3600}, {"on": "recovery", "channel": "ops"}]
    code, added, _ = await call(
        api, "POST", "/api/tasks", {**task, "alerts": rules, "startDeadline": 60, "finishDeadline": 600, "freshness": 90000},
        headers=AUTH,
    )
    assert code == 201, added
    assert added["alerts"] == rules and added["startDeadline"] == 60 and added["freshness"] == 90000
    assert added["health"] == "up" and added["ping"] is None
    line = json.loads((tmp_path / "tasks.db").read_text().splitlines()[0])
    assert line["alerts"] == rules and line["finishDeadline"] == 600

    code, edited, _ = await call(
        api, "PATCH", f"/api/tasks/{added['id']}",
        {"alerts": [{"on": "failure", "channel": "pager", "mutedUntil": "2030-01-01T00:00:00+00:00"}]}, headers=AUTH,
    )
    assert code == 200, edited
    assert edited["alerts"] == [{"on": "failure", "channel": "pager", "mutedUntil": "2030-01-01T00:00:00+00:00"}]
    code, body, _ = await call(api, "PATCH", f"/api/tasks/{added['id']}", {"alerts": [{"on": "stale", "channel": "x"}]}, headers=AUTH)
    assert code == 400 and "'x'" in body["error"]
    code, listed, _ = await call(api, "GET", "/api/tasks", headers=AUTH)
    assert [each["health"] for each in listed] == ["up"]


# -- the global defaults ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_defaults_are_replaced_whole_checked_and_kept_across_a_restart(tmp_path: Path, reactor: Any) -> None:
    first = build(tmp_path, reactor, Outbox())
    code, body, _ = await call(first, "GET", "/api/alerts/defaults")
    assert code == 200 and body == {
        "rules": [], "startDeadline": None, "finishDeadline": None, "freshness": None, "workerOfflineAfter": 300.0,
    }
    wanted = {
        "rules": [{"on": "failure", "channel": "ops"}, {"on": "worker_offline", "channel": "pager"}],
        "freshness": 86400, "workerOfflineAfter": 600,
    }
    code, body, _ = await call(first, "PUT", "/api/alerts/defaults", {**wanted, "rules": [{"on": "failure", "channel": "gone"}]})
    assert code == 400 and "gone" in body["error"]
    code, body, _ = await call(first, "PUT", "/api/alerts/defaults", {"freshnes": 1})
    assert code == 400 and "freshnes" in body["error"]
    code, body, _ = await call(first, "PUT", "/api/alerts/defaults", wanted)
    assert code == 200 and body["rules"] == wanted["rules"] and body["freshness"] == 86400
    await first.service.job_store.close()

    second = build(tmp_path, reactor, Outbox())
    code, body, _ = await call(second, "GET", "/api/alerts/defaults")
    assert body["rules"] == wanted["rules"] and body["workerOfflineAfter"] == 600
    await second.service.job_store.close()


# -- ping checks --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_ping_check_takes_pings_without_the_token_and_alerts_like_any_task(api: Api) -> None:
    code, check, _ = await call(
        api, "POST", "/api/tasks",
        {"schedule": "0 3 * * *", "command": "nightly on db1", "ping": True, "alerts": [{"on": "failure", "channel": "ops"}, {"on": "recovery", "channel": "ops"}]},
        headers=AUTH,
    )
    assert code == 201, check
    uuid = check["ping"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid)
    code, body, _ = await call(api, "POST", f"/api/tasks/{check['id']}/run", headers=AUTH)
    assert code == 409

    code, body, _ = await call(api, "POST", f"/api/ping/{uuid}/start")
    assert (code, body) == (200, {"ok": True, "counted": True})
    code, body, _ = await call(api, "POST", f"/api/ping/{uuid}/fail")
    assert (code, body) == (200, {"ok": True, "counted": True})
    outbox = outbox_of(api)
    assert outbox.events() == ["failure"]
    code, body, _ = await call(api, "POST", f"/api/ping/{uuid}")
    assert code == 200 and outbox.events() == ["failure", "recovery"]
    code, jobs, _ = await call(api, "GET", f"/api/jobs?task={check['id']}", headers=AUTH)
    assert [(job["status"], job["triggeredBy"]["kind"]) for job in jobs] == [("succeeded", "ping"), ("failed", "ping")]
    code, tasks, _ = await call(api, "GET", "/api/tasks", headers=AUTH)
    assert tasks[0]["health"] == "up"

    # Nothing said of a wrong uuid but that it is not one; the rest of the API still needs the token.
    code, body, _ = await call(api, "POST", "/api/ping/6f1c7d5e-8b1a-4c3e-9f00-0123456789ab")
    assert code == 404 and body == {"error": "no such ping check"}
    code, _, _ = await call(api, "GET", "/api/tasks")
    assert code == 401
    # Bounded: ten pings at once to one check are taken, the eleventh is not,
    # and wrong uuids (which write nothing) do not use up its bucket.
    api.service.pings._per_check.clear()
    api.service.pings.CHECK_RATE = 0.0  # no refill while the test runs, however slow the machine
    for _ in range(20):
        code, _, _ = await call(api, "POST", "/api/ping/6f1c7d5e-8b1a-4c3e-9f00-0123456789ab")
        assert code == 404
    codes = [(await call(api, "POST", f"/api/ping/{uuid}/start"))[0] for _ in range(11)]
    assert codes == [200] * 10 + [429]
    code, body, headers = await call(api, "POST", f"/api/ping/{uuid}")
    assert code == 429 and headers["retry-after"] == "1" and set(body) == {"error"}


# -- health: API, metrics, LIST ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_health_shows_in_the_api_metrics_and_list(api: Api) -> None:
    code, task, _ = await call(api, "POST", "/api/tasks", {"schedule": "@daily", "command": "false", "jobName": "nightly"}, headers=AUTH)
    assert code == 201
    worker, _ = connect(api)
    for _ in range(2):
        job = api.service.dispatcher.run_now("false", task_id=task["id"])[0]
        fail(api, worker, job.id)
    code, tasks, _ = await call(api, "GET", "/api/tasks", headers=AUTH)
    assert tasks[0]["health"] == "failing"
    code, text, _ = await call(api, "GET", "/metrics", headers=AUTH)
    assert 'scheduler_task_consecutive_failures{task="nightly"} 2.0' in text
    assert 'scheduler_task_health{health="failing",task="nightly"} 1.0' in text
    assert "scheduler_task_last_success_timestamp{" not in text
    job = api.service.dispatcher.run_now("false", task_id=task["id"])[0]
    fail(api, worker, job.id, 0)
    code, text, _ = await call(api, "GET", "/metrics", headers=AUTH)
    assert 'scheduler_task_health{health="up",task="nightly"} 1.0' in text
    assert re.search(r'scheduler_task_last_success_timestamp\{task="nightly"\} [0-9.e+]+', text)
    # LIST: the next-run column says so when a task is not up, as it says paused; the command stays last.
    listed = "\n".join(api.service.commands.handle("LIST"))  # type: ignore[arg-type]
    columns = listed.splitlines()[0].split("\t", 4)
    assert re.fullmatch(r"\S+", columns[3]) and columns[4] == "false"
    job = api.service.dispatcher.run_now("false", task_id=task["id"])[0]
    fail(api, worker, job.id)
    listed = "\n".join(api.service.commands.handle("LIST"))  # type: ignore[arg-type]
    columns = listed.splitlines()[0].split("\t", 4)
    assert re.fullmatch(r"\S+ \(failing\)", columns[3]) and columns[4] == "false"


def connect(api: Api, name: str = "w1", labels: frozenset[str] = frozenset({"linux"})) -> tuple[Worker, Link]:
    link = Link()
    worker = Worker(name, labels, 4, link, 0.0)
    api.service.dispatcher.hello(worker, {})
    return worker, link


# -- a restart on the same files -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_restart_queues_no_alert_twice_and_re_arms_the_late_timer(tmp_path: Path, reactor: Any) -> None:
    outbox = Outbox()
    first = build(tmp_path, reactor, outbox)
    first.service.startService()
    code, task, _ = await call(
        first, "POST", "/api/tasks",
        {
            "schedule": "@yearly", "command": "false", "startDeadline": 1,
            "alerts": [{"on": "failure", "channel": "ops", "after": 2}, {"on": "late", "channel": "pager"}],
        },
    )
    assert code == 201, task
    worker, _ = connect(first)
    for _ in range(2):
        job = first.service.dispatcher.run_now("false", task_id=task["id"])[0]
        fail(first, worker, job.id)
    assert outbox.events() == ["failure"]
    # A run no worker can take: late after a second, while still queued.
    waiting = first.service.dispatcher.run_now("false", target="label:gpu", task_id=task["id"])[0]
    late = f"{task['id']}@{waiting.created_at}:late"
    await wait_for(lambda: ("pager" in {alert.channel for alert in outbox.calls}), "the late alert")
    assert [alert.key for alert in outbox.calls if alert.event == "late"] == [late]
    await first.service.stopService()

    second = build(tmp_path, reactor, outbox)
    second.service.startService()
    try:
        # The streak and the last word of each rule come back from the job history.
        assert second.service.alerts.consecutive_failures(task["id"]) == 2
        code, tasks, _ = await call(second, "GET", "/api/tasks")
        assert tasks[0]["health"] == "failing"
        # The late timer is armed again, past due: raised again under its key, kept once.
        await wait_for(lambda: [alert.key for alert in outbox.calls].count(late) == 2, "the late alert raised again")
        assert list(outbox.kept).count((late, "pager")) == 1
        # A third failure in a row: the after=2 rule has spoken in this streak already.
        worker, _ = connect(second)
        job = second.service.dispatcher.run_now("false", task_id=task["id"])[0]
        fail(second, worker, job.id)
        assert outbox.events().count("failure") == 1
        assert second.service.alerts.consecutive_failures(task["id"]) == 3
    finally:
        await second.service.stopService()


@pytest_twisted.ensureDeferred
async def test_runs_missed_while_down_are_in_the_job_history_as_missed_and_alerted_once(tmp_path: Path, reactor: Any) -> None:
    outbox = Outbox()
    first = build(tmp_path, reactor, outbox)
    code, task, _ = await call(
        first, "POST", "/api/tasks",
        {"schedule": "* * * * *", "command": "true", "missed": "once", "alerts": [{"on": "missed", "channel": "ops"}]},
    )
    assert code == 201, task
    # Its last run was five minutes ago, and the scheduler has done nothing since: it was down.
    now = reactor.seconds()
    last = (now // 60 - 5) * 60
    await first.service.job_store.put(
        Job(1, "true", last, task_id=task["id"], key=fire_key(task["id"], last), scheduled_at=last,
            status=JobStatus.SUCCEEDED, started_at=last, finished_at=last + 1)
    )
    await first.service.job_store.close()

    second = build(tmp_path, reactor, outbox)
    second.service.startService()
    try:
        code, missed, _ = await call(second, "GET", f"/api/jobs?task={task['id']}&status=missed")
        assert code == 200
        times = sorted(datetime.fromisoformat(job["scheduledAt"]).timestamp() for job in missed)
        # Four of the five passed times are recorded as missed; the latest runs (missed=once).
        assert times == [last + 60, last + 120, last + 180, last + 240]
        assert all(job["triggeredBy"]["kind"] == "missed" and job["finishedAt"] for job in missed)
        assert [alert.key for alert in outbox.calls] == [f"{task['id']}@{last + 60:.0f}:missed"]
        assert "4 runs missed while the scheduler was down" in outbox.calls[0].body["detail"]
    finally:
        await second.service.stopService()


@pytest_twisted.ensureDeferred
async def test_fires_skipped_while_the_scheduler_was_at_work_are_not_recorded_as_missed(tmp_path: Path, reactor: Any) -> None:
    """A fire that left no job (overlap: skip) before the scheduler stopped was not missed for downtime."""
    outbox = Outbox()
    first = build(tmp_path, reactor, outbox)
    code, task, _ = await call(first, "POST", "/api/tasks", {"schedule": "* * * * *", "command": "true", "overlap": "skip"})
    assert code == 201, task
    now = reactor.seconds()
    last = (now // 60 - 5) * 60
    # The last run started five minutes ago and ended just now: the fires in between were skipped, not missed.
    await first.service.job_store.put(
        Job(1, "true", last, task_id=task["id"], key=fire_key(task["id"], last), scheduled_at=last,
            status=JobStatus.SUCCEEDED, started_at=last, finished_at=now)
    )
    await first.service.job_store.close()

    second = build(tmp_path, reactor, outbox)
    second.service.startService()
    try:
        code, missed, _ = await call(second, "GET", f"/api/jobs?task={task['id']}&status=missed")
        assert code == 200 and missed == []
    finally:
        await second.service.stopService()
