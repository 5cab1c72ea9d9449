"""Shared test doubles: synchronous stand-ins for the thread pool."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from scheduler.cron_engine import CronEngine
from scheduler.task_book import TaskBook
from scheduler.task_state import TaskState
from scheduler.task_store import FlatFileTaskStore

UTC = UTC


class InlinePool:
    """Runs 'threaded' work inline so protocol tests stay synchronous."""

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], func: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class InlineReactor(Clock):
    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)


def make_store(path: Path, **kw: Any) -> FlatFileTaskStore:
    return FlatFileTaskStore(str(path), UTC, InlinePool(), InlineReactor(), **kw)  # type: ignore[arg-type]


def make_state(path: Path, now: float = 0.0, **kw: Any) -> TaskState:
    store = make_store(path, **kw)
    book = TaskBook.from_records(UTC, store.load_now())
    return TaskState(book, store, CronEngine(now))


def result_of(deferred: Deferred[Any]) -> Any:
    out: list[Any] = []
    deferred.addBoth(out.append)
    assert out, "deferred did not fire"
    return out[0]


async def settled(treq: Any, deferred: Deferred[Any]) -> Any:
    """Pump StubTreq's in-memory connection until *deferred* fires.

    Routes that await the thread pool answer after the request returns,
    and StubTreq only delivers such late bytes when flushed; each turn
    yields to the reactor so the thread results can arrive.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    # `called` is not enough: a Deferred waiting on a chained one is "called".
    while not outcome:
        treq.flush()
        # A millisecond, not zero: a reactor that spins holds the GIL the
        # thread pool and the job store's thread need to finish the work.
        await deferLater(reactor, 0.001, lambda: None)
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
