"""What is due later survives a restart of the real ``twistd scheduler``.

Each test leaves something pending (a retry, a kept cancel, a pause that
ends at a time), stops the scheduler (SIGTERM or kill -9), starts it again
on the same folder (tasks.db, jobs.sqlite) and ports, and checks that the
pending thing still happens, once.  The processes run this checkout's code
(PYTHONPATH): the venv's installed copy may be older.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import Scheduler, http_json, start_scheduler, start_worker, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


class Folder:
    """One scheduler folder; the scheduler restarts on it and its ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.scheduler: Scheduler | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        assert self.scheduler is not None
        return self.scheduler.url

    def start(self, *args: str) -> None:
        ports = None if self.scheduler is None else (self.scheduler.tcp, self.scheduler.http)
        self.scheduler = start_scheduler(self.workdir, *args, env=ENV, ports=ports)

    def stop(self, sig: int) -> None:
        assert self.scheduler is not None
        stop(self.scheduler.process, sig)

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        assert self.scheduler is not None
        process = start_worker(self.scheduler.http, name, workdir=self.workdir, env=ENV)
        self.workers.append(process)
        wait_until(lambda: name in self.online(), 20, f"worker {name} to connect")
        return process

    def online(self) -> list[str]:
        _, workers = http_json("GET", self.url + "/api/workers")
        assert isinstance(workers, list)
        return [w["name"] for w in workers]

    def get(self, path: str) -> Any:
        code, body = http_json("GET", self.url + path)
        assert code == 200, body
        return body

    def post(self, path: str, body: object, expect: int) -> dict[str, Any]:
        code, reply = http_json("POST", self.url + path, body)
        assert code == expect, reply
        assert isinstance(reply, dict)
        return reply

    def jobs(self, task_id: int) -> list[dict[str, Any]]:
        return sorted(self.get(f"/api/jobs?task={task_id}&limit=1000"), key=lambda job: job["id"])

    def close(self) -> None:
        for process in self.workers:
            stop(process)
        if self.scheduler is not None:
            stop(self.scheduler.process)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Folder]:
    made = Folder(tmp_path)
    yield made
    made.close()


def cancel_recorded(jobs_db: Path, job_id: int) -> bool:
    """Whether jobs.sqlite holds *job_id*'s cancel (read only, beside the live scheduler)."""
    with contextlib.closing(sqlite3.connect(f"file:{jobs_db}?mode=ro", uri=True, timeout=5)) as conn:
        row = conn.execute("SELECT cancel_requested_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row is not None and row[0] is not None


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_pending_retry_runs_once_after_a_restart(folder: Folder, sig: int) -> None:
    folder.start()
    folder.worker("w1")
    task = folder.post(
        "/api/tasks", {"schedule": "@daily", "command": "exit 3", "retries": 1, "retryDelay": 4}, 201
    )
    first = folder.post(f"/api/tasks/{task['id']}/run", {}, 202)
    failed = wait_until(
        lambda: [j for j in folder.jobs(task["id"]) if j["id"] == first["id"] and j["status"] == "failed"],
        15,
        "attempt 1 to fail",
    )[0]
    due = at(failed["finishedAt"]) + 4
    folder.stop(sig)
    # Stopped with the retry still pending: nothing but attempt 1 so far.
    assert time.time() < due, "the scheduler stopped only after the retry was due"
    folder.start()
    assert [j["attempt"] for j in folder.jobs(task["id"])] == [1]

    retried = wait_until(
        lambda: [j for j in folder.jobs(task["id"]) if j["attempt"] == 2 and j["status"] == "failed"],
        20,
        "attempt 2 to run and fail",
    )[0]
    assert at(retried["createdAt"]) >= due - 0.1, (retried, due)
    assert retried["worker"] == "w1" and retried["exitCode"] == 3
    # Once: the task's history is attempts 1 and 2.
    assert [(j["id"], j["attempt"]) for j in folder.jobs(task["id"])] == [
        (first["id"], 1),
        (retried["id"], 2),
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_kept_cancel_ends_the_job_cancelled_after_a_restart(
    folder: Folder, tmp_path: Path, sig: int
) -> None:
    # A long --lost-after before the restart: only the restarted scheduler's
    # (3 s) can end the job, and then only with the kept cancel.
    folder.start("--lost-after", "60")
    worker = folder.worker("w1")
    marker = tmp_path / "sleep.pid"
    job = folder.post("/api/jobs", {"command": f"echo $$ > {marker}; exec sleep 30"}, 202)
    try:
        wait_until(marker.exists, 15, "the job to start")
        wait_until(lambda: folder.get(f"/api/jobs/{job['id']}")["status"] == "running", 10, "the job to run")
        # kill -9: the worker cannot cancel its job nor come back for it.
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        wait_until(lambda: "w1" not in folder.online(), 10, "the scheduler to see w1 gone")
        cancelling = folder.post(f"/api/jobs/{job['id']}/cancel", {}, 202)
        assert cancelling["status"] == "running" and cancelling["cancelRequestedAt"], cancelling
        # The 202 comes once the cancel is on disk: a kill -9 right after it
        # must not lose it.
        assert cancel_recorded(tmp_path / "jobs.sqlite", job["id"])
        folder.stop(sig)
        folder.start("--lost-after", "3")
        kept = folder.get(f"/api/jobs/{job['id']}")
        assert kept["status"] == "running" and kept["cancelRequestedAt"], kept
        done = wait_until(
            lambda: (j := folder.get(f"/api/jobs/{job['id']}"))["status"] not in ("queued", "running") and j,
            15,
            "the job to end",
        )
        assert done["status"] == "cancelled", done
        assert len(folder.get("/api/jobs?limit=1000")) == 1
    finally:
        if marker.exists() and marker.read_text().strip():
            try:
                os.kill(int(marker.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.serial
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_timed_pause_ends_after_a_restart(folder: Folder, sig: int) -> None:
    folder.start()
    task = folder.post("/api/tasks", {"schedule": "* * * * * *", "command": "true"}, 201)
    wait_until(lambda: folder.jobs(task["id"]), 5, "the task to fire")
    until = datetime.now(UTC) + timedelta(seconds=3)
    paused = folder.post(f"/api/tasks/{task['id']}/pause", {"until": until.isoformat()}, 200)
    paused_at = time.time()
    assert paused["paused"] is True and paused["pausedUntil"], paused
    folder.stop(sig)
    folder.start()
    assert time.time() < until.timestamp(), "the restart took longer than the pause"
    assert folder.get(f"/api/tasks/{task['id']}")["paused"] is True

    wait_until(lambda: folder.get(f"/api/tasks/{task['id']}")["paused"] is False, 10, "the pause to end")
    after = wait_until(
        lambda: [j for j in folder.jobs(task["id"]) if at(j["scheduledAt"]) >= until.timestamp() - 0.1],
        10,
        "a fire after the pause",
    )
    assert all(j["triggeredBy"]["kind"] == "schedule" for j in after), after
    # Nothing fired while it was paused (a second already under way when
    # the pause came may still have fired), and each second fired once.
    times = [at(j["scheduledAt"]) for j in folder.jobs(task["id"])]
    assert not [t for t in times if paused_at + 1 < t < until.timestamp() - 1], (times, paused_at, until)
    assert len(times) == len(set(times)), times
    task_now = folder.get(f"/api/tasks/{task['id']}")
    assert task_now["paused"] is False and task_now["pausedUntil"] is None, task_now
