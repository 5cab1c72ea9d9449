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
from tests.e2e import http_json, start_scheduler, stop, wait_until

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
