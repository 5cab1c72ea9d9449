"""Case 5, fan-out: one ``target=all`` job across 1,000 connected workers.

Timed from ``POST /api/jobs`` until the last of the 1,000 simulated
workers sent ``started`` for its copy; repeated, median reported.
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
    cpu_per_job_figure,
    median,
    stall_figure,
    wait_until,
)

NAME = "fanout"


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    count = 5 if runtime.quick else 1000
    rounds = 2 if runtime.quick else 5
    result.details.update(workers=count, rounds=rounds)
    scheduler = Scheduler(runtime, runtime.scratch(NAME), backlog=4096)
    sim = None
    spans: list[float] = []
    first: list[float] = []
    try:
        sim = SimWorkers(runtime, scheduler.ws_url, count, hold=0.05, in_flight=100)
        scheduler.wait_workers(count)
        watch = SchedulerWatch(scheduler)
        for number in range(rounds):
            wait_until(lambda: scheduler.running() == 0, 60, "the previous round to finish", interval=0.05)
            if number == rounds - 1:
                scheduler.profile(NAME)
            sent = time.time()
            jobs = scheduler.http.json("POST", "/api/jobs", {"command": "true", "target": "all"})
            if len(jobs) != count:
                raise RuntimeError(f"target=all made {len(jobs)} jobs for {count} workers")
            started = sim.wait_started([job["id"] for job in jobs], timeout=120)
            spans.append(max(event.started_at for event in started) - sent)
            first.append(min(event.started_at for event in started) - sent)
        scheduler.end_profile()
        cpu_us = watch.cpu_seconds() / (count * rounds) * 1e6
        stall = watch.longest_stall()
    finally:
        if sim is not None:
            sim.stop()
        scheduler.stop()
    span = median(spans)
    assert span is not None
    result.add(
        Figure(
            f"POST to the last of {count} started",
            span * 1000,
            "ms",
            target="< 1 s",
            met=span < 1.0,
            samples=[value * 1000 for value in spans],
        )
    )
    result.add(cpu_per_job_figure([cpu_us]))
    result.add(stall_figure([stall]))
    result.details["first_started_ms"] = [value * 1000 for value in first]
    return result
