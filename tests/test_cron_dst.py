"""Clock changes, exact: cron.FireTimes, and the real CronEngine and CronTicker on task.Clock.

Europe/Berlin goes forward at 02:00 on 2026-03-29 (02:00-02:59 does not
exist) and back at 03:00 on 2026-10-25 (02:00-02:59 happens twice).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from twisted.internet.task import Clock

from scheduler import cron
from scheduler.cron_engine import CronEngine, Fire, missed_times
from scheduler.cron_ticker import CronTicker
from scheduler.jobs import fire_key

BERLIN = ZoneInfo("Europe/Berlin")
SPRING = (2026, 3, 29)
FALL = (2026, 10, 25)


def at(day: tuple[int, int, int], hour: int, minute: int, fold: int = 0, second: int = 0) -> float:
    return datetime(*day, hour, minute, second, tzinfo=BERLIN, fold=fold).timestamp()


def local(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, BERLIN).strftime("%H:%M%z")


def between(expression: str, start: float, end: float) -> list[str]:
    iterator = cron.parse(expression, BERLIN).iterator(start)
    out = []
    while (moment := iterator.get_next(float)) <= end:
        out.append(local(moment))
    return out


# -- the fire times ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "expression", "expected"),
    [
        # 02:30 does not exist: once, at the moment the clocks skip to.
        (SPRING, "30 2 * * *", ["03:00+0200"]),
        # Every hour: a rhythm in real time; the skipped hour has nothing of it.
        (SPRING, "0 * * * *", ["03:00+0200", "04:00+0200"]),
        (SPRING, "*/15 * * * *", ["01:30+0100", "01:45+0100", "03:00+0200", "03:15+0200", "03:30+0200", "03:45+0200", "04:00+0200"]),
        # Several times in the gap, and one just after it: still once.
        (SPRING, "15,45 2 * * *", ["03:00+0200"]),
        (SPRING, "0 2,3 * * *", ["03:00+0200"]),
        # 02:30 happens twice: once, the first time.
        (FALL, "30 2 * * *", ["02:30+0200"]),
        (FALL, "* 2 * * *", [f"02:{minute:02d}+0200" for minute in range(60)]),
        # Every hour runs in both passes of the repeated hour, an hour apart.
        (FALL, "0 * * * *", ["02:00+0200", "02:00+0100", "03:00+0100", "04:00+0100"]),
        (
            FALL,
            "*/15 * * * *",
            ["01:30+0200", "01:45+0200"]
            + [f"02:{m:02d}+0200" for m in (0, 15, 30, 45)]
            + [f"02:{m:02d}+0100" for m in (0, 15, 30, 45)]
            + ["03:00+0100", "03:15+0100", "03:30+0100", "03:45+0100", "04:00+0100"],
        ),
    ],
)
def test_fire_times_on_the_days_the_clocks_change(day: tuple[int, int, int], expression: str, expected: list[str]) -> None:
    # 01:15 to 04:00 on the wall clock, whatever that is in real time.
    assert between(expression, at(day, 1, 15), at(day, 4, 0)) == expected


def test_croniter_alone_runs_a_repeated_time_twice() -> None:
    # Why cron.FireTimes places fixed times itself: the bug this module fixes.
    start = datetime(*FALL, 1, 0, tzinfo=BERLIN)
    plain = croniter("30 2 * * *", start, ret_type=float)
    assert [local(plain.get_next(float)) for _ in range(2)] == ["02:30+0200", "02:30+0100"]
    assert between("30 2 * * *", start.timestamp(), at(FALL, 23, 0)) == ["02:30+0200"]


@pytest.mark.parametrize("day", [SPRING, FALL])
@pytest.mark.parametrize("expression", ["30 2 * * *", "15,45 2 * * *", "*/15 * * * *", "0 * * * *", "* 2 * * *"])
def test_backwards_gives_the_same_times(day: tuple[int, int, int], expression: str) -> None:
    start, end = at(day, 0, 0), at(day, 5, 0)
    forwards = between(expression, start, end)
    iterator = cron.parse(expression, BERLIN).backwards(end + 1)
    backwards = []
    while (moment := iterator.get_prev(float)) > start:
        backwards.append(local(moment))
    assert backwards[::-1] == forwards


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("Europe/Berlin", SPRING),
        ("Europe/Berlin", FALL),
        ("America/New_York", (2026, 3, 8)),
        ("America/New_York", (2026, 11, 1)),
        ("Australia/Lord_Howe", (2026, 4, 5)),  # back half an hour
        ("Australia/Lord_Howe", (2026, 10, 4)),
        ("America/Santiago", (2026, 4, 5)),  # at midnight
        ("America/Santiago", (2026, 9, 6)),
    ],
)
@pytest.mark.parametrize("expression", ["*/15 * * * *", "5 * * * *", "0 0 * * *", "30 2 * * *", "0 1,2,3 * * *"])
def test_every_minute_checked_against_the_rule(zone: str, day: tuple[int, int, int], expression: str) -> None:
    """The rule, minute by minute: an every-hour schedule fires whenever the
    clock matches; a fixed one at the first moment of each time it names, or
    at the moment the clocks skip to when a time does not exist."""
    tz = ZoneInfo(zone)
    schedule = cron.parse(expression, tz)
    # Every change here is between midnight and 03:00.
    start = datetime(*day, tzinfo=tz).timestamp() - 3 * 3600
    end = start + 9 * 3600
    walls = [(moment, datetime.fromtimestamp(moment, tz).replace(tzinfo=None)) for moment in range(int(start) + 60, int(end) + 1, 60)]
    if expression.split()[1] == "*":
        expected = [float(moment) for moment, wall in walls if croniter.match(expression, wall)]
    else:
        first: dict[datetime, int] = {}
        for moment, wall in walls:
            first.setdefault(wall, moment)
        named = set()
        minute = walls[0][1]
        while minute <= walls[-1][1]:
            if croniter.match(expression, minute):
                # The first moment the clock shows it, or the first past it.
                named.add(first.get(minute) or next(moment for moment, wall in walls if wall > minute))
            minute += timedelta(minutes=1)
        expected = sorted(float(moment) for moment in named)
    iterator = schedule.iterator(start)
    got = []
    while (fire := iterator.get_next(float)) <= end:
        got.append(fire)
    assert [datetime.fromtimestamp(t, tz).isoformat() for t in got] == [
        datetime.fromtimestamp(t, tz).isoformat() for t in expected
    ]


# -- the engine and the ticker, on task.Clock -------------------------------------------


class Scheduler:
    """A CronEngine and CronTicker on a task.Clock, recording what fires."""

    def __init__(self, clock: Clock, schedules: dict[int, str], since: float) -> None:
        self.clock = clock
        self.fires: list[Fire] = []
        self.engine = CronEngine(since)
        for task_id, expression in schedules.items():
            self.engine.add(task_id, cron.parse(expression, BERLIN))
        self.ticker = CronTicker(clock, self.engine, self.fires.extend, lead=0.05)
        self.ticker.startService()

    def run_until(self, end: float) -> None:
        while self.clock.seconds() < end:
            self.clock.advance(1)

    def stop(self) -> float:
        self.ticker.stopService()
        return self.engine.last_tick

    def at(self, task_id: int) -> list[str]:
        return [local(fire.scheduled) for fire in self.fires if fire.task_id == task_id]


TASKS = {1: "30 2 * * *", 2: "*/15 * * * *", 3: "0 * * * *"}


def test_the_engine_on_the_spring_day() -> None:
    clock = Clock()
    clock.advance(at(SPRING, 1, 20))
    scheduler = Scheduler(clock, TASKS, clock.seconds())
    scheduler.run_until(at(SPRING, 3, 50))  # 1 h 30 min of real time
    assert scheduler.at(1) == ["03:00+0200"]
    assert scheduler.at(2) == ["01:30+0100", "01:45+0100", "03:00+0200", "03:15+0200", "03:30+0200", "03:45+0200"]
    assert scheduler.at(3) == ["03:00+0200"]


def test_the_engine_on_the_fall_day() -> None:
    clock = Clock()
    clock.advance(at(FALL, 1, 50))
    scheduler = Scheduler(clock, TASKS, clock.seconds())
    scheduler.run_until(at(FALL, 3, 10))  # 2 h 20 min of real time
    assert scheduler.at(1) == ["02:30+0200"]
    assert scheduler.at(2) == [f"02:{m:02d}+{z}" for z in ("0200", "0100") for m in (0, 15, 30, 45)] + ["03:00+0100"]
    assert scheduler.at(3) == ["02:00+0200", "02:00+0100", "03:00+0100"]


def run_with_a_restart(day: tuple[int, int, int], start: float, stop: float, restart: float, end: float) -> list[Fire]:
    """Fires of TASKS from *start* to *end*, the scheduler down from *stop* to
    *restart*; the second engine starts from the first one's last tick, as
    the service restarts it from the last fired time."""
    clock = Clock()
    clock.advance(start)
    first = Scheduler(clock, TASKS, start)
    first.run_until(stop)
    last = first.stop()
    clock.advance(restart - clock.seconds())
    second = Scheduler(clock, TASKS, last)
    second.run_until(end)
    return first.fires + second.fires


def test_a_restart_across_the_spring_change_neither_doubles_nor_drops() -> None:
    # Down from 01:59:30 CET to 03:00:20 CEST: 50 s of real time, across 03:00.
    fires = run_with_a_restart(SPRING, at(SPRING, 1, 50), at(SPRING, 1, 59, second=30), at(SPRING, 3, 0, second=20), at(SPRING, 3, 40))
    keys = [fire_key(fire.task_id, fire.scheduled) for fire in fires]
    assert len(keys) == len(set(keys))
    assert [local(f.scheduled) for f in fires if f.task_id == 1] == ["03:00+0200"]
    # The key is the Unix time: 01:00 UTC, whatever the wall clock said.
    assert fire_key(1, at(SPRING, 3, 0)) == f"1@{int(datetime(2026, 3, 29, 1, 0, tzinfo=ZoneInfo('UTC')).timestamp())}"


def test_a_restart_inside_the_repeated_hour_does_not_run_it_again() -> None:
    # Ran 02:30 CEST, down from 02:40 CEST to 02:20 CET (30 min of real
    # time), up again through the second 02:30.
    fires = run_with_a_restart(FALL, at(FALL, 2, 25), at(FALL, 2, 40), at(FALL, 2, 20, fold=1), at(FALL, 3, 5))
    keys = [fire_key(fire.task_id, fire.scheduled) for fire in fires]
    assert len(keys) == len(set(keys))
    assert [local(f.scheduled) for f in fires if f.task_id == 1] == ["02:30+0200"]
    assert [local(f.scheduled) for f in fires if f.task_id == 3] == ["03:00+0100"]


def test_missed_runs_after_downtime_across_a_change_are_each_time_once() -> None:
    schedule = cron.parse("30 2 * * *", BERLIN)
    assert [local(t) for t in missed_times(schedule, at(FALL, 1, 0), at(FALL, 4, 0), "all", 10)] == ["02:30+0200"]
    assert [local(t) for t in missed_times(schedule, at(SPRING, 1, 0), at(SPRING, 4, 0), "all", 10)] == ["03:00+0200"]
    hourly = cron.parse("0 * * * *", BERLIN)
    assert [local(t) for t in missed_times(hourly, at(FALL, 1, 30), at(FALL, 3, 30), "all", 10)] == [
        "02:00+0200",
        "02:00+0100",
        "03:00+0100",
    ]


def test_notes_say_how_a_change_moves_a_run() -> None:
    iterator = cron.parse("30 2 * * *", BERLIN).iterator(at(SPRING, 0, 0))
    iterator.get_next(float)
    assert iterator.note == "clocks go forward: 02:30 does not exist on 2026-03-29; runs at 03:00"
    iterator.get_next(float)
    assert iterator.note is None
    iterator = cron.parse("30 2 * * *", BERLIN).iterator(at(FALL, 0, 0))
    iterator.get_next(float)
    assert iterator.note == "clocks go back: 02:30 happens twice on 2026-10-25; runs once, the first time"
    hourly = cron.parse("0 * * * *", BERLIN).iterator(at(FALL, 1, 30))
    notes = [(local(hourly.get_next(float)), hourly.note) for _ in range(3)]
    assert notes == [
        ("02:00+0200", "clocks go back: 02:00 happens twice on 2026-10-25; this run is the first"),
        ("02:00+0100", "clocks go back: 02:00 happens twice on 2026-10-25; this run is the second"),
        ("03:00+0100", None),
    ]
