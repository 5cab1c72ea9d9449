"""The real scheduler delivers its alert outbox across a restart and a kill -9.

The alerts are put in ``jobs.sqlite`` before the scheduler starts (the
rules that make them from job changes are another module's work): what is
checked here is the outbox in a real process, a real receiver, and a
scheduler killed while a delivery is in flight.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scheduler.alerts import Alert, alert_key
from scheduler.job_history.database import NewAlerts
from scheduler.job_history.sqlite import SqliteDatabase
from scheduler.job_history.sqlite_schema import alert_row
from tests.e2e import http_json, start_scheduler, start_worker, stop, wait_until

SECRET = "e2e-secret-0123456789"
ROOT = Path(__file__).resolve().parent.parent
# This checkout's code: the venv's installed copy may be older.
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


class Inbox(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        # While set, a request is recorded and then held without an answer.
        self.hold = threading.Event()
        self.release = threading.Event()

    def keys(self) -> list[str]:
        with self.lock:
            return [request["key"] for request in self.received]


class Handler(BaseHTTPRequestHandler):
    server: Inbox

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        stamp = self.headers["X-Scheduler-Timestamp"]
        signed = hmac.new(SECRET.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
        with self.server.lock:
            self.server.received.append(
                {
                    "key": self.headers["Idempotency-Key"],
                    "valid": hmac.compare_digest(self.headers["X-Scheduler-Signature"], f"sha256={signed}"),
                    "body": json.loads(raw),
                }
            )
        if self.server.hold.is_set():
            self.server.release.wait(30)
            return  # no answer: the connection just closes
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    server = Inbox()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def queue_alerts(workdir: Path, port: int, count: int) -> list[str]:
    """Create jobs.sqlite with a webhook channel and *count* pending alerts, as a stopped scheduler leaves them."""
    database = SqliteDatabase(
        str(workdir / "jobs.sqlite"), output_cap=1 << 20, keep_per_task=100, keep_seconds=7 * 86400,
        connect=sqlite3.connect,
    )
    database.open()
    try:
        channel = json.dumps({"kind": "webhook", "url": f"http://127.0.0.1:{port}/hook", "secret": SECRET})
        database.connection.execute("INSERT INTO alert_channels (name, config) VALUES ('ops', ?)", (channel,))  # type: ignore[union-attr]
        alerts = [
            Alert(alert_key("4", 1_764_590_400 + 60 * n, "failure"), "failure", "ops", time.time() - 60 + n, task_id=4,
                  body={"event": "failure", "task": {"id": 4, "jobName": "nightly", "schedule": "@daily"}, "detail": f"run {n}"})
            for n in range(count)
        ]
        database.write_batch([NewAlerts(tuple(alert_row(alert) for alert in alerts))])
    finally:
        database.close()
    return [alert.key for alert in alerts]


def states(url: str) -> dict[str, str]:
    code, rows = http_json("GET", f"{url}/api/tasks/4/alerts")
    assert code == 200 and isinstance(rows, list)
    return {row["key"]: row["state"] for row in rows}


def test_a_restart_neither_drops_nor_repeats_an_alert(tmp_path: Path, inbox: Inbox) -> None:
    keys = queue_alerts(tmp_path, inbox.server_address[1], 5)
    running = start_scheduler(tmp_path, env=ENV)
    try:
        wait_until(lambda: set(states(running.url).values()) == {"sent"}, what="five alerts sent")
        assert sorted(inbox.keys()) == sorted(keys)
        assert all(request["valid"] for request in inbox.received)
        assert inbox.received[0]["body"]["url"].endswith("/#/tasks/4/history")
    finally:
        stop(running.process)
    again = start_scheduler(tmp_path, env=ENV)
    try:
        # The restarted scheduler answers with the log: nothing is due, nothing is sent again.
        assert set(states(again.url).values()) == {"sent"}
        code, metrics = http_json("GET", f"{again.url}/metrics")
        assert code == 200
        assert "scheduler_alerts_pending 0.0" in str(metrics)
        assert sorted(inbox.keys()) == sorted(keys)
    finally:
        stop(again.process)


def test_killed_while_sending_it_sends_again_after_the_restart_with_the_same_key(tmp_path: Path, inbox: Inbox) -> None:
    (key,) = queue_alerts(tmp_path, inbox.server_address[1], 1)
    inbox.hold.set()
    running = start_scheduler(tmp_path, env=ENV)
    try:
        wait_until(lambda: inbox.keys() == [key], what="the request to arrive")
    finally:
        stop(running.process, signal.SIGKILL)
    inbox.hold.clear()
    inbox.release.set()
    again = start_scheduler(tmp_path, env=ENV)
    try:
        wait_until(lambda: states(again.url).get(key) == "sent", what="the alert sent after the restart")
        # The receiver saw it twice, with one key to drop the second by.
        assert inbox.keys() == [key, key]
        code, rows = http_json("GET", f"{again.url}/api/alerts")
        assert code == 200
        assert isinstance(rows, list) and rows[0]["attempts"] == 1 and rows[0]["reply"].startswith("204")
    finally:
        stop(again.process)


def test_a_failing_task_alerts_once_through_a_signed_webhook_and_again_when_it_recovers(
    tmp_path: Path, inbox: Inbox
) -> None:
    running = start_scheduler(tmp_path, env=ENV)
    worker = start_worker(running.http, "w1", workdir=tmp_path, env=ENV)
    url = running.url
    try:
        hook = f"http://127.0.0.1:{inbox.server_address[1]}/hook"
        code, _ = http_json("POST", f"{url}/api/channels", {"name": "ops", "kind": "webhook", "url": hook, "secret": SECRET})
        assert code == 201
        # Fails the first time, succeeds after: a flag file tells the runs apart.
        flag = tmp_path / "ran-once"
        command = f"if [ -e {flag} ]; then echo fine; else touch {flag}; echo boom >&2; exit 3; fi"
        code, task = http_json(
            "POST",
            f"{url}/api/tasks",
            {
                "schedule": "0 0 1 1 *",
                "command": command,
                "alerts": [{"on": "failure", "channel": "ops"}, {"on": "recovery", "channel": "ops"}],
            },
        )
        assert code == 201 and isinstance(task, dict), task
        wait_until(lambda: "w1" in [w["name"] for w in http_json("GET", f"{url}/api/workers")[1]], what="w1")  # type: ignore[union-attr]

        def run_once() -> dict[str, Any]:
            code, job = http_json("POST", f"{url}/api/tasks/{task['id']}/run")
            assert code == 202 and isinstance(job, dict), job

            def ended() -> dict[str, Any] | None:
                _, now = http_json("GET", f"{url}/api/jobs/{job['id']}")
                assert isinstance(now, dict)
                return now if now["status"] not in ("queued", "running") else None

            return wait_until(ended, what=f"job {job['id']} to end")

        failed = run_once()
        assert failed["status"] == "failed" and failed["exitCode"] == 3
        wait_until(lambda: len(inbox.keys()) == 1, what="the failure alert")
        (alert,) = inbox.received
        assert alert["valid"], "the signature checks out with the channel's secret"
        body = alert["body"]
        assert body["event"] == "failure"
        assert body["task"]["id"] == task["id"] and body["task"]["schedule"] == "0 0 1 1 *"
        assert body["job"]["id"] == failed["id"] and body["job"]["exitCode"] == 3
        assert body["url"].endswith(f"/#/jobs/{failed['id']}")
        assert "boom" in body["output"]
        assert alert["key"].endswith(":failure")

        recovered = run_once()
        assert recovered["status"] == "succeeded"
        wait_until(lambda: len(inbox.keys()) == 2, what="the recovery alert")
        assert inbox.received[1]["body"]["event"] == "recovery" and inbox.received[1]["valid"]

        # What was sent, when, and the reply: the task's delivery log.
        def sent() -> list[dict[str, Any]] | None:
            _, rows = http_json("GET", f"{url}/api/tasks/{task['id']}/alerts")
            assert isinstance(rows, list)
            return rows if len(rows) == 2 and all(row["state"] == "sent" for row in rows) else None

        rows = wait_until(sent, what="both deliveries recorded as sent")
        assert sorted(row["event"] for row in rows) == ["failure", "recovery"]
        assert all(row["reply"].startswith("204") for row in rows)
        assert len(inbox.keys()) == 2, "nothing sent twice"
    finally:
        stop(worker)
        stop(running.process)
