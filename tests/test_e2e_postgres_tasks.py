"""Two real ``twistd scheduler --db`` nodes share their tasks through PostgreSQL:
the first node's tasks.db is imported into the new cluster, a task added on
the follower shows on the leader and fires from it, and SAVE and LOAD
export to and import from the receiving node's tasks.db."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import psycopg

from tests.e2e import (
    get_json,
    leader_and_follower,
    start_worker,
    stop,
    wait_until,
)
from tests.postgres_support import pg_url, postgres_server  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

# Adds on the follower whose time to reach the leader is printed (not asserted).
SAMPLES = 20


def _commands(url: str) -> list[str]:
    return [task["command"] for task in get_json(url + "/api/tasks") or []]


def test_two_nodes_share_their_tasks_and_the_leader_fires_one_added_on_the_follower(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    env = {**ENV, "SCHEDULER_DB": pg_url}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # An operator's existing tasks, on the node started first.
    seed = {"schedule": "0 0 1 1 *", "command": "echo imported", "jobName": "task_1"}
    (tmp_path / "a" / "tasks.db").write_text(json.dumps(seed) + "\n")
    worker = None
    with leader_and_follower(tmp_path, env) as (a, b):
        assert "imported 1 tasks from" in a.log.read_text()
        try:
            wait_until(lambda: get_json(b.url + "/api/health"), 20, "b to answer")
            assert get_json(b.url + "/api/health")["leader"] is False
            # b started with no tasks.db: it has the cluster's tasks, and writes no file.
            assert _commands(b.url) == ["echo imported"]
            assert not (tmp_path / "b" / "tasks.db").exists()

            worker = start_worker(a.http, "w1", workdir=tmp_path, env=ENV)
            wait_until(lambda: get_json(a.url + "/api/workers"), 20, "the worker to connect to a")

            # Added on the follower: the leader knows it, and fires it.
            reply = b.command("ADD * * * * * * echo from-b\n")
            task_id = int(reply[0].split()[1].removeprefix("id="))
            assert reply[0].startswith(f"OK id={task_id} ") and task_id == 2
            wait_until(lambda: get_json(f"{a.url}/api/tasks/{task_id}"), 10, "a to know the task", interval=0.002)
            ran = wait_until(
                lambda: [job for job in get_json(f"{a.url}/api/jobs?status=succeeded") or [] if job["taskId"] == task_id],
                30,
                "the task added on b to run",
            )
            assert ran[0]["triggeredBy"]["kind"] == "schedule"
            b.command(f"REMOVE {task_id}\n")
            wait_until(lambda: get_json(f"{a.url}/api/tasks/{task_id}") is None, 10, "a to hear of the removal")

            # How long from the follower's reply to the leader answering with the task.
            took = []
            for number in range(SAMPLES):
                added = b.command(f"ADD 0 0 1 1 * echo sample-{number}\n")[0]
                replied = time.monotonic()
                new_id = int(added.split()[1].removeprefix("id="))
                wait_until(lambda new_id=new_id: get_json(f"{a.url}/api/tasks/{new_id}"), 10, "a to know the sample", interval=0.001)
                took.append((time.monotonic() - replied) * 1000)
            print(
                f"task added on the follower, known to the leader after (ms, {SAMPLES} adds, polling GET /api/tasks/ID): "
                f"median {statistics.median(took):.1f}, max {max(took):.1f}"
            )
            # Ids stay unique across the nodes: adds on both, interleaved.
            for number in range(3):
                a.command(f"ADD 0 0 1 1 * echo on-a-{number}\n")
                b.command(f"ADD 0 0 1 1 * echo on-b-{number}\n")
            listed = wait_until(lambda: (tasks := get_json(a.url + "/api/tasks")) and len(tasks) == 1 + SAMPLES + 6 and tasks, 10, "a to have every task")
            assert len({task["id"] for task in listed}) == len(listed)
            wait_until(lambda: sorted(_commands(b.url)) == sorted(task["command"] for task in listed), 10, "b to agree")

            # SAVE exports to the receiving node's tasks.db; LOAD imports a file for the whole cluster.
            saved = b.command("SAVE\n")[0]
            assert saved == f"OK saved {len(listed)} tasks"
            assert len((tmp_path / "b" / "tasks.db").read_text().splitlines()) == len(listed)
            assert a.command("LOAD\n") == ["OK loaded 1 task"]
            wait_until(lambda: _commands(b.url) == ["echo imported"], 10, "b to have the loaded tasks")
        finally:
            if worker is not None:
                stop(worker)


def test_after_every_session_ends_a_change_goes_through_and_reaches_the_other_node(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    """As after a PostgreSQL restart, seen from the nodes: every session ends."""
    env = {**ENV, "SCHEDULER_DB": pg_url}
    with leader_and_follower(tmp_path, env) as (a, b):
        assert b.command("ADD 0 0 1 1 * echo before\n")[0].startswith("OK id=1 ")
        wait_until(lambda: _commands(a.url) == ["echo before"], 10, "a to have the first task")
        with psycopg.connect(pg_url, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                "WHERE application_name LIKE 'scheduler-%%' AND pid <> pg_backend_pid()"
            ).fetchone()
        assert ended is not None and ended[0] >= 6  # each node's tasks, history, lease and listening sessions
        # b's tasks connection is gone: its first ADD after it goes through
        # on a new one, and a, listening again, has it.
        assert b.command("ADD 0 0 1 1 * echo after\n")[0].startswith("OK id=2 ")
        wait_until(lambda: _commands(a.url) == ["echo before", "echo after"], 30, "a to have the task added after")
        assert "lost the tasks' connection" in b.log.read_text()
