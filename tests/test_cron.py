"""Schedules: validation messages and crontab(5) fire times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import cron

UTC = UTC


def fires(expression: str, start: datetime, count: int) -> list[datetime]:
    schedule = cron.parse(expression, start.tzinfo or UTC)
    out, t = [], start.timestamp()
    for _ in range(count):
        t = schedule.next_after(t)
        out.append(datetime.fromtimestamp(t, start.tzinfo))
    return out


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("61 * * * *", "minute must be 0-59"),
        ("* 24 * * *", "hour must be 0-23"),
        ("* * 0 * *", "day of month must be 1-31"),
        ("* * * 13 *", "month must be 1-12"),
        ("* * * * 8", "day of week must be 0-7"),
        ("* * * * * 60", "second must be 0-59"),
        ("*/0 * * * *", "minute step must be at least 1"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * * *", "expected 5 fields"),
        ("@often", "unknown macro"),
        ("0 0 31 2 *", "it never fires"),
        ("* * * FOO *", "month must be 1-12 or a name"),
        ("a * * * *", "minute must be 0-59, not 'a'"),
    ],
)
def test_invalid_schedules_say_why(expression: str, reason: str) -> None:
    with pytest.raises(cron.InvalidSchedule) as caught:
        cron.parse(expression, UTC)
    assert str(caught.value).startswith(f"invalid schedule '{expression}': ")
    assert reason in str(caught.value)


def test_issue_example_message() -> None:
    with pytest.raises(cron.InvalidSchedule) as caught:
        cron.parse("61 * * * *", UTC)
    assert str(caught.value) == "invalid schedule '61 * * * *': minute must be 0-59"


def test_parsing_is_shared() -> None:
    assert cron.parse("*/5 * * * *", UTC) is cron.parse("*/5 * * * *", UTC)


START = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("*/15 * * * *", ["00:15", "00:30", "00:45"]),
        ("0 9-17/4 * * MON-FRI", ["01 09:00", "01 13:00", "01 17:00"]),
        ("@hourly", ["01:00", "02:00", "03:00"]),
        ("@daily", ["02 00:00", "03 00:00", "04 00:00"]),
        ("@weekly", ["04 00:00", "11 00:00", "18 00:00"]),
        ("@monthly", ["02-01", "03-01", "04-01"]),
        ("@yearly", ["2027-01-01"]),
        ("0 0 * * 7", ["04 00:00", "11 00:00"]),
        ("30 * * * * 15", ["00:30:15", "01:30:15"]),
        ("0 12 1 jan,jul *", ["2026-01-01T12", "2026-07-01T12"]),
    ],
)
def test_fire_times(expression: str, expected: list[str]) -> None:
    got = [t.isoformat() for t in fires(expression, START, len(expected))]
    for want, have in zip(expected, got, strict=True):
        assert want.replace(" ", "T") in have, (want, got)


def test_day_fields_or_when_both_restricted() -> None:
    # crontab(5): both restricted -> either matches. 1st of the month or Mondays.
    got = [t.day for t in fires("0 0 1,15 * MON", START, 4)]
    assert got == [5, 12, 15, 19]


def test_day_fields_and_when_one_starts_with_star() -> None:
    # '*/2' starts with '*', so it is not "restricted": both must match,
    # i.e. odd days that are Mondays (croniter alone would OR them).
    got = fires("0 0 */2 * MON", START, 3)
    assert all(t.weekday() == 0 and t.day % 2 == 1 for t in got)
    assert [t.date().isoformat() for t in got] == ["2026-01-05", "2026-01-19", "2026-02-09"]


def test_dst_spring_forward_runs_once() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 3, 28, 12, 0, tzinfo=berlin)
    got = fires("30 2 * * *", start, 2)
    assert len({t.date() for t in got}) == 2


# A brute-force crontab(5) matcher, to check the real engine against.
def _expand(field: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in field.split(","):
        body, _, step = part.partition("/")
        if body == "*":
            first, last = low, high
        elif "-" in body:
            first, last = (int(x) for x in body.split("-"))
        else:
            first = last = int(body)
            if step:
                last = high
        values.update(range(first, last + 1, int(step or 1)))
    return values


def _matches(expression: str, t: datetime) -> bool:
    minute, hour, dom, month, dow = expression.split()
    dows = {d % 7 for d in _expand(dow, 0, 7)}
    dom_ok = t.day in _expand(dom, 1, 31)
    dow_ok = (t.isoweekday() % 7) in dows
    if dom.startswith("*") or dow.startswith("*"):
        day_ok = dom_ok and dow_ok
    else:
        day_ok = dom_ok or dow_ok
    return (
        t.minute in _expand(minute, 0, 59)
        and t.hour in _expand(hour, 0, 23)
        and t.month in _expand(month, 1, 12)
        and day_ok
    )


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    single = number.map(str)
    span = st.tuples(number, number).map(lambda p: f"{min(p)}-{max(p)}")
    step = st.integers(1, max(1, high - low)).map(str)
    atom = st.one_of(
        st.just("*"),
        single,
        span,
        st.tuples(st.sampled_from(["*"]), step).map("/".join),
        st.tuples(span, step).map("/".join),
    )
    return st.lists(atom, min_size=1, max_size=3).map(",".join)


@settings(max_examples=120, deadline=None)
@given(
    st.tuples(
        _field(0, 59), _field(0, 23), _field(1, 31), _field(1, 12), _field(0, 7)
    ).map(" ".join),
    st.integers(0, 3 * 365 * 24 * 60),
)
def test_next_fire_matches_crontab5(expression: str, offset_minutes: int) -> None:
    """The next fire time matches, and no minute before it does."""
    try:
        schedule = cron.parse(expression, UTC)
    except cron.InvalidSchedule:
        return  # e.g. only Feb 30th; rejected up front
    start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=offset_minutes)
    nxt = datetime.fromtimestamp(schedule.next_after(start.timestamp()), UTC)
    assert _matches(expression, nxt), (expression, start, nxt)
    # Check the minutes in between (bounded, so the test stays fast).
    t = start + timedelta(minutes=1)
    checked = 0
    while t < nxt and checked < 1500:
        assert not _matches(expression, t), (expression, t, nxt)
        t += timedelta(minutes=1)
        checked += 1
