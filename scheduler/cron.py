"""Cron expressions: validation with readable errors, and shared parsing.

croniter does the date arithmetic.  Two things are added on top of it:

* error messages a person can act on (``minute must be 0-59`` rather than
  croniter's ``[61 * * * *] is not acceptable, out of range``), and
* crontab(5)'s day rule: day-of-month and day-of-week are OR-ed only when
  *both* are restricted, i.e. neither field starts with ``*``.  croniter
  OR-s them whenever neither is exactly ``*``, so ``0 0 */2 * MON`` would
  fire on every odd day instead of on odd-day Mondays.

Many tasks share a few expressions, so parsed schedules are cached and
shared (see :func:`parse`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import lru_cache

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

# Each macro: the expression it stands for, and how the dashboard says it.
_MACROS = {
    "@yearly": ("0 0 1 1 *", "once a year, at midnight on 1 January"),
    "@annually": ("0 0 1 1 *", "once a year, at midnight on 1 January"),
    "@monthly": ("0 0 1 * *", "at midnight on the first of every month"),
    "@weekly": ("0 0 * * 0", "at midnight every Sunday"),
    "@daily": ("0 0 * * *", "every day at midnight"),
    "@midnight": ("0 0 * * *", "every day at midnight"),
    "@hourly": ("0 * * * *", "at the start of every hour"),
}
MACROS = {name: expression for name, (expression, _) in _MACROS.items()}

_MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
_DAYS = "sun mon tue wed thu fri sat".split()


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    # croniter extensions that make sense in this field (``L``, ``5#2``).
    extras: tuple[str, ...] = field(default=())


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31, extras=("l",)),
    _Field("month", 1, 12, tuple(_MONTHS)),
    _Field("day of week", 0, 7, tuple(_DAYS), extras=("l", "#")),
)
_SECOND = _Field("second", 0, 59)

_ATOM = re.compile(r"^(\*|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/([0-9]+))?$")


class InvalidSchedule(ValueError):
    """A schedule expression that cannot be used, with the reason."""

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__(f"invalid schedule '{expression}': {reason}")
        self.expression = expression
        self.reason = reason


def _value(spec: _Field, token: str) -> int | None:
    if token.isdigit():
        # Past four digits every field is out of range anyway, and int()
        # refuses numbers of thousands of digits outright.
        return int(token) if len(token) <= 4 else 10_000
    if token in spec.names:
        return spec.names.index(token) + (1 if spec.name == "month" else 0)
    return None


def _check_field(spec: _Field, text: str) -> str | None:
    """Return why *text* is not a valid *spec* field, or None if it is."""
    for part in text.lower().split(","):
        if part == "":
            return f"{spec.name} has an empty list item"
        if any(extra in part for extra in spec.extras):
            continue  # croniter checks its own extensions
        match = _ATOM.match(part)
        if match is None:
            return f"{spec.name} field '{text}' is not understood"
        start, end, step = match.groups()
        if step is not None and len(step) > 4:
            return f"{spec.name} step must be at most {spec.high - spec.low + 1}"
        if step is not None and int(step) == 0:
            return f"{spec.name} step must be at least 1"
        for token in (start, end):
            if token is None or token == "*":
                continue
            value = _value(spec, token)
            if value is None:
                if spec.names:
                    return (
                        f"{spec.name} must be {spec.low}-{spec.high} "
                        f"or a name ({', '.join(n.upper() for n in spec.names)}),"
                        f" not '{token}'"
                    )
                return f"{spec.name} must be {spec.low}-{spec.high}, not '{token}'"
            if not spec.low <= value <= spec.high:
                return f"{spec.name} must be {spec.low}-{spec.high}"
        if start == "*" and end is not None:
            return f"{spec.name} range cannot start with '*'"
        if end is not None and _value(spec, start) > _value(spec, end):  # type: ignore[operator]
            return f"{spec.name} range {start}-{end} goes backwards"
    return None


def _fields(expression: str) -> tuple[list[str], list[str]]:
    """The fields as written, and spelled out for croniter."""
    text = expression.strip()
    if text.startswith("@"):
        macro = MACROS.get(text.lower())
        if macro is None:
            raise InvalidSchedule(
                expression,
                f"unknown macro (use one of {', '.join(MACROS)})",
            )
        return macro.split(), macro.split()
    fields = text.split()
    if len(fields) not in (5, 6):
        raise InvalidSchedule(
            expression,
            f"expected 5 fields (minute hour day-of-month month day-of-week) "
            f"or 6 with seconds last, got {len(fields)}",
        )
    specs = (*_FIELDS, _SECOND)
    for spec, text_field in zip(specs, fields, strict=False):
        reason = _check_field(spec, text_field)
        if reason is not None:
            raise InvalidSchedule(expression, reason)
    return fields, [_normalise(spec, text_field) for spec, text_field in zip(specs, fields, strict=False)]


def _normalise(spec: _Field, text: str) -> str:
    """Spell a field out as an explicit list of numbers.

    croniter's own parsing has quirks (``0-0`` in day-of-week means every
    day, ``1,*`` misreads); giving it plain lists leaves it only the date
    arithmetic.  Its extensions (``L``, ``#``) pass through untouched.
    """
    lowered = text.lower()
    if lowered == "*" or any(extra in lowered for extra in spec.extras):
        return text
    values: set[int] = set()
    for part in lowered.split(","):
        match = _ATOM.match(part)
        assert match is not None  # checked by _check_field
        start, end, step = match.groups()
        if start == "*":
            first, last = spec.low, spec.high
        else:
            first = _value(spec, start)  # type: ignore[assignment]
            last = _value(spec, end) if end is not None else (spec.high if step else first)  # type: ignore[assignment]
        values.update(range(first, last + 1, int(step or 1)))
    if spec.high == 7:  # day of week: 7 is Sunday, as 0 is
        values = {value % 7 for value in values}
    return ",".join(str(value) for value in sorted(values))


@dataclass(frozen=True)
class Schedule:
    """A validated cron expression in one time zone.

    Immutable and shared between every task that uses the same expression.
    """

    expression: str
    tz: tzinfo
    _cron: str
    _day_or: bool

    def iterator(self, after: float) -> croniter:
        """A croniter yielding fire times (epoch floats) strictly after *after*."""
        start = datetime.fromtimestamp(after, self.tz)
        return croniter(self._cron, start, ret_type=float, day_or=self._day_or)

    def backwards(self, before: float) -> croniter:
        """A croniter whose get_prev yields fire times before *before*."""
        start = datetime.fromtimestamp(before, self.tz)
        return croniter(self._cron, start, ret_type=float, day_or=self._day_or)

    def next_after(self, after: float) -> float:
        """The first fire time strictly after *after* (epoch seconds)."""
        return float(self.iterator(after).get_next(float))


@lru_cache(maxsize=4096)
def parse(expression: str, tz: tzinfo) -> Schedule:
    """Validate *expression* and return its (cached, shared) Schedule.

    Raises InvalidSchedule with a reason a person understands.
    """
    written, fields = _fields(expression)
    day_of_month, day_of_week = written[2], written[4]
    # crontab(5): OR the day fields only if neither starts with '*'.
    day_or = not (day_of_month.startswith("*") or day_of_week.startswith("*"))
    cron = " ".join(fields)
    try:
        probe = croniter(cron, datetime.now(tz), ret_type=float, day_or=day_or)
        probe.get_next(float)
    except CroniterBadDateError:
        raise InvalidSchedule(expression, "it never fires") from None
    except (CroniterError, ValueError, KeyError) as error:
        raise InvalidSchedule(expression, str(error) or type(error).__name__) from None
    return Schedule(expression.strip(), tz, cron, day_or)


def iso(timestamp: float | None, tz: tzinfo, timespec: str = "seconds") -> str | None:
    """A Unix time as ISO 8601 with its offset in *tz*; None for none.

    A time no record should hold (out of range) also gives None, so a bad
    value can never turn a listing into an error.
    """
    if timestamp is None:
        return None
    try:
        return datetime.fromtimestamp(timestamp, tz).isoformat(timespec=timespec)
    except (OverflowError, ValueError, OSError):
        return None


def local_zone() -> tzinfo:
    """The machine's zone, by name where it can be found (so DST works)."""
    import os
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        link = os.readlink("/etc/localtime")
        candidates.append(link.split("zoneinfo/", 1)[-1])
    except OSError:
        pass
    try:
        with open("/etc/timezone") as handle:
            candidates.append(handle.read().strip())
    except OSError:
        pass
    for name in candidates:
        if not name:
            continue
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


_DAY_NAMES = "Sunday Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTH_NAMES = "January February March April May June July August September October November December".split()


def _words(spec: _Field, text: str, names: list[str] | None = None) -> str:
    def one(token: str) -> str:
        value = _value(spec, token)
        if value is None:
            return token
        if names is not None:
            return names[value - (1 if spec.name == "month" else 0)]
        return str(value)

    parts = []
    for part in text.lower().split(","):
        match = _ATOM.match(part)
        if match is None:
            parts.append(part)
            continue
        start, end, step = match.groups()
        if start == "*":
            body = f"every {_ordinal(int(step))} {spec.name}".replace("  ", " ") if step else f"every {spec.name}"
        elif end is not None:
            body = f"{one(start)} to {one(end)}" + (f" every {step}" if step else "")
        else:
            body = one(start) + (f" onwards every {step}" if step else "")
        parts.append(body)
    return ", ".join(parts)


def _ordinal(number: int) -> str:
    if number == 1:
        return ""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def describe(schedule: Schedule) -> str:
    """The schedule in plain words, for the dashboard."""
    text = schedule.expression.strip()
    if text.startswith("@"):
        return _MACROS[text.lower()][1]
    fields = text.split()
    minute, hour, dom, month, dow = fields[:5]
    second = fields[5] if len(fields) == 6 else None
    if minute.isdigit() and hour.isdigit():
        when = f"at {int(hour):02d}:{int(minute):02d}"
    elif minute == "*" and hour == "*":
        when = "every minute"
    elif minute.isdigit() and hour == "*":
        when = f"at minute {int(minute)} of every hour"
    elif minute.startswith("*/") and minute[2:].isdigit() and hour == "*":
        when = f"every {int(minute[2:])} minutes"
    elif minute.isdigit():
        when = f"at minute {int(minute)} of hour {_words(_FIELDS[1], hour)}"
    elif hour == "*":
        when = f"minute {_words(_FIELDS[0], minute)} of every hour"
    else:
        when = f"minute {_words(_FIELDS[0], minute)} past hour {_words(_FIELDS[1], hour)}"
    if second is not None:
        when = f"second {_words(_SECOND, second)} of {when}" if second != "*" else f"every second of {when}"
    if dom == "*" and dow == "*":
        days = "every day"
    elif dom == "*" or (dom.startswith("*") and dow != "*"):
        days = f"on {_words(_FIELDS[4], dow, _DAY_NAMES)}"
        if dom != "*":
            days += f", only on {_words(_FIELDS[2], dom)} of the month"
    elif dow == "*" or dow.startswith("*"):
        days = f"on day {_words(_FIELDS[2], dom)} of the month"
        if dow != "*":
            days += f" if it is {_words(_FIELDS[4], dow, _DAY_NAMES)}"
    else:
        days = f"on day {_words(_FIELDS[2], dom)} of the month or on {_words(_FIELDS[4], dow, _DAY_NAMES)}"
    months = "" if month == "*" else f", in {_words(_FIELDS[3], month, _MONTH_NAMES)}"
    return f"{when}, {days}{months}"
