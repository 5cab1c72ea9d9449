"""The bench's scheduler figures: the longest reactor stall from the lag histogram, CPU per job against its bound."""

from __future__ import annotations

import math

from bench.common import cpu_per_job_figure, highest_bucket, histogram, histogram_delta, stall_figure

BEFORE = {
    'scheduler_reactor_lag_seconds_bucket{le="0.001"}': 10.0,
    'scheduler_reactor_lag_seconds_bucket{le="0.02"}': 12.0,
    'scheduler_reactor_lag_seconds_bucket{le="0.5"}': 12.0,
    'scheduler_reactor_lag_seconds_bucket{le="+Inf"}': 12.0,
}


def delta(after: dict[str, float]) -> list[tuple[float, float]]:
    name = "scheduler_reactor_lag_seconds"
    return histogram_delta(histogram(after, name), histogram(BEFORE, name))


def test_the_stall_is_the_highest_bucket_with_a_sample_in_the_window() -> None:
    # Two samples since: one under 1 ms, one between 20 and 500 ms.
    after = dict(BEFORE)
    after.update({k: v + 1 for k, v in BEFORE.items()})
    after['scheduler_reactor_lag_seconds_bucket{le="0.5"}'] = 14.0
    after['scheduler_reactor_lag_seconds_bucket{le="+Inf"}'] = 14.0
    assert highest_bucket(delta(after)) == (0.5, 0.5)
    # Earlier samples over 1 ms do not count: nothing new but one under 1 ms.
    quiet = {k: v + 1 for k, v in BEFORE.items()}
    assert highest_bucket(delta(quiet)) == (0.001, 0.5)
    assert highest_bucket(delta(BEFORE)) == (0.0, 0.5)
    over = dict(BEFORE)
    over['scheduler_reactor_lag_seconds_bucket{le="+Inf"}'] = 13.0
    assert highest_bucket(delta(over)) == (math.inf, 0.5)


def test_stall_and_cpu_figures_against_their_bounds() -> None:
    figure = stall_figure([(0.01, 0.5), (0.05, 0.5)])
    assert (figure.value, figure.unit, figure.met) == (50.0, "ms", False)
    assert stall_figure([(0.005, 0.5)]).met is True
    past = stall_figure([(math.inf, 0.5)])
    assert (past.value, past.unit, past.met) == (500.0, "ms or more", False)
    cpu = cpu_per_job_figure([120.0, 90.0, 95.0], 100.0)
    assert (cpu.value, cpu.met, cpu.target) == (95.0, True, "<= 100 µs")
    assert cpu_per_job_figure([120.0], 100.0).met is False
    assert cpu_per_job_figure([120.0]).met is None
