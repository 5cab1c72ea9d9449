"""The APScheduler 3 side of the many-tasks case (runs in bench/.venv-peers).

    python bench/peer_apscheduler.py tasks.db

Adds every task of a tasks.db as a cron job (``CronTrigger.from_crontab``
for five fields and the macros; six-field schedules as a ``CronTrigger``
with the seconds field) to a ``BackgroundScheduler`` with the default
in-memory job store, starts it, and prints
``{"jobs": N, "seconds": S, "rss_kib": R}``: the time to add and start,
and the resident memory afterwards.
"""

from __future__ import annotations

import argparse
import json
import time

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * sun",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def trigger(expression: str) -> CronTrigger:
    expression = MACROS.get(expression.strip().lower(), expression)
    fields = expression.split()
    if len(fields) == 6:
        minute, hour, day, month, day_of_week, second = fields
        return CronTrigger(
            second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week, timezone="UTC"
        )
    return CronTrigger.from_crontab(expression, timezone="UTC")


def job() -> None:
    pass


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="Time adding a tasks.db to APScheduler 3.")
    parser.add_argument("tasks_file")
    args = parser.parse_args()
    with open(args.tasks_file, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    started = time.perf_counter()
    scheduler = BackgroundScheduler(timezone="UTC")
    for record in records:
        scheduler.add_job(job, trigger(record["schedule"]), id=record["jobName"], name=record["command"])
    scheduler.start()
    seconds = time.perf_counter() - started
    print(json.dumps({"jobs": len(scheduler.get_jobs()), "seconds": seconds, "rss_kib": rss_kib()}))
    scheduler.shutdown(wait=False)


if __name__ == "__main__":
    main()
