"""Connected workers: who is online, what they can take, and placement."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from scheduler.worker_messages import Link


class RunningJobs(set[int]):
    """A worker's running jobs: a set that tells its registry when it changes.

    The registry keeps an index of who has room (``WorkerRegistry.place``
    and ``has_free_slot`` would otherwise look at every worker for every
    job); every way of changing the set goes through ``_changed``.
    """

    def __init__(self, jobs: Iterable[int] = ()) -> None:
        super().__init__(jobs)
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def add(self, job_id: int) -> None:
        super().add(job_id)
        self._changed()

    def discard(self, job_id: object) -> None:
        super().discard(job_id)
        self._changed()

    def remove(self, job_id: int) -> None:
        super().remove(job_id)
        self._changed()

    def pop(self) -> int:
        job_id = super().pop()
        self._changed()
        return job_id

    def clear(self) -> None:
        super().clear()
        self._changed()

    def update(self, *others: Iterable[int]) -> None:
        super().update(*others)
        self._changed()

    def difference_update(self, *others: Iterable[Any]) -> None:
        super().difference_update(*others)
        self._changed()

    def intersection_update(self, *others: Iterable[Any]) -> None:
        super().intersection_update(*others)
        self._changed()

    def symmetric_difference_update(self, other: Iterable[int]) -> None:
        super().symmetric_difference_update(other)
        self._changed()

    def __ior__(self, other: Any) -> RunningJobs:  # type: ignore[override,misc]
        super().__ior__(other)
        self._changed()
        return self

    def __isub__(self, other: Any) -> RunningJobs:  # type: ignore[override,misc]
        super().__isub__(other)
        self._changed()
        return self

    def __iand__(self, other: Any) -> RunningJobs:  # type: ignore[override,misc]
        super().__iand__(other)
        self._changed()
        return self

    def __ixor__(self, other: Any) -> RunningJobs:  # type: ignore[override,misc]
        super().__ixor__(other)
        self._changed()
        return self


@dataclass(eq=False)
class Worker:
    name: str
    labels: frozenset[str]
    slots: int
    link: Link
    connected_at: float
    # Jobs placed on this worker and not yet finished (started or not).
    running: RunningJobs = field(default_factory=RunningJobs)
    # The agent process's id from its hello: the same instance reconnecting
    # may take its name over at once.
    instance: str | None = None
    # Seconds our clock is ahead of the worker's, measured at its hello:
    # added to every time it reports.
    clock_offset: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.running, RunningJobs):  # a plain set given
            self.running = RunningJobs(self.running)

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
        # Who has room, for ``place`` and ``has_free_slot`` without a pass
        # over every worker per job (with a thousand workers that pass was
        # most of placing a job).  A heap of (running, -free, name, stamp)
        # for each held worker with a free slot, ordered as ``place``
        # chooses; an entry whose stamp is not its worker's latest is stale
        # and dropped when met (stamps only grow, so a name that leaves and
        # comes back never meets its old entries).  Beside it, the free
        # slots of all together.
        self._room: list[tuple[int, int, str, int]] = []
        self._stamps: dict[str, int] = {}
        self._last_stamp = 0
        self._free: dict[str, int] = {}
        self._free_total = 0

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
            stale.running.on_change = None
            worker.running |= stale.running
        self._workers[worker.name] = worker
        worker.running.on_change = lambda: self._moved(worker)
        self._moved(worker)
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
        worker.running.on_change = None
        self._free_total -= self._free.pop(worker.name, 0)
        self._stamps.pop(worker.name, None)  # its heap entries are stale now
        self._notify("disconnected", worker)
        return True

    def _moved(self, worker: Worker) -> None:
        """*worker*'s running jobs changed: its place in the index follows."""
        if self._workers.get(worker.name) is not worker:
            return
        free = max(0, worker.free)
        self._free_total += free - self._free.get(worker.name, 0)
        self._free[worker.name] = free
        self._last_stamp += 1
        stamp = self._stamps[worker.name] = self._last_stamp
        if free > 0:
            heapq.heappush(self._room, (len(worker.running), -free, worker.name, stamp))
        if len(self._room) > 4 * len(self._workers) + 64:
            self._rebuild()

    def _rebuild(self) -> None:
        """The heap again from the workers themselves, without its stale entries."""
        self._room = [
            (len(worker.running), -worker.free, name, self._stamps[name])
            for name, worker in self._workers.items()
            if worker.free > 0
        ]
        heapq.heapify(self._room)

    def place(self, target: str, avoid: str | None = None) -> Worker | None:
        """The least-loaded worker that accepts *target* and has a free slot
        (other than the one named *avoid*).

        Least loaded means fewest running jobs, then most free slots, then
        the lowest name.  For ``any`` and ``all`` the index's heap has the
        answer on top; a label is looked for among every worker, comparing
        plain ints and checking the target only for a worker that would win.
        """
        if target in ("any", "all"):
            return self._least_loaded(avoid)
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

    def _least_loaded(self, avoid: str | None) -> Worker | None:
        room = self._room
        skipped = None
        found = None
        while room:
            _, _, name, stamp = room[0]
            if self._stamps.get(name) != stamp:
                heapq.heappop(room)  # stale: the worker moved or left since
                continue
            if name == avoid:
                skipped = heapq.heappop(room)
                continue
            found = self._workers[name]
            break
        if skipped is not None:
            heapq.heappush(room, skipped)
        return found

    def eligible(self, target: str) -> list[Worker]:
        return [worker for worker in self._workers.values() if worker.accepts(target)]

    def has_free_slot(self) -> bool:
        return self._free_total > 0

    def changed(self, worker: Worker) -> None:
        self._notify("changed", worker)

    def clashed(self, worker: Worker) -> None:
        """A second live connection asked for *worker*'s name and was refused."""
        self._notify("clash", worker)

    def _notify(self, event: str, worker: Worker) -> None:
        for listener in self.listeners:
            listener(event, worker)
