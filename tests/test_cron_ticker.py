"""scheduler.cron_ticker: ticks aimed at whole seconds, driven by task.Clock."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from twisted.internet.task import Clock

from scheduler import cron
from scheduler.cron_engine import CronEngine, Fire
from scheduler.cron_ticker import CronTicker

UTC = ZoneInfo("UTC")


def every_second_engine(clock: Clock) -> CronEngine:
    engine = CronEngine(clock.seconds())
    engine.add(1, cron.parse("* * * * * *", UTC))
    return engine


def started(clock: Clock, seen: list[list[Fire]], lead: float = 0.0) -> CronTicker:
    ticker = CronTicker(clock, every_second_engine(clock), seen.append, lead=lead)
    ticker.startService()
    return ticker


def planned(clock: Clock) -> list[float]:
    return [round(call.getTime(), 6) for call in clock.getDelayedCalls()]


def scheduled(seen: list[list[Fire]]) -> list[list[float]]:
    return [[fire.scheduled for fire in fires] for fires in seen]


def test_ticks_land_on_whole_seconds_however_late_each_runs() -> None:
    clock = Clock()
    clock.advance(1000.25)
    seen: list[list[Fire]] = []
    ticker = started(clock, seen)
    assert planned(clock) == [1001.0]
    # Each tick runs 2 ms late; the next one is still aimed at the second.
    for second in (1001, 1002, 1003):
        clock.advance(second + 0.002 - clock.seconds())
        assert ticker.lag == pytest.approx(0.002)
        assert planned(clock) == [second + 1.0]
    assert scheduled(seen) == [[1001.0], [1002.0], [1003.0]]
    assert ticker.ticks == 3


def test_lead_hands_on_a_second_ahead_of_it() -> None:
    clock = Clock()
    clock.advance(1000.25)
    seen: list[list[Fire]] = []
    ticker = started(clock, seen, lead=0.05)
    assert planned(clock) == [1000.95]
    clock.advance(0.7)
    assert scheduled(seen) == [[1001.0]]
    assert ticker.lag == 0.0
    assert planned(clock) == [1001.95]


def test_a_start_inside_the_lead_serves_the_second_after() -> None:
    clock = Clock()
    clock.advance(1000.97)
    started(clock, [], lead=0.05)
    assert planned(clock) == [1001.95]


def test_a_stall_becomes_one_catch_up_tick() -> None:
    clock = Clock()
    clock.advance(1000.5)
    seen: list[list[Fire]] = []
    ticker = started(clock, seen)
    clock.advance(3.7)  # the reactor was blocked from 1000.5 to 1004.2
    assert scheduled(seen) == [[1001.0, 1002.0, 1003.0, 1004.0]]
    assert ticker.lag == pytest.approx(3.2)
    assert planned(clock) == [1005.0]  # on time again, no burst of ticks
    clock.advance(0.8)
    assert scheduled(seen)[1:] == [[1005.0]]


def test_a_failing_handler_does_not_stop_the_ticks() -> None:
    clock = Clock()
    calls: list[float] = []

    def broken(fires: list[Fire]) -> None:
        calls.append(clock.seconds())
        raise RuntimeError("boom")

    ticker = CronTicker(clock, every_second_engine(clock), broken)
    ticker.startService()
    clock.pump([1.0] * 3)
    assert calls == [1.0, 2.0, 3.0]
    assert ticker.running


def test_stop_cancels_the_next_tick() -> None:
    clock = Clock()
    ticker = started(clock, [])
    ticker.stopService()
    assert clock.getDelayedCalls() == []


def test_lead_must_be_shorter_than_the_interval() -> None:
    with pytest.raises(ValueError, match="lead"):
        CronTicker(Clock(), CronEngine(0.0), lambda fires: None, lead=1.0)


def test_a_slow_tick_does_not_make_the_next_one_late() -> None:
    # The next tick was planned from the time the tick *began*, so a tick
    # that took 300 ms (thousands of fires) made the next one 300 ms late.
    clock = Clock()
    clock.advance(1000.25)
    seen: list[list[Fire]] = []

    def slow(fires: list[Fire]) -> None:
        seen.append(fires)
        clock.rightNow += 0.3  # the work takes time; no timer runs meanwhile

    ticker = CronTicker(clock, every_second_engine(clock), slow, lead=0.05)
    ticker.startService()
    clock.advance(1000.95 - clock.seconds())
    assert planned(clock) == [1001.95]
    clock.advance(1001.95 - clock.seconds())
    assert ticker.lag == 0.0
    assert scheduled(seen) == [[1001.0], [1002.0]]


# -- the top-of-the-hour herd ------------------------------------------------------


def herd_engine(clock: Clock, tasks: int, second: float) -> CronEngine:
    """*tasks* tasks due at *second* only (and on that second of every hour)."""
    engine = CronEngine(clock.seconds())
    at = int(second)
    schedule = cron.parse(f"{at // 60 % 60} * * * * {at % 60}", UTC)
    engine.add_many((task_id, schedule) for task_id in range(1, tasks + 1))
    return engine


def test_a_second_with_many_fires_ticks_earlier_by_its_size() -> None:
    clock = Clock()
    clock.advance(3600 * 10 + 100.25)
    due = 3600 * 10 + 110.0
    seen: list[list[Fire]] = []
    engine = herd_engine(clock, 1000, due)
    assert engine.count_due(due) == 1000 and engine.count_due(due - 1) == 0
    ticker = CronTicker(clock, engine, seen.append, lead=0.05, lead_per_fire=0.001, max_lead=0.5)
    ticker.startService()
    # The usual ticks, each 50 ms ahead of its second, until the herd's.
    while planned(clock)[0] < due - 1:
        clock.advance(planned(clock)[0] - clock.seconds())
    assert seen == []
    # 0.05 + 1,000 x 1 ms is more than 0.5: the most it may lead by.
    assert planned(clock) == [due - 0.5]
    clock.advance(due - 0.5 - clock.seconds())
    assert [len(fires) for fires in seen] == [1000]
    assert {fire.scheduled for fire in seen[0]} == {due}
    # Then on as usual, the second after it.
    assert planned(clock) == [due + 1 - 0.05]
    ticker.stopService()


def test_a_small_second_keeps_the_usual_lead() -> None:
    clock = Clock()
    clock.advance(1000.25)
    seen: list[list[Fire]] = []
    ticker = CronTicker(clock, every_second_engine(clock), seen.append, lead=0.05, lead_per_fire=0.0, max_lead=0.5)
    ticker.startService()
    assert planned(clock) == [1000.95]
    ticker.stopService()


def test_fires_are_handed_on_a_few_per_turn_in_order() -> None:
    clock = Clock()
    clock.advance(3600 * 10 + 100.25)
    due = 3600 * 10 + 101.0
    seen: list[list[Fire]] = []
    # Whether a later turn was booked when each batch was handed on.
    more: list[bool] = []

    def on_fires(fires: list[Fire]) -> None:
        seen.append(fires)
        more.append(any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()))

    ticker = CronTicker(clock, herd_engine(clock, 450, due), on_fires, fires_per_turn=200)
    ticker.startService()
    clock.advance(due - clock.seconds())
    assert [len(fires) for fires in seen] == [200, 200, 50]
    assert more == [True, True, False]
    assert [fire.task_id for fires in seen for fire in fires] == list(range(1, 451))
    ticker.stopService()
    assert not clock.getDelayedCalls()
