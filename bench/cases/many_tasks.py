"""Case 3, many tasks: a tasks.db of 100,000 tasks with a realistic mix of schedules.

Measured on a real scheduler started with that file: ``LOAD`` and ``LIST``
over TCP (the seed's way: send the line, half-close, read to the end), and
its resident memory.  Measured in-process (``bench/inproc_tasks.py``): a
start-up load of the file, and a quiet cron tick (``CronEngine.due()`` when
nothing is due).  Beside it: APScheduler 3 adding the same 100,000 cron
jobs to a ``BackgroundScheduler`` and starting it.
"""

from __future__ import annotations

import json
import subprocess
import time

from bench.common import BENCH, CaseResult, Figure, Runtime, Scheduler, log, median, tcp_command
from bench.taskgen import write_tasks

NAME = "many_tasks"


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    count = 1000 if runtime.quick else 100_000
    loads = 2 if runtime.quick else 5
    lists = 2 if runtime.quick else 3
    folder = runtime.scratch(NAME)
    tasks_file = folder / "tasks.db"
    exprs = write_tasks(tasks_file, count)
    result.details.update(tasks=count, distinct_schedules=len(set(exprs)), file_bytes=tasks_file.stat().st_size)

    # A copy for the in-process and APScheduler runs: LOAD must not see them write.
    spare = folder / "tasks-copy.db"
    spare.write_bytes(tasks_file.read_bytes())

    load_seconds: list[float] = []
    list_seconds: list[float] = []
    scheduler = Scheduler(runtime, folder)
    try:
        result.details["scheduler_start_seconds"] = scheduler.startup_seconds
        time.sleep(0.5)
        result.details["rss_kib_after_start"] = scheduler.rss_kib()
        scheduler.profile(f"{NAME}-load")
        for _ in range(loads):
            lines, seconds = tcp_command(scheduler.tcp, "LOAD\n")
            if lines != [f"OK loaded {count} tasks"]:
                raise RuntimeError(f"LOAD answered {lines[:3]}")
            load_seconds.append(seconds)
        scheduler.end_profile()
        rss_after_load = scheduler.rss_kib()
        scheduler.profile(f"{NAME}-list")
        for _ in range(lists):
            lines, seconds = tcp_command(scheduler.tcp, "LIST\n")
            if len(lines) != count + 1 or lines[-1] != f"OK {count} tasks":
                raise RuntimeError(f"LIST answered {len(lines)} lines, last {lines[-1:]}")
            list_seconds.append(seconds)
        scheduler.end_profile()
        result.details["rss_kib_after_list"] = scheduler.rss_kib()
    finally:
        scheduler.stop()

    inproc = json.loads(
        subprocess.run(
            [runtime.python, str(BENCH / "inproc_tasks.py"), str(spare), "--loads", "3",
             "--ticks", "2000" if runtime.quick else "20000"],
            env=runtime.env(),
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=600,
        ).stdout
    )

    aps: dict[str, float] | None = None
    if runtime.peers:
        assert runtime.peer_python is not None
        log(f"APScheduler 3: adding {count} cron jobs (about 30 s for 100,000)")
        aps = json.loads(
            subprocess.run(
                [str(runtime.peer_python), str(BENCH / "peer_apscheduler.py"), str(spare)],
                cwd=folder,
                check=True,
                capture_output=True,
                timeout=600,
            ).stdout
        )

    load = median(load_seconds)
    assert load is not None
    peer = "APScheduler 3, add + start" if aps else None
    result.add(
        Figure(
            "LOAD over TCP",
            load,
            "s",
            peer=peer,
            peer_value=aps["seconds"] if aps else None,
            ratio=aps["seconds"] / load if aps else None,
            target="< 1 s",
            met=load < 1.0,
            samples=load_seconds,
        )
    )
    rss_mb = rss_after_load * 1024 / 1e6
    result.add(
        Figure(
            "resident memory after LOAD",
            rss_mb,
            "MB",
            peer="APScheduler 3, RSS" if aps else None,
            peer_value=aps["rss_kib"] * 1024 / 1e6 if aps else None,
            ratio=aps["rss_kib"] / rss_after_load if aps else None,
            target="< 150 MB",
            met=rss_mb < 150,
        )
    )
    tick = median(inproc["quiet_tick_seconds"])
    assert tick is not None
    result.add(
        Figure(
            "quiet tick, CronEngine.due()",
            tick * 1e6,
            "us",
            target="< 1 ms",
            met=tick < 1e-3,
            samples=[value * 1e6 for value in inproc["quiet_tick_seconds"]],
        )
    )
    startup = median(inproc["load_seconds"])
    assert startup is not None
    result.add(Figure("start-up load, in-process", startup, "s", samples=inproc["load_seconds"]))
    listing = median(list_seconds)
    assert listing is not None
    result.add(Figure("LIST over TCP", listing, "s", samples=list_seconds))
    result.details.update(inproc=inproc, apscheduler=aps)
    return result
