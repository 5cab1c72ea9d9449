"""scheduler.job_history.output: the output cap's arithmetic, synchronously.

The same rules through SQLite are in test_job_store.py.
"""

from __future__ import annotations

from collections.abc import Iterator

from scheduler.job_history.output import FittedChunk, Tally, fit_chunk, with_marker


def test_a_chunk_within_the_cap_is_kept_whole_and_counted_in_bytes() -> None:
    assert fit_chunk("héllo", 10) == FittedChunk("héllo", 6, 0)
    assert fit_chunk("", 10) == FittedChunk("", 0, 0)


def test_a_chunk_over_the_cap_keeps_its_tail_never_half_a_character() -> None:
    assert fit_chunk("aé123456789", 9) == FittedChunk("123456789", 9, 3)
    # The cut falls inside "é": its stray second byte is dropped too.
    assert fit_chunk("aé12345678", 9) == FittedChunk("12345678", 8, 3)


def test_undecodable_output_is_stored_escaped() -> None:
    data = b"bad \xff byte".decode("utf-8", "surrogateescape")
    assert fit_chunk(data, 100) == FittedChunk("bad \\udcff byte", 15, 0)


def test_trim_counts_out_the_oldest_chunks_until_the_output_fits() -> None:
    tally = Tally(kept=0, dropped=0, floor=0)
    for size in (4, 4, 4):
        tally.count(FittedChunk("x" * size, size, 0))
    read: list[int] = []

    def oldest_first() -> Iterator[tuple[int, int]]:
        for seq, size in [(1, 4), (2, 4), (3, 4)]:
            read.append(seq)
            yield seq, size

    assert tally.trim(oldest_first(), 6) == 2
    assert (tally.kept, tally.dropped, tally.floor) == (4, 8, 2)
    assert read == [1, 2]  # read no further than needed
    assert tally.refuses(2) and not tally.refuses(3)
    assert tally.trim(iter([(3, 4)]), 6) is None
    assert tally.floor == 2


def test_a_tally_from_stored_output_refuses_what_the_cap_dropped() -> None:
    assert Tally.from_stored(kept=6, dropped=4, lowest_seq=2) == Tally(6, 4, 1)
    # Nothing dropped: nothing below the lowest kept chunk is refused.
    assert Tally.from_stored(kept=6, dropped=0, lowest_seq=2) == Tally(6, 0, 0)
    assert Tally.from_stored(kept=0, dropped=0, lowest_seq=None) == Tally(0, 0, 0)


def test_the_marker_comes_first_and_only_when_something_was_dropped() -> None:
    assert with_marker("tail", 12) == "[... 12 bytes of earlier output dropped ...]\ntail"
    assert with_marker("all", 0) == "all"
