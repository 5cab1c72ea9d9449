"""The real scheduler and real workers on loopback: jobs end to end.

Each test starts ``twistd -n scheduler`` and one or two ``twistd -n worker``
processes, then drives them through the REST API and the command port.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import Proxy, Scheduler, http_json, start_scheduler, start_worker, stop, wait_until


class Cluster:
    def __init__(self, workdir: Path, *scheduler_args: str) -> None:
        self.workdir = workdir
        self.scheduler_args = scheduler_args
        self.scheduler: Scheduler = start_scheduler(workdir, *scheduler_args)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def worker(self, name: str, *extra: str, port: int | None = None) -> subprocess.Popen[bytes]:
        process = start_worker(port or self.scheduler.http, name, *extra, workdir=self.workdir)
        self.workers[name] = process
        wait_until(lambda: name in self.online(), what=f"worker {name} to connect")
        return process

    def online(self) -> list[str]:
        _, workers = http_json("GET", self.scheduler.url + "/api/workers")
        assert isinstance(workers, list)
        return [w["name"] for w in workers]

    def run(self, command: str, **fields: Any) -> dict[str, Any]:
        code, job = http_json("POST", self.scheduler.url + "/api/jobs", {"command": command, **fields})
        assert code == 202, job
        assert isinstance(job, dict)
        return job

    def job(self, job_id: int) -> dict[str, Any]:
        code, job = http_json("GET", f"{self.scheduler.url}/api/jobs/{job_id}")
        assert code == 200, job
        assert isinstance(job, dict)
        return job

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        query = "&".join(f"{key}={value}" for key, value in filters.items())
        _, jobs = http_json("GET", f"{self.scheduler.url}/api/jobs?{query}")
        assert isinstance(jobs, list)
        return jobs

    def wait_final(self, job_id: int, timeout: float = 30.0) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] not in ("queued", "running") else None

        return wait_until(final, timeout, f"job {job_id} to finish")

    def log(self, job_id: int) -> str:
        _, text = http_json("GET", f"{self.scheduler.url}/api/jobs/{job_id}/log")
        assert isinstance(text, str)
        return text

    def restart_scheduler(self) -> None:
        stop(self.scheduler.process)
        self.scheduler = start_scheduler(
            self.workdir,
            *self.scheduler_args,
            ports=(self.scheduler.tcp, self.scheduler.http),
        )

    def close(self) -> None:
        for process in self.workers.values():
            stop(process)
        stop(self.scheduler.process)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made: list[Cluster] = []

    def make(*args: str) -> Cluster:
        made.append(Cluster(tmp_path, *args))
        return made[-1]

    yield make  # type: ignore[misc]
    for each in made:
        each.close()


def test_a_task_fires_and_its_output_streams(cluster: Any) -> None:
    c: Cluster = cluster()
    c.worker("w1")
    reply = c.scheduler.command("ADD * * * * * * echo tick-$((1+1))\n")
    assert reply[0].startswith("OK id=1 ")
    job = wait_until(lambda: c.jobs(task=1, status="succeeded"), what="the task to run")[0]
    assert job["worker"] == "w1" and job["exitCode"] == 0
    assert c.log(job["id"]) == "tick-2\n"
    c.scheduler.command("REMOVE 1\n")
    # Live output: a line arrives while the command is still running.
    running = c.run("echo first; sleep 2; echo second")
    wait_until(lambda: "first" in c.log(running["id"]), what="the first line")
    assert c.job(running["id"])["status"] == "running"
    assert c.wait_final(running["id"])["status"] == "succeeded"
    assert c.log(running["id"]) == "first\nsecond\n"


def test_targets(cluster: Any) -> None:
    c: Cluster = cluster()
    c.worker("w1", "--labels", "gpu,linux")
    c.worker("w2", "--labels", "linux")
    assert c.wait_final(c.run("hostname", target="worker:w2")["id"])["worker"] == "w2"
    assert c.wait_final(c.run("true", target="label:gpu")["id"])["worker"] == "w1"
    code, jobs = http_json("POST", c.scheduler.url + "/api/jobs", {"command": "echo $0", "target": "all"})
    assert code == 202 and isinstance(jobs, list)
    assert sorted(c.wait_final(j["id"])["worker"] for j in jobs) == ["w1", "w2"]
    failing = c.wait_final(c.run("echo oops >&2; exit 3")["id"])
    assert failing["status"] == "failed" and failing["exitCode"] == 3
    assert c.log(failing["id"]) == "oops\n"


def test_timeout_kills_the_whole_tree(cluster: Any, tmp_path: Path) -> None:
    c: Cluster = cluster()
    c.worker("w1")
    marker = tmp_path / "pids"
    job = c.run(f"sleep 100 & echo $! > {marker}; sleep 100", timeout=1)
    done = c.wait_final(job["id"])
    assert done["status"] == "timed_out"
    background = int(marker.read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{background}/stat") as handle:
                return handle.read().split(") ", 1)[1].startswith("Z")
        except FileNotFoundError:
            return True

    wait_until(gone, 10, "the background sleep to die")


def test_killed_worker_loses_the_job_and_it_is_retried_elsewhere(cluster: Any) -> None:
    c: Cluster = cluster("--lost-after", "2")
    victim = c.worker("w1")
    # Retries are a task option, set through the REST API.
    code, task = http_json(
        "POST",
        c.scheduler.url + "/api/tasks",
        {"schedule": "@yearly", "command": "sleep 3; echo done", "retries": 1, "retryDelay": 0},
    )
    assert code == 201 and isinstance(task, dict)
    code, first = http_json("POST", f"{c.scheduler.url}/api/tasks/{task['id']}/run")
    assert isinstance(first, dict)
    wait_until(lambda: c.job(first["id"])["worker"] == "w1", what="the job to reach w1")
    c.worker("w2")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    lost = c.wait_final(first["id"])
    assert lost["status"] == "lost"
    retry = wait_until(lambda: [j for j in c.jobs(task=task["id"]) if j["attempt"] == 2], what="the retry")[0]
    retried = c.wait_final(retry["id"])
    assert retried["status"] == "succeeded" and retried["worker"] == "w2"
    assert c.log(retry["id"]) == "done\n"


def test_dropped_connection_delivers_the_buffered_result_once(cluster: Any) -> None:
    c: Cluster = cluster()
    proxy = Proxy(c.scheduler.http)
    try:
        c.worker("w1", port=proxy.port)
        job = c.run("echo before; sleep 2; echo after; exit 4")
        wait_until(lambda: "before" in c.log(job["id"]), what="the first line")
        proxy.cut()
        wait_until(lambda: "w1" not in c.online(), what="the scheduler to notice")
        assert c.job(job["id"])["status"] == "running"
        proxy.resume()
        done = c.wait_final(job["id"])
        assert done["status"] == "failed" and done["exitCode"] == 4
        assert c.log(job["id"]) == "before\nafter\n"
        assert len(c.jobs()) == 1
    finally:
        proxy.close()


def test_scheduler_restart_mid_job_reconciles(cluster: Any) -> None:
    c: Cluster = cluster()
    c.worker("w1")
    job = c.run("echo one; sleep 3; echo two")
    wait_until(lambda: "one" in c.log(job["id"]), what="the first line")
    c.restart_scheduler()
    done = c.wait_final(job["id"])
    assert done["status"] == "succeeded"
    assert c.log(job["id"]) == "one\ntwo\n"
    finished = [line for line in (c.workdir / "scheduler.log").read_text().splitlines() if "job 1 " in line]
    assert not any("lost" in line for line in finished)


def test_no_job_sees_a_token(tmp_path: Path) -> None:
    """Issue 20, item 8: the tokens reached every job's environment.

    Started as `make run` starts them: the worker with the scheduler's
    environment, which holds the scheduler's token variables too.
    """
    api, tcp, worker_token = ("api-token-0123456789", "tcp-token-0123456789", "worker-token-0123456789")
    env = {"SCHEDULER_API_TOKEN": api, "SCHEDULER_TCP_TOKEN": tcp, "SCHEDULER_WORKER_TOKEN": worker_token}
    scheduler = start_scheduler(tmp_path, env=env)
    worker = start_worker(scheduler.http, "w1", workdir=tmp_path, env={**env, "WORKER_TOKEN": worker_token})
    try:

        def online() -> bool:
            _, workers = http_json("GET", scheduler.url + "/api/workers", token=api)
            return isinstance(workers, list) and [w["name"] for w in workers] == ["w1"]

        wait_until(online, what="the worker to connect")
        code, job = http_json("POST", scheduler.url + "/api/jobs", {"command": "env; echo end"}, token=api)
        assert code == 202 and isinstance(job, dict), job

        def ended() -> dict[str, Any] | None:
            _, found = http_json("GET", f"{scheduler.url}/api/jobs/{job['id']}", token=api)
            return found if isinstance(found, dict) and found["status"] not in ("queued", "running") else None

        assert wait_until(ended, what="the job to end")["status"] == "succeeded"
        _, log = http_json("GET", f"{scheduler.url}/api/jobs/{job['id']}/log", token=api)
        assert isinstance(log, str) and log.endswith("end\n") and "PATH=" in log
        for secret in (api, tcp, worker_token, "_TOKEN="):
            assert secret not in log
    finally:
        stop(worker)
        stop(scheduler.process)


def test_the_scheduler_forgets_its_token_variables_once_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, beside the test above: scheduler.tap drops what Settings read."""
    from scheduler import service, tap

    monkeypatch.setenv("SCHEDULER_API_TOKEN", "api-token-0123456789")
    monkeypatch.setenv("SCHEDULER_WORKER_TOKEN", "worker-token-0123456789")
    monkeypatch.setenv("SCHEDULER_TCP", "kept: not a token variable")
    read: list[str | None] = []

    def from_options(options: Any) -> object:
        read.append(os.environ.get("SCHEDULER_API_TOKEN"))
        return object()

    monkeypatch.setattr(service.SchedulerService, "from_options", from_options)
    tap.makeService(tap.Options())
    assert read == ["api-token-0123456789"]
    assert "SCHEDULER_API_TOKEN" not in os.environ and "SCHEDULER_WORKER_TOKEN" not in os.environ
    assert os.environ["SCHEDULER_TCP"] == "kept: not a token variable"


def test_a_second_worker_under_a_taken_name_is_refused_and_nothing_is_lost(cluster: Any) -> None:
    """Issue 20, item 11: two workers named w1 took the name from each other and lost every job."""
    c: Cluster = cluster()
    c.worker("w1")
    jobs = [c.run("sleep 1; echo done", target="worker:w1") for _ in range(4)]
    second = start_worker(c.scheduler.http, "w1", workdir=c.workdir)
    c.workers["w1-again"] = second
    wait_until(
        lambda: "the scheduler refused this worker (w1, instance" in (c.workdir / "worker-w1.log").read_text(),
        what="the second worker to be refused",
    )
    for job in jobs:
        done = c.wait_final(job["id"])
        assert done["status"] == "succeeded" and c.log(job["id"]) == "done\n"
    log = c.scheduler.log.read_text()
    assert "refused worker w1 from" in log and "are two workers running with the same --name?" in log
    assert "lost" not in log
    assert c.online() == ["w1"]


def test_a_stopped_scheduler_says_so_and_its_workers_come_straight_back(cluster: Any) -> None:
    c: Cluster = cluster()
    c.worker("w1")
    c.restart_scheduler()
    wait_until(lambda: "w1" in c.online(), what="w1 back on the restarted scheduler")
    log = (c.workdir / "worker-w1.log").read_text()
    assert "the scheduler is restarting (1001: scheduler restarting); reconnecting at once" in log
    # 1006 is what a worker sees when the connection just drops: a crash.
    assert "1006" not in log and "uncleanly" not in log, log
    assert "telling 1 worker(s) the scheduler is going away" in c.scheduler.log.read_text()
