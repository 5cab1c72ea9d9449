"""A tasks.db of many tasks with a realistic mix of schedules.

The mix, by share of tasks: every few minutes (``*/5``, ``*/10``,
``*/15``), hourly at various minutes, daily at various times, working hours
on weekdays (``MON-FRI``, 9-17), monthly (the 1st or 15th), the ``@daily``/``@hourly``/
``@weekly`` macros, and a few six-field (seconds) schedules.  Seeded, so
every run writes the same file; 100,000 tasks share about 1,800
distinct expressions.  Day-of-week is always written as names,
which APScheduler's ``CronTrigger.from_crontab`` reads the same way as
crontab(5) (its numbers start the week on Monday).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# (weight, maker): each maker draws one expression.
_MIX = (
    (20, lambda r: f"*/{r.choice((5, 10, 15))} * * * *"),
    (20, lambda r: f"{r.randrange(60)} * * * *"),
    (20, lambda r: f"{r.randrange(60)} {r.randrange(24)} * * *"),
    (15, lambda r: f"{r.choice((0, 15, 30, 45))} 9-17 * * MON-FRI"),
    (10, lambda r: f"0 {r.randrange(24)} {r.choice((1, 15))} * *"),
    (10, lambda r: r.choice(("@daily", "@hourly", "@weekly"))),
    (5, lambda r: f"*/{r.choice((5, 10, 15, 30))} * * * * {r.randrange(60)}"),
)


def schedules(count: int, seed: int = 6) -> list[str]:
    rng = random.Random(seed)
    weights = [weight for weight, _ in _MIX]
    makers = [maker for _, maker in _MIX]
    return [rng.choices(makers, weights)[0](rng) for _ in range(count)]


def write_tasks(path: Path, count: int, seed: int = 6) -> list[str]:
    """Write *count* seed-format task lines to *path*; returns the schedules."""
    exprs = schedules(count, seed)
    with open(path, "w", encoding="utf-8") as out:
        for number, expr in enumerate(exprs, start=1):
            record = {"schedule": expr, "command": f"/usr/local/bin/report --id {number}", "jobName": f"task_{number}"}
            out.write(json.dumps(record) + "\n")
    return exprs
