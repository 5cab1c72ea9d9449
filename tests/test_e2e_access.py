"""End to end with the real processes: a job echoes a secret, which shows up nowhere.

The scheduler runs with a tokens file and a secrets folder, a worker runs
the job; then the whole data folder, every API answer, both logs, the live
feed and the dashboard's page are searched for the secret's value.  The
job's stored output shows the mask instead.  Last, a line removed from the
tokens file is refused within seconds and that token's live feeds close.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
from pathlib import Path

from scheduler.access_tokens import token_hash
from scheduler.worker_messages import MASK
from tests.e2e import SCHEDULER_ON_ANY_PORTS, http_json, start_scheduler, start_worker, stop, wait_until

OPS = "ops-token-0123456789abcdef"  # write
CI = "ci-token-0123456789abcdef"  # read, run
SECRET = "s3cr3t-Value-that-must-never-leak"


class Feed(threading.Thread):
    """GET /api/events, every byte kept, until the scheduler closes it."""

    def __init__(self, port: int, path: str, token: str) -> None:
        super().__init__(daemon=True)
        self.data = bytearray()
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        self.start()

    def run(self) -> None:
        try:
            while chunk := self.response.read1(65536):
                self.data += chunk
        except (OSError, http.client.HTTPException):
            pass


def test_a_secret_echoed_by_a_job_appears_nowhere(tmp_path: Path) -> None:
    data = tmp_path / "data"
    secrets = tmp_path / "secrets"
    work = tmp_path / "work"
    for folder in (data, secrets, work):
        folder.mkdir()
    (secrets / "DB_PASSWORD").write_text(SECRET + "\n")
    (secrets / "DB_PASSWORD").chmod(0o600)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops write {token_hash(OPS)}\nci read,run {token_hash(CI)}\n")

    scheduler = start_scheduler(data, "--tokens-file", str(tokens), "--secrets-dir", str(secrets))
    worker = start_worker(scheduler.http, "w1", workdir=work)
    answers: list[object] = []

    def call(method: str, path: str, body: object = None, token: str = CI) -> tuple[int, object]:
        code, answer = http_json(method, scheduler.url + path, body, token=token)
        answers.append(answer)
        return code, answer

    try:
        wait_until(lambda: call("GET", "/api/workers")[1], what="the worker")
        everything = Feed(scheduler.http, "/api/events", CI)
        output_feed = Feed(scheduler.http, "/api/events?job=1", CI)
        code, task = call(
            "POST",
            "/api/tasks",
            {
                "schedule": "@yearly",
                "command": 'echo "env=$PW"; echo "arg=${secret:DB_PASSWORD}" >&2; printf %s "$PW" | tr a-z A-Z',
                "env": {"PW": "${secret:DB_PASSWORD}"},
            },
            token=OPS,
        )
        assert code == 201, task
        assert isinstance(task, dict)
        code, job = call("POST", f"/api/tasks/{task['id']}/run")
        assert code == 202, job
        assert isinstance(job, dict) and job["id"] == 1 and job["triggeredBy"]["name"] == "ci"

        def ended() -> dict[str, object] | None:
            _, found = call("GET", "/api/jobs/1")
            assert isinstance(found, dict)
            return found if found["status"] not in ("queued", "running") else None

        finished = wait_until(ended, what="the job's end")
        assert finished["status"] == "succeeded", finished
        code, log = call("GET", "/api/jobs/1/log")
        assert isinstance(log, str)
        assert f"env={MASK}" in log and f"arg={MASK}" in log and SECRET.upper() in log  # a transformed value is not caught
        for path in ("/api/tasks", f"/api/tasks/{task['id']}", f"/api/tasks/{task['id']}/revisions", "/api/jobs",
                     "/api/audit", "/api/me", "/api/workers", "/api/health"):
            code, _ = call("GET", path)
            assert code == 200, path
        code, _ = call("GET", "/")  # the dashboard's page
        assert code == 200
        code, audit = call("GET", "/api/audit?action=job.run")
        assert isinstance(audit, list) and audit[0]["who"] == "ci" and audit[0]["jobId"] == 1

        # Revoked: refused within seconds, and its live feeds closed.
        tokens.write_text(f"ops write {token_hash(OPS)}\n")
        wait_until(lambda: http_json("GET", scheduler.url + "/api/tasks", token=CI)[0] == 401, timeout=15, what="the revocation")
        for feed in (everything, output_feed):
            feed.join(timeout=15)
            assert not feed.is_alive(), "the revoked token's live feed is still open"
    finally:
        stop(worker)
        stop(scheduler.process)

    feed_bytes = bytes(everything.data) + bytes(output_feed.data)
    assert b'"job"' in feed_bytes and MASK.encode() in bytes(output_feed.data)
    leaks = [str(path) for path in [*data.rglob("*"), *work.rglob("*")] if path.is_file() and SECRET.encode() in path.read_bytes()]
    assert leaks == [], f"the secret is in {leaks}"
    assert SECRET.encode() not in feed_bytes
    assert SECRET not in json.dumps(answers)
    assert (data / "scheduler.log").exists() and (work / "worker-w1.log").exists()


def test_a_bad_tokens_line_or_a_readable_secret_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops write {token_hash(OPS)}\nci read,fly {token_hash(CI)}\n")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "DB_PASSWORD").write_text(SECRET)
    (secrets / "DB_PASSWORD").chmod(0o644)
    for extra, said in (
        (["--tokens-file", str(tokens)], f"{tokens}, line 2: scopes must be a comma-separated list"),
        (["--secrets-dir", str(secrets)], f"{secrets / 'DB_PASSWORD'} can be read by others than the scheduler's user (mode 0644)"),
    ):
        done = subprocess.run([*SCHEDULER_ON_ANY_PORTS, *extra], cwd=tmp_path, capture_output=True, timeout=60)
        assert done.returncode == 1
        message = done.stderr.decode()
        assert said in message and "Traceback" not in message, message
        assert SECRET not in message + done.stdout.decode()
