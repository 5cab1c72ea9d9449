"""The Celery beat side of the herd case (runs in bench/.venv-peers, never the project venv).

The benchmark starts, with ``cwd`` bench/ and the environment below::

    python -m celery -A peer_celery_beat worker --pool threads --concurrency 100
    python -m celery -A peer_celery_beat beat --schedule <file>

and then ``python peer_celery_beat.py collect``, which waits for every
entry's task to report its start, and prints ``{"started": N, "unique": U,
"first_started_after_due": S, "last_started_after_due": S}``.

Beat holds ``HERD_TASKS`` entries, each a ``crontab`` due at ``HERD_DUE``
(a minute's start, Unix time: crontab has no seconds); each sends
``bench.herd_start`` with its entry number, and the task only pushes its
number and the time it began onto a Redis list (``BENCH_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime

import redis
from celery import Celery
from celery.schedules import crontab

BROKER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TASKS = int(os.environ.get("HERD_TASKS", "0"))
DUE = float(os.environ.get("HERD_DUE", "0"))
STARTS = "herd-starts"

app = Celery("bench_herd", broker=BROKER, backend=None)
_due = datetime.fromtimestamp(DUE, UTC)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_default_queue="herd",
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    timezone="UTC",
    enable_utc=True,
    beat_schedule={
        f"herd-{number}": {
            "task": "bench.herd_start",
            "schedule": crontab(minute=_due.minute, hour=_due.hour, day_of_month=_due.day, month_of_year=_due.month),
            "args": (number,),
        }
        for number in range(TASKS)
    },
)
_redis = redis.Redis.from_url(BROKER)


@app.task(name="bench.herd_start")
def herd_start(number: int) -> None:
    _redis.rpush(STARTS, f"{number} {time.time()}")


def collect(timeout: float) -> dict[str, float | int]:
    deadline = max(time.time(), DUE) + timeout
    while time.time() < deadline and _redis.llen(STARTS) < TASKS:
        time.sleep(0.1)
    starts: dict[int, float] = {}
    count = 0
    for raw in _redis.lrange(STARTS, 0, -1):
        number, at = raw.decode().split()
        count += 1
        starts.setdefault(int(number), float(at))
    times = list(starts.values()) or [float("nan")]
    return {
        "due": DUE,
        "started": count,
        "unique": len(starts),
        "first_started_after_due": min(times) - DUE,
        "last_started_after_due": max(times) - DUE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Collect the herd's starts from Redis.")
    parser.add_argument("what", choices=("collect",))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds after the due time")
    args = parser.parse_args()
    print(json.dumps(collect(args.timeout)))


if __name__ == "__main__":
    main()
