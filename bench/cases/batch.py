"""Case 9, batch: 10,000 jobs in POSTs of 100 (``POST /api/jobs`` with a list) onto simulated workers.

Ours: a real ``twistd scheduler`` and simulated workers (bench/simworkers.py:
the real agent and protocol, a job that does nothing and ends at once),
jobs submitted as lists of BATCH from CLIENTS keep-alive HTTP clients,
timed from the first request until ``scheduler_jobs_finished_total`` has
recorded every one.  The figure that matters is the scheduler's CPU per
job (``/proc/<pid>/stat``, the scheduler process alone), which bounds the
jobs one scheduler core can place whatever the fleet.

Beside it, in the same run and alternating round by round: Celery 5 on a
local Redis, the same jobs as one ``group(...).apply_async()`` of a task
that does nothing, to four prefork processes (bench/peer_celery.py,
``--group --noop``), timed from the call until every result is in.
"""

from __future__ import annotations

import json
import threading

from bench.cases.throughput import CeleryPeer, _finished_all, timed_round
from bench.cases.wire import settled_traffic, traffic_between
from bench.common import (
    CaseResult,
    Figure,
    Http,
    Runtime,
    Scheduler,
    SchedulerWatch,
    SimWorkers,
    cpu_per_job_figure,
    log,
    median,
    stall_figure,
)
from bench.cpu_ledger import CpuLedger, median_ledger, part_us

NAME = "batch"
BATCH = 100
CLIENTS = 4
WORKERS = 4
SLOTS = 25
COMMAND = "true"
# The bounds: scheduler CPU per job, and the rate against Celery's group.
CPU_TARGET_US = 100.0
CELERY_RATIO = 4.0


def _submit(port: int, jobs: int, errors: list[str]) -> None:
    """POST *jobs* jobs in lists of BATCH from CLIENTS threads, each on one keep-alive connection."""
    lock = threading.Lock()
    remaining = [jobs]
    body = [{"command": COMMAND}] * BATCH

    def client() -> None:
        http = Http(port)
        try:
            while True:
                with lock:
                    if remaining[0] <= 0 or errors:
                        return
                    size = min(BATCH, remaining[0])
                    remaining[0] -= size
                status, answer = http.request("POST", "/api/jobs", body[:size])
                if status != 202 or len(json.loads(answer)) != size:
                    errors.append(f"HTTP {status}: {answer[:200]!r}")
                    return
        finally:
            http.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_ours(scheduler: Scheduler, jobs: int) -> tuple[float, float, tuple[float, float], dict[str, float]]:
    """(jobs per second, scheduler CPU seconds per job, longest stall, the scheduler's
    CPU µs per job by thread: bench.cpu_ledger) for one round."""
    watch = SchedulerWatch(scheduler)
    ledger = CpuLedger(scheduler.pid)
    elapsed = timed_round(
        scheduler, jobs, lambda errors: _submit(scheduler.http_port, jobs, errors), timeout=max(60.0, jobs / 50)
    )
    spent = ledger.per_job(jobs)
    failed = _finished_all(scheduler.http) - scheduler.finished("succeeded")
    if failed:
        raise RuntimeError(f"{failed:g} jobs did not succeed")
    return jobs / elapsed, part_us(spent, "scheduler") / 1e6, watch.longest_stall(), spent


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    jobs = 200 if runtime.quick else 10_000
    rounds = 1 if runtime.quick else 3
    result.details.update(
        jobs=jobs, rounds=rounds, batch=BATCH, http_clients=CLIENTS, workers=WORKERS, slots_per_worker=SLOTS
    )
    ours: list[float] = []
    celery: list[float] = []
    cpu_us: list[float] = []
    stalls: list[tuple[float, float]] = []
    ledgers: list[dict[str, float]] = []
    # Room for every job of a round at once, whatever the workers' pace.
    scheduler = Scheduler(runtime, runtime.scratch(NAME), "--queue-limit", str(2 * jobs))
    sim = None
    peer = CeleryPeer(runtime, NAME) if runtime.peers else None
    try:
        sim = SimWorkers(runtime, scheduler.ws_url, WORKERS, slots=SLOTS, hold=0.0)
        scheduler.wait_workers(WORKERS)
        run_ours(scheduler, min(jobs // 4, 1000))  # warm-up
        traffic_before = settled_traffic(sim)
        for number in range(1, rounds + 1):
            scheduler.profile(f"{NAME}-{number}")
            rate, cpu, stall, spent = run_ours(scheduler, jobs)
            ledgers.append(spent)
            scheduler.end_profile()
            ours.append(rate)
            cpu_us.append(cpu * 1e6)
            stalls.append(stall)
            if peer is not None:
                celery.append(peer.run(jobs, "--group", "--noop"))
            log(
                f"batch round {number}: ours {rate:.0f}/s at {cpu * 1e6:.0f} µs of scheduler CPU per job"
                + (f", Celery group {celery[-1]:.0f}/s" if celery else "")
            )
        traffic = traffic_between(settled_traffic(sim), traffic_before)
    finally:
        if peer is not None:
            peer.stop()
        if sim is not None:
            sim.stop()
        scheduler.stop()

    ours_median = median(ours)
    celery_median = median(celery)
    assert ours_median is not None
    result.add(cpu_per_job_figure(cpu_us, CPU_TARGET_US))
    if celery_median is not None:
        result.add(
            Figure(
                "jobs per second",
                ours_median,
                "jobs/s",
                peer="Celery 5 + Redis, group().apply_async(), 4 prefork, no-op task",
                peer_value=celery_median,
                ratio=ours_median / celery_median,
                target=f">= {CELERY_RATIO:g}x Celery",
                met=ours_median >= CELERY_RATIO * celery_median,
                samples=ours,
            )
        )
    else:
        result.add(Figure("jobs per second", ours_median, "jobs/s", samples=ours))
    result.add(stall_figure(stalls))
    # Beside the throughput: the worker protocol's traffic per job over every
    # round, as the simulated workers counted it (messages, payload bytes).
    measured = jobs * rounds
    for way, label in (("received", "to the workers"), ("sent", "from the workers")):
        for key in ("messages", "bytes"):
            result.add(Figure(f"{key} per job, {label}", traffic[way][key] / measured, key))
    result.details.update(ours=ours, celery=celery, scheduler_cpu_us_per_job=cpu_us, traffic=traffic)
    result.details["cpu_ledger_us_per_job"] = {
        name: value for name, value in median_ledger(ledgers).items() if name.startswith("scheduler")
    }
    return result
