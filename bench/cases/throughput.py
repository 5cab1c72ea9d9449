"""Case 1, throughput: many ``true`` jobs through the REST API onto real local workers.

Ours: a real ``twistd scheduler`` and four real ``twistd worker`` agents,
jobs submitted with ``POST /api/jobs`` from a pool of keep-alive HTTP
clients, timed from the first request until the scheduler's
``scheduler_jobs_finished_total`` metric has recorded every one.

Beside it: the machine's ceiling for the same commands
(``xargs -P 4 -n 1 sh -c``), and Celery 5 on a local Redis with four
prefork processes running the command through ``subprocess``.  The three
alternate, round after round, and the medians are reported, with the
scheduler's CPU per job (``/proc``, the scheduler process alone) and the
longest reactor stall its lag probe saw in each round.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import (
    BENCH,
    CaseResult,
    Figure,
    Http,
    RealWorkers,
    Runtime,
    Scheduler,
    SchedulerWatch,
    cpu_per_job_figure,
    log,
    median,
    stall_figure,
    stop_process,
    wait_until,
)
from bench.cpu_ledger import CpuLedger, describe, median_ledger, part_us
from bench.peers import RedisServer

NAME = "throughput"
WORKERS = 4
CONCURRENCY = 4  # the ceiling's xargs -P and Celery's prefork processes
COMMAND = "true"
# The bound on the scheduler's CPU per job, one job per POST.
CPU_TARGET_US = 400.0


def _submit(port: int, count: int, clients: int, errors: list[str]) -> None:
    """POST *count* jobs from *clients* threads, each on one keep-alive connection."""
    lock = threading.Lock()
    remaining = [count]

    def client() -> None:
        http = Http(port)
        try:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                status, body = http.request("POST", "/api/jobs", {"command": COMMAND})
                if status != 202:
                    errors.append(f"HTTP {status}: {body[:200]!r}")
                    return
        finally:
            http.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@dataclass
class Batch:
    rate: float  # jobs per second
    # µs per job by part (bench.cpu_ledger): scheduler threads, agents, commands, client, machine.
    ledger: dict[str, float]

    @property
    def scheduler_cpu(self) -> float:
        """CPU seconds per job, the scheduler process alone."""
        return part_us(self.ledger, "scheduler") / 1e6

    @property
    def workers_cpu(self) -> float:
        """CPU seconds per job, all worker agents together (not the commands they ran)."""
        return part_us(self.ledger, "agents") / 1e6


def timed_round(scheduler: Scheduler, jobs: int, submit: Callable[[list[str]], None], timeout: float) -> float:
    """Seconds from starting *submit* (on a thread of its own; it appends what
    went wrong to the list it is given) until the scheduler has recorded the
    end of *jobs* more jobs.  Raises if submitting failed."""
    before = _finished_all(scheduler.http)
    errors: list[str] = []
    started = time.perf_counter()
    submitter = threading.Thread(target=submit, args=(errors,), daemon=True)
    submitter.start()
    poll = Http(scheduler.http_port)
    try:
        wait_until(
            lambda: errors or _finished_all(poll) >= before + jobs,
            timeout=timeout,
            what=f"{jobs} jobs to finish",
            # Each poll renders /metrics on the scheduler (its CPU counts in
            # the figures): often enough to time well, rarely enough to cost little.
            interval=0.05,
        )
    finally:
        poll.close()
    elapsed = time.perf_counter() - started
    submitter.join()
    if errors:
        raise RuntimeError(f"submitting failed: {errors[0]}")
    return elapsed


def run_ours(scheduler: Scheduler, jobs: int, clients: int, workers: RealWorkers | None = None) -> Batch:
    """One batch of *jobs*, timed from the first request to the last recorded end."""
    pids = [process.pid for process in workers.processes] if workers is not None else []
    ledger = CpuLedger(scheduler.pid, pids)
    elapsed = timed_round(
        scheduler, jobs, lambda errors: _submit(scheduler.http_port, jobs, clients, errors), timeout=max(60.0, jobs / 20)
    )
    spent = ledger.per_job(jobs)
    failed = _finished_all(scheduler.http) - scheduler.finished("succeeded")
    if failed:
        raise RuntimeError(f"{failed:g} jobs did not succeed")
    return Batch(jobs / elapsed, spent)


def _finished_all(http: Http) -> float:
    """Jobs the scheduler has recorded as ended, whatever their status."""
    metrics = http.metrics()
    return sum(value for key, value in metrics.items() if key.startswith("scheduler_jobs_finished_total{"))


def run_ceiling(jobs: int) -> float:
    lines = (COMMAND + "\n") * jobs
    started = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(CONCURRENCY), "-n", "1", "sh", "-c"],
        input=lines.encode(),
        check=True,
    )
    return jobs / (time.perf_counter() - started)


class CeleryPeer:
    """Redis plus a Celery prefork worker, kept up across rounds."""

    def __init__(self, runtime: Runtime, case: str = NAME) -> None:
        assert runtime.peer_python is not None and runtime.redis_server is not None
        self.runtime = runtime
        folder = runtime.scratch(f"{case}-celery")
        self.redis = RedisServer(runtime.redis_server, folder)
        self.env: dict[str, Any] = {"BENCH_REDIS_URL": self.redis.url, "PATH": "/usr/bin:/bin"}
        self._log = open(folder / "celery-worker.log", "ab")
        self.worker = subprocess.Popen(
            [
                str(runtime.peer_python),
                "-m",
                "celery",
                "-A",
                "peer_celery",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(CONCURRENCY),
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-Q",
                "bench",
            ],
            cwd=BENCH,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def run(self, jobs: int, *extra: str) -> float:
        """Jobs per second for *jobs* through Celery; *extra* are peer_celery.py's options (``--group``, ``--noop``)."""
        assert self.runtime.peer_python is not None
        output = subprocess.run(
            [str(self.runtime.peer_python), str(BENCH / "peer_celery.py"), "--jobs", str(jobs), "--command", COMMAND, *extra],
            cwd=BENCH,
            env=self.env,
            check=True,
            capture_output=True,
            timeout=900,
        ).stdout
        result = json.loads(output.decode().strip().splitlines()[-1])
        if result["failed"]:
            raise RuntimeError(f"{result['failed']} Celery tasks failed")
        return float(result["jobs"]) / float(result["seconds"])

    def stop(self) -> None:
        stop_process(self.worker)
        self._log.close()
        self.redis.stop()


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    jobs = 20 if runtime.quick else 2000
    rounds = 1 if runtime.quick else 3
    # One slot per worker: four jobs at a time, as xargs -P 4 and Celery's
    # four prefork processes run (two or four slots measured the same here).
    slots = 1
    clients = 4
    result.details.update(
        jobs=jobs, rounds=rounds, workers=WORKERS, slots_per_worker=slots, http_clients=clients, command=COMMAND
    )
    ours: list[float] = []
    ceiling: list[float] = []
    celery: list[float] = []
    scheduler_cpu: list[float] = []
    workers_cpu: list[float] = []
    ledgers: list[dict[str, float]] = []
    stalls: list[tuple[float, float]] = []
    scheduler = Scheduler(runtime, runtime.scratch("throughput"))
    workers = RealWorkers(runtime, scheduler, WORKERS, slots=slots)
    peer = CeleryPeer(runtime) if runtime.peers else None
    try:
        scheduler.wait_workers(WORKERS)
        run_ours(scheduler, min(jobs, 40), clients)  # warm-up
        for number in range(1, rounds + 1):
            scheduler.profile(f"{NAME}-{number}")
            watch = SchedulerWatch(scheduler)
            batch = run_ours(scheduler, jobs, clients, workers)
            stalls.append(watch.longest_stall())
            scheduler.end_profile()
            ours.append(batch.rate)
            scheduler_cpu.append(batch.scheduler_cpu * 1e6)
            workers_cpu.append(batch.workers_cpu * 1e6)
            ledgers.append(batch.ledger)
            ceiling.append(run_ceiling(jobs))
            if peer is not None:
                celery.append(peer.run(jobs))
            log(f"throughput round {number}: {describe(batch.ledger)}")
            log(
                f"throughput round {number}: ours {ours[-1]:.0f}/s, ceiling {ceiling[-1]:.0f}/s"
                + (f", Celery {celery[-1]:.0f}/s" if celery else "")
            )
    finally:
        if peer is not None:
            peer.stop()
        workers.stop()
        scheduler.stop()

    ours_median = median(ours)
    ceiling_median = median(ceiling)
    celery_median = median(celery)
    assert ours_median is not None and ceiling_median is not None
    fraction = ours_median / ceiling_median
    if celery_median is not None:
        result.add(
            Figure(
                "jobs per second",
                ours_median,
                "jobs/s",
                peer="Celery 5 + Redis, 4 prefork",
                peer_value=celery_median,
                ratio=ours_median / celery_median,
                target=">= 2x Celery",
                met=ours_median >= 2 * celery_median,
                samples=ours,
            )
        )
    else:
        result.add(Figure("jobs per second", ours_median, "jobs/s", samples=ours))
    result.add(
        Figure(
            "share of the machine's ceiling",
            fraction * 100,
            "%",
            peer="xargs -P 4 -n 1 sh -c",
            peer_value=ceiling_median,
            peer_unit="jobs/s",
            ratio=fraction,
            target=">= 60% of ceiling",
            met=fraction >= 0.6,
            samples=ceiling,
        )
    )
    result.add(cpu_per_job_figure(scheduler_cpu, CPU_TARGET_US))
    result.add(stall_figure(stalls))
    result.details.update(
        ours=ours,
        ceiling=ceiling,
        celery=celery,
        scheduler_cpu_us_per_job=median(scheduler_cpu),
        workers_cpu_us_per_job=median(workers_cpu),
        cpu_ledger_us_per_job=median_ledger(ledgers),
    )
    return result
