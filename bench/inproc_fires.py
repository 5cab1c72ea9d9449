"""In-process timings for the long-run case (run with the project's interpreter).

    python bench/inproc_fires.py --fires 1000000 --tasks 1000 --active 10,1000,10000

Two measurements on a ``task.Clock``, with the real ``CronEngine``,
``JobBook``, ``Dispatcher`` and ``WorkerRegistry`` and in-memory workers
that report ``started`` and ``finished`` at once (no job store):

- **memory over many fires**: ``--tasks`` every-second tasks fire until
  ``--fires`` jobs have run; the process's resident memory is sampled 100
  times along the way.
- **cost of a fire with jobs waiting**: ``N`` jobs wait for a worker that
  never comes (``target: label:nobody``, one per task, ``overlap: skip``),
  then 2,000 fires of those tasks are timed (ten a second); each is
  skipped, having to ask whether its task has a job in play.

Prints JSON: ``{"fires": N, "rss_mib": [...], "fire_seconds": ...,
"skip_fire_us": {"10": ..., ...}}``.  Uses only constructors and calls
that older trees have too, so ``--tree`` can compare before and after.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

# Run as a script: the repository goes last on the path, so that --tree's
# PYTHONPATH still decides which scheduler is measured.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench.common import tenths
from scheduler import cron
from scheduler.cron_engine import CronEngine
from scheduler.dispatch import Dispatcher, NoRecorder
from scheduler.job_book import JobBook
from scheduler.tasks import Task, TaskOptions
from scheduler.worker_messages import Finished
from scheduler.worker_registry import Worker, WorkerRegistry

PAGE = os.sysconf("SC_PAGE_SIZE")
START = 1_700_000_000.0


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


class Inbox:
    """A worker's link: keeps the ids of the jobs it was sent."""

    def __init__(self) -> None:
        self.runs: list[int] = []

    def send(self, type: str, /, **fields: Any) -> None:
        if type == "run":
            self.runs.append(fields["job"])

    def close(self, reason: str) -> None:
        pass


def every_second(task_id: int, **options: Any) -> Task:
    return Task(task_id, f"t{task_id}", cron.parse("* * * * * *", UTC), "true", TaskOptions(**options))


def memory_over_fires(fires: int, task_count: int, samples: int = 100) -> dict[str, Any]:
    clock = Clock()
    clock.advance(START)
    book = JobBook(clock)
    registry = WorkerRegistry()
    tasks = {n: every_second(n) for n in range(1, task_count + 1)}
    dispatcher = Dispatcher(clock, book, registry, NoRecorder(), tasks.get, queue_limit=10 * task_count)
    links = [Inbox() for _ in range(2)]
    workers = [Worker(f"w{n}", frozenset(), task_count, link, START) for n, link in enumerate(links)]
    for worker in workers:
        dispatcher.hello(worker, {})
    engine = CronEngine(START)
    for task in tasks.values():
        engine.add(task.id, task.schedule)
    done = 0
    curve: list[tuple[int, float]] = []
    every = max(1, fires // samples)
    next_sample = 0
    began = time.perf_counter()
    while done < fires:
        clock.advance(1)
        now = clock.seconds()
        for fire in engine.due(now):
            dispatcher.fire(tasks[fire.task_id], fire.scheduled)
        clock.advance(0)  # the pump after each hello, and the like
        for worker, link in zip(workers, links, strict=True):
            for job_id in link.runs:
                dispatcher.started(worker, job_id, now)
                dispatcher.finished(worker, Finished(job_id, 0, None, False, False, 0, now, now, ()))
                done += 1
            link.runs.clear()
        if done >= next_sample:
            curve.append((done, rss_mib()))
            next_sample += every
    elapsed = time.perf_counter() - began
    curve.append((done, rss_mib()))
    first, last = tenths(curve)
    return {
        "fires": done,
        "tasks": task_count,
        "seconds": elapsed,
        "us_per_fire": elapsed / done * 1e6,
        "rss_curve": curve,
        "rss_first_tenth_mib": first,
        "rss_last_tenth_mib": last,
        "rss_growth_mib": last - first,
    }


def skip_fire_cost(active: int, fires: int = 2_000, rounds: int = 5) -> float:
    """Microseconds per skipped fire with *active* jobs waiting.

    Each second fires the ten newest waiting tasks (their jobs are the last
    an O(jobs waiting) scan would reach), so every case logs the same ten
    skips a second; the clock moves on between seconds outside the timing.
    """
    clock = Clock()
    clock.advance(START)
    book = JobBook(clock)
    tasks = {n: every_second(n, overlap="skip", target="label:nobody") for n in range(1, active + 1)}
    dispatcher = Dispatcher(clock, book, WorkerRegistry(), NoRecorder(), tasks.get, queue_limit=active + 1)
    for task in tasks.values():
        dispatcher.fire(task, START)  # the first run waits for ever
    assert dispatcher.queued == active
    per_second = list(tasks.values())[-10:]
    seconds = -(-fires // len(per_second))
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        elapsed = 0.0
        for _ in range(seconds):
            clock.advance(1)
            began = time.perf_counter()
            for task in per_second:
                dispatcher.fire(task, clock.seconds())
            elapsed += time.perf_counter() - began
        best = min(best, elapsed)
    return best / (seconds * len(per_second)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fires", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=1_000)
    parser.add_argument("--active", default="10,1000,10000", help="comma-separated counts of waiting jobs")
    args = parser.parse_args()
    result = memory_over_fires(args.fires, args.tasks)
    result["skip_fire_us"] = {count: skip_fire_cost(int(count)) for count in args.active.split(",")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
