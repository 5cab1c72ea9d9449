"""The reactor lag probe on a task.Clock, and its histogram in /metrics."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from scheduler.metrics import SchedulerMetrics
from scheduler.reactor_lag import INTERVAL, ReactorLag


def probe(clock: Clock) -> tuple[ReactorLag, list[float]]:
    seen: list[float] = []
    lag = ReactorLag(clock, seen.append)
    lag.startService()
    return lag, seen


def test_a_timer_on_time_is_no_lag() -> None:
    clock = Clock()
    _lag, seen = probe(clock)
    clock.pump([INTERVAL] * 5)
    assert seen == [0.0] * 5


def test_a_stall_is_the_lateness_of_the_timer_due_during_it() -> None:
    clock = Clock()
    _lag, seen = probe(clock)
    clock.advance(INTERVAL)
    # A turn that holds the reactor 0.3 s past the next call's due time.
    clock.advance(INTERVAL + 0.3)
    assert seen == [0.0, pytest.approx(0.3)]
    # The next call is due an interval after the late one ran, not on a grid.
    clock.advance(INTERVAL)
    assert seen[-1] == 0.0 and len(seen) == 3


def test_an_observer_that_raises_does_not_stop_the_probe() -> None:
    clock = Clock()
    calls: list[float] = []
    errors: list[LogEvent] = []

    def observe(lag: float) -> None:
        calls.append(lag)
        raise RuntimeError("broken metrics")

    def logged(event: LogEvent) -> None:
        if event.get("log_failure") is not None:
            errors.append(event)

    globalLogPublisher.addObserver(logged)
    try:
        lag = ReactorLag(clock, observe)
        lag.startService()
        clock.pump([INTERVAL] * 3)
    finally:
        globalLogPublisher.removeObserver(logged)
    assert len(calls) == 3 and len(errors) == 3
    for event in errors:
        event["log_failure"].trap(RuntimeError)


def test_stopping_cancels_the_timer() -> None:
    clock = Clock()
    lag, seen = probe(clock)
    lag.stopService()
    assert clock.getDelayedCalls() == []
    clock.advance(1)
    assert seen == []


def test_the_histogram_in_metrics() -> None:
    metrics = SchedulerMetrics(queued=lambda: 0, running=lambda: 0, workers=lambda: 0, tasks=lambda: 0, tick_lag=lambda: 0)
    clock = Clock()
    lag = ReactorLag(clock, metrics.reactor_lagged)
    lag.startService()
    clock.advance(INTERVAL)
    clock.advance(INTERVAL + 0.03)
    text = metrics.render().decode()
    assert 'scheduler_reactor_lag_seconds_bucket{le="0.001"} 1.0' in text
    assert 'scheduler_reactor_lag_seconds_bucket{le="0.02"} 1.0' in text
    assert 'scheduler_reactor_lag_seconds_bucket{le="0.05"} 2.0' in text
    assert "scheduler_reactor_lag_seconds_count 2.0" in text
