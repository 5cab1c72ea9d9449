"""A job's output on the worker, kept until the scheduler's ack (docs/protocol.md)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["DEFAULT_OUTPUT_BUFFER", "Chunk", "OutputBuffer"]

DEFAULT_OUTPUT_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    seq: int
    stream: str
    data: str


class OutputBuffer:
    """A job's output chunks, kept for resending after a reconnect.

    Protocol 1 acknowledges output only with the job's ``ack``, so every
    chunk counts as unacknowledged until then, whether or not it was sent.
    The cap therefore applies all the time (a chatty job on a good
    connection must not grow without bound either); it only matters when a
    reconnect resumes from a seq whose chunks have already been dropped.
    Dropped chunks are replaced by one marker chunk that takes the seq of
    the last chunk dropped, so the scheduler's seq bookkeeping still lines
    up and a reader of the log sees that something is missing.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._chunks: deque[tuple[Chunk, int]] = deque()  # (chunk, UTF-8 size)
        self._size = 0
        self._dropped_bytes = 0
        self._dropped_through = 0  # seq of the newest dropped chunk, 0: none

    @property
    def size(self) -> int:
        """Bytes of output held (the marker not counted)."""
        return self._size

    def append(self, chunk: Chunk) -> None:
        size = len(chunk.data.encode("utf-8", "surrogatepass"))
        self._chunks.append((chunk, size))
        self._size += size
        # Oldest first: the scheduler is far likelier to have them already.
        while self._size > self._cap and self._chunks:
            old, old_size = self._chunks.popleft()
            self._size -= old_size
            self._dropped_bytes += old_size
            self._dropped_through = old.seq

    def after(self, seq: int) -> list[Chunk]:
        """What to resend to a scheduler that has everything up to ``seq``."""
        out: list[Chunk] = []
        if self._dropped_through > seq:
            out.append(self._marker())
        out.extend(chunk for chunk, _ in self._chunks if chunk.seq > seq)
        return out

    def _marker(self) -> Chunk:
        return Chunk(
            seq=self._dropped_through,
            stream="stderr",
            data=(
                f"[worker: output buffer full; {self._dropped_bytes} bytes of output "
                f"(chunks 1-{self._dropped_through}) were dropped before they could be resent]\n"
            ),
        )
