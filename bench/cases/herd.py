"""The top-of-the-hour herd: 10,000 tasks due at the same second.

Ours: a real scheduler, 100 simulated workers of 100 slots each
(``bench/simworkers.py``: the real agent and protocol, a fake process that
runs for 2 s; spread over ``SIM_PROCESSES`` processes, as 100
machines would start their jobs side by side), and 10,000 tasks added over TCP whose six-field
schedule names one second a little ahead.  Measured from that second to
the last ``started`` (the worker's own timestamp), then every job is
looked up in ``jobs.sqlite`` after the scheduler stops: one job per task
for that second, none doubled or missing.  The scheduler's CPU and longest
reactor stall, and the simulated workers' CPU, are read from five seconds
before the second (the herd's early tick) to the last start.

Beside it, one after the other in the same run (each on the machine
alone): Celery beat holding the same 10,000 entries as ``crontab`` entries
(minutes only, so its second is a minute's start) sending to a Celery
worker with 100 threads whose task only records when it began
(``bench/peer_celery_beat.py``), and APScheduler 3 holding the same
10,000 cron jobs in a ``BackgroundScheduler`` with 100 threads, each job
recording when it began (``bench/peer_apscheduler_herd.py``).  Each is
measured from its due second to the last start.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.common import (
    BENCH,
    CaseResult,
    Figure,
    Runtime,
    Scheduler,
    SchedulerWatch,
    SimWorkers,
    log,
    stall_figure,
    stop_process,
    tcp_command,
)
from bench.peers import RedisServer

NAME = "herd"
# Seconds between adding the tasks and their second: room for the ADDs
# (a few with --quick's hundred).
LEAD = 12.0
QUICK_LEAD = 3.0
# How long after its second a peer's herd may take to start.
PEER_TIMEOUT = 120.0
# Simulated-worker processes for the 100 workers: one would start the 10,000
# jobs one after another (about 0.5 s of its reactor).  Chosen by measuring
# on 2 cores shared with the scheduler (1 December, two runs each, load
# 3-8): the last start 0.47 s with 1, 0.46-0.48 s with 4, 0.27-0.35 s with
# 8, 0.23-0.45 s with 16.  Two in the smoke run.
SIM_PROCESSES = 8
QUICK_SIM_PROCESSES = 2


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    tasks = 100 if runtime.quick else 10_000
    workers, slots = (5, 20) if runtime.quick else (100, 100)
    processes = QUICK_SIM_PROCESSES if runtime.quick else SIM_PROCESSES
    result.details.update(tasks=tasks, workers=workers, slots=slots, sim_processes=processes)
    ours = run_ours(runtime, tasks, workers, slots, processes)
    result.details["ours"] = ours
    celery = apscheduler = None
    if runtime.peers:
        folder = runtime.scratch(f"{NAME}-celery")
        assert runtime.redis_server is not None
        celery = run_celery_beat(runtime, folder, tasks)
        result.details["celery_beat"] = celery
        apscheduler = run_apscheduler(runtime, runtime.scratch(f"{NAME}-apscheduler"), tasks)
        result.details["apscheduler"] = apscheduler
    last = ours["last_started_after_due"]
    result.add(
        Figure(
            "due second to last started",
            last,
            "s",
            peer=peer_name("Celery beat + worker (100 threads)", celery, tasks),
            peer_value=celery["last_started_after_due"] if celery else None,
            ratio=celery["last_started_after_due"] / last if celery and last > 0 else None,
            target="< 1 s",
            met=last < 1.0,
        )
    )
    if apscheduler:
        result.add(
            Figure(
                "due second to last started, vs APScheduler",
                last,
                "s",
                peer=peer_name("APScheduler 3 (100 threads)", apscheduler, tasks),
                peer_value=apscheduler["last_started_after_due"],
                ratio=apscheduler["last_started_after_due"] / last if last > 0 else None,
            )
        )
    result.add(Figure("due second to first started", ours["first_started_after_due"], "s"))
    # The scheduler's part: negative when every run was with its worker
    # before the second (the rest of the last start is the workers').
    result.add(Figure("due second to the last run read by its worker", ours["last_run_arrived_after_due"], "s"))
    wrong = ours["doubled"] + ours["missing"]
    result.add(
        Figure(
            "jobs doubled or missing in the job store",
            float(wrong),
            "jobs",
            peer="Celery / APScheduler: starts missing" if celery or apscheduler else None,
            peer_value=float(
                (tasks - celery["started"] if celery else 0) + (tasks - apscheduler["started"] if apscheduler else 0)
            )
            if celery or apscheduler
            else None,
            target="0",
            met=wrong == 0,
        )
    )
    result.add(Figure("scheduler CPU for the herd", ours["scheduler_cpu_seconds"] * 1e3, "ms"))
    result.add(Figure("simulated workers' CPU for the herd", ours["sim_cpu_seconds"] * 1e3, "ms"))
    result.add(Figure("scheduler waiting for a core in the herd", ours["scheduler_waited_for_a_core_seconds"] * 1e3, "ms"))
    result.add(stall_figure([(ours["longest_stall_seconds"], ours["stall_last_bucket_seconds"])]))
    return result


def peer_name(name: str, figures: dict[str, float | int] | None, tasks: int) -> str | None:
    """The peer's label; one that did not start every job in time says how many it did (its time is then a floor)."""
    if figures is None:
        return None
    if figures["unique"] >= tasks:
        return name
    return f"{name}: only {figures['unique']:,} of {tasks:,} started in {PEER_TIMEOUT:g} s"


def due_second(lead: float) -> float:
    return float(int(time.time() + lead))


def six_fields(due: float) -> str:
    """A schedule of one second a year (croniter's six fields: seconds last), in UTC."""
    at = datetime.fromtimestamp(due, UTC)
    return f"{at.minute} {at.hour} {at.day} {at.month} * {at.second}"


def run_ours(runtime: Runtime, tasks: int, workers: int, slots: int, processes: int = 1) -> dict[str, float | int]:
    folder = runtime.scratch(NAME)
    scheduler = Scheduler(runtime, folder)
    sim = None
    try:
        # Each fake job runs 2 s (0.2 s in the smoke run): every slot is
        # taken once, as a herd of slow jobs would.
        hold = 0.2 if runtime.quick else 2.0
        sim = SimWorkers(
            runtime, scheduler.ws_url, workers, slots=slots, hold=hold, in_flight=100, processes=processes
        )
        scheduler.wait_workers(workers)
        due = due_second(QUICK_LEAD if tasks <= 100 else LEAD)
        schedule = six_fields(due)
        lines, seconds = tcp_command(scheduler.tcp, f"ADD {schedule} true\n" * tasks, timeout=120)
        if len(lines) != tasks or not all(line.startswith("OK") for line in lines):
            raise RuntimeError(f"ADD answered {lines[:3]}")
        if time.time() > due - 1:
            raise RuntimeError(f"adding {tasks} tasks took {seconds:.1f} s, past their second")
        log(f"herd: {tasks} tasks due at {datetime.fromtimestamp(due, UTC):%H:%M:%S}")
        # The scheduler may start on a herd up to 4 s ahead of its second.
        time.sleep(max(0.0, due - 5 - time.time()))
        watch, sim_cpu_before = SchedulerWatch(scheduler), sim.cpu_seconds()
        scheduler.profile(NAME)
        deadline = due + 60
        while len(sim.snapshot()) < tasks and time.time() < deadline:
            time.sleep(0.05)
        scheduler.end_profile()
        cpu = watch.cpu_seconds()
        waited = watch.waited_seconds()
        sim_cpu = sim.cpu_seconds() - sim_cpu_before
        stall, stall_last_bucket = watch.longest_stall()
        events = sim.snapshot()
        # Let every finished reach the job store before it stops.
        time.sleep(hold + 1.0)
    finally:
        if sim is not None:
            sim.stop()
        scheduler.stop()
    starts = [event.started_at for event in events]
    # When each run reached its worker: before the second, it waited there.
    arrivals = [event.run_at for event in events]
    if len(starts) < tasks:
        raise RuntimeError(f"only {len(starts)} of {tasks} jobs started within 60 s")
    doubled, missing = check_job_store(folder / "jobs.sqlite", due, tasks)
    return {
        "due": due,
        "add_seconds": seconds,
        "started": len(starts),
        "first_started_after_due": min(starts) - due,
        "last_started_after_due": max(starts) - due,
        "last_run_arrived_after_due": max(arrivals) - due if arrivals else float("nan"),
        "doubled": doubled,
        "missing": missing,
        "scheduler_cpu_seconds": cpu,
        "sim_cpu_seconds": sim_cpu,
        "scheduler_waited_for_a_core_seconds": waited,
        "longest_stall_seconds": stall,
        "stall_last_bucket_seconds": stall_last_bucket,
    }


def check_job_store(path: Path, due: float, tasks: int) -> tuple[int, int]:
    """Jobs for *due* per task in the job store: (doubled, missing)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
        rows = conn.execute("SELECT task_id FROM jobs WHERE scheduled_at = ?", (due,)).fetchall()
    per_task = Counter(row[0] for row in rows)
    doubled = sum(count - 1 for count in per_task.values() if count > 1)
    return doubled, tasks - len(per_task)


def run_celery_beat(runtime: Runtime, folder: Path, tasks: int) -> dict[str, float | int]:
    assert runtime.peer_python is not None and runtime.redis_server is not None
    redis = RedisServer(runtime.redis_server, folder)
    # Celery's crontab has no seconds: its herd is due at a minute's start,
    # at least 30 s ahead (beat and the worker start in that time).
    due = float((int(time.time()) + 30) // 60 * 60 + 60)
    env = {
        **runtime.env(),
        "BENCH_REDIS_URL": redis.url,
        "HERD_TASKS": str(tasks),
        "HERD_DUE": str(due),
    }
    celery = [str(runtime.peer_python), "-m", "celery", "-A", "peer_celery_beat"]
    logs = [open(folder / name, "ab") for name in ("celery-worker.log", "celery-beat.log")]
    worker = subprocess.Popen(
        [*celery, "worker", "--pool", "threads", "--concurrency", "100", "--loglevel", "WARNING"],
        cwd=BENCH, env=env, stdout=logs[0], stderr=subprocess.STDOUT,
    )
    beat = subprocess.Popen(
        [*celery, "beat", "--loglevel", "WARNING", "--schedule", str(folder / "celerybeat-schedule")],
        cwd=BENCH, env=env, stdout=logs[1], stderr=subprocess.STDOUT,
    )
    try:
        log(f"herd: Celery beat with {tasks} entries due at {datetime.fromtimestamp(due, UTC):%H:%M:%S}")
        collected = subprocess.run(
            [str(runtime.peer_python), str(BENCH / "peer_celery_beat.py"), "collect", "--timeout", f"{PEER_TIMEOUT:g}"],
            env=env, cwd=folder, check=True, capture_output=True, timeout=300,
        )
        return dict(json.loads(collected.stdout))
    finally:
        stop_process(beat)
        stop_process(worker)
        for handle in logs:
            handle.close()
        redis.stop()


def run_apscheduler(runtime: Runtime, folder: Path, tasks: int) -> dict[str, float | int]:
    assert runtime.peer_python is not None
    log(f"herd: APScheduler 3 with {tasks} jobs")
    done = subprocess.run(
        [str(runtime.peer_python), str(BENCH / "peer_apscheduler_herd.py"), "--tasks", str(tasks), "--lead", "15",
         "--timeout", f"{PEER_TIMEOUT:g}"],
        cwd=folder, check=True, capture_output=True, timeout=300,
    )
    return dict(json.loads(done.stdout))

