"""In-process timings for the many-tasks case (run with the project's interpreter).

    python bench/inproc_tasks.py tasks.db --loads 3 --ticks 20000

Loads the file the way the scheduler starts (``FlatFileTaskStore.load_now``,
``TaskBook.from_records``, a ``CronEngine`` filled through ``TaskState``),
``--loads`` times, then times ``CronEngine.due()`` at a moment when nothing
is due (a quiet tick: the common case, once a second), and prints JSON:
``{"tasks": N, "load_seconds": [...], "quiet_tick_seconds": [...], "groups": G}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from datetime import UTC
from typing import Any

from twisted.internet import reactor as _reactor

from scheduler.cron_engine import CronEngine
from scheduler.task_book import TaskBook
from scheduler.task_state import TaskState
from scheduler.task_store import FlatFileTaskStore

# The global reactor, typed loosely: its interfaces are zope's, not mypy's.
reactor: Any = _reactor


def load(path: str) -> tuple[float, TaskState, CronEngine]:
    started = time.perf_counter()
    store = FlatFileTaskStore(path, UTC, reactor.getThreadPool(), reactor)
    book = TaskBook.from_records(UTC, store.load_now())
    engine = CronEngine(time.time())
    state = TaskState(book, store, engine)
    return time.perf_counter() - started, state, engine


def quiet_ticks(engine: CronEngine, calls: int, batches: int = 20) -> list[float]:
    """Seconds per due() call, one median-able figure per batch of calls."""
    now = time.time()
    engine.due(now)  # hand out whatever is due now; from here on nothing is
    per_batch = max(1, calls // batches)
    results = []
    for _ in range(batches):
        started = time.perf_counter()
        for _ in range(per_batch):
            fires = engine.due(now)
        results.append((time.perf_counter() - started) / per_batch)
        assert not fires
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks_file")
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--ticks", type=int, default=20_000)
    args = parser.parse_args()
    seconds = []
    state = engine = None
    for _ in range(args.loads):
        state = engine = None
        gc.collect()
        elapsed, state, engine = load(args.tasks_file)
        seconds.append(elapsed)
    assert state is not None and engine is not None
    ticks = quiet_ticks(engine, args.ticks)
    print(
        json.dumps(
            {
                "tasks": len(state.book),
                "groups": len({task.schedule for task in state.book}),
                "load_seconds": seconds,
                "quiet_tick_seconds": ticks,
            }
        )
    )


if __name__ == "__main__":
    main()
