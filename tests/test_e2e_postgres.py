"""The real ``twistd scheduler --db postgresql://...`` with a real worker: it takes
the lease, fires, keeps jobs and output in PostgreSQL (no jobs.sqlite), and
keeps them across a restart; a database it cannot reach stops it at start-up
with a clear message that holds no password."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e import (
    SCHEDULER_ON_ANY_PORTS,
    get_json,
    http_json,
    leader_and_follower,
    start_scheduler,
    start_worker,
    stop,
    wait_until,
)
from tests.postgres_support import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_a_node_on_postgresql_fires_and_keeps_its_history_there_across_a_restart(tmp_path: Path, pg_url: str) -> None:
    # The URL (and its password) from the environment, as an operator would.
    env = {**ENV, "SCHEDULER_DB": pg_url}
    running = start_scheduler(tmp_path, "--node-name", "e2e-node", env=env)
    worker = None
    try:
        cluster = wait_until(
            lambda: (body := get_json(running.url + "/api/cluster")) and body["leader"] == "e2e-node" and body, 20,
            "the node to take the lease",
        )
        assert cluster["epoch"] == 1 and cluster["nodes"][0]["name"] == "e2e-node"
        worker = start_worker(running.http, "w1", workdir=tmp_path, env=ENV)
        wait_until(lambda: get_json(running.url + "/api/workers"), 20, "the worker to connect")
        assert running.command("ADD * * * * * * echo tick-$((1+1))\n")[0].startswith("OK id=1 ")
        done = wait_until(lambda: get_json(running.url + "/api/jobs?status=succeeded"), 30, "a fired job to succeed")
        job_id = done[-1]["id"]
        assert done[-1]["triggeredBy"]["kind"] == "schedule"
        running.command("REMOVE 1\n")
        # In PostgreSQL, committed: the job and its output.
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SELECT status, key FROM jobs WHERE id = %s", (job_id,)).fetchone()
            output = conn.execute("SELECT data FROM output WHERE job_id = %s ORDER BY seq", (job_id,)).fetchall()
        assert row is not None and row[0] == "succeeded" and row[1].startswith("1@")
        assert b"".join(bytes(data) for (data,) in output) == b"tick-2\n"
        assert not (tmp_path / "jobs.sqlite").exists()
        health = get_json(running.url + "/api/health")
        assert (health["node"], health["leader"], health["epoch"]) == ("e2e-node", True, 1)
        # twistd ends a clean shutdown by re-raising the signal.
        assert stop(running.process, signal.SIGTERM) in (0, -signal.SIGTERM)

        # Restarted: the history is still there, and the node leads again in a new epoch.
        running = start_scheduler(tmp_path, "--node-name", "e2e-node", env=env, ports=(running.tcp, running.http))
        again = wait_until(
            lambda: (body := get_json(running.url + "/api/cluster")) and body["leader"] == "e2e-node" and body, 20,
            "the restarted node to take the lease",
        )
        assert again["epoch"] == 2
        kept = get_json(f"{running.url}/api/jobs/{job_id}")
        assert kept["status"] == "succeeded"
        code, log = http_json("GET", f"{running.url}/api/jobs/{job_id}/log")
        assert code == 200 and "tick-2" in str(log)
        assert PASSWORD not in running.log.read_text(errors="replace")
    finally:
        if worker is not None:
            stop(worker)
        stop(running.process)


def test_a_database_that_cannot_be_reached_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    url = f"postgresql://sched:{PASSWORD}@127.0.0.1:1/jobs"
    done = subprocess.run([*SCHEDULER_ON_ANY_PORTS, "--db", url], cwd=tmp_path, capture_output=True, timeout=60, env={**os.environ, **ENV})
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 1
    assert "scheduler: cannot start: cannot use the job database: postgresql://sched@127.0.0.1:1/jobs: cannot connect" in out
    assert "Traceback" not in out and PASSWORD not in out


@pytest.mark.serial
def test_when_the_leader_is_killed_the_other_node_leads_at_its_next_step(tmp_path: Path, pg_url: str) -> None:
    env = {**ENV, "SCHEDULER_DB": pg_url}
    with leader_and_follower(tmp_path, env) as (a, b):
        cluster = wait_until(
            lambda: (body := get_json(b.url + "/api/cluster")) and len(body["nodes"]) == 2 and body, 20, "b to see both nodes"
        )
        assert cluster["leader"] == "a" and cluster["epoch"] == 1
        assert [(node["name"], node["leader"]) for node in cluster["nodes"]] == [("b", False), ("a", True)]
        assert get_json(b.url + "/api/health")["leader"] is False

        # kill -9: a's database session ends with it, and b need not wait for the lease (5 s).
        a.process.kill()
        killed = time.monotonic()
        a.process.wait()
        wait_until(lambda: (body := get_json(b.url + "/api/health")) and body["leader"], 10, "b to lead", interval=0.02)
        took = time.monotonic() - killed
        print(f"b led {took:.2f} s after a was killed")
        assert took < 3.0
        after = get_json(b.url + "/api/cluster")
        assert after["leader"] == "b" and after["epoch"] == 2


def test_a_new_leader_runs_the_seconds_nobody_fired_once_each(tmp_path: Path, pg_url: str) -> None:
    """kill -9 of the leader of two nodes: the other catches up from the history's
    cron cursors, so every second of an every-second task (missed: all) has
    exactly one job, before, during and after the takeover."""
    env = {**ENV, "SCHEDULER_DB": pg_url}
    # The same task on both nodes (tasks.db is each node's own in this test).
    line = '{"id": 1, "jobName": "beat", "schedule": "* * * * * *", "command": "true", "missed": "all"}\n'
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tasks.db").write_text(line)
    with leader_and_follower(tmp_path, env) as (a, b):
        wait_until(lambda: get_json(b.url + "/api/health"), 20, "b to answer")

        def fired() -> list[float]:
            with psycopg.connect(pg_url) as conn:
                rows = conn.execute("SELECT scheduled_at FROM jobs WHERE task_id = 1 ORDER BY scheduled_at").fetchall()
            return [float(at) for (at,) in rows]

        wait_until(lambda: len(fired()) >= 3, 20, "a to fire three seconds")
        a.process.kill()
        a.process.wait()
        killed_at = time.time()
        wait_until(lambda: (body := get_json(b.url + "/api/health")) and body["leader"], 10, "b to lead", interval=0.02)
        wait_until(lambda: fired() and fired()[-1] >= killed_at + 3, 20, "b to fire past the takeover")
        times = fired()
        assert len(times) == len(set(times)), f"a second fired twice: {times}"
        seconds = [int(at) for at in times]
        assert seconds == list(range(seconds[0], seconds[-1] + 1)), f"a second missing: {seconds}"
        with psycopg.connect(pg_url) as conn:
            kinds = dict(conn.execute("SELECT triggered_by::json->>'kind', count(*) FROM jobs GROUP BY 1").fetchall())
        print(f"fired {len(times)} seconds; by kind: {kinds}")


def test_a_fire_on_a_node_without_workers_runs_on_another_nodes_worker_and_a_cancel_reaches_it(
    tmp_path: Path, pg_url: str
) -> None:
    """Dispatch on every node: a leads and has no worker, b has one.  What a
    fires is offered and b claims it; a cancel asked of a reaches b's worker."""
    env = {**ENV, "SCHEDULER_DB": pg_url}
    worker = None
    with leader_and_follower(tmp_path, env) as (a, b):
        try:
            worker = start_worker(b.http, "w1", "--slots", "2", workdir=tmp_path / "b", env=ENV)
            wait_until(lambda: get_json(b.url + "/api/workers"), 20, "the worker to connect to b")
            assert a.command("ADD * * * * * * echo tick-$((1+1))\n")[0].startswith("OK id=1 ")
            done = wait_until(
                lambda: (jobs := get_json(a.url + "/api/jobs?status=succeeded")) and len(jobs) >= 5 and jobs,
                30,
                "five fires of a to succeed",
            )
            a.command("REMOVE 1\n")
            ids = [job["id"] for job in done]
            with psycopg.connect(pg_url) as conn:
                rows = conn.execute(
                    "SELECT id, worker, node, scheduled_at, created_at, started_at FROM jobs WHERE id = ANY(%s) ORDER BY id",
                    (ids,),
                ).fetchall()
                output = conn.execute("SELECT data FROM output WHERE job_id = %s", (ids[0],)).fetchall()
            # Each ran on b's worker, b managing it, its output kept.
            assert {(worker_name, node) for _, worker_name, node, *_ in rows} == {("w1", "b")}
            assert b"".join(bytes(data) for (data,) in output) == b"tick-2\n"
            late = sorted(started - scheduled for *_, scheduled, _, started in rows)
            from_fire = sorted(started - created for *_, created, started in rows)
            print(
                f"fire on a to started on b's worker: late after the due second {late[0] * 1000:.1f}"
                f"-{late[-1] * 1000:.1f} ms (median {late[len(late) // 2] * 1000:.1f}); "
                f"from the job's creation {from_fire[0] * 1000:.1f}-{from_fire[-1] * 1000:.1f} ms over {len(rows)} fires"
            )

            # A job started through a, running on b's worker, cancelled through a.
            code, created = http_json("POST", a.url + "/api/jobs", {"command": "sleep 60"})
            assert code == 202
            job_id = created["id"]  # type: ignore[index]
            wait_until(
                lambda: (job := get_json(f"{b.url}/api/jobs/{job_id}")) and job["status"] == "running" and job["startedAt"],
                20,
                "the job to start on b's worker",
            )
            code, cancelled = http_json("POST", f"{a.url}/api/jobs/{job_id}/cancel")
            assert code == 202 and cancelled["cancelRequestedAt"] is not None  # type: ignore[index]
            ended = wait_until(
                lambda: (job := get_json(f"{a.url}/api/jobs/{job_id}")) and job["status"] != "running" and job, 20, "the cancel"
            )
            assert ended["status"] == "cancelled" and ended["worker"] == "w1"
            metrics = http_json("GET", a.url + "/metrics")
            assert "scheduler_cancels_relayed_total 1.0" in str(metrics[1])
        finally:
            if worker is not None:
                stop(worker)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "stopped"])
def test_a_worker_whose_node_is_killed_mid_job_goes_to_the_other_and_its_job_ends_once_whole(
    tmp_path: Path, pg_url: str, how: signal.Signals
) -> None:
    env = {**ENV, "SCHEDULER_DB": pg_url}
    worker = None
    with leader_and_follower(tmp_path, env) as (a, b):
        try:
            wait_until(lambda: (body := get_json(b.url + "/api/cluster")) and len(body["nodes"]) == 2, 20, "b to join")
            urls = f"ws://127.0.0.1:{a.http}/ws/worker,ws://127.0.0.1:{b.http}/ws/worker"
            worker = start_worker(a.http, "w1", "--url", urls, workdir=tmp_path, env=ENV)
            wait_until(lambda: get_json(a.url + "/api/workers"), 20, "the worker to reach a, the first URL")
            # About 6 s of output, a line every 0.2 s.
            command = "for i in $(seq 1 30); do echo line-$i; sleep 0.2; done"
            code, created = http_json("POST", a.url + "/api/jobs", {"command": command})
            assert code == 202 and isinstance(created, dict), created
            job_id = created["id"]

            def chunks() -> int:
                with psycopg.connect(pg_url) as conn:
                    row = conn.execute("SELECT COUNT(*) FROM output WHERE job_id = %s", (job_id,)).fetchone()
                return int(row[0]) if row else 0

            wait_until(lambda: chunks() >= 3, 20, "the job's first lines on a")
            # kill -9, or a clean stop (the worker hears "going away" and dials b at once).
            a.process.send_signal(how)
            killed = time.monotonic()
            wait_until(lambda: get_json(b.url + "/api/workers"), 10, "the worker on b", interval=0.02)
            moved = time.monotonic() - killed
            a.process.wait(timeout=15)
            with psycopg.connect(pg_url) as conn:
                owner = conn.execute('SELECT "node", status FROM jobs WHERE id = %s', (job_id,)).fetchone()
            assert owner == ("b", "running")

            def ended() -> Any:
                with psycopg.connect(pg_url) as conn:
                    row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
                return row if row is not None and row[0] != "running" else None

            wait_until(ended, 30, "the job to end on b", interval=0.02)
            done = time.monotonic() - killed
            print(f"{how.name}: worker on b {moved:.2f} s after the signal; job ended {done:.2f} s after")
            with psycopg.connect(pg_url) as conn:
                rows = conn.execute('SELECT id, status, "node", exit_code FROM jobs WHERE command = %s', (command,)).fetchall()
                output = conn.execute("SELECT data FROM output WHERE job_id = %s ORDER BY seq", (job_id,)).fetchall()
            # One job, one result, every line once and in order.
            assert rows == [(job_id, "succeeded", "b", 0)]
            text = b"".join(bytes(data) for (data,) in output).decode()
            assert text == "".join(f"line-{i}\n" for i in range(1, 31))
            shown = get_json(f"{b.url}/api/jobs/{job_id}")
            assert shown["status"] == "succeeded"
            code, metrics = http_json("GET", b.url + "/metrics")
            assert code == 200 and "scheduler_jobs_taken_over_total 1.0" in str(metrics)
        finally:
            if worker is not None:
                stop(worker)


def test_when_a_node_and_its_worker_both_die_the_leader_marks_the_job_lost_after_lost_after(
    tmp_path: Path, pg_url: str
) -> None:
    env = {**ENV, "SCHEDULER_DB": pg_url}
    worker = None
    with leader_and_follower(tmp_path, env, "--lost-after", "3") as (a, b):
        try:
            wait_until(lambda: (body := get_json(b.url + "/api/cluster")) and len(body["nodes"]) == 2, 20, "b to join")
            worker = start_worker(a.http, "w1", workdir=tmp_path, env=ENV)
            wait_until(lambda: get_json(a.url + "/api/workers"), 20, "the worker to reach a")
            code, created = http_json("POST", a.url + "/api/jobs", {"command": "sleep 600"})
            assert code == 202 and isinstance(created, dict), created
            job_id = created["id"]

            def stored() -> Any:
                with psycopg.connect(pg_url) as conn:
                    return conn.execute('SELECT status, "node", reason FROM jobs WHERE id = %s', (job_id,)).fetchone()

            # Committed as running (the API shows it running a moment before).
            wait_until(lambda: (row := stored()) and row[0] == "running" and row[1] == "a", 20, "the job to run on a")
            worker.kill()
            a.process.kill()
            killed = time.monotonic()
            a.process.wait()

            status, node, reason = wait_until(
                lambda: (row := stored()) and row[0] != "running" and row, 30, "the leader to mark the job lost", interval=0.05
            )
            print(f"job lost {time.monotonic() - killed:.2f} s after its node and worker were killed (--lost-after 3)")
            assert (status, node) == ("lost", "b")
            assert reason.startswith("its node a went silent (no heartbeat for 3s)")
        finally:
            if worker is not None:
                stop(worker)


def test_target_all_on_any_node_runs_on_every_worker_of_the_cluster(tmp_path: Path, pg_url: str) -> None:
    """A job for target all asked of node a: one job for a's worker and one for
    b's, each run by the worker it names, whichever node it is connected to."""
    env = {**ENV, "SCHEDULER_DB": pg_url}
    w1 = w2 = None
    with leader_and_follower(tmp_path, env) as (a, b):
        try:
            w1 = start_worker(a.http, "w1", workdir=tmp_path / "a", env=ENV)
            w2 = start_worker(b.http, "w2", workdir=tmp_path / "b", env=ENV)
            wait_until(
                lambda: (body := get_json(a.url + "/api/cluster"))
                and sorted((node["name"], node["workers"]) for node in body["nodes"]) == [("a", 1), ("b", 1)],
                20,
                "both nodes with a worker each",
            )

            def everywhere() -> list[dict[str, Any]] | None:
                # a reads the other nodes' workers every 2 s: until then "all" is a's own.
                code, jobs = http_json("POST", a.url + "/api/jobs", {"command": "echo ran", "target": "all"})
                assert code == 202
                return jobs if len(jobs) == 2 else None  # type: ignore[arg-type,return-value]

            jobs = wait_until(everywhere, 20, "target all to name both workers")
            assert sorted(job["target"] for job in jobs) == ["worker:w1", "worker:w2"]
            for job in jobs:
                done = wait_until(
                    lambda job=job: (got := get_json(f"{b.url}/api/jobs/{job['id']}")) and got["status"] == "succeeded" and got,
                    20,
                    f"job {job['id']} to succeed",
                )
                assert done["worker"] == job["target"].split(":", 1)[1]
        finally:
            for process in (w1, w2):
                if process is not None:
                    stop(process)
