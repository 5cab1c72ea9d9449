"""Case 8, wire: WebSocket frames, messages and bytes per job, each way.

Simulated workers (4 workers x 8 slots, the real agent and protocol; each
fake job writes ``hello\\n`` to stdout and ends at once) take ``true`` jobs
submitted with ``POST /api/jobs`` in batches of 200, each batch finished
before the next goes.  The simulated workers count, on their side of every
connection, the frames, the messages (a ``batch`` frame counts as the
messages it holds) and the payload bytes (no WebSocket framing, no pings)
sent to the scheduler and received from it; the figures are the traffic
between the counts read before the first job and after the last one's
``ack``, per job.  Beside them, the scheduler's CPU per job
(``/proc/<pid>/stat``, user + system; it includes the REST submissions and
the polling of ``/metrics``).  Informational: no targets.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from typing import Any

from bench.common import (
    CaseResult,
    Figure,
    Http,
    Runtime,
    Scheduler,
    SchedulerWatch,
    SimWorkers,
    log,
    stall_figure,
)
from tests.e2e import wait_until

NAME = "wire"
WORKERS = 4
SLOTS = 8
BATCH = 200
CLIENTS = 4
COMMAND = "true"
OUTPUT = "hello\n"


def _submit(port: int, count: int) -> list[int]:
    """POST *count* jobs from CLIENTS threads, each on one keep-alive connection: their ids."""
    lock = threading.Lock()
    remaining = [count]
    ids: list[int] = []
    errors: list[str] = []

    def client() -> None:
        http = Http(port)
        try:
            while True:
                with lock:
                    if remaining[0] <= 0 or errors:
                        return
                    remaining[0] -= 1
                status, body = http.request("POST", "/api/jobs", {"command": COMMAND})
                with lock:
                    if status != 202:
                        errors.append(f"HTTP {status}: {body[:200]!r}")
                        return
                    ids.append(int(json.loads(body)["id"]))
        finally:
            http.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"submitting failed: {errors[0]}")
    return ids


def _finished_all(http: Http) -> float:
    """Jobs the scheduler has recorded as ended, whatever their status."""
    return sum(value for key, value in http.metrics().items() if key.startswith("scheduler_jobs_finished_total{"))


def _reached(http: Http, target: float) -> bool:
    return _finished_all(http) >= target


def _run_jobs(scheduler: Scheduler, count: int) -> list[int]:
    """*count* jobs in batches of BATCH, each recorded as ended before the next is sent."""
    ids: list[int] = []
    while len(ids) < count:
        size = min(BATCH, count - len(ids))
        target = _finished_all(scheduler.http) + size
        ids += _submit(scheduler.http_port, size)
        wait_until(
            functools.partial(_reached, scheduler.http, target),
            timeout=60,
            what=f"a batch of {size} jobs to finish",
            interval=0.05,
        )
    return ids


def settled_traffic(sim: SimWorkers, quiet: float = 0.5, timeout: float = 30.0) -> dict[str, Any]:
    """The counters once they stop moving for *quiet* seconds (the last acks are in)."""
    deadline = time.monotonic() + timeout
    last = sim.counters()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = sim.counters()
        if now == last:
            return now
        last = now
    raise TimeoutError(f"the WebSocket traffic did not settle within {timeout:g} s")


def traffic_between(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        way: {key: int(after[way][key]) - int(before[way][key]) for key in ("frames", "messages", "bytes")}
        for way in ("sent", "received")
    }


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    jobs = 50 if runtime.quick else 2000
    warmup = min(jobs, 40)
    result.details.update(
        jobs=jobs,
        workers=WORKERS,
        slots_per_worker=SLOTS,
        hold_seconds=0.0,
        output=OUTPUT,
        command=COMMAND,
        batch=BATCH,
        http_clients=CLIENTS,
        warmup_jobs=warmup,
    )
    scheduler = Scheduler(runtime, runtime.scratch(NAME))
    sim = None
    try:
        sim = SimWorkers(runtime, scheduler.ws_url, WORKERS, slots=SLOTS, hold=0.0, output=OUTPUT)
        scheduler.wait_workers(WORKERS)
        _run_jobs(scheduler, warmup)
        before = settled_traffic(sim)
        watch = SchedulerWatch(scheduler)
        scheduler.profile(NAME)
        ids = _run_jobs(scheduler, jobs)
        after = settled_traffic(sim)
        cpu = watch.cpu_seconds()
        stall = watch.longest_stall()
        scheduler.end_profile()
        statuses: dict[str, int] = {}
        for job in ids:
            status = scheduler.http.json("GET", f"/api/jobs/{job}")["status"]
            statuses[status] = statuses.get(status, 0) + 1
        if statuses != {"succeeded": jobs}:
            raise RuntimeError(f"not every job succeeded: {statuses}")
        status, text = scheduler.http.request("GET", f"/api/jobs/{ids[-1]}/log")
        if status != 200 or text.decode() != OUTPUT:
            raise RuntimeError(f"job {ids[-1]}'s log is {text[:100]!r} (HTTP {status}), not {OUTPUT!r}")
        if sim.problems:
            result.details["problems"] = sim.problems[:20]
    finally:
        if sim is not None:
            sim.stop()
        scheduler.stop()

    traffic = traffic_between(after, before)
    result.details.update(traffic=traffic, scheduler_cpu_seconds=cpu)
    for way, label in (("sent", "worker to scheduler"), ("received", "scheduler to worker")):
        for key in ("frames", "messages", "bytes"):
            result.add(Figure(f"{key} per job, {label}", traffic[way][key] / jobs, key))
    result.add(Figure("scheduler CPU per job", cpu / jobs * 1e6, "µs"))
    result.add(stall_figure([stall]))
    log(
        "wire: per job, worker to scheduler "
        + ", ".join(f"{traffic['sent'][key] / jobs:.3g} {key}" for key in ("frames", "messages", "bytes"))
        + "; scheduler to worker "
        + ", ".join(f"{traffic['received'][key] / jobs:.3g} {key}" for key in ("frames", "messages", "bytes"))
    )
    return result
