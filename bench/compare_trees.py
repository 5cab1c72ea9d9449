"""The scheduler's CPU per job, two source trees side by side in one run.

    python bench/compare_trees.py --before /tmp/base --after . [--per-post 1] [--jobs 2000] [--rounds 5]

Starts a scheduler from each tree (PYTHONPATH), each with its own
simulated workers (4 x 8 slots, jobs that do nothing, from the same tree),
and alternates rounds of *jobs* jobs submitted with ``POST /api/jobs``
(*per-post* jobs a request: 1 is the single form, more a batch) from four
keep-alive clients, each round timed until every job is recorded as
ended.  A round's figure is the scheduler process's CPU (``/proc``, user +
system) over it, per job.  On a shared, noisy machine the ratio of the two
medians is the figure to trust, not either value alone.  Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import Http, Runtime, Scheduler, SchedulerWatch, SimWorkers, log, median, wait_until

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--per-post", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)

    def finished(http: Http) -> float:
        return sum(v for k, v in http.metrics().items() if k.startswith("scheduler_jobs_finished_total{"))

    def submit(port: int, jobs: int, errors: list[str]) -> None:
        lock = threading.Lock()
        remaining = [jobs]

        def client() -> None:
            http = Http(port)
            try:
                while True:
                    with lock:
                        if remaining[0] <= 0 or errors:
                            return
                        size = min(args.per_post, remaining[0])
                        remaining[0] -= size
                    body: Any = {"command": "true"} if args.per_post == 1 else [{"command": "true"}] * size
                    status, answer = http.request("POST", "/api/jobs", body)
                    if status != 202:
                        errors.append(f"HTTP {status}: {answer[:200]!r}")
                        return
            finally:
                http.close()

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def round_of(scheduler: Scheduler, jobs: int) -> tuple[float, float]:
        """(scheduler CPU µs per job, jobs per second)."""
        watch = SchedulerWatch(scheduler)
        target = finished(scheduler.http) + jobs
        errors: list[str] = []
        started = time.perf_counter()
        submit(scheduler.http_port, jobs, errors)
        if errors:
            raise RuntimeError(errors[0])
        wait_until(lambda: finished(scheduler.http) >= target, 300, f"{jobs} jobs to finish", interval=0.05)
        elapsed = time.perf_counter() - started
        return watch.cpu_seconds() / jobs * 1e6, jobs / elapsed

    scratch = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    sides: dict[str, tuple[Scheduler, SimWorkers]] = {}
    figures: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    try:
        for side, tree in (("before", args.before), ("after", args.after)):
            runtime = Runtime(python=sys.executable, workdir=scratch / side, tree=tree.resolve())
            runtime.workdir.mkdir(parents=True)
            scheduler = Scheduler(runtime, runtime.scratch("scheduler"), "--queue-limit", str(4 * args.jobs))
            sim = SimWorkers(runtime, scheduler.ws_url, 4, slots=8, hold=0.0)
            sides[side] = (scheduler, sim)
            scheduler.wait_workers(4)
            round_of(scheduler, min(args.jobs, 200))  # warm-up
        for number in range(args.rounds):
            for side in ("before", "after") if number % 2 == 0 else ("after", "before"):
                figures[side].append(round_of(sides[side][0], args.jobs))
                log(f"round {number + 1} {side}: {figures[side][-1][0]:.0f} µs per job, {figures[side][-1][1]:.0f} jobs/s")
    finally:
        for scheduler, sim in sides.values():
            sim.stop()
            scheduler.stop()
    before = median(cpu for cpu, _ in figures["before"])
    after = median(cpu for cpu, _ in figures["after"])
    assert before is not None and after is not None
    print(
        json.dumps(
            {
                "per_post": args.per_post,
                "jobs": args.jobs,
                "rounds": args.rounds,
                "before_us_per_job": before,
                "after_us_per_job": after,
                "after_over_before": after / before,
                "samples": figures,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
