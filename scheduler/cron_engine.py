"""The cron engine: which tasks are due, from a heap of next-fire times.

Pure bookkeeping with no reactor: the caller passes the time.  Tasks that
share a schedule expression form one group with one iterator, so a tick
costs one heap peek when nothing is due, however many tasks there are,
and 100,000 tasks on a dozen expressions cost a dozen date computations.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import NamedTuple

from scheduler.cron import FireTimes, Schedule


class Fire(NamedTuple):
    """One task due at one scheduled time (the idempotency key of a run).

    Ordered by time, then task id.  A tuple: a top-of-the-hour tick makes
    one per task due, and a tuple is made in a fraction of a dataclass's time.
    """

    scheduled: float
    task_id: int


def _ids() -> array[int]:
    return array("q")


@dataclass
class _Group:
    schedule: Schedule
    iterator: FireTimes
    next_time: float
    # Sorted; an array of machine ints, not a set of int objects: a million
    # tasks in a set cost 70 MB, in arrays 8 (docs/performance.md, "A
    # million tasks").  Insertion and removal move the tail, which for the
    # largest group of a million is a millisecond; bulk changes go through
    # add_many and remove_many, which sort or filter once per group.
    task_ids: array[int] = field(default_factory=_ids)
    # Identifies the group's one live heap entry; older entries are stale.
    token: int = 0


class CronEngine:
    """Tracks next fire times and hands out each scheduled time once.

    ``max_catch_up`` bounds how far back a late tick looks: fire times
    missed by a late tick within that window all fire (in order); older
    ones are skipped and counted, so a clock that jumps forward by a day
    does not unleash a day of runs at once.
    """

    def __init__(
        self,
        now: float,
        *,
        max_catch_up: float = 60.0,
        max_step_back: float = 3600.0,
    ) -> None:
        self._groups: dict[Schedule, _Group] = {}
        self._task_group: dict[int, Schedule] = {}
        # (next_time, tie-breaker, schedule); stale entries are skipped lazily.
        self._heap: list[tuple[float, int, Schedule]] = []
        self._counter = 0
        self._last = now
        self.max_catch_up = max_catch_up
        self.max_step_back = max_step_back
        #: Task fires dropped because the clock jumped past them.
        self.skipped = 0

    def __len__(self) -> int:
        return len(self._task_group)

    @property
    def last_tick(self) -> float:
        return self._last

    def add(self, task_id: int, schedule: Schedule) -> None:
        if task_id in self._task_group:
            self.remove(task_id)
        insort(self._group(schedule).task_ids, task_id)
        self._task_group[task_id] = schedule

    def add_many(self, tasks: Iterable[tuple[int, Schedule]]) -> None:
        task_group = self._task_group
        # The last schedule given for a task wins, as with one add after another.
        latest = dict(tasks)
        self.remove_many([task_id for task_id in latest if task_id in task_group])
        added: defaultdict[Schedule, list[int]] = defaultdict(list)
        for task_id, schedule in latest.items():
            added[schedule].append(task_id)
        for schedule, ids in added.items():
            group = self._group(schedule)
            group.task_ids.extend(ids)
            group.task_ids = array("q", sorted(group.task_ids))
            task_group.update(dict.fromkeys(ids, schedule))

    def remove(self, task_id: int) -> None:
        schedule = self._task_group.pop(task_id, None)
        if schedule is None:
            return
        group = self._groups[schedule]
        ids = group.task_ids
        index = bisect_left(ids, task_id)
        if index < len(ids) and ids[index] == task_id:
            del ids[index]
        if not ids:
            # Its heap entry goes stale and is dropped when it surfaces.
            del self._groups[schedule]

    def remove_many(self, task_ids: Iterable[int]) -> None:
        """``remove`` for each of *task_ids*, filtering each group once."""
        gone: defaultdict[Schedule, set[int]] = defaultdict(set)
        for task_id in task_ids:
            schedule = self._task_group.pop(task_id, None)
            if schedule is not None:
                gone[schedule].add(task_id)
        for schedule, ids in gone.items():
            group = self._groups[schedule]
            if len(ids) < 8:
                members = group.task_ids
                for task_id in ids:
                    index = bisect_left(members, task_id)
                    if index < len(members) and members[index] == task_id:
                        del members[index]
            else:
                group.task_ids = array("q", [task_id for task_id in group.task_ids if task_id not in ids])
            if not group.task_ids:
                del self._groups[schedule]

    def _group(self, schedule: Schedule) -> _Group:
        group = self._groups.get(schedule)
        if group is None:
            iterator = schedule.iterator(self._last)
            group = _Group(schedule, iterator, iterator.get_next(float))
            self._groups[schedule] = group
            self._push(group)
        return group

    def clear(self) -> None:
        self._groups.clear()
        self._task_group.clear()
        self._heap.clear()

    def next_run(self, task_id: int) -> float | None:
        schedule = self._task_group.get(task_id)
        return None if schedule is None else self._groups[schedule].next_time

    def next_due(self) -> float | None:
        """The earliest pending fire time, or None with no tasks."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def count_due(self, at: float) -> int:
        """How many task fires are due at or before *at* (0 with none pending)."""
        heap = self._heap
        count = 0
        # The heap's entries at or before *at*: a walk that stops at any
        # later entry, since everything below it is later still.
        stack = [0] if heap else []
        while stack:
            index = stack.pop()
            when, token, schedule = heap[index]
            if when > at:
                continue
            group = self._groups.get(schedule)
            if group is not None and group.token == token:
                count += len(group.task_ids)
            stack.extend(child for child in (2 * index + 1, 2 * index + 2) if child < len(heap))
        return count

    def due(self, now: float) -> list[Fire]:
        """Every (task, scheduled time) with a time in (last tick, now].

        Each scheduled time is handed out once: a clock that steps back a
        little only delays fires until it passes the old times again.  A
        clock set back by more than ``max_step_back`` restarts every
        schedule from the new time, as cron does, rather than pausing
        everything for hours; the caller's idempotency keys keep times that
        already ran from running again.
        """
        return list(self.due_lazily(now))

    def due_lazily(self, now: float) -> Iterator[Fire]:
        """What :meth:`due` hands out, with the engine moved on now and the
        fires made as they are taken.

        A top of the hour of a million tasks is a few hundred thousand
        fires: made and sorted at once they held the reactor for half a
        second (docs/performance.md, "A million tasks"); the ticker takes
        them a few hundred per turn.  Each group's ids are copied now, so a
        task removed meanwhile still has the fire it was due.
        """
        if now < self._last - self.max_step_back:
            self._restart(now)
        batches: list[tuple[float, list[array[int]]]] = []
        horizon = now - self.max_catch_up
        # The heap hands groups out in time order: the groups due at one
        # time are gathered and their (sorted) ids merged as they are taken,
        # so the fires come out by time, then task id, with no sort.
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                break
            _, _, schedule = heapq.heappop(self._heap)
            group = self._groups[schedule]
            if group.next_time < horizon:
                # Jumped past: restart the iterator at the horizon instead
                # of walking every missed minute.
                group.iterator = schedule.iterator(horizon)
                group.next_time = group.iterator.get_next(float)
                self.skipped += len(group.task_ids)
                self._push(group)
                continue
            if not batches or batches[-1][0] != group.next_time:
                batches.append((group.next_time, []))
            batches[-1][1].append(array("q", group.task_ids))
            group.next_time = group.iterator.get_next(float)
            self._push(group)
        self._last = max(self._last, now)
        return chain.from_iterable(_fires_at(at, gathered) for at, gathered in batches)

    def skip_to(self, now: float) -> None:
        """Hand out nothing up to *now*: the clock stepped forward to it.

        The times skipped are the caller's to handle, as downtime (each
        task's missed-run policy), not a burst of catch-up fires.
        """
        if now > self._last:
            self._restart(now)

    def _restart(self, now: float) -> None:
        self._heap.clear()
        for group in self._groups.values():
            group.iterator = group.schedule.iterator(now)
            group.next_time = group.iterator.get_next(float)
            self._push(group)
        self._last = now

    def _push(self, group: _Group) -> None:
        self._counter += 1
        group.token = self._counter
        heapq.heappush(self._heap, (group.next_time, self._counter, group.schedule))

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            _, token, schedule = heap[0]
            group = self._groups.get(schedule)
            if group is not None and group.token == token:
                return
            heapq.heappop(heap)


def _fires_at(at: float, gathered: list[array[int]]) -> Iterator[Fire]:
    """The fires at *at* of the tasks in *gathered* (sorted id arrays), by id."""
    ids: Iterable[int] = gathered[0] if len(gathered) == 1 else heapq.merge(*gathered)
    return map(Fire, repeat(at), ids)


def missed_times(schedule: Schedule, last: float, now: float, policy: str, cap: int) -> list[float]:
    """Fire times in (last, now] to run after downtime, per the missed policy.

    ``skip`` runs none (cron's way); ``once`` the latest; ``all`` up to *cap*
    of the latest, oldest first.  Walks backwards from *now*, so a long
    downtime costs at most *cap* steps.
    """
    if policy == "skip" or now <= last:
        return []
    wanted = 1 if policy == "once" else cap
    iterator = schedule.backwards(now + 1)
    times: list[float] = []
    while len(times) < wanted:
        previous = float(iterator.get_prev(float))
        if previous <= last:
            break
        if previous <= now:
            times.append(previous)
    return sorted(times)
