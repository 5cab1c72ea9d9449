"""Connected workers: who is online, what they can take, and placement."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from scheduler.worker_messages import Link


@dataclass(eq=False)
class Worker:
    name: str
    labels: frozenset[str]
    slots: int
    link: Link
    connected_at: float
    # Jobs placed on this worker and not yet finished (started or not).
    running: set[int] = field(default_factory=set)
    # The agent process's id from its hello: the same instance reconnecting
    # may take its name over at once.
    instance: str | None = None
    # Seconds our clock is ahead of the worker's, measured at its hello:
    # added to every time it reports.
    clock_offset: float = 0.0

    @property
    def free(self) -> int:
        return self.slots - len(self.running)

    def accepts(self, target: str) -> bool:
        if target in ("any", "all"):
            return True
        kind, _, value = target.partition(":")
        if kind == "worker":
            return value == self.name
        if kind == "label":
            return value in self.labels
        return False

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": sorted(self.labels),
            "slots": self.slots,
            "running": len(self.running),
            "jobs": sorted(self.running),
            "connectedAt": self.connected_at,
            "clockOffset": round(self.clock_offset, 6),
        }


WorkerListener = Callable[[str, Worker], None]


class WorkerRegistry:
    """Workers by name, one connection each.

    ``add`` replaces the connection holding a name; the wire layer decides
    whether a new connection may (see docs/protocol.md, "One connection per
    name").
    """

    def __init__(self) -> None:
        self._workers: dict[str, Worker] = {}
        self.listeners: list[WorkerListener] = []

    def __iter__(self) -> Iterator[Worker]:
        return iter(self._workers.values())

    def __len__(self) -> int:
        return len(self._workers)

    def get(self, name: str) -> Worker | None:
        return self._workers.get(name)

    def add(self, worker: Worker) -> Worker | None:
        """Register *worker*; returns the stale worker it replaced, if any."""
        stale = self._workers.get(worker.name)
        if stale is not None:
            # The jobs belong to the name, not the connection.
            worker.running |= stale.running
        self._workers[worker.name] = worker
        self._notify("connected", worker)
        return stale

    def holds(self, worker: Worker) -> bool:
        """Is *worker* the connection that currently holds its name?"""
        return self._workers.get(worker.name) is worker

    def remove(self, worker: Worker) -> bool:
        """Forget *worker* if it is still the current one under its name."""
        if self._workers.get(worker.name) is not worker:
            return False
        del self._workers[worker.name]
        self._notify("disconnected", worker)
        return True

    def place(self, target: str, avoid: str | None = None) -> Worker | None:
        """The least-loaded worker that accepts *target* and has a free slot
        (other than the one named *avoid*).

        Least loaded means fewest running jobs, then most free slots, then
        the lowest name.  This runs once per job over every worker, so the
        loop compares plain ints and checks the target only for a worker
        that would win.
        """
        best: Worker | None = None
        best_running = best_free = 0
        anyone = target in ("any", "all")
        for worker in self._workers.values():
            running = len(worker.running)
            free = worker.slots - running
            if free <= 0:
                continue
            if best is not None and (
                running > best_running
                or (running == best_running and (free < best_free or (free == best_free and worker.name > best.name)))
            ):
                continue
            if not anyone and not worker.accepts(target):
                continue
            if avoid is not None and worker.name == avoid:
                continue
            best, best_running, best_free = worker, running, free
        return best

    def eligible(self, target: str) -> list[Worker]:
        return [worker for worker in self._workers.values() if worker.accepts(target)]

    def has_free_slot(self) -> bool:
        return any(worker.free > 0 for worker in self._workers.values())

    def changed(self, worker: Worker) -> None:
        self._notify("changed", worker)

    def clashed(self, worker: Worker) -> None:
        """A second live connection asked for *worker*'s name and was refused."""
        self._notify("clash", worker)

    def _notify(self, event: str, worker: Worker) -> None:
        for listener in self.listeners:
            listener(event, worker)
