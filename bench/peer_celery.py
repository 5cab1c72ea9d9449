"""The Celery 5 side of the throughput case (runs in bench/.venv-peers, never the project venv).

The worker is started by the benchmark as
``python -m celery -A peer_celery worker --pool prefork --concurrency 4``
(cwd ``bench/``, broker and result backend on the run's own redis-server);
this file is both that app and the client::

    python bench/peer_celery.py --jobs 2000 --command true

which submits ``--jobs`` tasks one ``delay()`` at a time, waits until every
result is stored, and prints ``{"jobs": N, "seconds": S, "failed": F}``.
Each task runs ``/bin/sh -c <command>`` through ``subprocess``, as our
worker runs a job.

For the batch case, ``--group --noop`` submits the jobs as one
``group(...).apply_async()`` of a task that does nothing (returns 0), as
the simulated workers on our side run nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from celery import Celery, group
from celery.result import ResultSet

BROKER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench_peer", broker=BROKER, backend=BROKER)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_default_queue="bench",
    worker_hijack_root_logger=False,
    result_expires=3600,
)


@app.task(name="bench.run_shell")
def run_shell(command: str) -> int:
    return subprocess.run(["/bin/sh", "-c", command], check=False).returncode


@app.task(name="bench.noop")
def noop(command: str) -> int:
    return 0


def run_batch(jobs: int, command: str, timeout: float, grouped: bool = False, no_op: bool = False) -> tuple[float, int]:
    task = noop if no_op else run_shell
    started = time.perf_counter()
    if grouped:
        codes = group(task.s(command) for _ in range(jobs)).apply_async().get(timeout=timeout)
    else:
        codes = ResultSet([task.delay(command) for _ in range(jobs)]).get(timeout=timeout)
    elapsed = time.perf_counter() - started
    return elapsed, sum(1 for code in codes if code != 0)


def main() -> None:
    parser = argparse.ArgumentParser(description="Time N shell commands through Celery.")
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--command", default="true")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--group", action="store_true", help="one group(...).apply_async() of all the jobs")
    parser.add_argument("--noop", action="store_true", help="a task that does nothing, instead of the command")
    args = parser.parse_args()
    # Waits for the worker to be up, and warms its pool.
    run_batch(8, args.command, timeout=120.0, grouped=args.group, no_op=args.noop)
    seconds, failed = run_batch(args.jobs, args.command, args.timeout, grouped=args.group, no_op=args.noop)
    print(json.dumps({"jobs": args.jobs, "seconds": seconds, "failed": failed}))


if __name__ == "__main__":
    main()
