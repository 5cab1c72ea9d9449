"""The jobs waiting for a worker: one queue per target, oldest first in each."""

from __future__ import annotations

import heapq
from collections import Counter


class JobQueue:
    """Queued job ids by target, each target's oldest (lowest id) first.

    One queue per target, because jobs of one target are placed alike: when
    the oldest cannot be placed, none behind it can, so a pump looks at one
    job per target rather than at every job waiting (thousands may wait
    for a label no worker has).  Removal (a cancel, say) is O(1); the id is dropped from its heap when it
    surfaces, or when stale ids outnumber live ones.
    """

    def __init__(self) -> None:
        self._heaps: dict[str, list[int]] = {}
        self._target_of: dict[int, str] = {}
        self._live: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._target_of)

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._target_of

    def push(self, job_id: int, target: str) -> None:
        if job_id in self._target_of:
            return
        self._target_of[job_id] = target
        self._live[target] += 1
        heapq.heappush(self._heaps.setdefault(target, []), job_id)

    def remove(self, job_id: int) -> None:
        target = self._target_of.pop(job_id, None)
        if target is None:
            return
        self._live[target] -= 1
        heap = self._heaps[target]
        if not self._live[target]:
            del self._live[target], self._heaps[target]
        elif len(heap) > 2 * self._live[target] + 16:
            # Cancelled jobs behind a head that cannot be placed would
            # otherwise stay in the heap as long as it waits.
            heap[:] = [each for each in heap if self._target_of.get(each) == target]
            heapq.heapify(heap)

    def head(self, target: str) -> int | None:
        """The oldest job queued for *target*."""
        heap = self._heaps.get(target)
        if heap is None:
            return None
        while self._target_of.get(heap[0]) != target:
            heapq.heappop(heap)  # removed earlier
        return heap[0]

    def newest(self, target: str) -> int | None:
        """The newest job queued for *target* (a scan of its queue: for the
        dispatcher's short queues with ``--db``, where the rest is offered)."""
        heap = self._heaps.get(target)
        if heap is None:
            return None
        return max(job_id for job_id in heap if self._target_of.get(job_id) == target)

    def heads(self) -> list[tuple[int, str]]:
        """(oldest job, target) for every target with jobs queued."""
        heads = []
        for target in self._heaps:
            head = self.head(target)
            if head is not None:
                heads.append((head, target))
        return heads
