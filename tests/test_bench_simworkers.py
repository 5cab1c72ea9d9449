"""How SimWorkers shares its workers out between processes (bench/common.py)."""

from __future__ import annotations

import pytest

from bench.common import shares


@pytest.mark.parametrize(
    ("count", "parts", "expected"),
    [
        (1000, 4, [250, 250, 250, 250]),
        (10, 4, [3, 3, 2, 2]),
        (5, 2, [3, 2]),
        (3, 3, [1, 1, 1]),
        (7, 1, [7]),
    ],
)
def test_every_worker_is_in_exactly_one_share(count: int, parts: int, expected: list[int]) -> None:
    assert shares(count, parts) == expected
    assert sum(shares(count, parts)) == count
