"""Tasks: what is scheduled, and the one-JSON-object-per-line record format.

A task record is exactly the seed's line,
``{"schedule": "* * * * *", "command": "echo Hello", "jobName": "task_1"}``,
plus optional keys for the options below (written only when they differ
from the default, so a file of plain seed tasks is rewritten unchanged) and
any unknown keys, which are kept as they were.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from functools import cached_property
from types import MappingProxyType
from typing import Any

from scheduler import cron

JOB_NAME = re.compile(r"^task_([0-9]{1,18})$")

OVERLAP_POLICIES = ("allow", "skip", "queue")
MISSED_POLICIES = ("skip", "once", "all")
TARGET = re.compile(r"^(any|all|worker:[^\s]+|label:[^\s]+)$")
MAX_COMMAND = 64 * 1024


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


@dataclass(frozen=True)
class TaskOptions:
    """How runs of a task are placed and retried (see docs/protocol.md)."""

    target: str = "any"
    timeout: float | None = None
    retries: int = 0
    retryDelay: float = 10.0
    overlap: str = "allow"
    missed: str = "skip"
    missedCap: int = 10

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TaskOptions:
        """Build options from JSON-ish data, rejecting wrong types and values."""
        defaults = cls()
        target = data.get("target", defaults.target)
        if not isinstance(target, str) or not TARGET.match(target):
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
        return cls(
            target=target,
            timeout=None if timeout is None else float(timeout),
            retries=retries,
            retryDelay=float(delay),
            overlap=overlap,
            missed=missed,
            missedCap=cap,
        )

    def non_defaults(self) -> dict[str, Any]:
        defaults = TaskOptions()
        return {
            name: value
            for name, value in vars(self).items()
            if value != getattr(defaults, name)
        }

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


OPTION_KEYS = frozenset(vars(TaskOptions()))
# Shared by every task that sets no options and no extra keys (almost all of
# them): 100,000 tasks would otherwise hold 100,000 equal copies of each.
DEFAULT_OPTIONS = TaskOptions()
NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
KNOWN_KEYS = frozenset({"schedule", "command", "jobName", "id"}) | OPTION_KEYS


@dataclass(frozen=True)
class Task:
    id: int
    job_name: str
    schedule: cron.Schedule
    command: str
    options: TaskOptions = TaskOptions()
    # Keys this version does not know, kept so rewriting loses nothing.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def line(self) -> str:
        """The task's tasks.db line (without the newline), computed once."""
        record: dict[str, Any] = {
            "schedule": self.schedule.expression,
            "command": self.command,
            "jobName": self.job_name,
        }
        if id_from_job_name(self.job_name) != self.id:
            # Only names like task_12 carry the id; others store it beside.
            record["id"] = self.id
        record.update(self.options.non_defaults())
        record.update(self.extra)
        return json.dumps(record, ensure_ascii=False)


def check_command(command: object) -> str:
    if not isinstance(command, str):
        raise TaskError("command must be a string")
    if not command.strip():
        raise TaskError("command is empty")
    if "\n" in command or "\r" in command or "\0" in command:
        raise TaskError("command must be one line without NUL bytes")
    if len(command.encode()) > MAX_COMMAND:
        raise TaskError(f"command is longer than {MAX_COMMAND} bytes")
    return command


def id_from_job_name(job_name: str) -> int | None:
    match = JOB_NAME.match(job_name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A parsed tasks.db line whose id is not yet decided."""

    job_name: str
    schedule: cron.Schedule
    command: str
    options: TaskOptions
    extra: Mapping[str, Any]
    id: int | None = None


def parse_record(data: object, tz: tzinfo) -> TaskRecord:
    """Check one decoded tasks.db object; raises TaskError saying what is wrong."""
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
    try:
        schedule = cron.parse(schedule_text, tz)
    except cron.InvalidSchedule as error:
        raise TaskError(str(error)) from None
    options = (
        TaskOptions.from_mapping(data)
        if not OPTION_KEYS.isdisjoint(data)
        else DEFAULT_OPTIONS
    )
    task_id = data.get("id", id_from_job_name(job_name))
    if task_id is not None and (
        isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 1
    ):
        raise TaskError("id must be a positive integer")
    extra = {key: value for key, value in data.items() if key not in KNOWN_KEYS} or NO_EXTRA
    return TaskRecord(
        job_name, schedule, check_command(data["command"]), options, extra, task_id
    )
