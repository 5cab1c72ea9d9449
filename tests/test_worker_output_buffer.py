"""worker.output_buffer: a job's unacknowledged output, capped."""

from __future__ import annotations

from worker.output_buffer import Chunk, OutputBuffer


def test_output_buffer_drops_oldest_chunks_and_leaves_a_marker() -> None:
    buf = OutputBuffer(cap=10)
    for seq, data in enumerate(["aaaa", "bbbb", "cccc", "dddd"], start=1):
        buf.append(Chunk(seq, "stdout", data))
    # 16 bytes > 10: chunks 1 and 2 (8 bytes) had to go.
    assert buf.size == 8
    chunks = buf.after(0)
    marker = chunks[0]
    assert (marker.seq, marker.stream) == (2, "stderr")
    assert "8 bytes" in marker.data
    assert [c.data for c in chunks[1:]] == ["cccc", "dddd"]
    # A scheduler that already has everything up to 2 needs no marker.
    assert [c.seq for c in buf.after(2)] == [3, 4]
    assert [c.seq for c in buf.after(1)] == [2, 3, 4]
    assert buf.after(4) == []


def test_output_buffer_counts_utf8_bytes() -> None:
    buf = OutputBuffer(cap=4)
    buf.append(Chunk(1, "stdout", "é"))  # 2 bytes
    buf.append(Chunk(2, "stdout", "éé"))  # 4 bytes
    assert buf.size == 4
    assert "2 bytes" in buf.after(0)[0].data
