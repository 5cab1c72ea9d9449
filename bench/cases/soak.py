"""Case 7, the soak: real processes for minutes (or as long as you like), memory and tick lag as they go.

A real scheduler, two real workers, 100 every-second tasks that run
``true``, and 2,000 every-second tasks whose first run waits for a worker
that never comes (``target: label:nobody``, ``overlap: skip``), so 2,000
fires a second are skipped with 2,000 jobs waiting.  Every ten seconds it
prints the scheduler's resident memory, the cron tick lag
(``scheduler_cron_tick_lag_seconds``, sampled four times a second), and the
fires doubled or missing so far, read from the job history.  A 130 s
warm-up (the job book's 120 s of remembered fires filling up), then 120 s
measured by default: about 4.5 minutes with setting up.  ``--soak-seconds``
(``make soak SOAK_SECONDS=3600``) sets the measured part.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CaseResult,
    Figure,
    Http,
    RealWorkers,
    Runtime,
    Scheduler,
    log,
    percentile,
    tenths,
)

NAME = "soak"
# The job book's horizon of remembered fires (120 s), and a little more.
WARM_UP = 130.0
LAG_METRIC = "scheduler_cron_tick_lag_seconds"


class History:
    """Reads the job history as it grows: fires seen, doubled and lost.

    Read incrementally (by job id), so the hourly pruning of old jobs
    cannot hide a doubled or missing fire from a long soak.
    """

    def __init__(self, path: Path, tasks: set[int]) -> None:
        self._path = path
        self._tasks = tasks
        self._last_id = 0
        self._seen: dict[int, set[float]] = {task: set() for task in tasks}
        self.doubled = 0
        self.ended_badly: dict[str, int] = {}

    def read(self) -> None:
        with sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=10) as conn:
            rows = conn.execute(
                "SELECT id, task_id, scheduled_at, attempt, status FROM jobs WHERE id > ? ORDER BY id", (self._last_id,)
            ).fetchall()
        for job_id, task_id, scheduled, attempt, status in rows:
            self._last_id = max(self._last_id, job_id)
            if task_id not in self._tasks or scheduled is None or attempt != 1:
                continue
            seen = self._seen[task_id]
            if scheduled in seen:
                self.doubled += 1
            seen.add(scheduled)
            if status in ("lost", "failed", "timed_out", "cancelled"):
                self.ended_badly[status] = self.ended_badly.get(status, 0) + 1

    def missing(self, start: float, end: float) -> int:
        """Seconds in [start, end) some task has no run for."""
        expected = set(range(int(start), int(end)))
        return sum(len(expected - {int(when) for when in seen}) for seen in self._seen.values())


def soak(runtime: Runtime, seconds: float) -> dict[str, Any]:
    running_tasks = 10 if runtime.quick else 100
    waiting_tasks = 100 if runtime.quick else 2_000
    workdir = runtime.scratch(NAME)
    every_second = {"schedule": "* * * * * *", "command": "true"}
    waiting = {**every_second, "target": "label:nobody", "overlap": "skip"}
    lines = [every_second] * running_tasks + [waiting] * waiting_tasks
    (workdir / "tasks.db").write_text(
        "".join(json.dumps({**line, "jobName": f"soak_{n}"}) + "\n" for n, line in enumerate(lines, start=1))
    )
    scheduler = Scheduler(runtime, workdir, "--queue-limit", str(10 * waiting_tasks))
    workers = None
    try:
        workers = RealWorkers(runtime, scheduler, 2, slots=running_tasks)
        scheduler.wait_workers(2)
        task_ids = {task["id"] for task in scheduler.http.json("GET", "/api/tasks") if task["target"] == "any"}
        assert len(task_ids) == running_tasks, task_ids
        history = History(workdir / "jobs.sqlite", task_ids)
        cpu_before = scheduler.cpu_seconds()
        # Measure from a whole second after everything is in place.
        time.sleep(2.0)
        start = float(int(time.time()) + 1)
        time.sleep(start - time.time())
        # Memory is compared after the warm-up: the job book keeps the last
        # 120 s of fires (2,100 a second here, about 8 MiB) by design.
        warm_up = 2.0 if runtime.quick else WARM_UP
        measured_from = start + warm_up
        end = measured_from + seconds
        lags: list[float] = []  # after the warm-up, for the figures
        recent: list[float] = []  # since the last progress line
        curve: list[tuple[float, float]] = []
        report_every = 2.0 if runtime.quick else 10.0
        next_report = start + report_every
        metrics = Http(scheduler.http_port)
        while time.time() < end:
            lag = metrics.metrics().get(LAG_METRIC, 0.0) * 1000
            recent.append(lag)
            now = time.time()
            if now >= measured_from:
                lags.append(lag)
            if now >= next_report:
                next_report += report_every
                rss = scheduler.rss_kib() / 1024
                if now >= measured_from:
                    curve.append((now - start, rss))
                history.read()
                log(
                    f"soak {now - start:5.0f} s: RSS {rss:6.1f} MiB, tick lag p99 {percentile(recent, 99) or 0:5.1f} ms "
                    f"max {max(recent, default=0):5.1f} ms, doubled {history.doubled}, "
                    f"missing {history.missing(start, now - 2)}, ended badly {history.ended_badly or 0}"
                    + ("" if now >= measured_from else " (warming up)")
                )
                recent.clear()
            time.sleep(0.25)
        metrics.close()
        cpu_share = (scheduler.cpu_seconds() - cpu_before) / (time.time() - start)
        time.sleep(2.0)  # the last second's runs end and are written
        history.read()
        rss_end = scheduler.rss_kib() / 1024
    finally:
        if workers is not None:
            workers.stop()
        scheduler.stop()
    first, last = tenths(curve)
    return {
        "seconds": seconds,
        "warm_up_seconds": warm_up,
        "running_tasks": running_tasks,
        "waiting_tasks": waiting_tasks,
        "rss_curve": curve,
        "rss_end_mib": rss_end,
        "rss_growth_mib": last - first,
        "tick_lag_ms_p50": percentile(lags, 50),
        "tick_lag_ms_p99": percentile(lags, 99),
        "tick_lag_ms_max": max(lags, default=None),
        "scheduler_cpu_share": cpu_share,
        "doubled": history.doubled,
        "missing": history.missing(start, end),
        "ended_badly": history.ended_badly,
    }


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    seconds = runtime.soak_seconds or (8.0 if runtime.quick else 120.0)
    soaked = soak(runtime, seconds)
    growth = soaked["rss_growth_mib"]
    result.add(
        Figure("RSS growth after warm-up, first to last tenth", growth, "MiB", target="< 5 MiB", met=growth < 5)
    )
    lag = soaked["tick_lag_ms_p99"]
    result.add(Figure("tick lag p99", lag, "ms", target="< 10 ms", met=lag is not None and lag < 10))
    result.add(Figure("scheduler CPU", soaked["scheduler_cpu_share"] * 100, "% of a core"))
    bad = soaked["doubled"] + soaked["missing"]
    result.add(Figure("fires doubled or missing", float(bad), "fires", target="0", met=bad == 0))
    result.details.update(soaked)
    return result
