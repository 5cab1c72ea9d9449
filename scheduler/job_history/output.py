"""A job's kept output: the cap, the trim of the oldest chunks, and the tallies behind both.

Each job keeps at most ``cap`` bytes of output (UTF-8).  Past it the oldest
chunks go, and the record counts the bytes dropped, which readers see as a
marker line before what is kept.  A backend keeps one :class:`Tally` per
job it is writing output for, so an append needs no SUM query; it drops
the tally when the job ends, and all of them when a transaction is undone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FittedChunk:
    """A chunk as it can be stored: valid UTF-8, at most the cap."""

    data: str
    # Its size in bytes, and the bytes cut from its front to fit the cap.
    size: int
    cut: int


def fit_chunk(data: str, cap: int) -> FittedChunk:
    try:
        raw = data.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (undecodable process output) cannot be stored as
        # text and would fail the whole batch.
        raw = data.encode("utf-8", "backslashreplace")
        data = raw.decode("utf-8")
    if len(raw) <= cap:
        return FittedChunk(data, len(raw), 0)
    # Keep the chunk's tail; a cut through a multi-byte character leaves
    # stray continuation bytes, which "ignore" discards.
    data = raw[len(raw) - cap :].decode("utf-8", "ignore")
    size = len(data.encode("utf-8"))
    return FittedChunk(data, size, len(raw) - size)


@dataclass(slots=True)
class Tally:
    """One job's output accounting."""

    kept: int
    dropped: int
    # The highest seq the cap has deleted: a chunk re-sent at or below it
    # must stay dropped, or the store would take it in again.
    floor: int

    @classmethod
    def from_stored(cls, kept: int, dropped: int, lowest_seq: int | None) -> Tally:
        """The tally of a job whose output is already stored (*lowest_seq*: its lowest kept seq)."""
        # The cap deletes from the lowest seq up, so everything below the
        # lowest kept chunk of a capped job was dropped.
        floor = lowest_seq - 1 if dropped and lowest_seq is not None else 0
        return cls(kept, dropped, floor)

    def refuses(self, seq: int) -> bool:
        """Was chunk *seq* already dropped by the cap?"""
        return seq <= self.floor

    def count(self, chunk: FittedChunk) -> None:
        """Count a chunk that was stored."""
        self.kept += chunk.size
        self.dropped += chunk.cut

    def trim(self, oldest_first: Iterable[tuple[int, int]], cap: int) -> int | None:
        """Count out the oldest chunks until the kept output fits *cap*.

        *oldest_first* gives the stored chunks' (seq, size), lowest seq
        first, and is read only as far as needed.  Returns the seq up to
        which the backend must delete, or None if nothing goes.
        """
        last = None
        if self.kept > cap:
            for seq, size in oldest_first:
                last = seq
                self.kept -= size
                self.dropped += size
                if self.kept <= cap:
                    break
        if last is not None:
            self.floor = max(self.floor, last)
        return last


def with_marker(text: str, dropped: int) -> str:
    """A job's output as readers see it: a marker first if the cap dropped some."""
    if not dropped:
        return text
    return f"[... {dropped} bytes of earlier output dropped ...]\n" + text


def merge_streams(chunks: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(stream, text) chunks in seq order, each run of one stream joined: what a page draws."""
    parts: list[tuple[str, str]] = []
    for stream, data in chunks:
        if parts and parts[-1][0] == stream:
            parts[-1] = (stream, parts[-1][1] + data)
        else:
            parts.append((stream, data))
    return parts
