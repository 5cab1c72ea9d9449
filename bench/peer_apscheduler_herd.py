"""The APScheduler 3 side of the herd case (runs in bench/.venv-peers).

    python bench/peer_apscheduler_herd.py --tasks 10000 --lead 15

Adds ``--tasks`` cron jobs, all due at the same second ``--lead`` seconds
ahead (a ``CronTrigger`` with that second, minute, hour, day and month),
to a ``BackgroundScheduler`` with a pool of 100 threads and the default
in-memory job store; each job only records when it began.  Misfires are
allowed up to a minute late, so a slow herd shows as late, not as lost.
Prints ``{"started": N, "unique": U, "first_started_after_due": S,
"last_started_after_due": S, "add_seconds": S}``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

_lock = threading.Lock()
_starts: list[tuple[int, float]] = []


def herd_start(number: int) -> None:
    at = time.time()
    with _lock:
        _starts.append((number, at))


def main() -> None:
    parser = argparse.ArgumentParser(description="A herd of cron jobs due at one second, in APScheduler 3.")
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--lead", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    due = float(int(time.time() + args.lead))
    at = datetime.fromtimestamp(due, UTC)
    trigger = CronTrigger(
        second=at.second, minute=at.minute, hour=at.hour, day=at.day, month=at.month, timezone=UTC
    )
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(100)},
        job_defaults={"misfire_grace_time": 60, "coalesce": False, "max_instances": 1},
        timezone=UTC,
    )
    started = time.perf_counter()
    for number in range(args.tasks):
        scheduler.add_job(herd_start, trigger, args=(number,), id=f"herd-{number}")
    scheduler.start()
    add_seconds = time.perf_counter() - started
    if time.time() > due - 1:
        raise SystemExit(f"adding {args.tasks} jobs took {add_seconds:.1f} s, past their second")
    deadline = due + args.timeout
    while time.time() < deadline:
        with _lock:
            if len(_starts) >= args.tasks:
                break
        time.sleep(0.05)
    scheduler.shutdown(wait=False)
    with _lock:
        starts = list(_starts)
    first: dict[int, float] = {}
    for number, when in starts:
        first.setdefault(number, when)
    times = list(first.values()) or [float("nan")]
    print(
        json.dumps(
            {
                "due": due,
                "started": len(starts),
                "unique": len(first),
                "first_started_after_due": min(times) - due,
                "last_started_after_due": max(times) - due,
                "add_seconds": add_seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
