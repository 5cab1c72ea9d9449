"""Tasks: what is scheduled, and the one-JSON-object-per-line record format.

A task record is exactly the seed's line,
``{"schedule": "* * * * *", "command": "echo Hello", "jobName": "task_1"}``,
plus optional keys for the options below (written only when they differ
from the default, so a file of plain seed tasks is rewritten unchanged) and
any unknown keys, which are kept as they were.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scheduler import cron
from scheduler.alert_channels import NAME as CHANNEL_NAME
from scheduler.alert_rules import (
    AFTER_RANGE,
    ATTEMPTS_MODES,
    DEADLINE_RANGE,
    EVERY_RANGE,
    GLOBAL_ONLY,
    MAX_RULES,
    TAKES_AFTER,
    TAKES_ATTEMPTS,
    TAKES_EVERY,
    AlertRule,
)
from scheduler.alerts import ALERT_EVENTS

# The names that carry a task id; id_from_job_name reads them by hand, for
# speed (tests/test_task_store.py checks the two agree).
JOB_NAME = re.compile(r"^task_([0-9]{1,18})$")

OVERLAP_POLICIES = ("allow", "skip", "queue")
MISSED_POLICIES = ("skip", "once", "all")
TARGET = re.compile(r"^(any|all|worker:[^\s]+|label:[^\s]+)$")
MAX_COMMAND = 64 * 1024
# Environment variable names as POSIX shells take them.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What env and cwd may hold, together: an environment is copied into
# every run's process, and lives in tasks.db.
MAX_ENV = 64 * 1024
# Pool names: like worker names, short and without separators.
POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_REASON = 500


class TaskError(ValueError):
    """A task that cannot be accepted; the message says why."""


@dataclass(frozen=True)
class OptionRange:
    """The values a numeric option may take (scheduler/http_openapi.py publishes them)."""

    low: int
    high: int
    low_included: bool = True

    def __contains__(self, value: float) -> bool:
        above = self.low <= value if self.low_included else self.low < value
        return above and value <= self.high


TIMEOUT_RANGE = OptionRange(0, 7 * 86400, low_included=False)  # above 0, at most a week
RETRIES_RANGE = OptionRange(0, 100)
RETRY_DELAY_RANGE = OptionRange(0, 86400)
MISSED_CAP_RANGE = OptionRange(1, 1000)
MAX_CONCURRENT_RANGE = OptionRange(1, 10_000)
# A run may start up to this many seconds after its time, spread at random.
JITTER_RANGE = OptionRange(0, 3600)


@lru_cache(maxsize=1024)
def zone(name: str) -> tzinfo:
    """The IANA time zone *name*; TaskError if there is none by that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TaskError(f"timezone '{name[:100]}' is not an IANA time zone (such as Europe/Berlin)") from None


def check_env(env: object) -> dict[str, str]:
    """Environment variables for a run: names as shells take them, string values."""
    if env is None:
        return {}
    if not isinstance(env, dict) or not all(
        isinstance(key, str) and ENV_NAME.fullmatch(key) and isinstance(value, str) and "\0" not in value
        for key, value in env.items()
    ):
        raise TaskError("env must be an object of variable names (letters, digits, _) to string values")
    if sum(len(key) + len(value) for key, value in env.items()) > MAX_ENV:
        raise TaskError(f"env is larger than {MAX_ENV} characters")
    return dict(env)


def check_cwd(cwd: object) -> str | None:
    """A run's working directory (relative to the worker's --workdir), or None."""
    if cwd is None:
        return None
    if not isinstance(cwd, str) or not cwd or "\0" in cwd or len(cwd) > 4096:
        raise TaskError("cwd must be a non-empty path string")
    return cwd


_RULE_KEYS = ("on", "channel", "after", "every", "mutedUntil", "attempts")
# A ping check's uuid: 122 random bits, in the canonical lower-case form.
PING_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_alerts(value: object, *, where: str = "alerts", global_rules: bool = False) -> tuple[AlertRule, ...]:
    """A list of alert rules (scheduler.alert_rules), checked; TaskError names the rule and field."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise TaskError(f"{where} must be a list of rules such as {{\"on\": \"failure\", \"channel\": \"ops\"}}")
    if len(value) > MAX_RULES:
        raise TaskError(f"{where} holds at most {MAX_RULES} rules")
    rules = []
    for index, data in enumerate(value):
        here = f"{where}[{index}]"
        if isinstance(data, AlertRule):
            data = data.as_json()
        if not isinstance(data, dict):
            raise TaskError(f"{here} must be an object with 'on' and 'channel'")
        unknown = sorted(set(data) - set(_RULE_KEYS))
        if unknown:
            raise TaskError(f"{here}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(_RULE_KEYS)})")
        on = data.get("on")
        if on not in ALERT_EVENTS:
            raise TaskError(f"{here}.on must be one of {', '.join(ALERT_EVENTS)}")
        if on in GLOBAL_ONLY and not global_rules:
            raise TaskError(f"{here}: {on} is about workers, not a task: set it in /api/alerts/defaults")
        channel = data.get("channel")
        if not isinstance(channel, str) or not CHANNEL_NAME.fullmatch(channel):
            raise TaskError(f"{here}.channel must be a channel name (1 to 100 letters, digits, '.', '_' or '-')")
        for name, takes in (("after", TAKES_AFTER), ("every", TAKES_EVERY), ("attempts", TAKES_ATTEMPTS)):
            if name in data and data[name] is not None and on not in takes:
                raise TaskError(f"{here}.{name} goes only with on: {', '.join(sorted(takes))}")
        after = data.get("after")
        after = 1 if after is None else after
        if not _whole(after) or not AFTER_RANGE[0] <= after <= AFTER_RANGE[1]:
            raise TaskError(f"{here}.after must be an integer from {AFTER_RANGE[0]} to {AFTER_RANGE[1]}")
        every = data.get("every")
        if every is not None and (not _seconds(every) or not EVERY_RANGE[0] <= every <= EVERY_RANGE[1]):
            raise TaskError(f"{here}.every must be a number of seconds from {EVERY_RANGE[0]} to {EVERY_RANGE[1]}")
        attempts = data.get("attempts")
        attempts = "last" if attempts is None else attempts
        if attempts not in ATTEMPTS_MODES:
            raise TaskError(f"{here}.attempts must be one of {', '.join(ATTEMPTS_MODES)}")
        if attempts == "each" and (after != 1 or every is not None):
            raise TaskError(f"{here}: attempts: each speaks of every attempt, without after or every")
        rules.append(
            AlertRule(
                on=on,
                channel=channel,
                after=after,
                every=None if every is None else float(every),
                mutedUntil=parse_time(data.get("mutedUntil"), f"{here}.mutedUntil"),
                attempts=attempts,
            )
        )
    return tuple(rules)


def with_new_ping(data: Mapping[str, Any]) -> dict[str, Any]:
    """*data* with ``ping: true`` (ask for a ping check) replaced by a new random uuid."""
    if data.get("ping") is True:
        return {**data, "ping": str(uuid.uuid4())}
    return dict(data)


def check_deadline(value: object, name: str) -> float | None:
    """startDeadline, finishDeadline, freshness and the like: seconds, or None."""
    if value is None:
        return None
    if not _seconds(value) or not DEADLINE_RANGE[0] <= value <= DEADLINE_RANGE[1]:  # type: ignore[operator]
        raise TaskError(f"{name} must be a number of seconds from {DEADLINE_RANGE[0]} to {DEADLINE_RANGE[1]}")
    return float(value)  # type: ignore[arg-type]


# A schedule's zone written in front of it, as cronie and Kubernetes take it.
CRON_TZ = "CRON_TZ="


def split_zone(schedule: str, timezone: str | None = None) -> tuple[str, str | None]:
    """*schedule* without a ``CRON_TZ=<zone> `` prefix, and the zone it names.

    tasks.db keeps the two apart (the plain schedule, which the seed's C
    scheduler reads, and ``timezone``); *timezone*, a zone given besides
    (the task's field), must then be the same.  Without a prefix, the
    zone is *timezone*.
    """
    text = schedule.strip()
    if not text.startswith(CRON_TZ):
        return schedule, timezone
    name, _, rest = text[len(CRON_TZ):].partition(" ")
    if not name or not rest.strip():
        raise TaskError(f"{CRON_TZ}<zone> must be followed by a space and the schedule, e.g. {CRON_TZ}Europe/Berlin 30 2 * * *")
    zone(name)
    if timezone is not None and timezone != name:
        raise TaskError(f"the schedule says {CRON_TZ}{name[:100]} but timezone is {str(timezone)[:100]!r}")
    return rest.strip(), name


def parse_time(value: object, name: str) -> float | None:
    """A time given as ISO 8601 with an offset (or Unix seconds), or None."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 253402300799:
        return float(value)
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed.timestamp()
    raise TaskError(f"{name} must be an ISO 8601 time with its offset, such as 2026-12-24T18:00:00+01:00")


@dataclass(frozen=True)
class TaskOptions:
    """Everything a task carries beyond its schedule and command.

    How its runs are placed, retried and shaped, what they run with, and
    whether the task is paused.  Each is a key of the task's tasks.db
    record, written only when it differs from the default.
    """

    target: str = "any"
    timeout: float | None = None
    retries: int = 0
    retryDelay: float = 10.0
    overlap: str = "allow"
    missed: str = "skip"
    missedCap: int = 10
    # The IANA zone the schedule is read in; None: the scheduler's --tz.
    timezone: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    # At most this many runs of the task at once (beyond ``overlap``).
    maxConcurrent: int | None = None
    # A named pool whose size caps the runs of every task in it.
    pool: str | None = None
    # Each run starts up to this many seconds late, at random.
    jitter: float = 0.0
    paused: bool = False
    # Unix time the task resumes by itself; only with ``paused``.
    pausedUntil: float | None = None
    pauseReason: str | None = None
    # The next fire is skipped, then the task runs as usual.
    skipNext: bool = False
    # Who is told what (scheduler.alert_rules); none: the global defaults'.
    alerts: tuple[AlertRule, ...] = ()
    # Seconds after its scheduled time by which a run must have started,
    # and finished; seconds within which some run must have succeeded.
    startDeadline: float | None = None
    finishDeadline: float | None = None
    freshness: float | None = None
    # A ping check's uuid: the task is never run here, its runs are reported
    # by POST /api/ping/<uuid> (scheduler.task_pings).
    ping: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TaskOptions:
        """Build options from JSON-ish data, rejecting wrong types and values."""
        defaults = cls()
        target = data.get("target", defaults.target)
        if not isinstance(target, str) or not TARGET.fullmatch(target):
            raise TaskError(
                "target must be 'any', 'all', 'worker:<name>' or 'label:<label>'"
            )
        timeout = data.get("timeout", defaults.timeout)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or timeout not in TIMEOUT_RANGE
        ):
            raise TaskError("timeout must be a number of seconds, above 0, at most a week")
        retries = data.get("retries", defaults.retries)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries not in RETRIES_RANGE:
            raise TaskError(f"retries must be an integer from {RETRIES_RANGE.low} to {RETRIES_RANGE.high}")
        delay = data.get("retryDelay", defaults.retryDelay)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay not in RETRY_DELAY_RANGE:
            raise TaskError(
                f"retryDelay must be a number of seconds from {RETRY_DELAY_RANGE.low} to {RETRY_DELAY_RANGE.high}"
            )
        overlap = data.get("overlap", defaults.overlap)
        if overlap not in OVERLAP_POLICIES:
            raise TaskError(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}")
        missed = data.get("missed", defaults.missed)
        if missed not in MISSED_POLICIES:
            raise TaskError(f"missed must be one of {', '.join(MISSED_POLICIES)}")
        cap = data.get("missedCap", defaults.missedCap)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap not in MISSED_CAP_RANGE:
            raise TaskError(f"missedCap must be an integer from {MISSED_CAP_RANGE.low} to {MISSED_CAP_RANGE.high}")
        timezone = data.get("timezone")
        if timezone is not None:
            if not isinstance(timezone, str):
                raise TaskError("timezone must be an IANA time zone name, such as Europe/Berlin")
            zone(timezone)
        most = data.get("maxConcurrent")
        if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most not in MAX_CONCURRENT_RANGE):
            raise TaskError(
                f"maxConcurrent must be an integer from {MAX_CONCURRENT_RANGE.low} to {MAX_CONCURRENT_RANGE.high}"
            )
        pool = data.get("pool")
        if pool is not None and (not isinstance(pool, str) or not POOL_NAME.fullmatch(pool)):
            raise TaskError("pool must be a name of 1 to 100 letters, digits, '.', '_' or '-'")
        jitter = data.get("jitter", defaults.jitter)
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or jitter not in JITTER_RANGE:
            raise TaskError(f"jitter must be a number of seconds from {JITTER_RANGE.low} to {JITTER_RANGE.high}")
        paused = data.get("paused", defaults.paused)
        skip_next = data.get("skipNext", defaults.skipNext)
        for name, flag in (("paused", paused), ("skipNext", skip_next)):
            if not isinstance(flag, bool):
                raise TaskError(f"{name} must be true or false")
        until = parse_time(data.get("pausedUntil"), "pausedUntil")
        reason = data.get("pauseReason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON or "\n" in reason):
            raise TaskError(f"pauseReason must be one line of at most {MAX_REASON} characters")
        if not paused and (until is not None or reason is not None):
            raise TaskError("pausedUntil and pauseReason go with paused: true")
        ping = data.get("ping")
        if ping is not None and (not isinstance(ping, str) or not PING_UUID.fullmatch(ping)):
            raise TaskError("ping must be a random (version 4) UUID in lower case, or true for a new one")
        if ping is not None and retries:
            raise TaskError("a ping check (ping) is not run by the scheduler, so it takes no retries")
        return cls(
            target=target,
            timeout=None if timeout is None else float(timeout),
            retries=retries,
            retryDelay=float(delay),
            overlap=overlap,
            missed=missed,
            missedCap=cap,
            timezone=timezone,
            env=check_env(data.get("env")),
            cwd=check_cwd(data.get("cwd")),
            maxConcurrent=most,
            pool=pool,
            jitter=float(jitter),
            paused=paused,
            pausedUntil=until,
            pauseReason=reason,
            skipNext=skip_next,
            alerts=check_alerts(data.get("alerts")),
            startDeadline=check_deadline(data.get("startDeadline"), "startDeadline"),
            finishDeadline=check_deadline(data.get("finishDeadline"), "finishDeadline"),
            freshness=check_deadline(data.get("freshness"), "freshness"),
            ping=ping,
        )

    def non_defaults(self) -> dict[str, Any]:
        """The options as tasks.db keys: only those that differ from the default."""
        defaults = TaskOptions()
        record = {
            name: value
            for name, value in vars(self).items()
            if value != getattr(defaults, name)
        }
        if self.pausedUntil is not None:
            record["pausedUntil"] = datetime.fromtimestamp(self.pausedUntil, UTC).isoformat()
        if self.alerts:
            record["alerts"] = [rule.as_json(_utc) for rule in self.alerts]
        return record

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON values (the API shows them so)."""
        values = dict(vars(self))
        values["alerts"] = [rule.as_json(_utc) for rule in self.alerts]
        return values

    def evolve(self, **changes: Any) -> TaskOptions:
        """These options with *changes* (JSON names), checked like new ones."""
        return TaskOptions.from_mapping({**self.non_defaults(), **changes})

    @property
    def tz(self) -> tzinfo | None:
        """The task's own time zone, if it names one."""
        return None if self.timezone is None else zone(self.timezone)


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


OPTION_KEYS = frozenset(vars(TaskOptions()))
# Shared by every task that sets no options and no extra keys (almost all of
# them): 100,000 tasks would otherwise hold 100,000 equal copies of each.
DEFAULT_OPTIONS = TaskOptions()
NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
KNOWN_KEYS = frozenset({"schedule", "command", "jobName", "id"}) | OPTION_KEYS


class TaskRecord:
    """A parsed tasks.db line; ``id`` is None until the book gives it one.

    Immutable by contract (nothing assigns to a record once made), as
    :class:`Task` is.  Written by hand rather than as a frozen dataclass: a
    million of them are made per load, and a frozen dataclass's
    ``__init__`` (``object.__setattr__`` per field) cost more than the rest
    of a line's parsing; slots, because a per-instance dict would be half
    of a task's memory (docs/performance.md, "A million tasks").
    """

    __slots__ = ("_id", "_job_name", "command", "extra", "options", "schedule")

    schedule: cron.Schedule
    command: str
    options: TaskOptions
    # Keys this version does not know, kept so rewriting loses nothing.
    extra: Mapping[str, Any]

    def __init__(
        self,
        job_name: str,
        schedule: cron.Schedule,
        command: str,
        options: TaskOptions = DEFAULT_OPTIONS,
        extra: Mapping[str, Any] = NO_EXTRA,
        id: int | None = None,
    ) -> None:
        self._id = id
        # A name that is task_<id> again is not kept: it is made when asked
        # for (a million such names are 60 MB).
        self._job_name: str | None = None if id is not None and job_name == f"task_{id}" else job_name
        self.schedule = schedule
        self.command = command
        self.options = options
        self.extra = extra

    @property
    def id(self) -> int | None:
        return self._id

    @property
    def job_name(self) -> str:
        name = self._job_name
        return f"task_{self._id}" if name is None else name

    def same_fields(self, other: TaskRecord) -> bool:
        """Whether *other* holds the same task (id, name, schedule, command, options, extra)."""
        return (
            self._id == other._id
            and self._job_name == other._job_name
            and self.command == other.command
            and self.schedule == other.schedule
            and self.options == other.options
            and self.extra == other.extra
        )

    def __eq__(self, other: object) -> bool:
        # As a dataclass compares: only with its own class.
        if other is self:
            return True
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, TaskRecord)
        return self.same_fields(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self._id!r}, job_name={self.job_name!r}, schedule={self.schedule!r},"
            f" command={self.command!r}, options={self.options!r}, extra={self.extra!r})"
        )


# JSON's string form as json.dumps writes it with ensure_ascii=False (the C
# encoder json.dumps itself uses), for Task.line's plain case.
_json_string = json.encoder.encode_basestring


class Task(TaskRecord):
    """A task in the book: a record whose id is decided.

    A record read with its id known (a ``task_<id>`` jobName) is made a Task
    at once, so a load adopts it rather than copying it.
    """

    __slots__ = ()

    def __init__(
        self,
        id: int,
        job_name: str,
        schedule: cron.Schedule,
        command: str,
        options: TaskOptions = DEFAULT_OPTIONS,
        extra: Mapping[str, Any] = NO_EXTRA,
    ) -> None:
        # Inline, not super().__init__: this runs a million times per load.
        self._id = id
        self._job_name = None if job_name == f"task_{id}" else job_name
        self.schedule = schedule
        self.command = command
        self.options = options
        self.extra = extra

    @property
    def id(self) -> int:
        task_id = self._id
        assert task_id is not None
        return task_id

    def reads(self, schedule: str, command: str, digits: str, tz: tzinfo) -> bool:
        """Whether the plain tasks.db line of *schedule*, *command* and
        jobName ``task_<digits>``, read in *tz*, is this task exactly
        (*digits* being this task's id, maybe with leading zeros)."""
        # The caller found this task by int(digits): the name is task_<id>
        # exactly when the digits have no leading zero.
        return (
            self._job_name is None
            and self.command == command
            and self.schedule.expression == schedule
            and self.options is DEFAULT_OPTIONS
            and not self.extra
            and self.schedule.tz is tz
            and digits[0] != "0"
        )

    @property
    def line(self) -> str:
        """The task's tasks.db line (without the newline)."""
        if self._job_name is None and self.options is DEFAULT_OPTIONS and not self.extra and self.id < _NAMED_IDS:
            # The seed's three keys, as json.dumps would write them, in a
            # fraction of the time: SAVE formats every task.
            return (
                f'{{"schedule": {_json_string(self.schedule.expression)}, "command": {_json_string(self.command)},'
                f' "jobName": "task_{self._id}"}}'
            )
        record: dict[str, Any] = {
            "schedule": self.schedule.expression,
            "command": self.command,
            "jobName": self.job_name,
        }
        if id_from_job_name(self.job_name) != self._id:
            # Only names like task_12 carry the id; others store it beside.
            record["id"] = self._id
        record.update(self.options.non_defaults())
        record.update(self.extra)
        return json.dumps(record, ensure_ascii=False)


def etag(task: Task) -> str:
    """An HTTP entity tag for *task* as it stands: any change to it changes the tag."""
    digest = hashlib.sha256(f"{task.id}\n{task.line}".encode("utf-8", "surrogatepass")).hexdigest()
    return f'"{digest[:20]}"'


def check_command(command: object, *, multiline: bool = False) -> str:
    """The command, checked.  A task's is one line (tasks.db holds one task
    per line); a job run once may be a script of several (*multiline*)."""
    if not isinstance(command, str):
        raise TaskError("command must be a string")
    if not command.strip():
        raise TaskError("command is empty")
    if "\0" in command:
        raise TaskError("command must not contain NUL bytes")
    if not multiline and ("\n" in command or "\r" in command):
        raise TaskError("a task's command must be one line (a script of several lines can run as a job: POST /api/jobs)")
    if len(command.encode()) > MAX_COMMAND:
        raise TaskError(f"command is longer than {MAX_COMMAND} bytes")
    return command


# Ids a task_<id> name can carry (JOB_NAME: at most 18 digits).
_NAMED_IDS = 10**18


def id_from_job_name(job_name: str) -> int | None:
    """The id a ``task_<id>`` name carries (what JOB_NAME matches), else None."""
    # By hand rather than JOB_NAME.match: a load asks this for every line.
    if not job_name.startswith("task_"):
        return None
    digits = job_name[5:]
    if digits.endswith("\n"):
        # As JOB_NAME's $ does, a single newline at the end is allowed.
        digits = digits[:-1]
    if 0 < len(digits) <= 18 and digits.isascii() and digits.isdigit():
        return int(digits)
    return None


def parse_record(data: object, tz: tzinfo) -> TaskRecord:
    """Check one decoded tasks.db object; raises TaskError saying what is wrong.

    A record whose id is known (given, or in a ``task_<id>`` jobName) comes
    back as a :class:`Task` of that id, for the book to adopt as it is.
    """
    if not isinstance(data, dict):
        raise TaskError("expected a JSON object")
    for key in ("schedule", "command", "jobName"):
        if key not in data:
            raise TaskError(f"missing key '{key}'")
    schedule_text = data["schedule"]
    if not isinstance(schedule_text, str):
        raise TaskError("schedule must be a string")
    job_name = data["jobName"]
    if not isinstance(job_name, str) or not job_name.strip():
        raise TaskError("jobName must be a non-empty string")
    options = (
        TaskOptions.from_mapping(data)
        if not OPTION_KEYS.isdisjoint(data)
        else DEFAULT_OPTIONS
    )
    schedule = _schedule(schedule_text, options.tz or tz, job_name)
    task_id = data.get("id", id_from_job_name(job_name))
    if task_id is not None and (
        isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 1
    ):
        raise TaskError("id must be a positive integer")
    extra = {key: value for key, value in data.items() if key not in KNOWN_KEYS} or NO_EXTRA
    command = check_command(data["command"])
    if task_id is None:
        return TaskRecord(job_name, schedule, command, options, extra)
    return Task(task_id, job_name, schedule, command, options, extra)


def parse_plain_record(schedule_text: str, command: str, job_name: str, tz: tzinfo) -> TaskRecord:
    """:func:`parse_record` of ``{"schedule": ..., "command": ..., "jobName": ...}``
    (the seed's three string keys and nothing else), without building the dict.

    The same checks in the same order, so the same line fails the same way
    either way; tasks.db loads read most lines through here.
    """
    if not job_name.strip():
        raise TaskError("jobName must be a non-empty string")
    schedule = _schedule(schedule_text, tz, job_name)
    task_id = id_from_job_name(job_name)
    if task_id is not None and task_id < 1:
        raise TaskError("id must be a positive integer")
    check_command(command)
    if task_id is None:
        return TaskRecord(job_name, schedule, command)
    return Task(task_id, job_name, schedule, command)


def _schedule(text: str, tz: tzinfo, job_name: str) -> cron.Schedule:
    try:
        return cron.parse(text, tz, seed=job_name)
    except cron.InvalidSchedule as error:
        raise TaskError(str(error)) from None
