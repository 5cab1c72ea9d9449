"""The kept end of each active job's output, for the API and the live feed.

The whole output (up to the store's cap) is in the job store; this is what
a running job's page shows without a database read.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Tail:
    chunks: deque[tuple[int, str, str]] = field(default_factory=deque)
    size: int = 0
    dropped: int = 0
    last_seq: int = 0


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
            tail.last_seq = last_seq

    def add(self, job_id: int, seq: int, stream: str, data: str) -> bool:
        """Keep a chunk; False if it is a resend of one already kept."""
        self.open(job_id)
        tail = self._tails[job_id]
        if seq <= tail.last_seq:
            return False
        tail.last_seq = seq
        tail.chunks.append((seq, stream, data))
        tail.size += len(data)
        while tail.size > self.cap and len(tail.chunks) > 1:
            _, _, old = tail.chunks.popleft()
            tail.size -= len(old)
            tail.dropped += len(old)
        return True

    def last_seq(self, job_id: int) -> int:
        tail = self._tails.get(job_id)
        return 0 if tail is None else tail.last_seq

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
