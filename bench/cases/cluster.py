"""Case 9, the cluster on PostgreSQL and its chaos test (``--db``, issue 15).

Three real ``twistd scheduler --db`` nodes on a PostgreSQL the case starts
itself (``tests/postgres_support.start_postgres``: Debian's server run as
the ``postgres`` user on a free loopback port), real ``twistd worker``
agents whose ``--url`` lists every node (each in another order, so they
spread over the nodes), and 50 tasks firing every second (``* * * * * *``,
``missed: all``) whose command appends a line to a file of its own task.

Then, one after another with steady time between: kill -9 of the leader
(started again as a follower a few seconds later); SIGSTOP of the leader
for 8 s, then SIGCONT; the leader's database sessions terminated while its
process lives; a PostgreSQL restart; and kill -9 of the node a worker is
connected to while that worker runs a job that prints for 3 s.

Counted per task and second over the whole run:

- **lost**: a second in the window with no job of the task that ran;
- **doubled**: a second with more than one job, or more runs in the task's
  file than jobs that started (one job run twice).

Beside them: how long each takeover took (from the fault until another node
answers ``leader: true``), the writes the fence refused, what became of the
job whose worker lost its node, how late the caught-up fires started, the
cron latency p99 in the steady parts, lease statements per node per second,
how long a task added on a follower takes to reach the leader, and one
node's throughput on PostgreSQL beside the same node on SQLite (the same
2,000 ``true`` jobs, four real workers).

``run_chaos`` is also the short chaos test of ``make test``
(tests/test_cluster_chaos.py), with fewer tasks and shorter waits.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.common import (
    CaseResult,
    Figure,
    Http,
    RealWorkers,
    Runtime,
    Scheduler,
    log,
    median,
    percentile,
    stop_process,
    wait_until,
)
from tests.e2e import free_port, wait_for_port
from tests.postgres_support import NoPostgres, PostgresServer, start_postgres

NAME = "cluster"
NODES = ("a", "b", "c")
WORKER_SLOTS = 30


class Node:
    """One real ``twistd scheduler --db`` on fixed loopback ports, which survive a restart."""

    def __init__(self, runtime: Runtime, root: Path, name: str, db_url: str, *extra: str) -> None:
        self.runtime = runtime
        self.name = name
        self.workdir = root / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_url = db_url
        self.extra = extra
        self.tcp, self.http_port = free_port(), free_port()
        self.process: subprocess.Popen[Any] | None = None
        self._log: IO[bytes] | None = None
        # Short: a stopped (SIGSTOP) node must not hold up the polls.
        self.http = Http(self.http_port, timeout=2.0)
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws/worker"

    def start(self) -> None:
        self._log = open(self.workdir / "scheduler.log", "ab")
        self.process = subprocess.Popen(
            [
                self.runtime.twistd,
                "--pidfile=",
                "-n",
                "scheduler",
                "--tcp",
                f"tcp:{self.tcp}:interface=127.0.0.1",
                "--http",
                f"tcp:{self.http_port}:interface=127.0.0.1",
                "--tasks-file",
                str(self.workdir / "tasks.db"),
                "--timezone",
                "UTC",
                "--node-name",
                self.name,
                *self.extra,
            ],
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**self.runtime.env(), "SCHEDULER_DB": self.db_url},
        )
        wait_for_port(self.tcp, self.process, timeout=120)
        wait_for_port(self.http_port, self.process, timeout=120)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.http.close()
        if self._log is not None:
            self._log.close()

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def health(self) -> dict[str, Any] | None:
        try:
            status, body = self.http.request("GET", "/api/health")
        except (OSError, TimeoutError):
            self.http.close()
            return None
        return json.loads(body) if status == 200 else None

    def metric(self, name: str) -> float:
        try:
            return self.http.metrics().get(name, 0.0)
        except (OSError, RuntimeError):
            self.http.close()
            return 0.0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            stop_process(self.process)
        self.http.close()
        if self._log is not None:
            self._log.close()


@dataclass
class Cluster:
    """PostgreSQL, the nodes and the workers of one run."""

    runtime: Runtime
    root: Path
    server: PostgresServer
    db_url: str
    nodes: dict[str, Node] = field(default_factory=dict)
    workers: list[subprocess.Popen[Any]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start_workers(self, count: int) -> None:
        urls = [node.ws_url for node in self.nodes.values()]
        for index in range(count):
            # Each worker tries the nodes from another one first.
            order = urls[index % len(urls) :] + urls[: index % len(urls)]
            log_file = open(self.root / f"worker-w{index}.log", "ab")
            self._logs.append(log_file)
            self.workers.append(
                subprocess.Popen(
                    [
                        self.runtime.twistd,
                        "--pidfile=",
                        "-n",
                        "worker",
                        "--url",
                        ",".join(order),
                        "--name",
                        f"w{index}",
                        "--slots",
                        str(WORKER_SLOTS),
                        "--workdir",
                        str(self.root),
                    ],
                    cwd=self.root,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=self.runtime.env(),
                )
            )

    def leader(self, timeout: float = 20.0, other_than: str | None = None, after_epoch: int = 0) -> tuple[Node, int]:
        """The node that answers ``leader: true`` in an epoch after *after_epoch* (another
        than *other_than*), and its epoch; polled every 20 ms."""

        def leading() -> tuple[Node, int] | None:
            for node in self.nodes.values():
                if node.name != other_than and node.process is not None and node.process.poll() is None:
                    health = node.health()
                    if health is not None and health.get("leader") and int(health["epoch"]) > after_epoch:
                        return node, int(health["epoch"])
            return None

        found: tuple[Node, int] = wait_until(leading, timeout, "a node to lead", interval=0.02)
        return found

    def where(self, worker: str) -> Node | None:
        """The node *worker* is connected to now."""
        for node in self.nodes.values():
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                names = {each["name"] for each in node.http.json("GET", "/api/workers")}
            except (OSError, RuntimeError):
                node.http.close()
                continue
            if worker in names:
                return node
        return None

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return list(conn.execute(query, params).fetchall())

    def stop(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            stop_process(process)
        for node in self.nodes.values():
            node.stop()
        for log_file in self._logs:
            log_file.close()


@dataclass
class ChaosSizes:
    tasks: int = 50
    workers: int = 3
    steady: float = 8.0  # seconds between faults
    frozen: float = 8.0  # SIGSTOP of the leader (more than the 5 s lease)
    restart_after: float = 3.0  # a killed node comes back after this long


QUICK = ChaosSizes(tasks=8, workers=2, steady=3.0, frozen=7.0, restart_after=2.0)


def run_chaos(runtime: Runtime, server: PostgresServer, db_url: str, sizes: ChaosSizes) -> dict[str, Any]:
    """The chaos run; returns every figure and count (raises if the cluster never formed)."""
    root = runtime.scratch(f"{NAME}-chaos")
    runs = root / "runs"
    runs.mkdir(exist_ok=True)
    cluster = Cluster(runtime, root, server, db_url)
    report: dict[str, Any] = {"sizes": sizes.__dict__, "faults": []}
    try:
        for name in NODES:
            cluster.nodes[name] = Node(runtime, root, name, db_url)
        first, epoch = cluster.leader()
        report["first_leader"] = first.name
        cluster.start_workers(sizes.workers)
        wait_until(
            lambda: sum(int((n.health() or {}).get("workers", 0)) for n in cluster.nodes.values()) >= sizes.workers,
            60,
            "the workers to connect",
        )
        task_ids = []
        for index in range(sizes.tasks):
            body = {
                "schedule": "* * * * * *",
                "command": f"echo run >> {runs}/{index}",
                "jobName": f"chaos_{index}",
                "missed": "all",
            }
            task_ids.append(int(first.http.json("POST", "/api/tasks", body)["id"]))
        files = dict(zip(task_ids, range(sizes.tasks), strict=True))
        # A task added on a follower: how long until the leader knows it.
        follower = next(node for node in cluster.nodes.values() if node.name != first.name)
        added = follower.http.json(
            "POST", "/api/tasks", {"schedule": "0 0 1 1 *", "command": "true", "jobName": "chaos_probe"}
        )
        replied = time.monotonic()
        wait_until(
            lambda: first.http.request("GET", f"/api/tasks/{added['id']}")[0] == 200, 10, "the leader to know the task",
            interval=0.002,
        )
        report["task_known_by_leader_ms"] = (time.monotonic() - replied) * 1000
        window_start = time.time() + 1
        time.sleep(sizes.steady)
        report["steady_latency"] = _latency(cluster, window_start, time.time())

        # 1. kill -9 of the leader.
        leader = first
        at = time.time()
        leader.kill()
        new, epoch = cluster.leader(other_than=leader.name, after_epoch=epoch)
        report["faults"].append({"fault": "kill -9 leader", "node": leader.name, "at": at, "takeover_s": time.time() - at})
        time.sleep(sizes.restart_after)
        leader.start()
        time.sleep(sizes.steady)

        # 2. SIGSTOP of the leader, SIGCONT after `frozen` seconds.
        leader = new
        fenced_before = leader.metric("scheduler_fenced_writes_total")
        at = time.time()
        leader.signal(signal.SIGSTOP)
        new, epoch = cluster.leader(other_than=leader.name, timeout=sizes.frozen + 20, after_epoch=epoch)
        took = time.time() - at
        time.sleep(max(0.0, sizes.frozen - took))
        thawed = time.time()
        leader.signal(signal.SIGCONT)
        wait_until(lambda: (h := leader.health()) is not None and not h["leader"], 20, "the thawed node to follow")
        time.sleep(1.0)  # a tick or two after the thaw, for any fire it would still make
        report["faults"].append(
            {
                "fault": f"SIGSTOP leader {sizes.frozen:g} s",
                "node": leader.name,
                "at": at,
                "takeover_s": took,
                "fires_by_the_old_leader_after_thaw": _fires_logged(leader, thawed),
                "fenced_writes": leader.metric("scheduler_fenced_writes_total") - fenced_before,
            }
        )
        time.sleep(sizes.steady)

        # 3. The leader's database sessions end; its process lives.
        leader = new
        at = time.time()
        cluster.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
            f"scheduler-% {leader.name}",
        )
        fires_again = _fires_again(cluster, at)
        again, epoch = cluster.leader(timeout=30, after_epoch=epoch - 1)
        report["faults"].append(
            {
                "fault": "leader's sessions terminated",
                "node": leader.name,
                "at": at,
                "leader_after": f"{again.name} in epoch {epoch}",
                "fires_again_s": fires_again,
            }
        )
        time.sleep(sizes.steady)

        # 4. PostgreSQL restarts: every session ends, the leader's too.
        at = time.time()
        server.restart()
        restarted = time.time() - at
        fires_again = _fires_again(cluster, at + restarted)
        back, epoch = cluster.leader(timeout=60, after_epoch=epoch - 1)
        report["faults"].append(
            {
                "fault": "PostgreSQL restart",
                "at": at,
                "restart_s": restarted,
                "leader_after": f"{back.name} in epoch {epoch}",
                "fires_again_s": fires_again + restarted,
            }
        )
        time.sleep(sizes.steady)

        # 5. A worker's node dies while the worker runs a job.
        report["faults"].append(_worker_node_dies(cluster, sizes))
        time.sleep(sizes.steady)
        window_end = time.time() - 2
        time.sleep(3)  # the last fires of the window end
        report.update(_count(cluster, task_ids, files, runs, window_start, window_end))
        for fault in report["faults"]:
            # The fires due from the fault until the cluster fired again, caught up how late.
            until = fault["at"] + fault.get("takeover_s", fault.get("fires_again_s", 0.0)) + 1
            owed = [late for second, late in report["caught_up_late"] if fault["at"] - 1 <= second <= until]
            fault["caught_up"] = len(owed)
            fault["caught_up_late_max_s"] = max(owed) if owed else None
        del report["caught_up_late"]
        report["window_s"] = window_end - window_start
        report["lease_steps_per_node_s"] = _lease_steps(cluster)
        return report
    finally:
        cluster.stop()


def _fires_again(cluster: Cluster, since: float) -> float:
    """Seconds from *since* until a fire scheduled after it is recorded (polled every 20 ms)."""

    def recorded() -> bool:
        try:
            rows = cluster.sql("SELECT 1 FROM jobs WHERE key IS NOT NULL AND scheduled_at > %s LIMIT 1", since)
        except Exception:  # the database restarting
            return False
        return bool(rows)

    wait_until(recorded, 60, "fires to be recorded again", interval=0.02)
    return time.time() - since


def _fires_logged(node: Node, since: float) -> int:
    """Fires *node* logged as queued from *since* on (its log's whole seconds), before it led again."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(since)))
    count = 0
    for line in (node.workdir / "scheduler.log").read_text(errors="replace").splitlines():
        if line[:19] < stamp:
            continue
        if "leads in epoch" in line:
            break
        if "[scheduler.cron_fires#info]" in line and "queued" in line:
            count += 1
    return count


def _worker_node_dies(cluster: Cluster, sizes: ChaosSizes) -> dict[str, Any]:
    """kill -9 of the node of worker w0 mid-job: where it goes, how the job ends."""
    node = wait_until(lambda: cluster.where("w0"), 20, "worker w0 on a node")
    script = "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.5; done"
    job = node.http.json("POST", "/api/jobs", {"command": script, "target": "worker:w0"})
    job_id = int(job[0]["id"] if isinstance(job, list) else job["id"])
    wait_until(
        lambda: cluster.sql("SELECT count(*) FROM output WHERE job_id = %s", job_id)[0][0] >= 1, 10, "the job's first line"
    )
    at = time.time()
    node.kill()
    fires_again = _fires_again(cluster, at)
    moved = wait_until(lambda: cluster.where("w0"), 30, "worker w0 on another node", interval=0.05)
    moved_after = time.time() - at

    def ended() -> tuple[Any, ...] | None:
        rows = cluster.sql("SELECT status, exit_code FROM jobs WHERE id = %s", job_id)
        return rows[0] if rows and rows[0][0] not in ("queued", "running") else None

    status, exit_code = wait_until(ended, 30, f"job {job_id} to end")
    output = b"".join(bytes(data) for (data,) in cluster.sql("SELECT data FROM output WHERE job_id = %s ORDER BY seq", job_id))
    time.sleep(sizes.restart_after)
    node.start()
    return {
        "fault": "worker's node killed mid-job",
        "node": node.name,
        "at": at,
        "fires_again_s": fires_again,
        "worker_back_on": moved.name,
        "worker_back_s": moved_after,
        "job": job_id,
        "status": status,
        "exit_code": exit_code,
        "whole_output": output.decode(errors="replace") == "".join(f"line-{i}\n" for i in range(1, 7)),
        "output": output.decode(errors="replace")[-200:],
    }


def _latency(cluster: Cluster, start: float, end: float) -> dict[str, float | None]:
    """Scheduled second to started, of the cron jobs scheduled in [start, end)."""
    rows = cluster.sql(
        "SELECT started_at - scheduled_at FROM jobs WHERE key IS NOT NULL AND started_at IS NOT NULL "
        "AND scheduled_at >= %s AND scheduled_at < %s AND triggered_by::json->>'kind' = 'schedule'",
        start,
        end,
    )
    lateness = [float(late) * 1000 for (late,) in rows]
    return {"fires": len(lateness), "p50_ms": percentile(lateness, 0.5), "p99_ms": percentile(lateness, 0.99)}


def _count(
    cluster: Cluster, task_ids: list[int], files: dict[int, int], runs: Path, start: float, end: float
) -> dict[str, Any]:
    rows = cluster.sql(
        "SELECT task_id, scheduled_at, status, started_at, triggered_by::json->>'kind' FROM jobs "
        "WHERE task_id = ANY(%s) AND scheduled_at >= %s AND scheduled_at < %s",
        task_ids,
        int(start),
        int(end),
    )
    seconds = range(int(start), int(end))
    per: dict[tuple[int, int], list[tuple[str, float | None, str]]] = {}
    for task_id, scheduled, status, started, kind in rows:
        per.setdefault((int(task_id), int(scheduled)), []).append((status, started, kind))
    lost = doubled = not_run = caught_up = 0
    late: list[tuple[int, float]] = []
    examples: list[str] = []
    for task_id in task_ids:
        for second in seconds:
            jobs = per.get((task_id, second), [])
            ran = [job for job in jobs if job[1] is not None]
            if not jobs:
                lost += 1
                if len(examples) < 10:
                    examples.append(f"task {task_id} second {second}: no job")
            elif not ran:
                not_run += 1
                if len(examples) < 10:
                    examples.append(f"task {task_id} second {second}: {jobs[0][0]}")
            if len(jobs) > 1:
                doubled += 1
            for _status, started, kind in jobs:
                if kind == "missed":
                    caught_up += 1
                    if started is not None:
                        late.append((second, float(started) - second))
    # One job run twice shows as more lines in its task's file than jobs that started.
    started_jobs = {
        int(task_id): int(count)
        for task_id, count in cluster.sql(
            "SELECT task_id, count(*) FROM jobs WHERE task_id = ANY(%s) AND started_at IS NOT NULL GROUP BY task_id", task_ids
        )
    }
    run_twice = 0
    for task_id, index in files.items():
        path = runs / str(index)
        lines = len(path.read_text().splitlines()) if path.exists() else 0
        run_twice += max(0, lines - started_jobs.get(task_id, 0))
    # Which jobs have no start on record, so a count of runs twice says what to look at.
    unstarted = (
        [
            [str(value) for value in row]
            for row in cluster.sql(
                "SELECT id, task_id, status, node, worker, scheduled_at, reason FROM jobs"
                " WHERE task_id = ANY(%s) AND started_at IS NULL ORDER BY id LIMIT 20",
                task_ids,
            )
        ]
        if run_twice
        else []
    )
    return {
        "task_seconds": len(task_ids) * len(seconds),
        "lost": lost,
        "not_run": not_run,
        "doubled": doubled,
        "run_twice": run_twice,
        "unstarted_jobs": unstarted,
        "caught_up": caught_up,
        "caught_up_late_max_s": max(lateness for _, lateness in late) if late else None,
        "caught_up_late": late,
        "problems": examples,
    }


def _lease_steps(cluster: Cluster) -> dict[str, float]:
    """Lease statements per second of each live node, over 5 s."""
    live = [node for node in cluster.nodes.values() if node.process is not None and node.process.poll() is None]
    before = {node.name: node.metric("scheduler_leader_lease_steps_total") for node in live}
    time.sleep(5.0)
    return {node.name: (node.metric("scheduler_leader_lease_steps_total") - before[node.name]) / 5.0 for node in live}


def _throughput(runtime: Runtime, db_url: str | None, jobs: int) -> tuple[float, float]:
    """Jobs per second and scheduler CPU ms per job of one node, on PostgreSQL (*db_url*) or
    SQLite: the throughput case's round (4 clients, 4 real workers of 1 slot)."""
    from bench.cases.throughput import run_ours

    which = "postgres" if db_url else "sqlite"
    workdir = runtime.scratch(f"{NAME}-throughput-{which}-{time.monotonic_ns()}")
    scheduler = Scheduler(runtime, workdir, env={"SCHEDULER_DB": db_url} if db_url else None)
    workers = RealWorkers(runtime, scheduler, 4, slots=1)
    try:
        scheduler.wait_workers(4)
        batch = run_ours(scheduler, jobs, 4)
        return batch.rate, batch.scheduler_cpu * 1000
    finally:
        workers.stop()
        scheduler.stop()


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    try:
        server, stop_server = start_postgres()
    except NoPostgres as why:
        result.error = str(why)
        return result
    try:
        import psycopg

        schema = "chaos"
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        chaos = run_chaos(runtime, server, server.url(schema=schema), QUICK if runtime.quick else ChaosSizes())
        result.details["chaos"] = chaos
        log(f"{NAME}: {json.dumps(chaos)[:2000]}")
        result.add(Figure("chaos: task seconds lost", chaos["lost"] + chaos["not_run"], "", target="0", met=chaos["lost"] + chaos["not_run"] == 0))
        result.add(Figure("chaos: task seconds doubled", chaos["doubled"] + chaos["run_twice"], "", target="0", met=chaos["doubled"] + chaos["run_twice"] == 0))
        for fault in chaos["faults"]:
            seconds = fault.get("takeover_s", fault.get("fires_again_s", fault.get("worker_back_s")))
            if seconds is not None:
                target = {"kill -9 leader": 1.5, "worker's node killed mid-job": 5.0}.get(fault["fault"])
                result.add(
                    Figure(
                        f"chaos: {fault['fault']}",
                        seconds,
                        "s",
                        target=None if target is None else f"< {target:g} s",
                        met=None if target is None else seconds < target,
                    )
                )
        latency = chaos["steady_latency"]
        if latency["p99_ms"] is not None:
            result.add(Figure("cron latency p99, 50 fires/s on PostgreSQL", latency["p99_ms"], "ms", target="< 20 ms", met=latency["p99_ms"] < 20))
        result.add(
            Figure(
                "a task added on a follower, known by the leader",
                chaos["task_known_by_leader_ms"],
                "ms",
                target="< 100 ms",
                met=chaos["task_known_by_leader_ms"] < 100,
            )
        )
        steps = chaos["lease_steps_per_node_s"]
        if steps:
            most = max(steps.values())
            result.add(Figure("lease statements per node per second", most, "", target="<= 1", met=most <= 1.05))
        # One node's throughput, PostgreSQL beside SQLite, alternating rounds.
        jobs = 200 if runtime.quick else 2000
        rounds = 1 if runtime.quick else 3
        samples: dict[str, list[tuple[float, float]]] = {"postgres": [], "sqlite": []}
        for index in range(rounds):
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA throughput{index}")
            samples["postgres"].append(_throughput(runtime, server.url(schema=f"throughput{index}"), jobs))
            samples["sqlite"].append(_throughput(runtime, None, jobs))
        pg = median(rate for rate, _ in samples["postgres"]) or 0.0
        lite = median(rate for rate, _ in samples["sqlite"]) or 0.0
        result.details["throughput"] = samples
        result.add(
            Figure(
                f"one node's jobs per second on PostgreSQL ({jobs} x true, 4 workers)",
                pg,
                "jobs/s",
                peer="the same node on SQLite",
                peer_value=lite,
                ratio=pg / lite if lite else None,
                target=">= 0.85x SQLite",
                met=bool(lite) and pg / lite >= 0.85,
                samples=[rate for rate, _ in samples["postgres"]],
            )
        )
        result.add(
            Figure(
                "scheduler CPU per job on PostgreSQL",
                median(cpu for _, cpu in samples["postgres"]),
                "ms",
                peer="on SQLite",
                peer_value=median(cpu for _, cpu in samples["sqlite"]),
            )
        )
    finally:
        stop_server()
    return result



