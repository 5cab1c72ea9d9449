"""Case 4, many workers: 5,000 idle worker connections held by one scheduler.

The simulated workers (one process, the real protocol: hello, welcome,
WebSocket pings every 20 s both ways) connect, then the case reads the
scheduler's resident memory per connection, ``(RSS with N - RSS with 0) /
N``, its CPU over a quiet window of one ping interval, 20 s, so that every
connection pings once each way (``/proc/<pid>/stat``, user + system),
and the time from ``POST /api/jobs`` aimed at one of them
(``worker:<name>``) until that worker sent ``started`` (the median of 20
probes is the figure; the slowest is in the JSON details).
"""

from __future__ import annotations

import time

from bench.common import (
    CaseResult,
    Figure,
    Runtime,
    Scheduler,
    SchedulerWatch,
    SimWorkers,
    median,
    stall_figure,
)

NAME = "many_workers"


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    count = 5 if runtime.quick else 5000
    # Both ends ping every 20 s, and connections opened together ping
    # together: a shorter window could fall between two bursts and see none.
    idle_window = 1.0 if runtime.quick else 20.0
    probes = 3 if runtime.quick else 20
    result.details.update(connections=count, idle_window_seconds=idle_window, probes=probes)
    scheduler = Scheduler(runtime, runtime.scratch(NAME), backlog=4096)
    sim = None
    try:
        scheduler.workers()  # the HTTP side has served a request
        watch = SchedulerWatch(scheduler)
        time.sleep(0.5)
        rss_before = scheduler.rss_kib()
        cpu_before_connect = scheduler.cpu_seconds()
        sim = SimWorkers(runtime, scheduler.ws_url, count, hold=0.02, in_flight=100)
        scheduler.wait_workers(count)
        result.details["connect_seconds"] = sim.ready_seconds
        result.details["scheduler_cpu_seconds_to_connect"] = scheduler.cpu_seconds() - cpu_before_connect
        time.sleep(1.0)
        rss_after = scheduler.rss_kib()
        scheduler.profile(f"{NAME}-idle")
        cpu_start = scheduler.cpu_seconds()
        time.sleep(idle_window)
        idle_cpu = (scheduler.cpu_seconds() - cpu_start) / idle_window
        scheduler.end_profile()
        latencies: list[float] = []
        step = max(1, count // probes)
        for probe in range(probes):
            target = sim.name((probe * step + step // 2) % count)
            sent = time.time()
            job = scheduler.http.json("POST", "/api/jobs", {"command": "true", "target": f"worker:{target}"})
            (started,) = sim.wait_started([job["id"]], timeout=30)
            if started.worker != target:
                raise RuntimeError(f"job {job['id']} ran on {started.worker}, not {target}")
            latencies.append((started.started_at - sent) * 1000)
        if sim.problems:
            result.details["problems"] = sim.problems[:20]
        stall = watch.longest_stall()
    finally:
        if sim is not None:
            sim.stop()
        scheduler.stop()

    per_connection = (rss_after - rss_before) / count
    result.add(
        Figure(
            "memory per connection",
            per_connection,
            "KiB",
            target="< 50 KiB",
            met=per_connection < 50,
        )
    )
    result.add(Figure("scheduler CPU while idle", idle_cpu * 100, "% of a core"))
    latency = median(latencies)
    assert latency is not None
    result.add(
        Figure(
            "POST to started, one worker of N",
            latency,
            "ms",
            target="< 50 ms",
            met=latency < 50,
            samples=latencies,
        )
    )
    result.add(stall_figure([stall]))
    result.details.update(rss_kib_before=rss_before, rss_kib_after=rss_after, latency_ms_max=max(latencies))
    return result
