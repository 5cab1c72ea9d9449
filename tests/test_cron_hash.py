"""H in a cron field: a value hashed from the task, the same on every parse."""

from __future__ import annotations

from datetime import UTC

import pytest

from scheduler import cron
from scheduler.task_book import TaskBook
from scheduler.tasks import parse_record


def test_h_is_the_same_for_a_task_and_spread_over_tasks() -> None:
    first = cron.parse("H * * * *", UTC, seed="task_1")
    assert cron.parse("H * * * *", UTC, seed="task_1").resolved == first.resolved
    minutes = {cron.parse("H * * * *", UTC, seed=f"task_{n}").resolved.split()[0] for n in range(1, 200)}
    assert len(minutes) > 40  # spread, not all at minute 0
    assert all(0 <= int(minute) <= 59 for minute in minutes)


@pytest.mark.parametrize(
    ("expression", "check"),
    [
        ("H(0-29) * * * *", lambda fields: 0 <= int(fields[0]) <= 29),
        ("H/15 * * * *", lambda fields: fields[0].endswith("-59/15") and int(fields[0].split("-")[0]) < 15),
        ("0 H * * *", lambda fields: 0 <= int(fields[1]) <= 23),
        ("0 0 H * *", lambda fields: 1 <= int(fields[2]) <= 28),
        ("0 0 * * H", lambda fields: 0 <= int(fields[4]) <= 6),
    ],
)
def test_h_forms(expression: str, check: object) -> None:
    schedule = cron.parse(expression, UTC, seed="backup")
    assert check(schedule.resolved.split())  # type: ignore[operator]
    assert "H, hashed from the task" in cron.describe(schedule)


def test_describe_says_what_h_gave() -> None:
    schedule = cron.parse("H * * * *", UTC, seed="task_1")
    minute = int(schedule.resolved.split()[0])
    assert cron.describe(schedule) == f"at minute {minute} of every hour, every day (H, hashed from the task: minute {minute})"


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("H(30-10) * * * *", "minute H(30-10) must be a range within 0-59"),
        ("H(0-99) * * * *", "minute H(0-99) must be a range within 0-59"),
        ("H/99 * * * *", "minute H step must be 1-60"),
    ],
)
def test_h_errors(expression: str, reason: str) -> None:
    with pytest.raises(cron.InvalidSchedule, match=reason.replace("(", r"\(").replace(")", r"\)")):
        cron.parse(expression, UTC, seed="t")


def test_h_needs_a_task_and_plain_schedules_stay_shared() -> None:
    with pytest.raises(cron.InvalidSchedule, match="H needs a task"):
        cron.parse("H * * * *", UTC)
    assert cron.parse("0 9 * * THU", UTC, seed="a") is cron.parse("0 9 * * THU", UTC, seed="b")


def test_a_task_keeps_its_h_through_tasks_db() -> None:
    book = TaskBook(UTC)
    task = book.add("H H * * *", "backup")
    record = parse_record({"schedule": "H H * * *", "command": "backup", "jobName": task.job_name}, UTC)
    assert record.schedule == task.schedule
    assert '"schedule": "H H * * *"' in task.line  # tasks.db keeps what was written
    other = book.add("H H * * *", "backup", job_name="nightly")
    assert other.schedule.expression == task.schedule.expression
