"""The tasks in PostgreSQL, in process: ``python bench/pg_tasks.py [--db URL] [--tasks N]``.

Times what ``PostgresTaskStore`` costs with many tasks: the first node's
import, a save after one ADD and after nothing, another node's start-up
load and its first saves, and a refresh that brings one change.  The URL
may also come from ``SCHEDULER_DB``; the tables go into the schema its
``search_path`` names (give a fresh one: the script writes tasks).
Without one, the script starts a throwaway server as the tests do
(``tests/postgres_support.start_postgres``).  docs/performance.md has its
figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("SCHEDULER_DB"))
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.db:
        return measure(args.db, args.tasks)
    from tests.postgres_support import start_postgres

    server, stop = start_postgres()
    try:
        return measure(server.url(), args.tasks)
    finally:
        stop()


def timed(what: str, work: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = work()
    print(f"{what}: {(time.perf_counter() - started) * 1000:.1f} ms")
    return result


def measure(url: str, count: int) -> int:
    from scheduler.task_book import TaskBook
    from scheduler.task_store_postgres import PostgresTaskStore

    first = PostgresTaskStore(url, None, node="bench-a", tz=UTC)
    first.open()
    if first.load_now():
        print("the database already holds tasks: give a fresh schema", file=sys.stderr)
        return 2
    book = TaskBook(UTC)
    for number in range(count):
        book.add(f"{number % 60} * * * *", f"echo task {number}")
    timed(f"import of {count} tasks (formatting their lines included)", lambda: first.import_now(list(book)))
    book.add("* * * * *", "echo one more")
    timed("save after one ADD", lambda: first.save_now(list(book)))
    timed("save with nothing changed", lambda: first.save_now(list(book)))

    second = PostgresTaskStore(url, None, node="bench-b", tz=UTC)
    second.open()
    records = timed("another node's load", second.load_now)
    loaded = timed("its TaskBook", lambda: TaskBook.from_records(UTC, records))
    timed("its first save (compares every task with its record)", lambda: second.save_now(list(loaded)))
    timed("its second save (by identity)", lambda: second.save_now(list(loaded)))
    book.add("* * * * *", "echo from a")
    first.save_now(list(book))
    timed("its refresh of one change", second.refresh_now)
    first.close()
    second.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
