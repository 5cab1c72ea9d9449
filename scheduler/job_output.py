"""The kept end of each active job's output, for the API and the live feed.

The whole output (up to the store's cap) is in the job store; this is what
a running job's page shows without a database read.  Chunks may arrive in
any order (docs/protocol.md, ``output``): they are kept in ``seq`` order,
and which ones never came is known when the job's ``finished`` says how
many there were.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Tail:
    chunks: deque[tuple[int, str, str]] = field(default_factory=deque)
    size: int = 0
    dropped: int = 0
    # Every chunk up to this seq has arrived.
    through: int = 0
    # Chunks above ``through`` that have arrived (a gap lies below them).
    ahead: set[int] = field(default_factory=set)


class OutputTails:
    """Output chunks by job, at most *cap* characters each (oldest dropped first)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._tails: dict[int, _Tail] = {}

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._tails

    def open(self, job_id: int, last_seq: int | None = None) -> None:
        """Start keeping *job_id*'s output (from *last_seq*, after a restart)."""
        tail = self._tails.get(job_id)
        if tail is None:
            tail = self._tails[job_id] = _Tail()
        if last_seq is not None:
            tail.through = last_seq

    def add(self, job_id: int, seq: int, stream: str, data: str) -> bool:
        """Keep a chunk; False if it is a resend of one already kept."""
        self.open(job_id)
        tail = self._tails[job_id]
        if seq <= tail.through or seq in tail.ahead:
            return False
        if seq == tail.through + 1:
            tail.through = seq
            while tail.through + 1 in tail.ahead:
                tail.through += 1
                tail.ahead.discard(tail.through)
        else:
            tail.ahead.add(seq)
        chunk = (seq, stream, data)
        if not tail.chunks or tail.chunks[-1][0] < seq:
            tail.chunks.append(chunk)
        else:
            # Out of order: rare, and the deque is short (capped).
            position = bisect.bisect(tail.chunks, seq, key=lambda kept: kept[0])
            tail.chunks.insert(position, chunk)
        tail.size += len(data)
        while tail.size > self.cap and len(tail.chunks) > 1:
            _, _, old = tail.chunks.popleft()
            tail.size -= len(old)
            tail.dropped += len(old)
        return True

    def last_seq(self, job_id: int) -> int:
        """The seq up to which every chunk of *job_id* has arrived."""
        tail = self._tails.get(job_id)
        return 0 if tail is None else tail.through

    def highest(self, job_id: int) -> int:
        """The highest seq that has arrived."""
        tail = self._tails.get(job_id)
        if tail is None:
            return 0
        return max(tail.ahead, default=tail.through)

    def missing(self, job_id: int, last: int) -> list[tuple[int, int]]:
        """The runs of chunks from 1 to *last* that have not arrived, as (first, last) pairs."""
        tail = self._tails.get(job_id)
        through, ahead = (0, set[int]()) if tail is None else (tail.through, tail.ahead)
        gaps: list[tuple[int, int]] = []
        start = through + 1
        for seq in sorted(s for s in ahead if s <= last):
            if seq > start:
                gaps.append((start, seq - 1))
            start = seq + 1
        if start <= last:
            gaps.append((start, last))
        return gaps

    def text(self, job_id: int) -> str | None:
        """The kept output, with a marker for what was dropped; None if none is kept."""
        tail = self._tails.get(job_id)
        if tail is None:
            return None
        text = "".join(data for _, _, data in tail.chunks)
        if tail.dropped:
            text = f"[... {tail.dropped} bytes of earlier output dropped ...]\n" + text
        return text

    def close(self, job_id: int) -> None:
        self._tails.pop(job_id, None)
