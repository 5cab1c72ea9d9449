"""scheduler.triggers: what started a job, as JSON and as words."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.triggers import MISSED, SCHEDULE, TRIGGER_KINDS, TriggeredBy


def test_the_kinds_are_the_issue_s_names() -> None:
    # "ping": the runs of ping checks (issue 14), reported by POST /api/ping/<uuid>.
    assert TRIGGER_KINDS == ("schedule", "api", "tcp", "retry", "missed", "dashboard", "ping")


@pytest.mark.parametrize(
    ("trigger", "as_json", "text"),
    [
        (SCHEDULE, {"kind": "schedule", "name": None, "job": None}, "schedule"),
        (MISSED, {"kind": "missed", "name": None, "job": None}, "missed run caught up"),
        (TriggeredBy.retry_of(17), {"kind": "retry", "name": None, "job": 17}, "retry of job 17"),
        (TriggeredBy("api"), {"kind": "api", "name": None, "job": None}, "API"),
        (TriggeredBy("api", name="ci"), {"kind": "api", "name": "ci", "job": None}, "API (token ci)"),
        (TriggeredBy("tcp", name="10.0.0.5"), {"kind": "tcp", "name": "10.0.0.5", "job": None}, "TCP from 10.0.0.5"),
        (TriggeredBy("dashboard"), {"kind": "dashboard", "name": None, "job": None}, "dashboard"),
        (TriggeredBy("dashboard", name="ada"), {"kind": "dashboard", "name": "ada", "job": None}, "dashboard (ada)"),
    ],
)
def test_json_keeps_every_field_and_reads_back(trigger: TriggeredBy, as_json: dict[str, Any], text: str) -> None:
    assert trigger.as_json() == as_json
    assert TriggeredBy.from_json(as_json) == trigger
    assert trigger.text == str(trigger) == text


def test_absent_fields_may_be_left_out_when_read() -> None:
    assert TriggeredBy.from_json({"kind": "retry", "job": 3}) == TriggeredBy.retry_of(3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object"),
        ({}, "kind is required"),
        ({"kind": "cron"}, "kind must be one of schedule, api, tcp, retry, missed, dashboard"),
        ({"kind": "api", "name": 5}, "name must be a string"),
        ({"kind": "retry", "job": "17"}, "job must be an integer"),
        ({"kind": "retry", "job": True}, "job must be an integer"),
        ({"kind": "api", "token": "x"}, "unknown field"),
    ],
)
def test_malformed_json_is_refused_saying_why(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TriggeredBy.from_json(data)
