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

Two more things are this module's own:

* ``H`` in a field (as Jenkins has it): a value hashed from the task, so a
  hundred tasks written ``H * * * *`` spread over the hour instead of all
  starting at minute 0, and each keeps its minute across restarts.
* Clock changes, exact (:class:`FireTimes`).  A schedule with fixed hours
  names times of day: one that does not exist that day (02:30 when the
  clocks go forward) runs once, at the moment the clocks skip to (03:00);
  one that happens twice (02:30 when they go back) runs once, the first
  time.  croniter alone runs the latter twice.  A schedule that runs every
  hour (``*/15 * * * *``, ``@hourly``) names a rhythm, not times of day: it
  follows the clock as cron(8) does, so it also runs in the repeated hour
  and has nothing to catch up after the skipped one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
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
# H, H(low-high), H/step, H(low-high)/step: Jenkins' hashed values.
_HASHED = re.compile(r"^h(?:\(([0-9]{1,4})-([0-9]{1,4})\))?(?:/([0-9]{1,4}))?$")
# Where a bare H picks from: days 1-28 exist in every month, and day of
# week 7 is day 0 again.
_HASH_HIGH = {"day of month": 28, "day of week": 6}


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


def _fields(expression: str) -> list[str]:
    """The fields as written (a macro spelled out), checked but for ``H``."""
    text = expression.strip()
    if text.startswith("@"):
        macro = MACROS.get(text.lower())
        if macro is None:
            raise InvalidSchedule(
                expression,
                f"unknown macro (use one of {', '.join(MACROS)})",
            )
        return macro.split()
    fields = text.split()
    if len(fields) not in (5, 6):
        raise InvalidSchedule(
            expression,
            f"expected 5 fields (minute hour day-of-month month day-of-week) "
            f"or 6 with seconds last, got {len(fields)}",
        )
    return fields


def _has_hash(fields: list[str]) -> bool:
    return any(_HASHED.match(part) for text in fields for part in text.lower().split(","))


def _hashed_value(seed: str, spec: _Field) -> int:
    # sha256, not hash(): the same on every run and every machine.  Each
    # field has its own value, so ``H H * * *`` is not always 3:03 or 7:07.
    digest = hashlib.sha256(f"{spec.name}\0{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _resolve_hash(expression: str, spec: _Field, text: str, seed: str) -> str:
    """*text* with each H part replaced by what it gives for *seed*."""
    parts = []
    for part in text.split(","):
        match = _HASHED.match(part.lower())
        if match is None:
            parts.append(part)
            continue
        first, last, step = match.groups()
        low, high = spec.low, _HASH_HIGH.get(spec.name, spec.high)
        if first is not None:
            low, high = int(first), int(last)
            if not spec.low <= low <= high <= spec.high:
                raise InvalidSchedule(
                    expression, f"{spec.name} H({first}-{last}) must be a range within {spec.low}-{spec.high}"
                )
        value = _hashed_value(seed, spec)
        if step is None:
            parts.append(str(low + value % (high - low + 1)))
            continue
        if not 1 <= int(step) <= high - low + 1:
            raise InvalidSchedule(expression, f"{spec.name} H step must be 1-{high - low + 1}")
        parts.append(f"{low + value % int(step)}-{high}/{int(step)}")
    return ",".join(parts)


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

    Immutable and shared between every task that uses the same expression
    (and, with ``H``, resolves it to the same values).
    """

    expression: str
    tz: tzinfo
    _cron: str
    _day_or: bool
    # The hour field holds every hour: the schedule is a rhythm that
    # follows the clock through its changes, not a set of times of day.
    _hourly: bool = False
    # Each field with H, and what H gave there (for describe()).
    hashed: tuple[tuple[str, str], ...] = ()

    # The cron engine keys its groups by schedule and a LOAD compares every
    # task's: with the fields hashed on each call, a million tasks spent a
    # second in hashing alone.  Schedules are shared, so most comparisons
    # are of an object with itself.
    def __hash__(self) -> int:
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.expression, self.tz, self._cron, self._day_or, self._hourly, self.hashed))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if not isinstance(other, Schedule):
            return NotImplemented
        return (self.expression, self.tz, self._cron, self._day_or, self._hourly, self.hashed) == (
            other.expression,
            other.tz,
            other._cron,
            other._day_or,
            other._hourly,
            other.hashed,
        )

    @property
    def resolved(self) -> str:
        """The expression with each H replaced by the value it gave."""
        if not self.hashed:
            return self.expression
        fields = _fields(self.expression)
        names = [spec.name for spec in (*_FIELDS, _SECOND)]
        given = dict(self.hashed)
        return " ".join(given.get(names[index], text) for index, text in enumerate(fields))

    def iterator(self, after: float) -> FireTimes:
        """Fire times (epoch floats) strictly after *after*, from get_next."""
        return FireTimes(self, after)

    def backwards(self, before: float) -> FireTimes:
        """Fire times strictly before *before*, latest first, from get_prev."""
        return FireTimes(self, before, backwards=True)

    def next_after(self, after: float) -> float:
        """The first fire time strictly after *after* (epoch seconds)."""
        return self.iterator(after).get_next(float)


def _wall(timestamp: float, tz: tzinfo) -> datetime:
    """The wall-clock time (naive) in *tz* at *timestamp*."""
    return datetime.fromtimestamp(timestamp, tz).replace(tzinfo=None)


class FireTimes:
    """A schedule's fire times from a moment on (get_next) or back (get_prev).

    A schedule that runs every hour is croniter on the zone's clock, which
    fires at every moment whose local time matches (checked against that
    rule, minute by minute, on DST days in tests/test_cron_dst.py).  Any
    other names times of day: croniter walks the wall clock without a zone,
    and each time is placed by :meth:`_moment`, which is where the rule for
    skipped and repeated times lives.  Times a clock change merges into one
    moment come out once.  ``note`` says how a clock change moved the time
    last returned, or is None.
    """

    def __init__(self, schedule: Schedule, at: float, *, backwards: bool = False) -> None:
        self._schedule = schedule
        self._tz = schedule.tz
        self._last = at
        self.note: str | None = None
        start: datetime
        if schedule._hourly:
            start = datetime.fromtimestamp(at, self._tz)
        elif not backwards:
            # Every wall time before *at*'s own happens before *at*.
            start = _wall(at, self._tz)
        else:
            # From a moment in the second pass of repeated times, the first
            # pass of the times after it on the wall clock is still before
            # it: go back from the clock as it read before the change.
            offset = _wall(at, self._tz).replace(tzinfo=self._tz, fold=0).utcoffset()
            assert offset is not None
            start = (datetime.fromtimestamp(at, UTC) + offset).replace(tzinfo=None)
        self._cron = croniter(schedule._cron, start, ret_type=datetime, day_or=schedule._day_or)

    def get_next(self, ret_type: type = float) -> float:
        """The next fire time after the last one returned (or the start)."""
        while True:
            moment = self._step(self._cron.get_next(datetime))
            if moment > self._last:
                self._last = moment
                return moment

    def get_prev(self, ret_type: type = float) -> float:
        """The fire time before the last one returned (or the start)."""
        while True:
            moment = self._step(self._cron.get_prev(datetime))
            if moment < self._last:
                self._last = moment
                return moment

    def _step(self, when: datetime) -> float:
        if self._schedule._hourly:
            moment = when.timestamp()
            self.note = self._hourly_note(when)
            return moment
        return self._moment(when)

    def _hourly_note(self, when: datetime) -> str | None:
        wall = when.replace(tzinfo=None)
        first = wall.replace(tzinfo=self._tz, fold=0).timestamp()
        second = wall.replace(tzinfo=self._tz, fold=1).timestamp()
        if first != second:
            which = "first" if when.timestamp() == first else "second"
            return f"clocks go back: {wall:%H:%M} happens twice on {wall:%Y-%m-%d}; this run is the {which}"
        return None

    def _moment(self, wall: datetime) -> float:
        """When the wall-clock time *wall* happens: the first time if it
        happens twice, the moment the clocks skip to if it does not."""
        tz = self._tz
        first = wall.replace(tzinfo=tz, fold=0).timestamp()
        if _wall(first, tz) == wall:
            second = wall.replace(tzinfo=tz, fold=1).timestamp()
            self.note = (
                None
                if second == first
                else f"clocks go back: {wall:%H:%M} happens twice on {wall:%Y-%m-%d}; runs once, the first time"
            )
            return first
        # In the gap: fold=1 reads it on the clock after the change (a
        # moment before the change), fold=0 on the one before (after it).
        # The change is the first whole second whose clock reads past *wall*.
        low = int(wall.replace(tzinfo=tz, fold=1).timestamp())
        high = int(first) + 1
        while high - low > 1:
            middle = (low + high) // 2
            if _wall(middle, tz) > wall:
                high = middle
            else:
                low = middle
        self.note = (
            f"clocks go forward: {wall:%H:%M} does not exist on {wall:%Y-%m-%d}; runs at {_wall(high, tz):%H:%M}"
        )
        return float(high)


def parse(expression: str, tz: tzinfo, seed: str | None = None) -> Schedule:
    """Validate *expression* and return its (cached, shared) Schedule.

    *seed* is what ``H`` hashes (the task's jobName); an expression without
    H ignores it, so those stay shared between every task.  Raises
    InvalidSchedule with a reason a person understands.
    """
    shared = _UNHASHED.get((expression, tz))
    if shared is not None:
        return shared
    if "h" not in expression.lower() or not _has_hash(_fields(expression)):
        schedule = _parse(expression, tz, None)
        if len(_UNHASHED) >= _UNHASHED_MAX:
            _UNHASHED.clear()
        _UNHASHED[expression, tz] = schedule
        return schedule
    if seed is None:
        raise InvalidSchedule(expression, "H needs a task to hash (none was given)")
    return _parse(expression, tz, seed)


# Schedules without H by (expression, zone): a load of a million tasks asks
# for a few thousand expressions a million times, and this lookup is a
# fraction of the H check and lru_cache's call (docs/performance.md, "A
# million tasks").  Only valid expressions get in; cleared when full.
_UNHASHED: dict[tuple[str, tzinfo], Schedule] = {}
_UNHASHED_MAX = 4096


@lru_cache(maxsize=4096)
def _parse(expression: str, tz: tzinfo, seed: str | None) -> Schedule:
    written = _fields(expression)
    hashed: list[tuple[str, str]] = []
    specs = (*_FIELDS, _SECOND)
    if seed is not None:
        for index, (spec, text) in enumerate(zip(specs, written, strict=False)):
            resolved = _resolve_hash(expression, spec, text, seed)
            if resolved != text:
                hashed.append((spec.name, resolved))
                written[index] = resolved
    for spec, text in zip(specs, written, strict=False):
        reason = _check_field(spec, text)
        if reason is not None:
            raise InvalidSchedule(expression, reason)
    fields = [_normalise(spec, text) for spec, text in zip(specs, written, strict=False)]
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
    hourly = fields[1] == "*" or fields[1] == ",".join(str(hour) for hour in range(24))
    return Schedule(expression.strip(), tz, cron, day_or, hourly, tuple(hashed))


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
    """The schedule in plain words, for the dashboard (with what H gave)."""
    text = schedule.expression.strip()
    if text.startswith("@"):
        return _MACROS[text.lower()][1]
    words = _describe(schedule.resolved.split())
    if schedule.hashed:
        picked = ", ".join(f"{name} {value}" for name, value in schedule.hashed)
        words += f" (H, hashed from the task: {picked})"
    return words


def _describe(fields: list[str]) -> str:
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
